"""Tests for daemon/checks/validate.py: labelled corpora, block boundaries, properties."""

from __future__ import annotations

import bz2
import gzip
import os
import struct
import zlib
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.checks import decoders, fasta_check, fastq_check, text_check, validate
from daemon.checks.validate import StreamValidator, Summary, sniff, validate_path
from daemon.errors import ContentRejected

ROOT = Path(__file__).resolve().parent.parent
OWN = ROOT / "tests" / "data" / "fastx"
# A git worktree lives elsewhere than the checkout next to ../shared: SEQDROP_FASTX_CORPUS points there.
SHARED = Path(os.environ.get("SEQDROP_FASTX_CORPUS", ROOT.parent / "shared" / "conformance" / "fastx"))
SHARED_MISSING = "shared conformance corpus ../shared/conformance/fastx is not present on this machine"

EXPECTED = dict(line.split("\t") for line in (OWN / "expected.tsv").read_text().splitlines()
                if line and not line.startswith("#"))


def files(base: Path, label: str) -> list[Path]:
    folder = base / label
    return sorted(folder.iterdir()) if folder.is_dir() else []


def verdict(data: bytes, name: str = "reads.fastq", block: int | None = None) -> Summary | str:
    """Feed data in blocks of block bytes (all at once if None): the Summary or the message."""
    v = StreamValidator(name=name)
    step = block or max(len(data), 1)
    try:
        for i in range(0, len(data), step):
            v.feed(data[i:i + step])
        return v.finish()
    except ContentRejected as exc:
        return str(exc)


# --- labelled corpora ----------------------------------------------------------------------

@pytest.mark.parametrize("path", files(OWN, "valid"), ids=lambda p: p.name)
def test_own_valid_file_is_accepted(path: Path) -> None:
    """Every file in tests/data/fastx/valid/ is accepted and has at least one record."""
    summary = validate_path(path)
    assert summary.records >= 1 and summary.raw_bytes == path.stat().st_size


@pytest.mark.parametrize("path", files(OWN, "invalid"), ids=lambda p: p.name)
def test_own_invalid_file_is_rejected_with_its_reason(path: Path) -> None:
    """Every file in tests/data/fastx/invalid/ is rejected by a message naming it and its fault."""
    with pytest.raises(ContentRejected) as info:
        validate_path(path)
    message = str(info.value)
    assert message.startswith(path.name + ": ")
    assert EXPECTED[path.name] in message
    assert "\n" not in message and message.endswith(".")


def test_own_corpus_labels_cover_every_invalid_file() -> None:
    """expected.tsv and invalid/ list the same files (the corpus generator keeps them in step)."""
    assert set(EXPECTED) == {p.name for p in files(OWN, "invalid")}


@pytest.mark.skipif(not SHARED.is_dir(), reason=SHARED_MISSING)
@pytest.mark.parametrize("label", ["valid", "invalid"])
def test_shared_corpus_agrees_with_its_labels(label: str) -> None:
    """100% agreement with the Cock et al. / Biopython labels; rejections name file and reason."""
    wrong = []
    for path in files(SHARED, label):
        result = verdict(path.read_bytes(), path.name)
        if label == "valid" and not isinstance(result, Summary):
            wrong.append(result)
        if label == "invalid" and (not isinstance(result, str) or not result.startswith(path.name + ": ")
                                   or " — " not in result):
            wrong.append(f"{path.name}: {result}")
    assert files(SHARED, label) and wrong == []


SHARED_REASONS = {  # the reason each Cock et al. error file must be rejected for
    "error_diff_ids.fastq": "different title", "error_double_qual.fastq": "expected a title",
    "error_double_seq.fastq": "before this record's '+'", "error_long_qual.fastq": "quality has 26",
    "error_no_qual.fastq": "quality has 0", "error_qual_del.fastq": "DEL",
    "error_qual_escape.fastq": "0x1B", "error_qual_null.fastq": "NUL",
    "error_qual_space.fastq": "quality contains a space", "error_qual_tab.fastq": "quality contains a tab",
    "error_qual_unit_sep.fastq": "0x1F", "error_qual_vtab.fastq": "0x0B",
    "error_short_qual.fastq": "quality has 24", "error_spaces.fastq": "sequence contains a space",
    "error_tabs.fastq": "sequence contains a tab", "error_trunc_at_plus.fastq": "truncated",
    "error_trunc_at_qual.fastq": "truncated", "error_trunc_at_seq.fastq": "truncated",
    "error_trunc_in_plus.fastq": "truncated", "error_trunc_in_qual.fastq": "truncated",
    "error_trunc_in_seq.fastq": "truncated", "error_trunc_in_title.fastq": "truncated",
    "aster_blast.pro": "instead of '>'", "aster_pearson.pro": "instead of '>'",
}


