"""A multipart/form-data body streamed from disk, with an exact length: the body of the standard
route's S3 POST. ("multipart" here is the HTTP body encoding of RFC 7578; it has nothing to do with
S3's multipart upload, which is daemon/upload/s3multipart.py, nor with the multipart route,
daemon/upload/multipart_route.py.)

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
import queue
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import BinaryIO

from daemon.errors import Aborted, FileChanged
from daemon.upload.source import open_source

CRLF = b"\r\n"


def _quote(value: str) -> str:
    # RFC 7578 §4.2: percent-encode the quote and line breaks in names.
    return value.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


class FormDataBody:
    """Iterable multipart/form-data body: fields in the order given, then the file part last."""

    def __init__(self, fields: Sequence[tuple[str, str]], *, path: str, filename: str, size: int,
                 file_field: str = "file", content_type: str = "application/octet-stream",
                 block_size: int = 4 << 20,
                 tap: Callable[[bytes], None] | None = None,
                 finish: Callable[[], object] | None = None,
                 throttle: Callable[[int], None] | None = None,
                 progress: Callable[[int], None] | None = None,
                 should_abort: Callable[[], bool] | None = None,
                 check: Callable[[], None] | None = None,
                 md5_at: int | None = None,
                 opener: Callable[[], BinaryIO] | None = None) -> None:
        # opener: where the file part's bytes come from when they are not one file at `path` (a
        # sample's lanes read as one stream, daemon/assembly/concat.py); it must give exactly `size` bytes.
        self.opener = opener
        self.boundary = "seqdrop-" + uuid.uuid4().hex
        self.path, self.size, self.block_size = path, size, block_size
        self.tap, self.finish, self.throttle = tap, finish, throttle
        self.progress, self.should_abort, self.check = progress, should_abort, check
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
        # The prefix check (daemon/upload/prefix.py): the MD5 of the file's first md5_at bytes, taken
        # from the running MD5 on the way past, so it costs no second read.
        self.md5_at, self.md5_at_hex = md5_at, None

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def __len__(self) -> int:
        return len(self._head) + self.size + len(self._tail)

    def __iter__(self) -> Iterator[bytes]:
        """Head, file blocks, tail. Three stages overlap on separate cores: a reader thread reads
        and hashes (hashlib and read() release the GIL), a validator thread checks the content, and
        the caller's thread sends. A bounded queue between them keeps memory constant."""
        self.md5, self.md5_at_hex = hashlib.md5(), None
        self.file_bytes_sent = 0
        yield self._head
        # read-only, no atime, never a FIFO or a link (daemon.upload.source)
        source = self.opener() if self.opener is not None else os.fdopen(open_source(self.path), "rb", buffering=0)
        stages = _Stages(source, self)
        try:
            while True:
                if self.should_abort is not None and self.should_abort():
                    raise Aborted("shutdown requested during the upload")
                if self.check is not None:
                    self.check()      # e.g. a validator running elsewhere has refused the file
                block = stages.next_block()
                if block is None:
                    break
                if self.throttle is not None:
                    self.throttle(len(block))
                self.file_bytes_sent += len(block)
                yield block
                if self.progress is not None:
                    self.progress(len(block))
            stages.finish()   # the validator's last word, before S3 can see a complete body
        finally:
            stages.close()
        yield self._tail

    def _hash(self, block: bytes, offset: int) -> None:
        """Add the block read at offset to the running MD5, noting its digest after md5_at bytes."""
        cut = -1 if self.md5_at is None or self.md5_at_hex is not None else self.md5_at - offset
        if not 0 <= cut <= len(block):
            self.md5.update(block)
            return
        view = memoryview(block)
        self.md5.update(view[:cut])
        self.md5_at_hex = self.md5.hexdigest()
        self.md5.update(view[cut:])


_END = object()
# Blocks waiting between two threads: one is enough to keep the three busy (measured: the same speed
# as 2), and each block less is block_size less memory next to numpy's checker (the 64 MiB bound).
QUEUE_BLOCKS = 1


class _Stages:
    """The reader and validator threads behind one FormDataBody iteration."""

    def __init__(self, source: BinaryIO, body: FormDataBody) -> None:
        self.body = body
        self.file = source
        self.cancelled = threading.Event()
        self.error: BaseException | None = None
        self.blocks: queue.Queue[object] = queue.Queue(maxsize=QUEUE_BLOCKS)
        self.to_check: queue.Queue[object] | None = (
            queue.Queue(maxsize=QUEUE_BLOCKS) if body.tap is not None else None)
        self.reader = threading.Thread(target=self._read, name="seqdrop-read", daemon=True)
        self.checker = (threading.Thread(target=self._check, name="seqdrop-validate", daemon=True)
                        if self.to_check is not None else None)
        self.reader.start()
        if self.checker is not None:
            self.checker.start()

    def _put(self, q: queue.Queue[object], item: object) -> bool:
        while not self.cancelled.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self.cancelled.set()

    def _read(self) -> None:
        body, remaining = self.body, self.body.size
        try:
            while remaining > 0 and not self.cancelled.is_set():
                block = self.file.read(min(body.block_size, remaining))
                if not block:
                    raise FileChanged(f"{body.path} became shorter while it was being sent "
                                      f"({body.size - remaining} of {body.size} bytes)")
                body._hash(block, body.size - remaining)
                remaining -= len(block)
                if self.to_check is not None and not self._put(self.to_check, block):
                    return
                if not self._put(self.blocks, block):
                    return
            if self.to_check is not None:
                self._put(self.to_check, _END)
            self._put(self.blocks, _END)
        except BaseException as e:  # handed to the sending thread, which raises it
            self._fail(e)

    def _check(self) -> None:
        assert self.to_check is not None and self.body.tap is not None
        try:
            while True:
                try:
                    item = self.to_check.get(timeout=0.1)
                except queue.Empty:
                    if self.cancelled.is_set():
                        return
                    continue
                if item is _END:
                    return
                self.body.tap(item)   # type: ignore[arg-type]
        except BaseException as e:
            self._fail(e)

    def next_block(self) -> bytes | None:
        while True:
            if self.error is not None:
                raise self.error
            try:
                item = self.blocks.get(timeout=0.1)
            except queue.Empty:
                continue
            if self.error is not None:
                raise self.error
            return None if item is _END else item  # type: ignore[return-value]

    def finish(self) -> None:
        if self.checker is not None:
            while self.checker.is_alive():
                self.checker.join(timeout=0.1)
        if self.error is not None:
            raise self.error
        if self.body.finish is not None:
            self.body.finish()

    def close(self) -> None:
        self.cancelled.set()
        self.reader.join(timeout=5)
        if self.checker is not None:
            self.checker.join(timeout=5)
        self.file.close()
