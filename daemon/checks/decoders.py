"""The decoders StreamValidator feeds raw bytes through: _Plain (no compression), _Gzip (any
number of members, BGZF with its end-of-file block) and _Bzip2 (any number of streams), each
yielding text and refusing anything before, between or after its members.

Split out of daemon/checks/validate.py so that the compression rules sit apart from the text
checkers; which decoder a file gets (by magic bytes) is still decided in validate.py.
"""

from __future__ import annotations

import bz2
import zlib
from typing import Iterator

from daemon.errors import ContentRejected

try:  # isal's inflate is several times faster than zlib's; zlib is the fallback
    from isal import igzip_lib
except ImportError:  # pragma: no cover - isal is a core dependency
    igzip_lib = None

TEXT_BLOCK = 512 << 10    # FASTA text checked per step, and most text inflated per call (cache)
IN_SLICE = 128 << 10      # compressed bytes handed to the decompressor per call

_GZIP_MAGIC = b"\x1f\x8b"
# BGZF's end-of-file marker: an empty block that htslib/Biopython always write last
# (SAM/BAM spec section 4.1.2). Its absence means the writer never finished.
_BGZF_EOF = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")

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
