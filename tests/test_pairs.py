"""The pair check (assembly/pairs.py): read-name digests of R1 and R2, compared, on real files."""

from __future__ import annotations

import bz2
import gzip
import random

import pytest

from daemon.assembly.pairs import NameDigest, compare, digest_path, head_digest, names_agree


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
