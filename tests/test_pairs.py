"""The pair check (assembly/pairs.py): read-name digests of R1 and R2, compared, on real files."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import random

import pytest

from daemon.assembly.concat import LaneStream
from daemon.assembly.pairs import (
    NameDigest,
    compare,
    digest_path,
    head_digest,
    names_agree,
)
from daemon.checks.child import ChildValidator, validate_lanes
from daemon.checks.validate import StreamValidator
from daemon.errors import ContentRejected, FileChanged


def fastq(names: list[str], read: int, *, seed: int = 1) -> bytes:
    """A FASTQ whose headers are Illumina-style `@name read:N:0:1` (or `@name/read` every third)."""
    rng = random.Random(seed * 10 + read)
    out = []
    for i, name in enumerate(names):
        seq = "".join(rng.choice("ACGT") for _ in range(20 + i % 7))
        header = f"@{name}/{read}" if i % 3 == 0 else f"@{name} {read}:N:0:ACGT+TTGA"
        out.append(f"{header}\n{seq}\n+\n{'I' * len(seq)}\n")
    return "".join(out).encode()


def library(n: int, tag: str = "A00123:45:HXXXXDSX2") -> list[str]:
    return [f"{tag}:1:{1101 + i // 50}:{1000 + i}:{2000 + 3 * i}" for i in range(n)]


def write(path, data: bytes, compression: str):
    if compression == "gz":
        # several gzip members, as BGZF and cat'ed lanes produce
        third = len(data) // 3
        data = b"".join(gzip.compress(part) for part in (data[:third], data[third:2 * third], data[2 * third:]))
    elif compression == "bz2":
        half = len(data) // 2
        data = bz2.compress(data[:half]) + bz2.compress(data[half:])
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("compression", ["none", "gz", "bz2"])
def test_valid_pair_passes_in_every_compression(tmp_path, compression):
    """R1 and R2 of one library (/1 /2 suffixes and Casava comments mixed) agree: no message."""
    names = library(3000)
    r1 = digest_path(write(tmp_path / "a_R1.fq", fastq(names, 1), compression))
    r2 = digest_path(write(tmp_path / "a_R2.fq", fastq(names, 2), compression))
    assert (r1.records, r2.records) == (3000, 3000)
    assert compare(r1, r2) is None


def test_r2_cut_at_a_record_boundary_is_refused_with_both_counts(tmp_path):
    """An R2 that is valid on its own but stops 500 records early: both counts in the sentence."""
    names = library(3000)
    r1 = digest_path(write(tmp_path / "a_R1.fq", fastq(names, 1), "gz"))
    r2 = digest_path(write(tmp_path / "a_R2.fq", fastq(names[:2500], 2), "gz"))
    message = compare(r1, r2)
    assert message is not None and "3,000 records" in message and "2,500" in message
    assert "a_R1.fq" in message and "a_R2.fq" in message


def test_one_renamed_read_is_refused_naming_the_record(tmp_path):
    """Equal counts but record #1,700 renamed in R2: refused, placed between two checkpoints."""
    names = library(3000)
    renamed = list(names)
    renamed[1699] = "A00123:45:HXXXXDSX2:1:9999:1:1"
    r1 = digest_path(write(tmp_path / "a_R1.fq", fastq(names, 1), "none"))
    r2 = digest_path(write(tmp_path / "a_R2.fq", fastq(renamed, 2), "none"))
    message = compare(r1, r2)
    assert message is not None and "both have 3,000 records" in message
    assert "between #1,025 and #2,048" in message


def test_early_renamed_read_is_named_exactly(tmp_path):
    """A difference among the first 1,000 records is named with both read names."""
    names = library(100)
    renamed = list(names)
    renamed[41] = "other:read"
    message = compare(digest_path(write(tmp_path / "x_R1.fq", fastq(names, 1), "none")),
                      digest_path(write(tmp_path / "x_R2.fq", fastq(renamed, 2), "none")))
    assert "#42" in message and "'other:read' in R2" in message


def test_r2_from_another_library_is_refused(tmp_path):
    """An R2 from another run: same count, different names from record #1."""
    r1 = digest_path(write(tmp_path / "a_R1.fq", fastq(library(2000), 1), "bz2"))
    r2 = digest_path(write(tmp_path / "a_R2.fq", fastq(library(2000, tag="M00456:7:000000000-ABCDE"), 2), "bz2"))
    message = compare(r1, r2)
    assert message is not None and "both have 2,000 records" in message and "#1 " in message


