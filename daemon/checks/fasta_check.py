"""The FASTA checker: _FastaChecker, one regex pass and one translate per block of complete lines,
the exact line-by-line rules where that cannot prove the block valid, and sequence lines longer
than LONG_LINE (an unwrapped chromosome) checked in pieces.

Split out of daemon/checks/validate.py (StreamValidator picks this checker for text starting with
'>'); the FASTA rules are listed in validate.py's docstring.
"""

from __future__ import annotations

import re

from daemon.checks.text_check import (
    _SEQ_NL,
    LONG_LINE,
    MAX_LINE,
    SEQ_CHARS,
    _char,
    _Checker,
    _first_bad,
    _snip,
)
from daemon.errors import ContentRejected

_HEADER_RE = re.compile(rb"\n>[^\n]*")


class _FastaChecker(_Checker):
    format = "fasta"

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._open_col = 0   # >0 while inside a long sequence line checked in pieces

    def _long_tail(self) -> None:
        tail = b"".join(self._tail)
        self._process(tail, b"", final=False)

    def _process(self, tail: bytes, text: bytes, final: bool) -> None:
        data = tail + text    # the tail has no '\n', so normalising again is exact
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n")
        if self._open_col:
            j = data.find(b"\n")
            if j < 0:
                if final:
                    self._piece(data[:-1] if data.endswith(b"\r") else data)
                    self._close()
                else:
                    keep = 1 if data.endswith(b"\r") else 0   # maybe half of a CRLF
                    self._piece(data[:len(data) - keep])
                    self._carry(data[len(data) - keep:])
                return
            self._piece(data[:j])
            self._close()
            data = data[j + 1:]
        body, nl, tail = data.rpartition(b"\n")
        if nl:
            self._block(body)
        if final:
            if tail.endswith(b"\r"):
                tail = tail[:-1]
            if tail:
                self._block(tail)
        elif len(tail) > LONG_LINE and tail[:1] != b">":
            keep = 1 if tail.endswith(b"\r") else 0
            self._open_col = 1
            self._piece(tail[:len(tail) - keep])
            self._carry(tail[len(tail) - keep:])
        elif len(tail) > MAX_LINE:
            raise self._too_long(self.line + 1)
        else:
            self._carry(tail)

    def _piece(self, seq: bytes) -> None:
        """Part of a long sequence line (line self.line + 1) starting at column _open_col."""
        if seq.translate(None, SEQ_CHARS):
            col, c = _first_bad(seq, SEQ_CHARS)
            raise self._seq_error(seq, col + self._open_col - 1, c, self.line + 1)
        self.bases += len(seq)
        self._open_col += len(seq)

    def _close(self) -> None:
        self._open_col = 0
        self.line += 1

    def _block(self, body: bytes) -> None:
        """Complete lines joined by '\\n': fast path if provably valid, else the exact loop."""
        if not self._fast(body):
            self._slow(body)

    def _fast(self, body: bytes) -> bool:
        """Drop header lines with one regex pass, check the rest with one translate."""
        if b"\0" in body or len(body) > MAX_LINE:
            return False
        if b">" not in body:
            seqs, n_headers = body, 0
        else:
            seqs, n_headers = _HEADER_RE.subn(b"", b"\n" + body)
        if seqs.translate(None, _SEQ_NL):
            return False
        self.records += n_headers
        self.bases += len(seqs) - seqs.count(b"\n")
        self.line += body.count(b"\n") + 1
        return True

    def _slow(self, body: bytes) -> None:
        """The exact rules, line by line: raises at the first bad line."""
        for line in body.split(b"\n"):
            self.line += 1
            if line[:1] == b">":
                if b"\0" in line:
                    raise self._reject("the header contains a NUL byte (0x00) — the file is corrupt "
                                       "(zero-filled after a crash?).", self.line, self.records + 1)
                if len(line) > MAX_LINE:
                    raise self._too_long(self.line)
                self.records += 1
            elif line.translate(None, SEQ_CHARS):
                col, c = _first_bad(line, SEQ_CHARS)
                raise self._seq_error(line, col, c, self.line)
            else:
                self.bases += len(line)

    def _seq_error(self, line: bytes, col: int, c: int, line_no: int) -> ContentRejected:
        if col == 1 and c in b";#!":
            what = (f"{_snip(line)} is a comment line, which plain FASTA does not allow — remove "
                    f"it or convert the file.")
        else:
            what = (f"the sequence contains {_char(c)} at column {col:,} — sequence lines may hold "
                    f"only letters, '*', '-' and '.'.")
        return self._reject(what, line_no, max(self.records, 1))

    def drain(self) -> None:
        """Nothing is held back but the unterminated last line."""

    def _end(self) -> None:
        """A FASTA file has no structure that shows a cut at a line end; nothing to check."""
