"""The numpy block path of the FASTQ validator (daemon/checks/fastq_blocks.py) against the exact parser.

The block path only ever accepts text; these tests check that whatever it accepts the exact parser
accepts too, with the same counts, and that where it stops the exact parser gives the same message it
gives alone, for any way the text is cut into feeds and blocks.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.checks import fastq_blocks, fastq_check, validate
from daemon.checks.validate import StreamValidator, Summary, validate_path
from daemon.errors import ContentRejected

ILLUMINA = (b"@A00123:8:H5KJ2DSX2:1:1101:%d:%d 1:N:0:ACGTACGT+TTGACCAA\n" + b"ACGTN" * 30 + b"\n+\n"
            + b"F:,#F" * 30 + b"\n")


def verdict(data: bytes, *, feed: int | None = None, vectorised: bool = True) -> Summary | str:
    v = StreamValidator("reads.fastq", vectorised=vectorised)
    step = feed or max(len(data), 1)
    try:
        for i in range(0, len(data), step):
            v.feed(data[i:i + step])
        return v.finish()
    except ContentRejected as exc:
        return str(exc)


@contextmanager
def small_blocks(block: int, blocks_from: int = 1) -> Iterator[None]:
    """Block path tried on any text (blocks_from) in blocks of `block` bytes, so that block and feed
    boundaries fall at every offset of small test files."""
    saved = fastq_blocks.BLOCK, fastq_check.BLOCKS_FROM
    fastq_blocks.BLOCK, fastq_check.BLOCKS_FROM = block, blocks_from
    try:
        yield
    finally:
        fastq_blocks.BLOCK, fastq_check.BLOCKS_FROM = saved


@contextmanager
def counting_scans() -> Iterator[list[tuple[int, int, int]]]:
    """The results of every fastq_blocks.scan call made inside the block."""
    calls: list[tuple[int, int, int]] = []
    original = fastq_blocks.scan

    def spy(text: bytes, start: int, newlines: fastq_blocks.Newlines | None = None) -> tuple[int, int, int]:
        result = original(text, start, newlines)
        calls.append(result)
        return result
    fastq_blocks.scan = spy
    try:
        yield calls
    finally:
        fastq_blocks.scan = original


def exact(data: bytes) -> Summary | str:
    """The exact parser alone: no numpy, no line-column fast path, fed in small pieces."""
    original = validate._FastqChecker._fast
    validate._FastqChecker._fast = lambda self, lines, i, j: False
    try:
        return verdict(data, feed=7, vectorised=False)
    finally:
        validate._FastqChecker._fast = original


@st.composite
def near_miss_fastq(draw) -> bytes:
    """Unwrapped records of one read length (what the block path proves), or one edit away from it:
    a changed, inserted or deleted byte anywhere, a read of another length, a '+' line repeating the
    title, a wrapped record, a blank line, or any residue the block path leaves to the exact parser."""
    width = draw(st.integers(0, 12))
    n = draw(st.integers(1, 25))
    alphabet = draw(st.sampled_from([b"ACGTN", b"ACGTNacgtn", b"ACGT*-.", b"AC@+"]))
    seqs = [bytes(draw(st.lists(st.sampled_from(alphabet), min_size=width, max_size=width))) for _ in range(n)]
    quals = [bytes(draw(st.lists(st.sampled_from(b"!#+:@F~I"), min_size=width, max_size=width)))
             for _ in range(n)]
    text = bytearray()
    for i, (s, q) in enumerate(zip(seqs, quals)):
        plus = b"+r%d" % i if draw(st.integers(0, 9)) == 0 else b"+"
        text += b"@r%d x\n%s\n%s\n%s\n" % (i, s, plus, q)
    edit = draw(st.sampled_from(["none", "none", "replace", "insert", "delete", "wrap"]))
    text = bytes(text)
    if edit in ("replace", "insert", "delete"):
        pos = draw(st.integers(0, len(text) - 1))
        byte = bytes([draw(st.sampled_from([0, 9, 10, 13, 32, 43, 64, 65, 126, 127, 200]))])
        text = {"replace": text[:pos] + byte + text[pos + 1:], "insert": text[:pos] + byte + text[pos:],
                "delete": text[:pos] + text[pos + 1:]}[edit]
    elif edit == "wrap" and width > 1:
        k = draw(st.integers(0, n - 1))
        rec = b"@w\n%s\n%s\n+\n%s\n%s\n" % (seqs[k][:1], seqs[k][1:], quals[k][:1], quals[k][1:])
        cut = sum(len(b"@r%d x\n" % i) + 2 * width + 5 for i in range(k))
        text = text[:cut] + rec + text[cut:]
    if draw(st.booleans()):
        text = text.rstrip(b"\n")     # the last line without its line ending
    return text


@settings(max_examples=400, deadline=None)
@given(text=near_miss_fastq(), block=st.integers(8, 400), feed=st.integers(1, 500))
def test_block_path_gives_the_exact_parsers_verdict(text: bytes, block: int, feed: int) -> None:
    """Valid or not, the block path and the exact parser alone give the same Summary or message,
    whatever the blocks and the feeds."""
    with small_blocks(block):
        assert verdict(text, feed=feed) == exact(text)


def test_block_path_takes_a_whole_typical_file_without_the_line_paths() -> None:
    """Illumina-like reads are checked by numpy only: the line-by-line paths see only the records
    cut by feed boundaries (one per feed), and the counts are exact."""
    data = b"".join(ILLUMINA % (i, i * 7) for i in range(20000))
    seen: list[bytes] = []
    original = validate._FastqChecker._one
    validate._FastqChecker._one = lambda self, line: seen.append(line) or original(self, line)
    try:
        with counting_scans() as scans:
            result = verdict(data, feed=1 << 20)
    finally:
        validate._FastqChecker._one = original
    assert isinstance(result, Summary) and (result.records, result.bases) == (20000, 20000 * 150)
    assert sum(records for _, records, _ in scans) >= 20000 - len(data) // (1 << 20) - 1
    assert seen == []


def test_an_error_deep_in_a_large_file_gets_the_exact_message() -> None:
    """The block path stops at the block holding the error; the exact parser then names the record
    and line as it does alone."""
    data = b"".join(ILLUMINA % (i, i) for i in range(30000))
    at = data.index(b"@A00123:8:H5KJ2DSX2:1:1101:21000:21000")
    bad = data[:at] + data[at:].replace(b"\n+\nF:,#F", b"\n+\nF: #F", 1)
    message = verdict(bad, feed=4 << 20)
    assert message == exact(bad)
    assert "record 21,001 (line 84,004): the quality contains a space at column 3" in message


@pytest.mark.parametrize("edit", [
    lambda rec: rec.replace(b"\n+\n", b"\n+A00123\n", 1),        # '+' line not repeating the title
    lambda rec: rec.replace(b"ACGTNACGTN", b"ACGT*-.GTN", 1),     # residues the block path leaves alone
    lambda rec: rec.replace(b"ACGTN\n", b"ACGTNA\n", 1).replace(b"F:,#F\n", b"F:,#FF\n", 1),  # longer read
])
def test_records_the_block_path_leaves_to_the_exact_parser(edit) -> None:
    """Unusual but possibly valid records in a large file: the same verdict with or without numpy."""
    records = [ILLUMINA % (i, i) for i in range(12000)]
    records[7000] = edit(records[7000])
    data = b"".join(records)
    assert verdict(data, feed=1 << 20) == verdict(data, feed=1 << 20, vectorised=False) == exact(data)


def test_validate_path_uses_the_block_path(tmp_path) -> None:
    """The validator child's entry point (validate_path) checks large FASTQ text with numpy."""
    path = tmp_path / "reads.fastq"
    path.write_bytes(b"".join(ILLUMINA % (i, i) for i in range(8000)))
    with counting_scans() as scans:
        summary = validate_path(path)
    assert summary.records == 8000 and sum(records for _, records, _ in scans) > 7000