def test_blocks_cut_anywhere_give_the_same_digest():
    """Fed in 1-byte blocks or whole, with wrapped records, CRLF and '@'/'+' starting quality lines."""
    text = (b"@r1 x\r\nACGT\r\nAC\r\n+\r\n@@II\r\nII\r\n"     # wrapped, CRLF, quality line starting '@'
            b"@r2/1\nAC\n+r2\n+I\n"                            # quality line starting '+'
            b"@r3\n\n+\n\n"                                     # a zero-length record
            b"@r4\nA\n+\nI")                                    # no final newline
    whole = NameDigest("w")
    whole.feed(text)
    one = NameDigest("o")
    for i in range(len(text)):
        one.feed(text[i:i + 1])
    a, b = whole.finish(), one.finish()
    assert a.records == b.records == 4 and a.digest == b.digest
    assert a.first_names == (b"r1", b"r2", b"r3", b"r4")


def test_four_line_fast_path_equals_the_per_line_path():
    """Plain four-line records digested in big blocks equal the same text fed byte by byte
    (names, count, digest and every checkpoint)."""
    text = fastq(library(1100), 1)
    big, small = NameDigest("big"), NameDigest("small")
    for i in range(0, len(text), 5000):
        big.feed(text[i:i + 5000])
    for i in range(len(text)):
        small.feed(text[i:i + 1])
    a, b = big.finish(), small.finish()
    assert (a.records, a.digest, a.first_names, a.checkpoints) == (b.records, b.digest, b.first_names, b.checkpoints)
    assert [count for count, _ in a.checkpoints] == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]


def odd_record(rng: random.Random, i: int) -> bytes:
    """A record the whole-block paths must either read exactly as the line reader does or leave to it:
    mate suffixes, blanks of every kind, empty and blank-led titles, CRLF, wrapped records, quality
    lines starting with '@' or '+', a sequence starting with '+', a quality shorter or longer."""
    name = rng.choice([b"r%d" % i, b"a/1", b"b/2", b"/1", b"x/3", b"@q", b"n/2/1", b"z/1/1", b"/", b"r%d/2" % i])
    title = b"@" + name + rng.choice([b"", b" 1:N:0:ACGT", b"\tc", b"\x0bc", b"\x0cc", b" a b"])
    if rng.random() < 0.03:
        title = rng.choice([b"@", b"@ lead", b"@\tlead", b"not a title"])
    seq = bytes(rng.choice(b"ACGTN") for _ in range(rng.randrange(0, 12)))
    qual = bytes(rng.choice(b"!+@I#") for _ in seq)
    cr = b"\r" if rng.random() < 0.05 else b""
    kind = rng.random()
    if kind < 0.05:
        half = len(seq) // 2
        return b"\n".join([title, seq[:half], seq[half:], b"+", qual[:half], qual[half:]]) + b"\n"
    if kind < 0.08:
        qual = qual[:-1] if rng.random() < 0.5 else qual + b"I"
    elif kind < 0.1 and seq:
        seq = b"+" + seq[1:]
    plus = b"+" if rng.random() < 0.9 else b"+" + name
    return title + cr + b"\n" + seq + cr + b"\n" + plus + b"\n" + qual + cr + b"\n"


def fed(text: bytes, cuts: list[int], **kwargs) -> tuple:
    digest = NameDigest("x", keep_names=50, **kwargs)
    for start, end in zip([0, *cuts], [*cuts, len(text)]):
        digest.feed(text[start:end])
    d = digest.finish()
    return d.records, d.digest, d.first_names, d.checkpoints


@pytest.mark.parametrize("vectorised", [False, True])
def test_whole_block_paths_read_every_record_as_the_line_reader_does(vectorised):
    """Plain records with odd ones among them, cut anywhere: the whole-block paths (bytes.split/re,
    numpy) give the names, count, digest and checkpoints of the same text fed byte by byte."""
    for seed in range(60):
        rng = random.Random(seed)
        share = rng.choice([0.0, 0.01, 0.3, 1.0])       # of odd records among plain ones
        text = b"".join(odd_record(rng, i) if rng.random() < share else b"@r%d/%d x\nACGT\n+\nI@+I\n" % (i, i % 3)
                        for i in range(rng.randrange(1, 700)))
        if seed % 4 == 0:
            text = text[:-1]                            # no final newline
        expected = fed(text, list(range(1, len(text))))
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randrange(0, 5))))
        assert fed(text, cuts, vectorised=vectorised) == expected, f"seed {seed}"


@pytest.mark.parametrize("vectorised", [False, True])
def test_whole_block_paths_take_the_first_word_without_its_mate_suffix(vectorised):
    """One block of plain records: each name is the first word, one trailing /1 or /2 removed."""
    titles = [b"@a/1 x", b"@b/2\ty", b"@c/3", b"@d/2/1 z", b"@e\x0bf", b"@/1", b"@g/12", b"@h/", b"@i 2:N:0:1"]
    text = b"".join(t + b"\nAC\n+\nII\n" for t in titles)
    digest = NameDigest("x", vectorised=vectorised)
    digest.feed(text)
    assert digest.finish().first_names == (b"a", b"b", b"c/3", b"d/2", b"e", b"", b"g/12", b"h/", b"i")