@pytest.mark.skipif(not SHARED.is_dir(), reason=SHARED_MISSING)
@pytest.mark.parametrize("name", sorted(SHARED_REASONS))
def test_shared_invalid_file_is_rejected_for_the_right_reason(name: str) -> None:
    """Each shared invalid file fails on its own fault, not on an incidental one (e.g. a blank line)."""
    result = verdict((SHARED / "invalid" / name).read_bytes(), name)
    assert isinstance(result, str) and SHARED_REASONS[name] in result


# --- block boundaries ----------------------------------------------------------------------

def corpus_files() -> list[Path]:
    return files(OWN, "valid") + files(OWN, "invalid") + files(SHARED, "valid") + files(SHARED, "invalid")


@pytest.mark.parametrize("path", corpus_files(), ids=lambda p: f"{p.parent.parent.name}/{p.parent.name}/{p.name}")
def test_block_size_does_not_change_the_verdict(path: Path) -> None:
    """Feeding 1 byte, 7 bytes, 64 KiB or the whole file gives the same Summary or rejection."""
    # Messages are identical too, except in a corrupt compressed file: there the garbled text
    # before the CRC check may be reported instead of the CRC error, depending on how much is
    # decompressed at once. Both are rejections.
    data = path.read_bytes()
    whole = verdict(data, path.name)
    compressed = data[:2] == b"\x1f\x8b" or data[:3] == b"BZh"
    for block in (1, 7, 64 << 10):
        result = verdict(data, path.name, block)
        if isinstance(whole, Summary) or not compressed:
            assert result == whole
        else:
            assert isinstance(result, str) and result.startswith(path.name + ": ")


