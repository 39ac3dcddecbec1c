"""Whole-block FASTQ checking with numpy: the validator's fast path for short reads of one length.

A sequencer's FASTQ (Illumina, MGI, Element, Ultima...) is almost always four lines per record with a
bare '+' line and reads of one length within a few MiB. Checking such text line by line costs one
Python object per line (about 1 ns per byte on the machines seqdrop runs on) before a single
character is looked at; here a block is checked with a handful of vectorised passes instead:

  1. the positions of every '\\n' (one compare, one flatnonzero; in the validator child of a paired
     read, shared with the read-name digest, which needs them for the same block: Newlines);
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
from collections.abc import Callable
from functools import partial

# Only elementwise passes here, never BLAS: without this, numpy's OpenBLAS starts a worker thread per
# core at import, which spins for a while and cost the validator child 0.11 CPU s per file (of ~0.85
# for 1 GiB). Set before numpy's first import; a value set by the user is kept.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402 - after the variable above, which OpenBLAS reads once at load
from numpy.lib.stride_tricks import sliding_window_view  # noqa: E402

__all__ = ["BLOCK", "Newlines", "newline_finder", "record_newlines", "scan"]

# Bytes of text checked per vectorised step: large enough that numpy's per-call cost (about 20 calls
# per step) is small against the work, small enough that a step's temporaries stay in the L2 cache.
# 512 KiB..1 MiB measured alike on a 2-core VM (bench/validate.py), 4 MiB 40 % slower. 512 KiB, not 2 MiB:
# the temporaries (about 2.5x the step) live in the uploading process now, under its 64 MiB bound.
BLOCK = 1 << 19

# Newlines finds a block's '\n' in windows of this many bytes, as the scanners first ask for them (the
# temporaries of one step above), and keeps a window's only while they average at least 8 bytes a line:
# FASTQ worth sharing them for, their positions (8 bytes each) at most as large as the text. A step over
# a denser window finds its own, as without sharing.
NEWLINE_WINDOW = 1 << 20
_DENSEST = NEWLINE_WINDOW // 8

_AT, _PLUS, _NL = 64, 43, 10


class Newlines:
    """The positions of the '\\n' in one block of text, found once for everyone who scans that block.

    In the validator child of a paired read, two scanners take each block whole: this module's checker
    and the pair check's read-name digest (daemon/assembly/name_blocks.py), each step of each starting
    from the '\\n' positions in it (one compare and one flatnonzero per byte: about a third of each
    one's work). The child hands both the same Newlines (StreamValidator(newlines=...),
    NameDigest(newlines=...)): whichever asks first for part of a block has it searched, a window at a
    time; the other reuses it. Each scanner still proves everything else itself; these are only where
    the '\\n' are, and no byte is searched that neither asked for.

    Positions are kept for one text, by identity: a bytes object cannot change, and the one held here
    cannot be freed (so its address is never another block's), so `text is self._text` proves they
    are that text's. Text rewritten on the way (a CRLF block the checker normalises) is another object
    and is searched on its own. forget() lets the block go once every scanner is done with it.
    """

    def __init__(self) -> None:
        self._text: bytes | None = None
        self._a = np.empty(0, np.uint8)
        self._windows: dict[int, np.ndarray | None] = {}  # window -> its '\\n' (in the text), None: too dense
        self.searched = 0       # windows searched: each once per block, whichever scanner asks first

    def between(self, text: bytes, start: int, stop: int) -> np.ndarray:
        """The positions of the '\\n' in text[start:stop] (start < stop), counted from start."""
        if text is not self._text:
            self._text, self._a, self._windows = text, np.frombuffer(text, np.uint8), {}
        parts = []
        for w in range(start // NEWLINE_WINDOW, (stop - 1) // NEWLINE_WINDOW + 1):
            at = self._windows[w] if w in self._windows else self._search(w)
            if at is None:
                return np.flatnonzero(self._a[start:stop] == _NL)
            lo, hi = at.searchsorted((start, stop))
            parts.append(at[lo:hi])
        found = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return found - start

    def _search(self, w: int) -> np.ndarray | None:
        low = w * NEWLINE_WINDOW
        at: np.ndarray | None = np.flatnonzero(self._a[low:low + NEWLINE_WINDOW] == _NL)
        self.searched += 1
        if len(at) > _DENSEST:
            at = None
        else:
            at += low
        self._windows[w] = at
        return at

    def forget(self) -> None:
        """Let the last block go (its scanners are done with it)."""
        self._text, self._a, self._windows = None, np.empty(0, np.uint8), {}


def newline_finder(text: bytes, a: np.ndarray, newlines: Newlines | None) -> Callable[[int, int], np.ndarray]:
    """How a scanner of text (a: its bytes) finds the '\\n' of a step, text[start:stop], counted
    from start: from the Newlines it shares with another scanner of the same text, else by itself."""
    if newlines is not None:
        return partial(newlines.between, text)
    return lambda start, stop: np.flatnonzero(a[start:stop] == _NL)


def record_newlines(find: Callable[[int, int], np.ndarray], start: int, stop: int) -> np.ndarray | None:
    """The '\\n' of the whole four-line records of a step (from newline_finder's `find`), four per
    record, or None if the step holds not one whole record."""
    nl = find(start, stop)
    k = len(nl) // 4
    return nl[:4 * k] if k else None


def scan(text: bytes, start: int, newlines: Newlines | None = None) -> tuple[int, int, int]:
    """Check whole 4-line records of text from start (which must begin a record) for as long as
    they are proven valid. Returns (end, records, bases): text[start:end] is that many valid records
    holding that many bases; end == start when nothing was proven (the exact parser decides).
    newlines: the block's '\\n' positions, shared with another scanner of the same text (Newlines)."""
    a = np.frombuffer(text, np.uint8)
    find = newline_finder(text, a, newlines)
    windows: dict[int, np.ndarray] = {}     # read length -> a sliding-window view of text (made once)
    pos, records, bases = start, 0, 0
    while pos < len(text):
        got = _block(a, pos, min(len(text), pos + BLOCK), windows, find)
        if got is None:
            break
        pos, k, length = got
        records, bases = records + k, bases + k * length
    return pos, records, bases


def _block(a: np.ndarray, start: int, stop: int, windows: dict[int, np.ndarray],
           find: Callable[[int, int], np.ndarray]) -> tuple[int, int, int] | None:
    """Check the complete records in a[start:stop]: (end, records, read length), or None."""
    r = a[start:stop]
    nl = record_newlines(find, start, stop)
    if nl is None:
        return None
    k = len(nl) // 4
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
