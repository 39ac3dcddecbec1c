"""Whole-block FASTQ checking with numpy: the validator's fast path for short reads of one length.

A sequencer's FASTQ (Illumina, MGI, Element, Ultima...) is almost always four lines per record with a
bare '+' line and reads of one length within a few MiB. Checking such text line by line costs one
Python object per line (about 1 ns per byte on the machines seqdrop runs on) before a single
character is looked at; here a block is checked with a handful of vectorised passes instead:

  1. the positions of every '\\n' (one compare, one flatnonzero);
  2. the record layout from them alone: record r's lines end at t_r, t_r+L+1, t_r+L+3 and t_r+2L+4
     (title, sequence of L bases, '+', quality), the next title starts right after, and each title
     starts with '@' and each third line is '+';
  3. the sequence and quality columns gathered as two k x L arrays (rows of a sliding-window view:
     contiguous copies, no per-record Python) and checked with a subtraction and a max.

It only ever *accepts* text: anything it cannot prove valid (reads of several lengths, a '+' line
repeating the title, '*', '-' or '.' in a read, a NUL, any error) makes it stop at the last block it
proved, and the exact parser in daemon/checks/fastq_check.py takes over from there, so verdicts and
error messages are the exact parser's. What it proves is what that parser would accept for the same
lines: a title line starting with '@' (any other byte but NUL, which the caller rules out first, and
'\\n'), one sequence line of ASCII letters, a bare '+' line, one quality line of '!'..'~' exactly as
long as the sequence.

numpy is imported by the caller only when a file is large enough for this path to matter: it costs
about 0.1 s and 16 MiB of memory, which the daemon (which validates small files in-process) avoids.
"""

from __future__ import annotations

import os

# Only elementwise passes here, never BLAS: without this, numpy's OpenBLAS starts a worker thread per
# core at import, which spins for a while and cost the validator child 0.11 CPU s per file (of ~0.85
# for 1 GiB). Set before numpy's first import; a value set by the user is kept.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402 - after the variable above, which OpenBLAS reads once at load
from numpy.lib.stride_tricks import sliding_window_view  # noqa: E402

__all__ = ["BLOCK", "scan"]

# Bytes of text checked per vectorised step: large enough that numpy's per-call cost (about 20 calls
# per step) is small against the work, small enough that a step's temporaries stay in the L2 cache.
# 512 KiB..1 MiB measured alike on a 2-core VM (bench/validate.py), 4 MiB 40 % slower. 512 KiB, not 2 MiB:
# the temporaries (about 2.5x the step) live in the uploading process now, under its 64 MiB bound.
BLOCK = 1 << 19

_AT, _PLUS, _NL = 64, 43, 10


def scan(text: bytes, start: int) -> tuple[int, int, int]:
    """Check whole 4-line records of text from start (which must begin a record) for as long as
    they are proven valid. Returns (end, records, bases): text[start:end] is that many valid records
    holding that many bases; end == start when nothing was proven (the exact parser decides)."""
    a = np.frombuffer(text, np.uint8)
    windows: dict[int, np.ndarray] = {}     # read length -> a sliding-window view of text (made once)
    pos, records, bases = start, 0, 0
    while pos < len(text):
        got = _block(a, pos, min(len(text), pos + BLOCK), windows)
        if got is None:
            break
        pos, k, length = got
        records, bases = records + k, bases + k * length
    return pos, records, bases


def _block(a: np.ndarray, start: int, stop: int, windows: dict[int, np.ndarray]) -> tuple[int, int, int] | None:
    """Check the complete records in a[start:stop]: (end, records, read length), or None."""
    r = a[start:stop]
    nl = np.flatnonzero(r == _NL)
    k = len(nl) // 4
    if k == 0:
        return None
    nl = nl[:4 * k]
    t_end = nl[0::4]                        # where each title line ends
    length = int(nl[1] - nl[0] - 1)         # the first read's length; all must have it
    if length <= 0:
        return None
    if not ((nl[1::4] - t_end == length + 1).all() and (nl[2::4] - t_end == length + 3).all()
            and (nl[3::4] - t_end == 2 * length + 4).all()):
        return None
    titles = np.empty(k, np.int64)          # where each title line starts
    titles[0] = 0
    titles[1:] = nl[3:-1:4] + 1
    if not ((r[titles] == _AT).all() and (r[t_end + length + 2] == _PLUS).all()):
        return None
    window = windows.get(length)
    if window is None:
        window = windows[length] = sliding_window_view(a, length)
    first = t_end + (start + 1)             # where each read starts, in the whole text
    seqs = window[first]                    # k x length copies: the sequence column
    np.bitwise_or(seqs, 0x20, out=seqs)     # upper and lower case alike
    np.subtract(seqs, ord("a"), out=seqs)   # letters become 0..25, all else 26..255 (uint8 wraps)
    if seqs.max() >= 26:
        return None
    quals = window[first + (length + 3)]    # the quality column
    np.subtract(quals, ord("!"), out=quals)  # '!'..'~' become 0..93
    if quals.max() >= 94:
        return None
    return start + int(nl[-1]) + 1, k, length
