"""The FASTQ checker: _FastqChecker, a fast path that checks whole 4-line records column-wise
(and, given daemon/checks/fastq_blocks.py, whole blocks with numpy) in front of the exact
line-by-line state machine (``_slow``/``_one``) that defines the format.

Split out of daemon/checks/validate.py (StreamValidator picks this checker for text starting with
'@'); the FASTQ rules are listed in validate.py's docstring.
"""

from __future__ import annotations

from io import BytesIO
from operator import itemgetter
from types import ModuleType
from typing import TYPE_CHECKING

from daemon.checks.text_check import (
    _SEQ_NL,
    MAX_LINE,
    SEQ_CHARS,
    _char,
    _Checker,
    _first_bad,
    _snip,
)

if TYPE_CHECKING:   # fastq_blocks loads numpy, which only a large file's validation imports (on demand)
    from daemon.checks.fastq_blocks import Newlines

FASTQ_STEP = 128 << 10    # FASTQ lines checked per step: 64..256 KiB measured alike, 1 MiB slower
BLOCKS_FROM = 256 << 10   # FASTQ text fed at once from which whole blocks are tried with numpy first

QUAL_CHARS = bytes(range(33, 127))          # '!'..'~': Sanger, Solexa and Illumina
_QUAL_NL = QUAL_CHARS + b"\n"
_FIRST = itemgetter(0)
_TITLE, _SEQ, _QUAL = "title", "sequence", "quality"


