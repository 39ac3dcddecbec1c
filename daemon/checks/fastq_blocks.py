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

# Only elementwise passes here, never BLAS: without this, numpy's OpenBLAS starts a worker thread per
# core at import, which spins for a while and cost the validator child 0.11 CPU s per file (of ~0.85
# for 1 GiB). Set before numpy's first import; a value set by the user is kept.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402 - after the variable above, which OpenBLAS reads once at load
from numpy.lib.stride_tricks import sliding_window_view  # noqa: E402

__all__ = ["BLOCK", "Newlines", "newlines_in", "scan"]

# Bytes of text checked per vectorised step: large enough that numpy's per-call cost (about 20 calls
# per step) is small against the work, small enough that a step's temporaries stay in the L2 cache.
# 512 KiB..1 MiB measured alike on a 2-core VM (bench/validate.py), 4 MiB 40 % slower. 512 KiB, not 2 MiB:
# the temporaries (about 2.5x the step) live in the uploading process now, under its 64 MiB bound.
BLOCK = 1 << 19

# Newlines finds a block's '\n' this many bytes at a time (the temporaries of one step above), and
# keeps them only while they average at least 8 bytes a line: FASTQ worth sharing them for, with its
# positions (8 bytes each) at most as large as the text. Denser text: each step finds its own.
NEWLINE_WINDOW = 1 << 20
_DENSEST = NEWLINE_WINDOW // 8

_AT, _PLUS, _NL = 64, 43, 10


class Newlines:
    """The positions of every '\\n' in one block of text, found once for everyone who scans that block.

    In the validator child of a paired read, two scanners take each block whole: this module's checker
    and the pair check's read-name digest (daemon/assembly/name_blocks.py), each starting from the
    block's '\\n' positions (one compare and one flatnonzero per byte: about a third of each one's
    work). The child hands both the same Newlines (StreamValidator(newlines=...), NameDigest(newlines=
    ...)): the first to scan a block finds them, the second reuses them. Each scanner still proves
    everything else itself; these are only where the '\\n' are.

    Positions are kept for one text, by identity: a bytes object cannot change, and the one held
    here cannot be freed (so its address is never another block's), so `text is self._text` proves
    they are that text's. Text rewritten on the way (a CRLF block the checker normalises) is
    another object and gets its own. forget() lets the block go once every scanner is done with it.
    """

    def __init__(self) -> None:
        self._text: bytes | None = None
        self._at: np.ndarray | None = None
        self.found = 0          # blocks whose positions were found (once per block, not per scanner)

    def of(self, text: bytes) -> np.ndarray | None:
        """The ascending positions of every '\\n' in text, or None for text too dense in lines to
        keep them (each step then finds its own)."""
        if text is not self._text:
            self._text, self._at = text, _positions(text)
            self.found += 1
        return self._at

    def forget(self) -> None:
        """Let the last block go (its scanners are done with it)."""
        self._text = self._at = None


def _positions(text: bytes) -> np.ndarray | None:
    a = np.frombuffer(text, np.uint8)
    found = []
    for w in range(0, len(a), NEWLINE_WINDOW):
        at = np.flatnonzero(a[w:w + NEWLINE_WINDOW] == _NL)
        if len(at) > _DENSEST:
            return None
        at += w
        found.append(at)
    if len(found) == 1:
        return found[0]
    return np.concatenate(found) if found else np.empty(0, np.intp)


def newlines_in(a: np.ndarray, start: int, stop: int, at: np.ndarray | None) -> np.ndarray:
    """The positions of the '\\n' in a[start:stop], counted from start: taken from `at` (those of all
    of a, from Newlines.of) when known, else found here."""
    if at is None:
        return np.flatnonzero(a[start:stop] == _NL)
    lo, hi = at.searchsorted((start, stop))
    return at[lo:hi] - start


def scan(text: bytes, start: int, newlines: Newlines | None = None) -> tuple[int, int, int]:
    """Check whole 4-line records of text from start (which must begin a record) for as long as
    they are proven valid. Returns (end, records, bases): text[start:end] is that many valid records
    holding that many bases; end == start when nothing was proven (the exact parser decides).
    newlines: the block's '\\n' positions, shared with another scanner of the same text (Newlines)."""
    a = np.frombuffer(text, np.uint8)
    at = newlines.of(text) if newlines is not None else None
    windows: dict[int, np.ndarray] = {}     # read length -> a sliding-window view of text (made once)
    pos, records, bases = start, 0, 0
    while pos < len(text):
        got = _block(a, pos, min(len(text), pos + BLOCK), windows, at)
        if got is None:
            break
        pos, k, length = got
        records, bases = records + k, bases + k * length
    return pos, records, bases


def _block(a: np.ndarray, start: int, stop: int, windows: dict[int, np.ndarray],
           at: np.ndarray | None) -> tuple[int, int, int] | None:
    """Check the complete records in a[start:stop]: (end, records, read length), or None."""
    r = a[start:stop]
    nl = newlines_in(a, start, stop, at)
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
