"""One block's '\\n' positions shared by the FASTQ block checker and the read-name digest
(daemon/checks/fastq_blocks.py Newlines), as the validator child of a paired read wires them.

Each scanner only takes what it proved from the positions it is given, so positions that were wrong
(another block's, the text before the checker rewrote its CRLF, one window's counted from the wrong
offset) would show as a digest or a verdict different from the line-by-line readers'. These tests
compare both with the line readers on text cut at every kind of edge, and check that the positions
are found once per block, for the right text, and let go after it.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from test_cpu_validate import ILLUMINA, exact
from test_pairs import fed, odd_record

from daemon.assembly import name_blocks
from daemon.assembly.pairs import NameDigest
from daemon.checks import fastq_blocks, fastq_check
from daemon.checks.child import validate_lanes
from daemon.checks.fastq_blocks import Newlines
from daemon.checks.validate import StreamValidator, Summary
from daemon.errors import ContentRejected


@contextmanager
def small_steps(step: int, window: int) -> Iterator[None]:
    """Both scanners step `step` bytes at a time from any text size, and Newlines finds '\\n' in
    windows of `window` bytes, so that step, window and feed edges fall at every offset of small text."""
    saved = fastq_blocks.BLOCK, name_blocks.BLOCK, fastq_check.BLOCKS_FROM, fastq_blocks.NEWLINE_WINDOW
    saved_densest = fastq_blocks._DENSEST
    fastq_blocks.BLOCK = name_blocks.BLOCK = step
    fastq_check.BLOCKS_FROM = 1
    fastq_blocks.NEWLINE_WINDOW, fastq_blocks._DENSEST = window, window // 2
    try:
        yield
    finally:
        fastq_blocks.BLOCK, name_blocks.BLOCK, fastq_check.BLOCKS_FROM, fastq_blocks.NEWLINE_WINDOW = saved
        fastq_blocks._DENSEST = saved_densest


def child_pass(text: bytes, cuts: list[int], *, shared: bool = True) -> tuple[tuple, Summary | str]:
    """The validator child's pass (validate_lanes): a NameDigest fed by a StreamValidator, both
    vectorised, sharing one Newlines (or none). The digest and the verdict."""
    newlines = Newlines() if shared else None
    digest = NameDigest("x", keep_names=50, vectorised=True, newlines=newlines)
    validator = StreamValidator("reads.fastq", on_text=digest.feed, vectorised=True, newlines=newlines)
    verdict: Summary | str
    try:
        for start, end in zip([0, *cuts], [*cuts, len(text)]):
            validator.feed(text[start:end])
        verdict = validator.finish()
    except ContentRejected as e:
        verdict = str(e)
    d = digest.finish()
    return (d.records, d.digest, d.first_names, d.checkpoints), verdict


def line_reader_digest(text: bytes) -> tuple:
    """The digest of the line-by-line reader alone: no whole-block path (fed a byte at a time)."""
    return fed(text, list(range(1, len(text))))


def newline_positions(text: bytes, start: int = 0, stop: int | None = None) -> list[int]:
    stop = len(text) if stop is None else stop
    return [i - start for i in range(start, stop) if text[i] == 10]


def test_positions_are_those_of_every_newline_in_any_range_across_windows() -> None:
    """Any range of a text, inside one window or across several, gives the positions of its '\\n'
    counted from its start; each window is searched once, whichever range asked first."""
    rng = random.Random(7)
    with small_steps(64, 64):
        for size in (1, 63, 64, 65, 640, 1000):
            text = bytes(rng.choice(b"ACGT\n" + b"ACGTACGTACGT") for _ in range(size))
            newlines = Newlines()
            ranges = [(0, size), *((a, b) for a, b in (sorted(rng.sample(range(size + 1), 2)) for _ in range(30))
                                   if a < b)]
            for a, b in ranges:
                assert newlines.between(text, a, b).tolist() == newline_positions(text, a, b), (size, a, b)
            assert newlines.searched == -(-size // 64)


def test_a_window_too_dense_in_lines_is_not_kept_and_each_step_finds_its_own() -> None:
    """More '\\n' than one every 8 bytes on average in a window: its positions are not kept (each
    step over it finds its own, exactly), and the scanners still read the text exactly."""
    text = b"@r\nA\n+\nI\n" * 200_000                    # 8 bytes a record, 4 '\\n': one every 2 bytes
    newlines = Newlines()
    assert newlines.between(text, 5, 1000).tolist() == newline_positions(text, 5, 1000)
    assert newlines.between(text, 10, 2000).tolist() == newline_positions(text, 10, 2000)
    assert newlines.searched == 1 and newlines._windows == {0: None}
    names, verdict = child_pass(text, [len(text) // 3])
    assert verdict == Summary(format="fastq", compression="none", records=200_000, bases=200_000,
                              raw_bytes=len(text))
    assert names[0] == 200_000 and names[2][:2] == (b"r", b"r")


def test_positions_follow_the_text_not_its_size() -> None:
    """Two blocks of the same length one after the other: each gets its own positions (kept for the
    object itself, never for an address or a size that the next block may share)."""
    a = b"@r1\nACGT\n+\nIIII\n" * 4
    b = b"@r22\nACG\n+\nIII\n\n" * 4
    assert len(a) == len(b)
    newlines = Newlines()
    assert newlines.between(a, 0, len(a)).tolist() == newline_positions(a)
    assert newlines.between(bytes(bytearray(b)), 0, len(b)).tolist() == newline_positions(b)
    assert newlines.searched == 2
    assert newlines.between(a, 3, len(a)).tolist() == newline_positions(a, 3)     # a again: searched again
    assert newlines.searched == 3


@pytest.mark.parametrize("seed", range(40))
def test_shared_positions_give_the_line_readers_digest_and_verdict(seed: int) -> None:
    """Plain records with odd ones among them (wrapped, CRLF, blank-led titles, short or long quality,
    '+' or '@' starting lines), cut anywhere, in small steps and windows: with shared positions the
    digest is the line reader's and the verdict the exact parser's, as without sharing."""
    rng = random.Random(seed)
    share = rng.choice([0.0, 0.01, 0.1, 0.5])
    text = b"".join(odd_record(rng, i) if rng.random() < share else b"@r%d/%d x\nACGT\n+\nI@+I\n" % (i, i % 3)
                    for i in range(rng.randrange(1, 400)))
    cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randrange(0, 6))))
    with small_steps(rng.choice([16, 50, 256]), rng.choice([32, 100, 4096])):
        names, verdict = child_pass(text, cuts)
        unshared = child_pass(text, cuts, shared=False)
        alone = fed(text, cuts, vectorised=True, newlines=Newlines())      # the digest without a validator
    assert verdict == exact(text) == unshared[1], f"seed {seed}"
    assert alone == line_reader_digest(text), f"seed {seed}"
    # A refused file stops the validator, and with it the digest it feeds, at the block refused.
    assert names == unshared[0] and (names == alone or isinstance(verdict, str)), f"seed {seed}"


@pytest.mark.parametrize("cr", [b"", b"\r"])
def test_a_crlf_block_is_read_on_its_own_positions(cr: bytes) -> None:
    """The checker rewrites a CRLF block ('\\r\\n' to '\\n') before its block path: the digest's
    positions (of the text as fed) are not the checker's, so the checker's own text is searched too
    (each of its windows twice) and both still read every record: four-line records of one length,
    taken by both block paths."""
    records = [ILLUMINA.replace(b"\n", cr + b"\n") % (i, i) for i in range(4000)]
    text = b"".join(records)
    cut = len(text) // 2 + 11
    newlines = Newlines()
    digest = NameDigest("x", vectorised=True, newlines=newlines)
    validator = StreamValidator("x", on_text=digest.feed, vectorised=True, newlines=newlines)
    validator.feed(text[:cut])
    validator.feed(text[cut:])
    summary = validator.finish()
    assert (summary.records, summary.bases) == (4000, 4000 * 150)
    windows = sum(-(-len(t) // fastq_blocks.NEWLINE_WINDOW) for t in (text[:cut], text[cut:]))
    assert newlines.searched == (2 * windows if cr else windows)     # once per window; twice for CRLF
    d = digest.finish()
    assert (d.records, d.digest) == line_reader_digest(text)[:2]


@contextmanager
def searches(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[int, int]]]:
    """(block, window) of every window Newlines searched; blocks numbered in the order first seen."""
    seen: list[tuple[int, int]] = []
    texts: list[bytes | None] = []      # held, so that no two blocks can share an address
    real = Newlines._search

    def spy(self: Newlines, w: int) -> object:
        if not any(t is self._text for t in texts):
            texts.append(self._text)
        seen.append((next(i for i, t in enumerate(texts) if t is self._text), w))
        return real(self, w)
    monkeypatch.setattr(Newlines, "_search", spy)
    yield seen


def test_each_window_is_searched_once_for_both_scanners(monkeypatch: pytest.MonkeyPatch) -> None:
    """In the child's pass over plain four-line FASTQ, every window of every block is searched once
    (not once by each scanner), both block paths take (nearly) every record with the positions
    (positions that did not fit the text would leave the records to the line readers: the same
    answers, none of the speed), and each block is let go after."""
    checked, named = [], []
    check_scan, name_scan = fastq_blocks.scan, name_blocks.scan
    monkeypatch.setattr(fastq_blocks, "scan", lambda *a, **k: checked.append(check_scan(*a, **k)[1]) or check_scan(*a, **k))
    monkeypatch.setattr(name_blocks, "scan", lambda *a, **k: (named.append(step[2]) or step for step in name_scan(*a, **k)))
    data = b"".join(ILLUMINA % (i, i * 3) for i in range(12000))
    size = len(data) // 3 + 1                           # three blocks of ~1.4 MiB, cut inside records
    blocks = [data[i:i + size] for i in range(0, len(data), size)]
    newlines = Newlines()
    digest = NameDigest("x", vectorised=True, newlines=newlines)
    validator = StreamValidator("x", on_text=digest.feed, vectorised=True, newlines=newlines)
    with searches(monkeypatch) as seen:
        for block in blocks:
            validator.feed(block)
            assert newlines._text is None               # let go once both were done with it
    summary = validator.finish()
    assert sorted(seen) == [(b, w) for b in range(3) for w in range(2)]
    assert summary.records == digest.records == 12000
    assert sum(checked) >= 12000 - len(blocks) and sum(named) >= 12000 - len(blocks)
    assert digest.finish().digest == line_reader_digest(data)[1]


def test_validate_lanes_shares_positions_and_matches_the_line_reader(tmp_path, monkeypatch) -> None:
    """The validator child (validate_lanes --pair-digest) on lanes whose records cross its 4 MiB
    reads: each window of each block read searched once, and the digest the line reader gives for
    the lanes joined."""
    lanes = []
    for lane in range(2):
        path = tmp_path / f"s_L00{lane + 1}_R1_001.fastq"
        path.write_bytes(b"".join(ILLUMINA % (lane, i) for i in range(16000)))
        lanes.append(str(path))
    with searches(monkeypatch) as seen:
        result = validate_lanes(lanes, pair_digest=True)
    joined = b"".join(Path(p).read_bytes() for p in lanes)
    assert result["ok"] and result["records"] == 32000
    assert result["pair_digest"]["digest"] == line_reader_digest(joined)[1]
    lane_size = len(joined) // 2                        # each lane: a 4 MiB read, then the rest
    windows = 4 + -(-(lane_size - (4 << 20)) // fastq_blocks.NEWLINE_WINDOW)
    assert len(seen) == len(set(seen)) == 2 * windows
