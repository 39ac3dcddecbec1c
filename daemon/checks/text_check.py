"""What the FASTA and FASTQ checkers share: the line limits, the sequence alphabet, the helpers that
name a bad byte for a person, and the _Checker base (the unterminated line carried between feeds,
the counters, the wording of a rejection).

Split out of daemon/checks/validate.py so that each checker (fastq_check.py, fasta_check.py) is a
module of its own; the rules themselves are described in validate.py's docstring.
"""

from __future__ import annotations

from daemon.errors import ContentRejected

LONG_LINE = 4 << 20       # a FASTA sequence line longer than this is checked in pieces
MAX_LINE = 32 << 20       # any other line longer than this is rejected (memory bound)

# Residues: every ASCII letter (IUPAC nucleotide and protein codes, upper or lower
# case), '*' (stop), '-' and '.' (gaps). Spaces and tabs are errors (the FASTQ
# suite's error_spaces / error_tabs); digits are not sequence either.
SEQ_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz*-."
_SEQ_NL = SEQ_CHARS + b"\n"


def _char(c: int) -> str:
    """A byte as a person reads it."""
    names = {0x20: "a space", 0x09: "a tab", 0x0D: "a carriage return (0x0D)",
             0x00: "a NUL byte (0x00)", 0x7F: "a DEL character (0x7F)"}
    if c in names:
        return names[c]
    if c < 0x20:
        return f"control character 0x{c:02X}"
    if c >= 0x80:
        return f"the non-ASCII byte 0x{c:02X}"
    return f"'{chr(c)}'"


def _snip(line: bytes, n: int = 30) -> str:
    text = line[:n].decode("utf-8", "backslashreplace")
    return repr(text + ("…" if len(line) > n else ""))


def _first_bad(line: bytes, allowed: bytes) -> tuple[int, int]:
    """(1-based column, byte) of the first byte of line not in allowed."""
    bad = set(line.translate(None, allowed))
    for i, c in enumerate(line):
        if c in bad:
            return i + 1, c
    raise AssertionError("no bad byte")  # pragma: no cover


class _Checker:
    """Shared plumbing of the text checkers: pending partial line, counters."""

    format = ""

    def __init__(self, name: str) -> None:
        self.name = name
        self.records = 0
        self.bases = 0
        self.line = 0            # complete lines consumed so far
        self._tail: list[bytes] = []   # raw pieces of the unterminated last line
        self._tail_len = 0

    def feed(self, text: bytes) -> None:
        if b"\n" not in text:
            self._tail.append(text)
            self._tail_len += len(text)
            if self._tail_len > LONG_LINE:
                self._long_tail()
            return
        tail = b"".join(self._tail) if self._tail else b""
        self._process(tail, text, final=False)

    def finish(self) -> None:
        self._process(b"".join(self._tail), b"", final=True)

    def _carry(self, tail: bytes) -> None:
        self._tail = [tail] if tail else []
        self._tail_len = len(tail)

    def _reject(self, what: str, line: int | None = None, record: int | None = None) -> ContentRejected:
        where = []
        if record is not None:
            where.append(f"record {record:,}")
        if line is not None:
            where.append(f"(line {line:,})" if where else f"line {line:,}")
        prefix = f"{self.name}: {' '.join(where)}: " if where else f"{self.name}: "
        return ContentRejected(prefix + what)

    def _too_long(self, line_no: int) -> ContentRejected:
        return self._reject(f"the line is longer than {MAX_LINE >> 20} MiB without a line break — "
                            f"this is not FASTA/FASTQ text seqdrop can check.", line_no)

    def _process(self, tail: bytes, text: bytes, final: bool) -> None:  # pragma: no cover
        raise NotImplementedError

    def _long_tail(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

