"""A multipart/form-data body streamed from disk, with an exact length.

Hand-written on purpose: requests' ``files=`` reads the whole file into memory,
and requests-toolbelt's MultipartEncoder copies every block through an internal
buffer and is read by urllib3 16 KiB at a time (slow for multi-GB files, see
issue 2). Here the file is the last part (S3 requires it), the length is known
before sending (S3 refuses chunked bodies), blocks are large, and every block of
the file passes through the MD5 and the validator on its way out, so a file is
read once. If the validator refuses the file, or the file ends early, the body
raises before its closing boundary: S3 never receives a complete request and
stores nothing.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable, Iterator, Sequence

from daemon.errors import Aborted, FileChanged

CRLF = b"\r\n"


def _quote(value: str) -> str:
    # RFC 7578 §4.2: percent-encode the quote and line breaks in names.
    return value.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


class MultipartBody:
    """Iterable body: fields in the order given, then the file part last."""

    def __init__(self, fields: Sequence[tuple[str, str]], *, path: str, filename: str, size: int,
                 file_field: str = "file", content_type: str = "application/octet-stream",
                 block_size: int = 4 << 20,
                 tap: Callable[[bytes], None] | None = None,
                 finish: Callable[[], object] | None = None,
                 throttle: Callable[[int], None] | None = None,
                 progress: Callable[[int], None] | None = None,
                 should_abort: Callable[[], bool] | None = None) -> None:
        self.boundary = "seqdrop-" + uuid.uuid4().hex
        self.path, self.size, self.block_size = path, size, block_size
        self.tap, self.finish, self.throttle = tap, finish, throttle
        self.progress, self.should_abort = progress, should_abort
        b = self.boundary.encode()
        head = bytearray()
        for name, value in fields:
            head += b"--" + b + CRLF
            head += f'Content-Disposition: form-data; name="{_quote(name)}"'.encode() + CRLF + CRLF
            head += str(value).encode("utf-8") + CRLF
        head += b"--" + b + CRLF
        head += (f'Content-Disposition: form-data; name="{_quote(file_field)}"; '
                 f'filename="{_quote(filename)}"').encode("utf-8") + CRLF
        head += f"Content-Type: {content_type}".encode() + CRLF + CRLF
        self._head = bytes(head)
        self._tail = CRLF + b"--" + b + b"--" + CRLF
        self.md5 = hashlib.md5()
        self.file_bytes_sent = 0

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def __len__(self) -> int:
        return len(self._head) + self.size + len(self._tail)

    def __iter__(self) -> Iterator[bytes]:
        self.md5 = hashlib.md5()
        self.file_bytes_sent = 0
        yield self._head
        remaining = self.size
        # O_NOATIME where allowed: reading must not even touch the instrument's atime.
        flags = os.O_RDONLY | getattr(os, "O_NOATIME", 0)
        try:
            fd = os.open(self.path, flags)
        except PermissionError:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            raise FileChanged(f"{self.path} was deleted before it could be sent") from None
        with os.fdopen(fd, "rb", buffering=0) as f:
            while remaining > 0:
                if self.should_abort is not None and self.should_abort():
                    raise Aborted("shutdown requested during the upload")
                block = f.read(min(self.block_size, remaining))
                if not block:
                    raise FileChanged(f"{self.path} became shorter while it was being sent "
                                      f"({self.size - remaining} of {self.size} bytes)")
                remaining -= len(block)
                self.md5.update(block)
                if self.tap is not None:
                    self.tap(block)
                if self.throttle is not None:
                    self.throttle(len(block))
                self.file_bytes_sent += len(block)
                yield block
                if self.progress is not None:
                    self.progress(len(block))
        if self.finish is not None:
            self.finish()   # the validator's last word, before S3 can see a complete body
        yield self._tail