@pytest.mark.parametrize("long_title_at", [0, 50, 99])
def test_numpy_path_with_one_very_long_title_among_short_ones(long_title_at):
    """Titles of very unequal lengths (gathered end to end, not as rows), also when the long one
    comes before a short last record near the block's end: the same names as the line reader."""
    titles = [b"@r%d/%d" % (i, 1 + i % 2) + (b" " + b"c" * 600 if i == long_title_at else b"") for i in range(100)]
    text = b"".join(t + b"\nA\n+\nI\n" for t in titles)
    fast = NameDigest("x", vectorised=True)
    fast.feed(text)
    assert fed(text, list(range(1, len(text)))) == fed(text, [], vectorised=True)
    assert fast.finish().first_names[:3] == (b"r0", b"r1", b"r2")


def test_numpy_path_digests_a_large_block_of_plain_records_at_once(monkeypatch):
    """On plain four-line FASTQ the validator child's path takes every record in whole blocks: the
    line reader is never called for them (only for a record cut at a block's end)."""
    text = fastq(library(5000), 2)
    expected = digest_path_of(text)
    calls = []
    original = NameDigest._line
    monkeypatch.setattr(NameDigest, "_line", lambda self, line: (calls.append(line), original(self, line)))
    digest = NameDigest("x", vectorised=True)
    half = len(text) // 2 + 7                           # a cut inside a record
    digest.feed(text[:half])
    digest.feed(text[half:])
    assert digest.finish().digest == expected
    assert 0 < len(calls) <= 8


def digest_path_of(text: bytes) -> str:
    digest = NameDigest("ref")
    for i in range(0, len(text), 1000):
        digest.feed(text[i:i + 1000])
    return digest.finish().digest


def test_guess_check_on_the_first_1000_names(tmp_path):
    """`_1/_2` guess: SRA mates agree on their first 1,000 names; two unrelated runs do not."""
    names = library(1500)
    one = write(tmp_path / "SRR1_1.fastq.gz", fastq(names, 1), "gz")
    two = write(tmp_path / "SRR1_2.fastq.gz", fastq(names, 2), "gz")
    other = write(tmp_path / "run_2.fastq", fastq(library(1500, tag="B"), 2), "none")
    assert head_digest(one).records == 1000
    assert names_agree(head_digest(one), head_digest(two)) is None
    message = names_agree(head_digest(one), head_digest(other))
    assert message is not None and "read #1 " in message and "not a pair" in message


def test_guess_check_refuses_a_shorter_mate(tmp_path):
    """A `_2` with fewer records than the first 1,000 of its `_1`: not a pair."""
    names = library(1200)
    one = write(tmp_path / "r_1.fq", fastq(names, 1), "none")
    two = write(tmp_path / "r_2.fq", fastq(names[:10], 2), "none")
    assert "10 records" in names_agree(head_digest(one), head_digest(two))


# -- lane concatenation while streaming (assembly/concat.py) -----------------------------------------
# (kept in this file: the task's file list has no test module of its own for concat.py)

def lanes(tmp_path, compression: str, count: int = 4) -> tuple[list, bytes]:
    """`count` lane files of one read and the plain text of their concatenation."""
    names = library(400 * count)
    paths, text = [], b""
    for lane in range(count):
        data = fastq(names[lane * 400:(lane + 1) * 400], 1, seed=lane)
        text += data
        paths.append(write(tmp_path / f"X_S1_L00{lane + 1}_R1_001.fastq", data, compression))
    return paths, text


def read_all(stream, block: int) -> bytes:
    out = []
    while chunk := stream.read(block):
        assert len(chunk) <= block
        out.append(chunk)
    return b"".join(out)


@pytest.mark.parametrize("compression", ["none", "gz", "bz2"])
def test_lane_stream_is_the_concatenation_and_stays_valid(tmp_path, compression):
    """Four lanes read as one stream: size known up front, bytes = cat, one MD5, valid for the validator."""
    paths, text = lanes(tmp_path, compression)
    expected = b"".join(p.read_bytes() for p in paths)
    with LaneStream([str(p) for p in paths]) as stream:
        assert stream.size == len(expected)                    # before the first read
        validator, digest = StreamValidator("X_S1_R1_001.fastq"), NameDigest("X")
        data = b""
        while chunk := stream.read(4096):
            data += chunk
            validator.feed(chunk)
        assert data == expected and stream.md5 == hashlib.md5(expected).hexdigest()
    summary = validator.finish()
    assert summary.records == 1600
    digest.feed(text)
    assert digest.finish().records == 1600


