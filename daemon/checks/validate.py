"""Streaming FASTA/FASTQ validator: plain, gzip (multi-member, BGZF) and bzip2.

The upload pipeline feeds a StreamValidator the same raw bytes it streams to S3,
so a file is read once; ``finish()`` either returns a Summary or raises
ContentRejected with one sentence a lab person can act on.

How it stays fast: large FASTQ text (validate_path, the upload's validator child) is first
checked in whole blocks with numpy (daemon/checks/fastq_blocks.py: four-line records of one read
length, ~1.6 GB/s); whatever that path cannot prove valid, and all other text, is checked a block
at a time with bytes methods that run in C. For FASTQ, ``BytesIO.readlines(FASTQ_STEP)`` cuts about
128 KiB of text into lines (found with memchr; each keeps its '\n'), and a block
of complete 4-line records is checked column-wise: ``lines[1::4]`` joined, then
``translate`` to find bad characters, and equal lengths of reads and qualities
proven by one strided comparison of the joined columns when all reads have one
length (``map(len, ...)`` otherwise). A block the fast path cannot prove valid
(wrapped records, blank lines, any error) goes through the exact line-by-line
state machine (``_FastqChecker._slow``), which is the definition of the format;
the fast path only ever accepts blocks the slow path would accept, so both give
the same verdicts. A partial record is carried between blocks; memory is bounded
by the block size plus the longest line (at most MAX_LINE; FASTA sequence lines
longer than LONG_LINE are streamed).

FASTQ rules (Cock et al. 2010, NAR 38:1767): '@' title; sequence lines until a
line starting with '+'; the '+' line is bare or repeats the title exactly; then
quality lines until the quality is as long as the sequence (the first quality
line is always read, so a quality line may start with '@'); quality characters
'!'..'~' (Sanger, Solexa and Illumina encodings all fit; no variant is assumed).

Decisions of our own (each has a test in tests/test_validate.py):
- Compression is told by magic bytes, never by name: gzip (any number of members;
  BGZF included), bzip2 (any number of streams), else plain text. zip, xz, zstd,
  lz4, 7z, .Z, BAM, CRAM, HDF5 and a UTF-8 byte-order mark are named and refused.
- Nothing may follow the last gzip member or bzip2 stream, not even zero bytes: a
  crash can leave a zero-filled tail, and the data before it may be incomplete.
- A BGZF file (first member carries the 'BC' extra field) must end with the BGZF
  end-of-file block, which every BGZF writer adds on close: without it the file
  was cut at a block boundary, which the gzip format alone cannot show.
- The first character must be '@' (FASTQ) or '>' (FASTA); no leading blank line
  or text (aster_pearson.pro). A first line '@HD<TAB>'... is SAM and refused.
- Sequence characters are ASCII letters of either case, '*', '-' and '.'.
- FASTQ titles may hold any byte but NUL (a zero-filled tail shows as NUL).
- FASTQ: any number of blank lines at the very end are tolerated (Biopython
  tolerates one; they cannot hide lost data); a blank line followed by another
  record is an error. Blank lines inside a record's sequence add nothing.
- A zero-length last record may lack its empty quality line ('@r\n\n+\n' at
  EOF is complete, as in Biopython); mid-file the empty quality line is required.
- FASTA: blank lines anywhere are fine; ';' (and '#', '!') comment lines are
  refused as in Biopython's plain "fasta" parser (aster_blast.pro).
- Line endings are LF or CRLF (mixed is fine); a lone CR is a character, so it
  is refused in sequence and quality. The last line may lack its line ending.
- Memory bound: lines longer than MAX_LINE are refused, except FASTA sequence
  lines (an unwrapped chromosome), which are checked in pieces.
- A cut exactly at a record boundary of a plain file cannot be seen by any
  validator (it is a valid shorter file); finished-file detection must cover it.
"""

from __future__ import annotations

import bz2
import json
import os
import re
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from operator import itemgetter
from types import ModuleType
from typing import Iterator

from daemon.errors import ContentRejected

try:  # isal's inflate is several times faster than zlib's; zlib is the fallback
    from isal import igzip_lib
except ImportError:  # pragma: no cover - isal is a core dependency
    igzip_lib = None

__all__ = ["StreamValidator", "Summary", "blocks_carry", "sniff", "validate_path"]

