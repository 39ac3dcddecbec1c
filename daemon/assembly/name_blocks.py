"""Whole-block read-name extraction with numpy: the pair check's fast path in the validator child.

The pair check digests the read names of every record (daemon/assembly/pairs.py). Taking them line by
line costs a Python object per line and ran at ~300 MB/s, which halved a paired upload's speed. Here a
block of four-line FASTQ is taken with a handful of vectorised passes:

  1. the positions of every '\\n' in the block (one compare, one flatnonzero; in the validator child,
     found once for this and the FASTQ checker of the same block: fastq_blocks.Newlines);
  2. the record layout from them (title, sequence, '+', quality lines), checked to be exactly what the
     line-by-line reader would see: a title starting with '@' and a non-blank byte, a sequence line
     not starting with '+', a '+' line, and a quality line (a trailing '\\r' not counted) at least as
     long as the sequence, so that it ends the record;
  3. the title lines gathered (about a tenth of the bytes) as the rows of one array as wide as the
     longest, the first blank of each row found by one argmax, a trailing '/1' or '/2' dropped, and
     the names joined with '\\n' by one mask (titles of very unequal lengths are gathered end to end
     instead, and their first blanks found by one searchsorted).

Like daemon/checks/fastq_blocks.py it only ever takes the records it proved: at the first record it
cannot, it stops, and NameDigest's line-by-line reader takes over, so the digest is the same however
the text was read. numpy is imported only by the validator child (NameDigest(vectorised=True)).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

# Only elementwise passes here, never BLAS (the same reason as in daemon/checks/fastq_blocks.py: an
# idle OpenBLAS thread per core costs CPU time). Set before numpy's first import.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # after the variable above, which OpenBLAS reads once at load
from numpy.lib.stride_tricks import sliding_window_view

from daemon.checks.fastq_blocks import Newlines, newline_finder, record_newlines

__all__ = ["BLOCK", "scan"]

# Bytes of text taken per vectorised step: the index arrays of a step's title lines are int64, so this
# bounds a step's temporaries to a few MiB even for short reads with long titles.
BLOCK = 1 << 20

_AT, _PLUS, _NL, _CR, _SLASH, _ONE, _TWO = 64, 43, 10, 13, 47, 49, 50
# bytes.split()'s blanks (a title's first word ends at the first of them), and '\n'
_BLANK = np.zeros(256, np.bool_)
_BLANK[[9, 10, 11, 12, 13, 32]] = True


def scan(text: bytes, start: int, newlines: Newlines | None = None) -> Iterator[tuple[int, bytes, int]]:
    """Take whole four-line records of text from start (which must begin a line), step by step, for
    as long as they are proven plain: yields (end, names, count) per step, where text[..end] holds
    `count` more records and `names` their read names, each followed by '\\n'. newlines: the
    block's '\\n' positions, shared with the validator's checker of the same text (fastq_blocks.Newlines)."""
    a = np.frombuffer(text, np.uint8)
    find = newline_finder(text, a, newlines)
    pos = start
    while pos < len(text):
        got = _step(a, pos, min(len(text), pos + BLOCK), find)
        if got is None:
            return
        pos, names, count = got
        yield pos, names, count


def _step(a: np.ndarray, start: int, stop: int,
          find: Callable[[int, int], np.ndarray]) -> tuple[int, bytes, int] | None:
    """The proven records at the start of a[start:stop]: (end, names, count), or None."""
    r = a[start:stop]
    nl = record_newlines(find, start, stop)
    if nl is None:
        return None
    k = len(nl) // 4
    t_end, s_end, p_end, q_end = nl[0::4], nl[1::4], nl[2::4], nl[3::4]
    titles = np.empty(k, np.int64)          # where each title line starts
    titles[0] = 0
    titles[1:] = q_end[:-1] + 1
    # A line's length without one trailing '\r' (the line-by-line reader drops it); an empty line's
    # "last byte" is the previous '\n', never '\r'.
    seq_len = s_end - t_end - 1 - (r[s_end - 1] == _CR)
    qual_len = q_end - p_end - 1 - (r[q_end - 1] == _CR)
    ok = ((r[titles] == _AT) & ~_BLANK[r[titles + 1]] & (r[t_end + 1] != _PLUS)
          & (r[s_end + 1] == _PLUS) & (qual_len >= seq_len))
    if not ok.all():
        k = int(np.argmin(ok))              # the first record not proven; those before it are
        if k == 0:
            return None
        titles, t_end, q_end = titles[:k], t_end[:k], q_end[:k]
    return start + int(q_end[-1]) + 1, _names(r, titles + 1, t_end), k


def _names(r: np.ndarray, first: np.ndarray, line_end: np.ndarray) -> bytes:
    """The read names of the title lines r[first[i]:line_end[i]] (the '@' left out, first[i] not
    blank), each followed by '\\n': the first word, a trailing /1 or /2 removed."""
    lengths = line_end - first + 1                        # each title with its '\n'
    width = int(lengths.max())
    if int(first[-1]) + width <= len(r) and len(first) * width <= 2 * int(lengths.sum()):
        return _names_in_rows(sliding_window_view(r, width)[first])
    at = np.cumsum(lengths) - lengths                     # where each title starts in `titles`
    titles = r[_ranges(first, lengths)]                   # the title lines, one after another
    blanks = np.flatnonzero(_blank(titles))
    ends = blanks[np.searchsorted(blanks, at)]            # each name's end: its title's first blank
    last, before = titles[ends - 1], titles[ends - 2]     # (ends - at >= 1: a title's first byte is not blank)
    mate = (ends - at >= 2) & (before == _SLASH) & ((last == _ONE) | (last == _TWO))
    ends -= 2 * mate
    titles[ends] = _NL
    return titles[_ranges(at, ends - at + 1)].tobytes()


def _names_in_rows(rows: np.ndarray) -> bytes:
    """_names for titles of similar lengths, one per row of a copy as wide as the longest (each row
    holds its whole title, '\\n' included, then bytes of the next line): about twice as fast."""
    ends = _blank(rows).argmax(axis=1)                    # each row's first blank: its '\n' at the latest
    index = np.arange(len(rows))
    last, before = rows[index, ends - 1], rows[index, ends - 2]
    mate = (ends >= 2) & (before == _SLASH) & ((last == _ONE) | (last == _TWO))
    ends -= 2 * mate
    rows[index, ends] = _NL
    return rows[np.arange(rows.shape[1]) <= ends[:, None]].tobytes()


def _blank(text: np.ndarray) -> np.ndarray:
    """Where text holds one of bytes.split()'s blanks (\\t \\n \\v \\f \\r and ' ')."""
    blank = text - 9                                      # \t \n \v \f \r become 0..4 (uint8 wraps)
    blank = np.less(blank, 5, out=blank.view(np.bool_))
    blank |= text == 32
    return blank


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The indexes starts[0] .. starts[0]+lengths[0]-1, then those of the next range, and so on."""
    at = np.cumsum(lengths) - lengths                     # where each range starts in the result
    index = np.repeat(starts - at, lengths)
    index += np.arange(int(at[-1] + lengths[-1]))
    return index