def test_lane_stream_reads_in_bounded_blocks(tmp_path):
    """No read returns more than asked, however small, and never spans two members."""
    paths, text = lanes(tmp_path, "none", count=3)
    with LaneStream([str(p) for p in paths]) as stream:
        assert read_all(stream, 7) == text


def test_plain_member_without_final_newline_is_refused_naming_it(tmp_path):
    """A plain lane file (not the last) that does not end with a newline cannot be joined."""
    first = tmp_path / "X_L001_R1_001.fastq"
    first.write_bytes(b"@a\nAC\n+\nII")
    last = tmp_path / "X_L002_R1_001.fastq"
    last.write_bytes(b"@b\nAC\n+\nII")                         # the last may end without one
    with pytest.raises(ContentRejected, match="X_L001_R1_001.fastq does not end with a newline"):
        LaneStream([str(first), str(last)])
    with LaneStream([str(last)]) as stream:
        assert read_all(stream, 100) == b"@b\nAC\n+\nII"


def test_mixed_compression_members_are_refused(tmp_path):
    """A gzip lane followed by a plain lane would not be one valid stream: refused naming both."""
    a = write(tmp_path / "X_L001_R1_001.fastq.gz", b"@a\nAC\n+\nII\n", "gz")
    b = write(tmp_path / "X_L002_R1_001.fastq.gz", b"@b\nAC\n+\nII\n", "none")
    with pytest.raises(ContentRejected, match="X_L002_R1_001.fastq.gz is plain but X_L001_R1_001.fastq.gz is gzip"):
        LaneStream([str(a), str(b)])


def test_member_that_grows_while_read_raises_file_changed(tmp_path):
    """A lane file appended to after the stream opened it: FileChanged naming it, not a silent mix."""
    paths, _ = lanes(tmp_path, "none", count=2)
    with LaneStream([str(p) for p in paths]) as stream:
        with open(paths[0], "ab") as f:
            f.write(b"@late\nA\n+\nI\n")
        with pytest.raises(FileChanged, match="X_S1_L001_R1_001.fastq changed"):
            read_all(stream, 1 << 16)


def test_gzip_lane_without_final_newline_is_caught_by_the_validator(tmp_path):
    """A gzip lane whose text lacks its final newline joins badly; the validator on the joined
    stream refuses it (concat cannot see inside the member without decompressing it)."""
    a = write(tmp_path / "X_L001_R1_001.fastq.gz", b"@a\nAC\n+\nII", "gz")
    b = write(tmp_path / "X_L002_R1_001.fastq.gz", b"@b\nAC\n+\nII\n", "gz")
    validator = StreamValidator("X_R1_001.fastq.gz")
    with LaneStream([str(a), str(b)]) as stream, pytest.raises(ContentRejected):
        while chunk := stream.read(1 << 16):
            validator.feed(chunk)
        validator.finish()


# -- the validator child over lane files (checks/child.py) ---------------------------------------------

@pytest.mark.parametrize("compression", ["none", "gz"])
def test_child_gives_each_lane_md5_and_the_pair_digest_in_one_pass(tmp_path, compression):
    """`--pair-digest --member-md5s`: the lanes validated as one stream, each lane file's MD5 and the
    read-name digest of the whole read in the verdict."""
    paths, text = lanes(tmp_path, compression)
    size = sum(p.stat().st_size for p in paths)
    child = ChildValidator([str(p) for p in paths], size, pair_digest=True, member_md5s=True)
    try:
        child.finish()
        assert child.member_md5s == tuple(hashlib.md5(p.read_bytes()).hexdigest() for p in paths)
        reference = NameDigest("ref")
        reference.feed(text)
        assert child.pair_digest.digest == reference.finish().digest and child.pair_digest.records == 1600
    finally:
        child.close()


def test_child_reading_ahead_stops_at_a_bad_lane_without_hanging(tmp_path, monkeypatch):
    """A lane that is not FASTQ, far from the end: the verdict refuses it (the reading thread, blocked
    on its full queue, is let go) and no MD5s are claimed."""
    monkeypatch.setattr("daemon.checks.child.BLOCK_BYTES", 4096)
    paths, _ = lanes(tmp_path, "none", count=3)
    paths[1].write_bytes(b"@a\nAC\n+\nII\n" + b"this is not FASTQ\n" * 20_000)
    verdict = validate_lanes([str(p) for p in paths], pair_digest=True, member_md5s=True)
    assert verdict["ok"] is False and "member_md5s" not in verdict and "pair_digest" not in verdict


def test_child_lane_md5s_are_those_of_the_files_when_read_without_a_thread(tmp_path):
    """Without --member-md5s the lanes are read inline and the verdict has no MD5s."""
    paths, _ = lanes(tmp_path, "none", count=2)
    verdict = validate_lanes([str(p) for p in paths])
    assert verdict["ok"] is True and verdict["records"] == 800 and "member_md5s" not in verdict