def test_slow_path_alone_gives_the_same_verdicts(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the fast paths disabled, every corpus file gets the same result as with them."""
    paths = corpus_files()
    with_fast = [verdict(p.read_bytes(), p.name) for p in paths]
    monkeypatch.setattr(validate._FastqChecker, "_fast", lambda self, lines, i, j: False)
    monkeypatch.setattr(validate._FastaChecker, "_fast", lambda self, body: False)
    assert [verdict(p.read_bytes(), p.name) for p in paths] == with_fast


def test_fast_path_handles_many_blocks_of_a_large_file() -> None:
    """A multi-block FASTQ (several 512 KiB text blocks) is counted exactly, fed in odd sizes."""
    rec = b"@r%d 1:N:0\nACGTACGTNN\n+\nIIIIIIIII#\n"
    data = b"".join(rec % i for i in range(60000))
    for block in (4 << 20, 999_983, 65_537):
        result = verdict(data, block=block)
        assert isinstance(result, Summary) and (result.records, result.bases) == (60000, 600000)
    broken = data[:1_000_000] + data[1_000_000:].replace(b"IIIIIIIII#", b"IIIII IIII", 1)
    assert "quality contains a space" in verdict(broken, block=1 << 20)


def test_wrapped_record_in_the_middle_of_a_fast_file() -> None:
    """One wrapped record among many 4-line ones: the slow path takes over and hands back."""
    rec = b"@r\nACGTACGT\n+\nIIIIIIII\n"
    data = rec * 50000 + b"@w\nACGT\nACGT\n+\n@III\n+III\n" + rec * 50000
    for block in (1 << 20, 333_333):
        result = verdict(data, block=block)
        assert isinstance(result, Summary) and result.records == 100001


# --- decisions -----------------------------------------------------------------------------

@pytest.mark.parametrize("text", [b"@r\nAC\n+\nII\n\n", b"@r\nAC\n+\nII\n\n\n\n", b"@r\nAC\n+\nII\r\n\r\n"])
def test_blank_lines_at_the_end_of_a_fastq_are_tolerated(text: bytes) -> None:
    """One or more blank lines after the last record are accepted (Biopython tolerates one)."""
    assert isinstance(verdict(text), Summary)


def test_blank_lines_inside_a_wrapped_fastq_sequence_add_nothing() -> None:
    """Empty lines between a record's sequence lines are accepted and add no bases."""
    assert verdict(b"@r\nAC\n\nGT\n+\nIIII\n") == Summary("fastq", "none", 1, 4, 17)


def test_blank_line_between_fastq_records_is_rejected() -> None:
    """A blank line followed by another record is rejected, naming the blank line."""
    assert "line 5 is blank" in verdict(b"@r\nAC\n+\nII\n\n@s\nAC\n+\nII\n")


def test_zero_length_record_needs_its_quality_line_except_at_the_end() -> None:
    """'@r\\n\\n+\\n' is a complete last record; mid-file the empty quality line must be there."""
    assert isinstance(verdict(b"@a\nAC\n+\nII\n@r\n\n+\n"), Summary)
    assert isinstance(verdict(b"@r\n+\n"), Summary)
    assert "quality has 2 characters but the sequence has 0" in verdict(b"@r\n\n+\n@a\nAC\n+\nII\n")


@pytest.mark.parametrize("char", sorted(set(validate.SEQ_CHARS)))
def test_every_residue_character_is_accepted_in_fasta_and_fastq(char: int) -> None:
    """Letters of either case, '*', '-' and '.' are sequence characters."""
    c = bytes([char])
    assert isinstance(verdict(b"@r\n" + c + b"\n+\nI\n"), Summary)
    assert isinstance(verdict(b">r\n" + c + b"\n", "a.fasta"), Summary)


@pytest.mark.parametrize("char", [c for c in range(256) if c not in validate.SEQ_CHARS and c not in b"\n\r+@>"])
def test_other_characters_are_rejected_in_sequences(char: int) -> None:
    """Digits, spaces, tabs, control and non-ASCII bytes are not sequence characters."""
    c = bytes([char])
    assert "sequence contains" in verdict(b"@r\nA" + c + b"\n+\nII\n")
    result = verdict(b">r\nA" + c + b"\n", "a.fasta")
    assert "sequence contains" in result or "comment line" in result


def test_quality_range_is_exactly_bang_to_tilde() -> None:
    """Every byte from '!' to '~' is a quality character and every other byte is not."""
    assert isinstance(verdict(b"@r\n" + b"A" * 94 + b"\n+\n" + bytes(range(33, 127)) + b"\n"), Summary)
    for c in [*range(0, 33), *range(127, 256)]:
        if c not in b"\n\r":
            assert "quality contains" in verdict(b"@r\nAA\n+\nI" + bytes([c]) + b"\n")


def test_lone_carriage_return_is_not_a_line_ending() -> None:
    """Only CRLF and LF end lines; a CR elsewhere is a character (rejected in sequence/quality)."""
    assert "carriage return" in verdict(b"@r\nAC\rGT\n+\nIIIII\n")
    assert isinstance(verdict(b"@r\r\nACGT\r\n+\r\nIIII\r"), Summary)


def test_crlf_split_between_blocks() -> None:
    """A CR at the end of one block and its LF at the start of the next make one line ending."""
    data = b"@r\r\nACGT\r\n+\r\nIIII\r\n" * 3
    for cut in range(1, len(data)):
        v = StreamValidator(name="x.fastq")
        v.feed(data[:cut])
        v.feed(data[cut:])
        assert v.finish().records == 3


def test_cr_cr_lf_is_one_replacement_whatever_the_blocks() -> None:
    """'\\r\\r\\n' leaves a CR in the line however it is split (no second normalisation)."""
    data = b"@r\nACGT\n+\nIIII\r\r\n@s\nAC\n+\nII\n"
    whole = verdict(data)
    assert "carriage return" in whole
    assert all(verdict(data, block=b) == whole for b in (1, 2, 3, 5, 13))


def test_summary_counts_records_bases_and_raw_bytes() -> None:
    """Summary reports format, compression (by magic bytes, not name), records, bases, raw size."""
    text = b"@a\nACGT\n+\nIIII\n@b\n\n+\n\n@c\nAC\nGT\nA\n+\nIIIII\n"
    packed = gzip.compress(text)
    assert verdict(packed, "reads.fastq") == Summary("fastq", "gzip", 3, 9, len(packed))
    assert verdict(bz2.compress(text), "x.gz").compression == "bzip2"
    assert verdict(b">a\nAC\n>b\n", "x.fa") == Summary("fasta", "none", 2, 2, 9)


def test_stdlib_zlib_fallback_gives_the_same_verdicts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without isal, every gzip file of both corpora gets the same verdict from stdlib zlib."""
    gz = [p for p in corpus_files() if p.read_bytes()[:2] == b"\x1f\x8b"]
    with_isal = [verdict(p.read_bytes(), p.name, 100) for p in gz]
    monkeypatch.setattr(decoders, "igzip_lib", None)
    without = [verdict(p.read_bytes(), p.name, 100) for p in gz]
    assert len(gz) > 10
    assert [isinstance(r, Summary) for r in without] == [isinstance(r, Summary) for r in with_isal]
    assert [r for r in without if isinstance(r, Summary)] == [r for r in with_isal if isinstance(r, Summary)]


def test_feed_accepts_bytearray_and_memoryview() -> None:
    """Chunks may be any bytes-like object, as a reader using readinto() produces."""
    data = gzip.compress(b"@r\nACGT\n+\nIIII\n" * 100)
    v = StreamValidator(name="x.fastq.gz")
    v.feed(bytearray(data[:50]))
    v.feed(memoryview(data)[50:])
    assert v.finish().records == 100


def test_errors_are_sticky() -> None:
    """After a rejection, further feed() and finish() calls raise the same error."""
    v = StreamValidator(name="x.fastq")
    with pytest.raises(ContentRejected) as first:
        v.feed(b"this is not a FASTQ file\n" * 30)
    with pytest.raises(ContentRejected) as again:
        v.feed(b"@r\nA\n+\nI\n")
    assert again.value is first.value
    with pytest.raises(ContentRejected):
        v.finish()


def test_trailing_zero_padding_after_gzip_is_rejected() -> None:
    """Decision: zero bytes after the last gzip member are rejected (a crash can zero-fill a tail)."""
    assert "zero bytes" in verdict(gzip.compress(b"@r\nA\n+\nI\n") + bytes(4096), "x.fastq.gz")


def test_bgzf_needs_its_eof_marker_but_plain_multimember_does_not() -> None:
    """A BGZF file cut at a block boundary is rejected; a plain multi-member gzip is accepted."""
    text = b"@r\nACGT\n+\nIIII\n"
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    body = c.compress(text) + c.flush()
    block = (struct.pack("<4BI2BH2BHH", 31, 139, 8, 4, 0, 0, 255, 6, 66, 67, 2, len(body) + 25)
             + body + struct.pack("<II", zlib.crc32(text), len(text)))
    assert isinstance(verdict(block + validate._BGZF_EOF), Summary)
    assert "end-of-file marker" in verdict(block)
    assert isinstance(verdict(gzip.compress(text) + gzip.compress(text)), Summary)


def line_limits(monkeypatch: pytest.MonkeyPatch, **limits: int) -> None:
    """Set LONG_LINE / MAX_LINE in every checker module that reads them (each holds its own binding)."""
    for module in (text_check, fastq_check, fasta_check):
        for name, value in limits.items():
            if hasattr(module, name):
                monkeypatch.setattr(module, name, value)


def test_long_fasta_lines_are_streamed_with_bounded_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unwrapped sequence line longer than LONG_LINE is checked in pieces, not held whole."""
    line_limits(monkeypatch, LONG_LINE=1000)
    line = b"ACGT" * 25_000
    v = StreamValidator(name="genome.fa")
    v.feed(b">chr1\n")
    for i in range(0, len(line), 4096):
        v.feed(line[i:i + 4096])
        assert v._checker._tail_len <= 1000 + 4096
    v.feed(b"\r\n>chr2\nAC")
    assert v.finish() == Summary("fasta", "none", 2, 100_002, 6 + len(line) + 10)
    bad = b">chr1\n" + line[:50_000] + b" " + line
    assert "a space at column 50,001" in verdict(bad, "g.fa", block=3000)


def test_overlong_fastq_line_is_rejected_whatever_the_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """A FASTQ line over MAX_LINE is refused (memory bound), with the same message for any block size."""
    line_limits(monkeypatch, MAX_LINE=2000, LONG_LINE=500)
    data = b"@r\nAC\n+\nII\n@s\n" + b"A" * 3000 + b"\n+\n" + b"I" * 3000 + b"\n"
    results = {verdict(data, block=b) for b in (None, 1000, 7, 4096)}
    assert len(results) == 1 and "line 6: the line is longer than" in results.pop()


# --- sniff ---------------------------------------------------------------------------------

@pytest.mark.parametrize("head, phrase", [
    (b"", "is empty"),
    (b"PK\x03\x04\x14\x00\x00\x00", "ZIP"),
    (bytes.fromhex("fd377a585a000004e6d6b446"), "xz"),
    (bytes.fromhex("28b52ffd2058610000"), "zstd"),
    (b"\x00\x01\x02\x03binary\xff\xfe", "binary"),
    (b"ID,reads\n", "instead of '>'"),
    (b"BAM\x01", "BAM"),
    (gzip.compress(b"hello world\n", mtime=0), "starts with 'hello world'"),
    (b"@r\nAC GT\n", "sequence contains a space"),
])
def test_sniff_rejects_bad_heads(head: bytes, phrase: str) -> None:
    """sniff() refuses empty, archive, xz/zstd, binary and non-FASTA/FASTQ heads, naming the file."""
    with pytest.raises(ContentRejected) as info:
        sniff(head, "reads.fastq.gz")
    assert str(info.value).startswith("reads.fastq.gz: ") and phrase in str(info.value)


@pytest.mark.parametrize("path", files(OWN, "valid"), ids=lambda p: p.name)
def test_sniff_accepts_the_head_of_every_valid_file(path: Path) -> None:
    """The first 64 KiB of a valid file always pass sniff()."""
    sniff(path.read_bytes()[:65536], path.name)


def test_sniff_does_not_need_the_end_of_the_file() -> None:
    """A head cut mid-record and mid-gzip-stream passes: sniff never checks completeness."""
    text = b"@r\nACGT\n+\nIIII\n" * 10000
    sniff(text[:65536], "a.fastq")
    sniff(gzip.compress(text)[:100], "a.fastq.gz")
    sniff(b">a", "a.fa")


# --- properties ----------------------------------------------------------------------------

# Titles: any bytes but NUL and line breaks; not a SAM header tag (a first line "@HD\t..." is SAM).
TITLE = (st.binary(min_size=0, max_size=12)
         .map(lambda b: b.replace(b"\n", b"_").replace(b"\r", b"_").replace(b"\0", b"_"))
         .filter(lambda b: b[:3] not in (b"HD\t", b"SQ\t", b"RG\t", b"PG\t")))
SEQ = st.text(alphabet=validate.SEQ_CHARS.decode(), max_size=40).map(str.encode)


@st.composite
def fastq_records(draw, min_len: int = 0):
    n = draw(st.integers(1, 6))
    recs = []
    for _ in range(n):
        seq = draw(SEQ.filter(lambda s: len(s) >= min_len))
        qual = bytes(draw(st.lists(st.integers(33, 126), min_size=len(seq), max_size=len(seq))))
        recs.append((draw(TITLE), seq, qual))
    return recs


def render_fastq(recs, *, nl: bytes, wrap: int, repeat: bool) -> tuple[bytes, list[int]]:
    """FASTQ text and, per record, the offset just after its last quality character."""
    out = bytearray()
    ends = []
    for title, seq, qual in recs:
        out += b"@" + title + nl
        for part in ([seq[i:i + wrap] for i in range(0, len(seq), wrap)] if wrap and seq else [seq]):
            out += part + nl
        out += (b"+" + title if repeat else b"+") + nl
        parts = [qual[i:i + wrap] for i in range(0, len(qual), wrap)] if wrap and qual else [qual]
        for part in parts:
            out += part + nl
        ends.append(len(out) - len(nl))
    return bytes(out), ends


def compress(text: bytes, how: str, cuts: list[int]) -> bytes:
    points = sorted({min(c, len(text)) for c in cuts})
    pieces = [text[a:b] for a, b in zip([0, *points], [*points, len(text)])]
    if how == "gzip":
        return gzip.compress(text, mtime=0)
    if how == "multigzip":
        return b"".join(gzip.compress(p, mtime=0) for p in pieces)
    if how == "bzip2":
        return bz2.compress(text)
    if how == "multibzip2":
        return b"".join(bz2.compress(p) for p in pieces)
    return text


LAYOUT = dict(nl=st.sampled_from([b"\n", b"\r\n"]), wrap=st.sampled_from([0, 0, 1, 3, 7]), repeat=st.booleans())
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(recs=fastq_records(), how=st.sampled_from(["none", "gzip", "multigzip", "bzip2", "multibzip2"]),
       cuts=st.lists(st.integers(0, 400), max_size=3), block=st.integers(1, 64), final_nl=st.booleans(),
       **LAYOUT)
def test_generated_valid_fastq_passes_in_every_compression(recs, how, cuts, block, final_nl, nl, wrap, repeat):
    """Random valid FASTQ (wrapped, CRLF, lower case, zero-length) is accepted, counted exactly."""
    text, _ = render_fastq(recs, nl=nl, wrap=wrap, repeat=repeat)
    if not final_nl:
        text = text[:-len(nl)]
    result = verdict(compress(text, how, cuts), block=block)
    assert isinstance(result, Summary), result
    assert (result.records, result.bases) == (len(recs), sum(len(s) for _, s, _ in recs))


@st.composite
def fasta_text(draw):
    recs = draw(st.lists(st.tuples(TITLE, SEQ), min_size=1, max_size=6))
    nl = draw(st.sampled_from([b"\n", b"\r\n"]))
    wrap = draw(st.sampled_from([0, 1, 5, 60]))
    out = []
    for title, seq in recs:
        out.append(b">" + title)
        out += [seq[i:i + wrap] for i in range(0, len(seq), wrap)] if wrap and seq else ([seq] if seq else [])
        if draw(st.booleans()):
            out.append(b"")
    return nl.join(out) + nl, len(recs), sum(len(s) for _, s in recs)


@FAST
@given(gen=fasta_text(), how=st.sampled_from(["none", "gzip", "multigzip", "bzip2"]),
       cuts=st.lists(st.integers(0, 300), max_size=3), block=st.integers(1, 64))
def test_generated_valid_fasta_passes_in_every_compression(gen, how, cuts, block):
    """Random valid FASTA (wrapped, CRLF, blank lines, empty records) is accepted, counted exactly."""
    text, n, bases = gen
    result = verdict(compress(text, how, cuts), "x.fa", block=block)
    assert isinstance(result, Summary) and (result.records, result.bases) == (n, bases), result


@settings(max_examples=15, deadline=None)
@given(recs=fastq_records(), how=st.sampled_from(["gzip", "bzip2"]), **LAYOUT)
def test_every_strict_prefix_of_a_single_stream_file_is_rejected(recs, how, nl, wrap, repeat):
    """Cutting a one-member gzip or one-stream bzip2 file anywhere before its end is rejected."""
    text, _ = render_fastq(recs, nl=nl, wrap=wrap, repeat=repeat)
    packed = compress(text, how, [])
    for k in range(len(packed)):
        assert isinstance(verdict(packed[:k], "x.fastq.gz"), str), k


@settings(max_examples=15, deadline=None)
@given(recs=fastq_records(), cuts=st.lists(st.integers(0, 400), min_size=1, max_size=3))
def test_prefix_of_multimember_gzip_is_rejected_unless_at_a_member_boundary(recs, cuts):
    """A multi-member gzip cut inside a member is rejected (a cut between members is undetectable)."""
    text, _ = render_fastq(recs, nl=b"\n", wrap=0, repeat=False)
    points = sorted({min(c, len(text)) for c in cuts})
    members = [gzip.compress(text[a:b], mtime=0) for a, b in zip([0, *points], [*points, len(text)])]
    packed = b"".join(members)
    boundaries = {sum(map(len, members[:i])) for i in range(len(members) + 1)}
    for k in range(1, len(packed)):
        if k not in boundaries:
            assert isinstance(verdict(packed[:k]), str), k


@settings(max_examples=25, deadline=None)
@given(recs=fastq_records(min_len=1), **LAYOUT)
def test_plain_fastq_cut_inside_a_record_is_rejected(recs, nl, wrap, repeat):
    """A plain FASTQ (records of length >= 1) cut at k is accepted iff k is at a record's end."""
    # "A record's end" is the offset just after its last quality character, or after its line
    # ending (for CRLF, also between the CR and the LF); the start of a record is the end of the
    # previous one. Every other cut, including k = 0 (the empty file), must be rejected. A cut
    # at a record's end leaves a valid shorter file, which no validator can tell from a whole
    # one; zero-length records are left out because '@r\n+' is itself a complete last record.
    text, ends = render_fastq(recs, nl=nl, wrap=wrap, repeat=repeat)
    valid_cuts = {e + d for e in ends for d in range(len(nl) + 1)}
    for k in range(len(text) + 1):
        result = verdict(text[:k])
        assert isinstance(result, Summary) == (k in valid_cuts), (k, text[:k], result)


@settings(max_examples=60, deadline=None)
@given(recs=fastq_records(), pos=st.integers(0, 10_000), byte=st.integers(0, 255),
       op=st.sampled_from(["replace", "insert", "delete"]), block=st.integers(1, 50), **LAYOUT)
def test_mutated_fastq_gets_the_same_verdict_from_fast_and_slow_paths(recs, pos, byte, op, block, nl, wrap, repeat):
    """After one random byte edit, the fast path and the exact parser agree, for any block size."""
    text, _ = render_fastq(recs * 3, nl=nl, wrap=wrap, repeat=repeat)
    pos %= len(text)
    edit = {"replace": text[:pos] + bytes([byte]) + text[pos + 1:],
            "insert": text[:pos] + bytes([byte]) + text[pos:],
            "delete": text[:pos] + text[pos + 1:]}[op]
    fast = verdict(edit)
    original = validate._FastqChecker._fast
    try:
        validate._FastqChecker._fast = lambda self, lines, i, j: False
        slow = verdict(edit, block=block)
    finally:
        validate._FastqChecker._fast = original
    assert fast == slow


@settings(max_examples=60, deadline=None)
@given(gen=fasta_text(), pos=st.integers(0, 10_000), byte=st.integers(0, 255),
       op=st.sampled_from(["replace", "insert", "delete"]), block=st.integers(1, 50))
def test_mutated_fasta_gets_the_same_verdict_from_fast_and_slow_paths(gen, pos, byte, op, block):
    """After one random byte edit of a FASTA file, the fast path and the exact loop agree."""
    text = gen[0]
    pos %= len(text)
    edit = {"replace": text[:pos] + bytes([byte]) + text[pos + 1:],
            "insert": text[:pos] + bytes([byte]) + text[pos:],
            "delete": text[:pos] + text[pos + 1:]}[op]
    fast = verdict(edit, "x.fa")
    original = validate._FastaChecker._fast
    try:
        validate._FastaChecker._fast = lambda self, body: False
        slow = verdict(edit, "x.fa", block=block)
    finally:
        validate._FastaChecker._fast = original
    assert fast == slow


def slow_verdict(data: bytes, block: int | None = None) -> Summary | str:
    """The verdict of the exact parser alone (the FASTQ fast path switched off)."""
    original = validate._FastqChecker._fast
    try:
        validate._FastqChecker._fast = lambda self, lines, i, j: False
        return verdict(data, block=block)
    finally:
        validate._FastqChecker._fast = original


@contextmanager
def fastq_step(step: int):
    """fastq_check.FASTQ_STEP (bytes of lines per fast-path step) set to step inside the block."""
    original = fastq_check.FASTQ_STEP
    fastq_check.FASTQ_STEP = step
    try:
        yield
    finally:
        fastq_check.FASTQ_STEP = original


@st.composite
def same_width_fastq(draw) -> bytes:
    """Unwrapped records whose reads all have one length, or a near miss of that.

    Near misses: one line break of the sequence or quality column moved by one byte (the
    column's total length and the first read's length stay the same), or one byte changed.
    """
    width = draw(st.integers(0, 9))
    n = draw(st.integers(1, 12))
    seqs = [bytes(draw(st.lists(st.sampled_from(b"ACGTNacgtn*-."), min_size=width, max_size=width)))
            for _ in range(n)]
    quals = [bytes(draw(st.lists(st.integers(33, 126), min_size=width, max_size=width)))
             for _ in range(n)]
    edit = draw(st.sampled_from(["none", "shift_seq", "shift_qual", "byte"]))
    if edit.startswith("shift") and n > 1:
        col = seqs if edit == "shift_seq" else quals
        k = draw(st.integers(1, n - 2)) if n > 2 else 0
        joined = col[k] + col[k + 1]
        cut = min(max(len(col[k]) + draw(st.sampled_from([-1, 1])), 0), len(joined))
        col[k], col[k + 1] = joined[:cut], joined[cut:]
    repeat = draw(st.booleans())
    text = b"".join(b"@r%d\n%s\n%s\n%s\n" % (i, s, b"+r%d" % i if repeat else b"+", q)
                    for i, (s, q) in enumerate(zip(seqs, quals)))
    if edit == "byte":
        pos = draw(st.integers(0, len(text) - 1))
        text = text[:pos] + bytes([draw(st.integers(0, 255))]) + text[pos + 1:]
    return text


@settings(max_examples=200, deadline=None)
@given(text=same_width_fastq(), step=st.integers(1, 200), block=st.integers(1, 64), crlf=st.booleans())
def test_fast_path_agrees_with_the_slow_path_on_same_width_reads(text, step, block, crlf):
    """Same-length reads (the fast path's shortcut for equal lengths) and near misses: the fast
    path and the exact parser alone give the same verdict.

    FASTQ_STEP is made tiny so that steps end at every possible line, and the file is also fed in
    small blocks, so carried lines and tails meet the fast path at every offset.
    """
    if crlf:
        text = text.replace(b"\n", b"\r\n")
    with fastq_step(step):
        fast = verdict(text)
        assert fast == verdict(text, block=block)
        assert fast == slow_verdict(text, block=block)


@settings(max_examples=60, deadline=None)
@given(recs=fastq_records(), step=st.integers(1, 300), **LAYOUT)
def test_generated_valid_fastq_gets_the_same_summary_from_fast_and_slow_paths(recs, step, nl, wrap, repeat):
    """Random valid FASTQ (any read lengths, wrapped or not): the same Summary either way."""
    text, _ = render_fastq(recs * 4, nl=nl, wrap=wrap, repeat=repeat)
    with fastq_step(step):
        fast = verdict(text)
    assert isinstance(fast, Summary) and fast == slow_verdict(text, block=7)


@pytest.mark.parametrize("seq_lens, qual_lens, ok", [
    ([4, 4, 4], [4, 4, 4], True),
    ([3, 5, 4], [3, 5, 4], True),       # different lengths, equal per record
    ([4, 4, 4], [3, 5, 4], False),      # same totals, same first width
    ([3, 5, 4], [5, 3, 4], False),
    ([4, 4, 4], [4, 4, 5], False),
    ([0, 0, 0], [0, 0, 0], True),       # zero-length reads
])
def test_fast_path_proves_equal_lengths_record_by_record(seq_lens, qual_lens, ok) -> None:
    """The fast path accepts exactly the blocks whose reads match their qualities' lengths."""
    text = b"".join(b"@r\n%s\n+\n%s\n" % (b"A" * s, b"I" * q) for s, q in zip(seq_lens, qual_lens))
    checker = validate._FastqChecker("x.fastq")
    lines = text.splitlines(keepends=True)
    assert checker._fast(lines, 0, len(lines)) is ok
    assert isinstance(verdict(text), Summary) is ok
    if ok:
        assert (checker.records, checker.bases, checker.line) == (3, sum(seq_lens), 12)


def test_fast_path_takes_a_whole_typical_file() -> None:
    """Illumina-like records never reach the exact parser (else the speed would be the slow path's)."""
    rec = b"@A00123:8:H5KJ2DSX2:1:1101:%d:1 1:N:0:ACGT\n" + b"ACGTN" * 30 + b"\n+\n" + b"F:,#F" * 30 + b"\n"
    data = b"".join(rec % i for i in range(5000))
    calls = []
    original = validate._FastqChecker._one
    try:
        validate._FastqChecker._one = lambda self, line: calls.append(line) or original(self, line)
        result = verdict(data, block=1 << 20)
    finally:
        validate._FastqChecker._one = original
    assert isinstance(result, Summary) and result.records == 5000 and calls == []
