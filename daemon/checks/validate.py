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

Where the parts live: this module holds StreamValidator (which picks a decoder by magic bytes and a
checker by the first character), sniff, blocks_carry, validate_path and the command line;
decoders.py the compression (plain, gzip/BGZF, bzip2), text_check.py what both checkers share,
fastq_check.py and fasta_check.py the two checkers.

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

import json
import os
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

from daemon.checks.decoders import (
    _BGZF_EOF as _BGZF_EOF,  # re-exported: tests build BGZF files with it
)
from daemon.checks.decoders import _GZIP_MAGIC, TEXT_BLOCK, _Bzip2, _Gzip, _Plain
from daemon.checks.fasta_check import _FastaChecker
from daemon.checks.fastq_check import _FastqChecker
from daemon.checks.text_check import (
    SEQ_CHARS as SEQ_CHARS,  # re-exported: tests draw sequences from it
)
from daemon.checks.text_check import _snip
from daemon.errors import ContentRejected

if TYPE_CHECKING:   # fastq_blocks loads numpy, which only a large file's validation imports (on demand)
    from daemon.checks.fastq_blocks import Newlines

__all__ = ["StreamValidator", "Summary", "blocks_carry", "sniff", "validate_path"]

SNIFF_BYTES = 64 << 10

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


@dataclass(frozen=True)
class Summary:
    """What a valid file holds. raw_bytes counts the bytes fed (compressed, as on disk)."""

    format: str          # "fastq" | "fasta"
    compression: str     # "none" | "gzip" | "bzip2"
    records: int
    bases: int
    raw_bytes: int



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
                 vectorised: bool = False, newlines: Newlines | None = None) -> None:
        self.name = name
        self.vectorised = vectorised
        # on_text: handed every decompressed block before it is checked, so that one pass over the
        # data also feeds e.g. the pair check's read-name digest (daemon/assembly/pairs.py).
        self._on_text = on_text
        # newlines (vectorised only): a fastq_blocks.Newlines that on_text's reader scans the same
        # blocks with, so that each block's '\n' are found once for both (the validator child of a
        # paired read: daemon/checks/child.py); let go after each block.
        self._newlines = newlines if vectorised else None
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
        try:
            self._check_text(text)
        finally:
            if self._newlines is not None:
                self._newlines.forget()

    def _check_text(self, text: bytes) -> None:
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
            return _FastqChecker(self.name, _fastq_blocks() if self.vectorised else None, self._newlines)
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