TEXT_BLOCK = 512 << 10    # FASTA text checked per step, and most text inflated per call (cache)
FASTQ_STEP = 128 << 10    # FASTQ lines checked per step: 64..256 KiB measured alike, 1 MiB slower
LONG_LINE = 4 << 20       # a FASTA sequence line longer than this is checked in pieces
MAX_LINE = 32 << 20       # any other line longer than this is rejected (memory bound)
SNIFF_BYTES = 64 << 10
IN_SLICE = 128 << 10      # compressed bytes handed to the decompressor per call
BLOCKS_FROM = 256 << 10   # FASTQ text fed at once from which whole blocks are tried with numpy first

# Residues: every ASCII letter (IUPAC nucleotide and protein codes, upper or lower
# case), '*' (stop), '-' and '.' (gaps). Spaces and tabs are errors (the FASTQ
# suite's error_spaces / error_tabs); digits are not sequence either.
SEQ_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz*-."
QUAL_CHARS = bytes(range(33, 127))          # '!'..'~': Sanger, Solexa and Illumina
_SEQ_NL = SEQ_CHARS + b"\n"
_QUAL_NL = QUAL_CHARS + b"\n"

_GZIP_MAGIC = b"\x1f\x8b"
# BGZF's end-of-file marker: an empty block that htslib/Biopython always write last
# (SAM/BAM spec section 4.1.2). Its absence means the writer never finished.
_BGZF_EOF = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")
_RECOMPRESS = "decompress it and compress it with gzip"
_TO_FASTQ = "convert it to FASTQ first (e.g. samtools fastq)"
_OTHER_FORMATS = [  # (magic, what it is, what to do) for files that are not ours to upload
    (b"PK\x03\x04", "a ZIP archive", "unzip it and compress the file with gzip"),
    (b"PK\x05\x06", "an empty ZIP archive", "unzip it and compress the file with gzip"),
    (b"\xfd7zXZ\x00", "xz-compressed", _RECOMPRESS),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed", _RECOMPRESS),
    (b"\x04\x22\x4d\x18", "LZ4-compressed", _RECOMPRESS),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive", _RECOMPRESS),
    (b"\x1f\x9d", "compress(.Z)-compressed", _RECOMPRESS),
    (b"LZIP", "lzip-compressed", _RECOMPRESS),
    (b"Rar!", "a RAR archive", _RECOMPRESS),
    (b"BAM\x01", "a BAM alignment file", _TO_FASTQ),
    (b"CRAM", "a CRAM alignment file", _TO_FASTQ),
    (b"\x89HDF", "an HDF5 file (FAST5?)", "basecall it to FASTQ first"),
    (b"\xef\xbb\xbf", "text that starts with a UTF-8 byte-order mark",
     "save it again without the byte-order mark"),
]
_FIRST = itemgetter(0)
_HEADER_RE = re.compile(rb"\n>[^\n]*")
_TITLE, _SEQ, _QUAL = "title", "sequence", "quality"


@dataclass(frozen=True)
class Summary:
    """What a valid file holds. raw_bytes counts the bytes fed (compressed, as on disk)."""

    format: str          # "fastq" | "fasta"
    compression: str     # "none" | "gzip" | "bzip2"
    records: int
    bases: int
    raw_bytes: int


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


class _FastqChecker(_Checker):
    format = "fastq"

    def __init__(self, name: str, blocks: ModuleType | None = None) -> None:
        super().__init__(name)
        self.blocks = blocks     # daemon.checks.fastq_blocks, when whole blocks may be checked with numpy
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
                    end, records, bases = self.blocks.scan(text, start)
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


# --- compression ---------------------------------------------------------------------------

_CODEC_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, EOFError, zlib.error)
if igzip_lib is not None:
    _CODEC_ERRORS += (igzip_lib.IsalError,)


class _ZlibMember:
    """zlib's decompressobj behind the bz2/igzip interface (needs_input, eof, unused_data)."""

    def __init__(self) -> None:
        self._d = zlib.decompressobj(31)
        self.needs_input = True

    def decompress(self, data: bytes, max_length: int) -> bytes:
        out = self._d.decompress(self._d.unconsumed_tail + data, max_length)
        # A full output buffer may leave output inside zlib even with no input left.
        self.needs_input = not self._d.unconsumed_tail and len(out) < max_length
        return out

    @property
    def eof(self) -> bool:
        return self._d.eof

    @property
    def unused_data(self) -> bytes:
        return self._d.unused_data


def _gzip_member():
    if igzip_lib is not None:
        return igzip_lib.IgzipDecompressor(flag=igzip_lib.DECOMP_GZIP)
    return _ZlibMember()