class _FastqChecker(_Checker):
    format = "fastq"

    def __init__(self, name: str, blocks: ModuleType | None = None, newlines: Newlines | None = None) -> None:
        super().__init__(name)
        self.blocks = blocks     # daemon.checks.fastq_blocks, when whole blocks may be checked with numpy
        self.newlines = newlines  # fastq_blocks.Newlines shared with another scanner of the same text, or None
        self.state = _TITLE
        self.title = b""
        self.title_line = 0
        self.seq_len = 0
        self.qual_len = 0
        self.qual_lines = 0
        self.blank_line = 0      # first blank line seen where a record could start
        self.last_line = 0       # number of the file's unterminated last line, once known
        self._lines: list[bytes] = []   # complete lines carried to the next block (< 4)
        # (quality length, line) before the first quality line that starts with '@': if the
        # quality ends up too long, that line was most likely the next record's title.
        self.short_at: tuple[int, int] | None = None

    def _long_tail(self) -> None:
        if self._tail_len > MAX_LINE:
            lines, self._lines = self._lines, []
            self._slow(lines, 0, until_title=False)   # earlier errors come first
            raise self._too_long(self.line + 1)

    def _process(self, tail: bytes, text: bytes, final: bool) -> None:
        # Normalise CRLF exactly as one replace() over the whole file would: the raw tail
        # has no '\n', so only a '\r' at its end can pair with a '\n' starting text.
        if tail[-1:] == b"\r" and text[:1] == b"\n":
            tail = tail[:-1]
        if b"\r" in text:
            text = text.replace(b"\r\n", b"\n")
        has_nul = b"\0" in text or b"\0" in tail
        longest_new = len(tail) + len(text)   # bound on the length of any line not yet checked
        if self.blocks is not None and not (final or has_nul) and len(text) >= BLOCKS_FROM:
            start = self._record_start(tail, text)
            if start is not None:
                if start:     # first the record the previous text ended inside, line by line
                    self._lines_of(tail, text[:start], False, longest_new, final=False)
                    tail = b""
                if self.state is _TITLE and not self.blank_line and not self._lines:
                    end, records, bases = self.blocks.scan(text, start, newlines=self.newlines)
                    self.records += records
                    self.bases += bases
                    self.line += 4 * records
                    start = end
                text = text[start:] if start else text
        self._lines_of(tail, text, has_nul, longest_new, final=final)

    def _record_start(self, tail: bytes, text: bytes) -> int | None:
        """Where in text the next record starts, if the lines carried so far begin a record (the
        usual case: the fast path carries whole lines from a record's start): after as many '\n'
        as that record still lacks. None if unknown (the exact parser is inside a record)."""
        if self.state is not _TITLE or self.blank_line or len(self._lines) > 3:
            return None
        if not self._lines and not tail:
            return 0
        pos = 0
        for _ in range(4 - len(self._lines)):
            pos = text.find(b"\n", pos) + 1
            if not pos:
                return None
        return pos

    def _lines_of(self, tail: bytes, text: bytes, has_nul: bool, longest_new: int, *, final: bool) -> None:
        """Check text line by line (after tail, the unterminated line carried from the last text)."""
        # Lines keep their '\n': BytesIO finds line ends with memchr, twice as fast as
        # bytes.split (a byte-at-a-time loop), and the kept '\n' lets _fast check lengths.
        # readlines(hint) hands out about FASTQ_STEP bytes of lines at a time, so a step's
        # lines, columns and joins stay in cache however large text is, without copying it.
        read = BytesIO(text).readlines
        lines = read(FASTQ_STEP)
        if tail:
            if lines:
                lines[0] = tail + lines[0]
            else:
                lines = [tail]
        while more := read(FASTQ_STEP):
            self._step(lines, has_nul, longest_new, last=False, final=False)
            lines = more
        self._step(lines, has_nul, longest_new, last=True, final=final)

    def _step(self, lines: list[bytes], has_nul: bool, longest_new: int, *, last: bool,
              final: bool) -> None:
        """Check the next lines of the text; last: they end the text fed, and only then may
        the final line lack its '\n' (the partial line carried to the next feed)."""
        carried, self._lines = self._lines, []
        if carried:
            lines[:0] = carried
            has_nul = has_nul or any(b"\0" in ln for ln in carried)
        tail = lines.pop() if last and lines and lines[-1][-1:] != b"\n" else b""
        if final:
            if tail.endswith(b"\r"):   # CRLF file whose last line lost only its '\n'
                tail = tail[:-1]
            if tail:
                lines.append(tail + b"\n")
                self.last_line = self.line + len(lines)
            tail = b""
        elif len(tail) > MAX_LINE:
            lines.append(tail + b"\n")
        if longest_new > MAX_LINE:
            long = next((k for k, ln in enumerate(lines) if len(ln) > MAX_LINE + 1), None)
            if long is not None:
                self._slow(lines[:long], 0, until_title=False)
                raise self._too_long(self.line + 1)
        i = 0
        if self.state is not _TITLE or self.blank_line:
            i = self._slow(lines, 0, until_title=True)
        n = (len(lines) - i) // 4 * 4
        if n:
            if not has_nul and self._fast(lines, i, i + n):
                i += n
            else:
                i = self._slow(lines, i, until_title=False)
        if final:
            self._slow(lines, i, until_title=False)
            self._end()
        else:
            self._lines = lines[i:]
            if last:
                self._carry(tail)

    def drain(self) -> None:
        """Check the complete lines held back for the fast path now (used by sniff)."""
        lines, self._lines = self._lines, []
        self._slow(lines, 0, until_title=False)

    def _fast(self, lines: list[bytes], i: int, j: int) -> bool:
        """Check lines[i:j] (each ending in '\n') as unwrapped 4-line records.

        False if it cannot prove them valid; then the exact parser decides.
        """
        titles = lines[i:j:4]
        seqs = lines[i + 1:j:4]
        pluses = lines[i + 2:j:4]
        quals = lines[i + 3:j:4]
        k = len(titles)
        if bytes(map(_FIRST, titles)).count(64) != k:     # 64 == ord("@"); a blank title is 10
            return False
        if pluses.count(b"+\n") != k:
            # Every '+' line repeats its title: replace each title's leading '@'.
            joined = b"".join(titles).replace(b"\n@", b"\n+")
            if b"".join(pluses) != b"+" + joined[1:]:
                return False
        seq = b"".join(seqs)
        qual = b"".join(quals)
        if seq.translate(None, _SEQ_NL) or qual.translate(None, _QUAL_NL):
            return False
        size = len(seq)
        if size != len(qual):
            return False
        # Each line holds exactly one '\n', at its end. If every width-th byte of both
        # columns is that '\n', every line is width long: equal lengths in three C calls
        # for the usual file whose reads all have the same length.
        width = len(seqs[0])
        same_width = size == width * k and seq[width - 1::width] == qual[width - 1::width] == b"\n" * k
        if not same_width and list(map(len, seqs)) != list(map(len, quals)):
            return False
        self.records += k
        self.bases += size - k
        self.line += j - i
        return True

    def _slow(self, lines: list[bytes], i: int, *, until_title: bool) -> int:
        """The exact parser. Consume lines (each ending in '\n') from i; stop early where a
        record may start."""
        one = self._one
        if until_title:
            for idx in range(i, len(lines)):
                if self.state is _TITLE and not self.blank_line:
                    return idx
                one(lines[idx][:-1])
        else:
            for line in lines[i:]:
                one(line[:-1])
        return len(lines)

    def _one(self, line: bytes) -> None:
        """One line through the state machine (the definition of the format): title, sequence, quality."""
        self.line += 1
        no = self.line
        rec = self.records + 1
        if self.state is _TITLE:
            self._title_line(line, no, rec)
        elif self.state is _SEQ:
            self._seq_line(line, no, rec)
        else:
            self._qual_line(line, no, rec)

    def _title_line(self, line: bytes, no: int, rec: int) -> None:
        if not line:
            self.blank_line = self.blank_line or no
            return
        if self.blank_line:
            raise self._reject(
                f"line {self.blank_line:,} is blank but more records follow — blank lines "
                f"are only allowed at the end of a FASTQ file.", no, rec)
        if line[0] != 64:
            raise self._reject(f"expected a title line starting with '@' but found "
                               f"{_snip(line)} — the file is corrupt or not FASTQ.", no, rec)
        if b"\0" in line:
            raise self._reject("the title contains a NUL byte (0x00) — the file is corrupt "
                               "(zero-filled after a crash?).", no, rec)
        self.title, self.title_line, self.seq_len = line, no, 0
        self.state = _SEQ

    def _seq_line(self, line: bytes, no: int, rec: int) -> None:
        first = line[:1]
        if first == b"+":
            if line != b"+" and line[1:] != self.title[1:]:
                if no == self.last_line and self.title[1:].startswith(line[1:]):
                    raise self._reject("the file ends inside this record's '+' line — the file "
                                       "is truncated.", no, rec)
                raise self._reject(
                    f"the '+' line repeats a different title ({_snip(line)} after "
                    f"{_snip(self.title)}) — the file is corrupt.", no, rec)
            self.state, self.qual_len, self.qual_lines = _QUAL, 0, 0
            self.short_at = None
        elif first == b"@":
            raise self._reject(
                f"a new title line starts before this record's '+' line (title on line "
                f"{self.title_line:,}) — the '+' and quality lines are missing.", no, rec)
        else:
            if line.translate(None, SEQ_CHARS):
                col, c = _first_bad(line, SEQ_CHARS)
                raise self._reject(f"the sequence contains {_char(c)} at column {col:,} — "
                                   f"sequence lines may hold only letters, '*', '-' and '.'.",
                                   no, rec)
            self.seq_len += len(line)

    def _qual_line(self, line: bytes, no: int, rec: int) -> None:
        total = self.qual_len + len(line)
        if self.qual_lines and line[:1] == b"@" and self.short_at is None:
            self.short_at = (self.qual_len, no - 1)
        if total > self.seq_len and self.short_at:
            # The '@' line was more likely the next record's title after a short quality.
            raise self._reject(f"quality has {self.short_at[0]:,} characters but the sequence "
                               f"has {self.seq_len:,} — the file is truncated or corrupt.",
                               self.short_at[1], rec)
        if line.translate(None, QUAL_CHARS):
            col, c = _first_bad(line, QUAL_CHARS)
            raise self._reject(f"the quality contains {_char(c)} at column {col:,} — quality "
                               f"characters must be '!' to '~'.", no, rec)
        self.qual_len = total
        self.qual_lines += 1
        if total > self.seq_len:
            raise self._reject(f"quality has {total:,} characters but the sequence has "
                               f"{self.seq_len:,} — the file is truncated or corrupt.", no, rec)
        if total == self.seq_len:
            self.records += 1
            self.bases += self.seq_len
            self.state = _TITLE

    def _end(self) -> None:
        rec = self.records + 1
        if self.state is _SEQ:
            raise self._reject("the file ends before this record's '+' and quality lines — the "
                               "file is truncated.", self.title_line, rec)
        if self.state is _QUAL:
            if self.seq_len == 0 and self.qual_lines == 0:
                # A zero-length record whose empty quality line lost its '\n' (Biopython agrees).
                self.records += 1
                self.state = _TITLE
                return
            raise self._reject(f"the file ends after {self.qual_len:,} of {self.seq_len:,} quality "
                               f"characters — the file is truncated.", self.title_line, rec)