class _Plain:
    compression = "none"

    def __init__(self, name: str) -> None:
        self.name = name

    def feed(self, raw: bytes) -> Iterator[bytes]:
        yield raw

    def finish(self) -> Iterator[bytes]:
        return iter(())


class _Compressed:
    """A sequence of gzip members or bzip2 streams, nothing before, between or after them."""

    compression = ""
    label = ""
    magic = b""

    def __init__(self, name: str) -> None:
        self.name = name
        self._d = None          # decompressor of the current member, None between members
        self._between = b""     # bytes after a member that may start the next one

    def _new(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def feed(self, raw: bytes) -> Iterator[bytes]:
        # Small input slices: at a member's end the decompressor copies all input it was
        # given past that end into unused_data, which for BGZF (a member per 64 KiB) fed
        # 4 MiB at a time cost more than the inflating itself.
        for pos in range(0, len(raw), IN_SLICE):
            yield from self._inflate(raw[pos:pos + IN_SLICE])

    def _inflate(self, raw: bytes) -> Iterator[bytes]:
        while raw:
            if self._d is None:
                raw = self._between + raw
                self._between = b""
                if len(raw) < len(self.magic) and self.magic.startswith(raw):
                    self._between = raw
                    return
                if not raw.startswith(self.magic):
                    raise self._garbage(raw)
                self._d = self._new()
            try:
                out = self._d.decompress(raw, TEXT_BLOCK)
                while True:
                    if out:
                        yield out
                    if self._d.eof or self._d.needs_input:
                        break
                    out = self._d.decompress(b"", TEXT_BLOCK)
            except _CODEC_ERRORS as exc:
                raise ContentRejected(f"{self.name}: the {self.label} data is corrupt ({exc}) — the "
                                      f"file is damaged; copy or compress it again.") from None
            if not self._d.eof:
                return
            raw = self._d.unused_data
            self._d = None

    def finish(self) -> Iterator[bytes]:
        if self._d is not None:
            raise ContentRejected(f"{self.name}: the {self.label} data stops before the end of its "
                                  f"stream — the file is truncated (was it still being written?).")
        if self._between:
            raise self._garbage(self._between)
        return iter(())

    def _garbage(self, raw: bytes) -> ContentRejected:
        kind = "zero bytes" if not raw.strip(b"\0") else "bytes that are not " + self.label
        return ContentRejected(f"{self.name}: the {self.label} data ends but is followed by {kind} "
                               f"(starting {raw[:8].hex(' ')}) — the file is damaged or incomplete.")


class _Gzip(_Compressed):
    compression = label = "gzip"
    magic = _GZIP_MAGIC

    def __init__(self, name: str, head: bytes) -> None:
        super().__init__(name)
        # BGZF: FEXTRA set and a 'BC' subfield in the first member's header.
        self.bgzf = (len(head) >= 16 and head[3] & 4 == 4 and head[12:14] == b"BC")
        self._last = b""        # the last 28 raw bytes, to look for the BGZF EOF marker

    def _new(self):
        return _gzip_member()

    def feed(self, raw: bytes) -> Iterator[bytes]:
        self._last = (self._last + raw[-28:])[-28:]
        return super().feed(raw)

    def finish(self) -> Iterator[bytes]:
        super().finish()
        if self.bgzf and self._last != _BGZF_EOF:
            raise ContentRejected(f"{self.name}: the BGZF file lacks its end-of-file marker block — "
                                  f"the file is truncated (was it still being written?).")
        return iter(())


class _Bzip2(_Compressed):
    compression = label = "bzip2"
    magic = b"BZh"

    def _new(self):
        return bz2.BZ2Decompressor()


# --- the validator -------------------------------------------------------------------------

def _fastq_blocks() -> ModuleType | None:
    """daemon.checks.fastq_blocks, or None without numpy (the line-by-line paths do all the work).
    Imported on demand: numpy costs 0.1 s and 16 MiB, which only a large file's validation repays."""
    try:
        from daemon.checks import fastq_blocks
    except ImportError:     # pragma: no cover - numpy is a core dependency
        return None
    return fastq_blocks


class StreamValidator:
    """Validate a FASTA/FASTQ file from its raw bytes, fed in order, in blocks of any size.

    vectorised: check FASTQ text in whole blocks with numpy where it can (daemon/checks/fastq_blocks.py);
    the verdict is the same either way, only the speed differs. validate_path (the validator child of
    a large upload) sets it; the daemon's in-process validation of small files does without numpy.
    """

    def __init__(self, name: str, *, on_text: Callable[[bytes], None] | None = None,
                 vectorised: bool = False) -> None:
        self.name = name
        self.vectorised = vectorised
        # on_text: handed every decompressed block before it is checked, so that one pass over the
        # data also feeds e.g. the pair check's read-name digest (daemon/assembly/pairs.py).
        self._on_text = on_text
        self._raw_bytes = 0
        self._head = b""
        self._decoder: _Plain | _Gzip | _Bzip2 | None = None
        self._checker: _FastqChecker | _FastaChecker | None = None
        self._error: ContentRejected | None = None
        self._text_head = b""

    def feed(self, chunk: bytes) -> None:
        """Check the next raw bytes; raise ContentRejected as soon as the file is known bad."""
        self._guard(self._feed, chunk)

    def finish(self) -> Summary:
        """Check the end of the file and return its Summary, or raise ContentRejected."""
        self._guard(self._finish)
        assert self._decoder is not None and self._checker is not None
        return Summary(format=self._checker.format, compression=self._decoder.compression,
                       records=self._checker.records, bases=self._checker.bases,
                       raw_bytes=self._raw_bytes)

    def _guard(self, step, *args) -> None:
        if self._error is not None:
            raise self._error
        try:
            step(*args)
        except ContentRejected as exc:
            self._error = exc
            raise

    def _feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        if not isinstance(chunk, bytes):   # bytearray / memoryview from a reader
            chunk = bytes(chunk)
        self._raw_bytes += len(chunk)
        if self._decoder is None:
            self._head += chunk
            if len(self._head) < 16:
                return
            chunk, self._head = self._head, b""
            self._start(chunk)
        for text in self._decoder.feed(chunk):
            self._text(text)

    def _finish(self) -> None:
        if self._decoder is None:
            if not self._head:
                raise ContentRejected(f"{self.name}: the file is empty (0 bytes).")
            head, self._head = self._head, b""
            self._start(head)
            for text in self._decoder.feed(head):
                self._text(text)
        for text in self._decoder.finish():
            self._text(text)
        self._flush_head()
        if self._checker is None:
            raise ContentRejected(f"{self.name}: the file is empty (its {self._decoder.compression} "
                                  f"data decompresses to nothing).")
        self._checker.finish()

    def _start(self, head: bytes) -> None:
        """Pick the decoder from the magic bytes (never from the name)."""
        if head.startswith(_GZIP_MAGIC):
            self._decoder = _Gzip(self.name, head)
        elif head.startswith(b"BZh") and head[3:4].isdigit():
            self._decoder = _Bzip2(self.name)
        else:   # other formats (zip, xz, zstd...) are named by _pick_format
            self._decoder = _Plain(self.name)

    def _text(self, text: bytes) -> None:
        if self._on_text is not None:
            self._on_text(text)
        if self._checker is None:
            # Decide the format on the same bytes however the text was cut: 16 bytes for
            # FASTA/FASTQ (SAM check), 512 to tell binary from text otherwise.
            self._text_head += text
            head = self._text_head
            if len(head) < (16 if head[:1] in (b"@", b">") else 512):
                return
            text, self._text_head = self._text_head, b""
            self._checker = self._pick_format(text)
        checker = self._checker
        if len(text) <= TEXT_BLOCK or checker.format == "fastq":   # FASTQ steps through it itself
            checker.feed(text)
        else:
            for i in range(0, len(text), TEXT_BLOCK):
                checker.feed(text[i:i + TEXT_BLOCK])

    def _flush_head(self) -> None:
        """At the end of the text (or of a sniffed head): decide on the few bytes there are."""
        if self._checker is None and self._text_head:
            text, self._text_head = self._text_head, b""
            self._checker = self._pick_format(text)
            self._checker.feed(text)

    def _pick_format(self, text: bytes) -> _FastqChecker | _FastaChecker:
        first = text[:1]
        if first == b"@":
            if text[:4] in (b"@HD\t", b"@SQ\t", b"@RG\t", b"@PG\t"):
                raise ContentRejected(f"{self.name}: the file is a SAM alignment file, not FASTQ — "
                                      f"convert it to FASTQ first.")
            return _FastqChecker(self.name, _fastq_blocks() if self.vectorised else None)
        if first == b">":
            return _FastaChecker(self.name)
        subject = ("the file" if self._decoder.compression == "none"
                   else f"the file's {self._decoder.compression} content")
        for magic, what, fix in _OTHER_FORMATS:
            if text.startswith(magic):
                raise ContentRejected(f"{self.name}: {subject} is {what}, which is not FASTA/FASTQ "
                                      f"(plain, gzip or bzip2) — {fix}.")
        sample = text[:512]
        if b"\0" in sample or sum(c < 9 or 13 < c < 32 for c in sample) > len(sample) // 10:
            raise ContentRejected(f"{self.name}: {subject} is binary data (starting "
                                  f"{text[:8].hex(' ')}), not FASTA/FASTQ text.")
        line = text.split(b"\n", 1)[0].rstrip(b"\r")
        raise ContentRejected(f"{self.name}: line 1: {subject} starts with "
                              f"{_snip(line) if line else 'a blank line'} instead of "
                              f"'>' (FASTA) or '@' (FASTQ) — it is not a FASTA/FASTQ file.")


def sniff(head: bytes, name: str) -> None:
    """Quick check of a file's first bytes (<= 64 KiB) before anything is sent.

    Raises ContentRejected for an empty file, binary junk, a compression seqdrop does not
    read (zip, xz, zstd... named), or text that does not start like FASTA/FASTQ, and for
    any error already visible in the head. Passing says nothing about the rest of the file.
    """
    if not head:
        raise ContentRejected(f"{name}: the file is empty (0 bytes).")
    v = StreamValidator(name)
    v.feed(head[:SNIFF_BYTES])
    if v._decoder is None:          # fewer than 16 bytes: decide on what there is
        v._guard(v._start, v._head)
        v._guard(lambda: [v._text(t) for t in v._decoder.feed(v._head)])
    v._guard(v._flush_head)
    if v._checker is not None:
        v._guard(v._checker.drain)


PROBE_BYTES = 256 << 10     # the start of a file that blocks_carry() looks at (raw bytes)
PROBE_RECORDS = 16          # ... and how many whole records it must hold


def blocks_carry(head: bytes) -> bool:
    """Whether the numpy checker (daemon/checks/fastq_blocks.py) will most likely carry a file that
    starts with these raw bytes: plain or gzip FASTQ whose first records are 4 lines, a bare '+'
    and reads of one length, with no '\\r' or NUL. Routing only, never a verdict: a file it misjudges
    is validated all the same, by the line-by-line parser, which holds the GIL (daemon/upload/pipeline.py
    then validates in a child process so as not to slow the sending thread)."""
    text = head[:PROBE_BYTES]
    if text.startswith(_GZIP_MAGIC):
        try:
            text = zlib.decompressobj(wbits=31).decompress(text, PROBE_BYTES)
        except zlib.error:
            return False
    if not text.startswith(b"@") or b"\r" in text or b"\0" in text:
        return False
    lines = text.split(b"\n")[:-1]     # whole lines only
    records = len(lines) // 4
    if records < PROBE_RECORDS:
        return False
    length = len(lines[1])
    return all(lines[i][:1] == b"@" and len(lines[i + 1]) == length and lines[i + 2] == b"+"
               and len(lines[i + 3]) == length for i in range(0, 4 * records, 4))


def validate_path(path: str | os.PathLike, *, block_size: int = 4 << 20) -> Summary:
    """Validate a whole file, read in blocks of block_size bytes."""
    v = StreamValidator(name=os.path.basename(os.fspath(path)), vectorised=True)
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(block_size):
            v.feed(chunk)
    return v.finish()


def main(argv: list[str] | None = None) -> int:
    """`python -m daemon.checks.validate [--json] FILE...`: validate files; exit 0 if all are valid, 1 if not.

    The upload pipeline runs this as a child process for a large file that numpy's checker will not
    carry (blocks_carry), so that the line-by-line parser gets a core of its own instead of sharing the
    GIL with the thread that sends (see daemon/upload/pipeline.py).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in args
    paths = [a for a in args if a != "--json"]
    if not paths:
        print("usage: python -m daemon.checks.validate [--json] FILE...", file=sys.stderr)
        return 2
    ok = True
    for path in paths:
        try:
            s = validate_path(path)
            result = {"path": path, "ok": True, "format": s.format, "compression": s.compression,
                      "records": s.records, "bases": s.bases, "raw_bytes": s.raw_bytes}
        except ContentRejected as e:
            ok, result = False, {"path": path, "ok": False, "error": str(e)}
        except OSError as e:
            ok, result = False, {"path": path, "ok": False, "error": f"cannot read {path}: {e.strerror}",
                                 "io_error": True}
        if as_json:
            print(json.dumps(result), flush=True)
        else:
            print(f"{path}: " + (f"ok ({result['format']}, {result['records']:,} records)" if result["ok"]
                                 else result["error"]))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
