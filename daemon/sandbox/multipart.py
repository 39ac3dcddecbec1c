"""A streaming multipart/form-data reader for the S3 endpoint: constant memory, whatever the size.

The body is read in blocks of `block_size` bytes; the file part is handed to a sink block by block,
so only a block plus the delimiter's length is ever held. The form fields before the file are kept
(S3 caps them too: MaxPostPreDataLengthExceeded).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from email.parser import HeaderParser
from typing import BinaryIO, Callable, Protocol

BLOCK_SIZE = 1024 * 1024
MAX_FIELDS_BYTES = 20 * 1024   # S3 refuses more than 20 KB of form fields before the file
MAX_PART_HEADERS_BYTES = 16 * 1024


class BodyIncomplete(Exception):
    """The client sent fewer bytes than its Content-Length (it went away): nothing to answer."""


class MalformedBody(Exception):
    """The body is not well-formed multipart/form-data."""


class FieldsTooLarge(Exception):
    """The form fields before the file exceed MAX_FIELDS_BYTES."""


class Sink(Protocol):
    def write(self, data: bytes | memoryview) -> object: ...


class BodyReader:
    """Reads exactly `length` bytes from `stream`, a block at a time."""

    def __init__(self, stream: BinaryIO, length: int, *, block_size: int = BLOCK_SIZE) -> None:
        self._stream, self.remaining, self._block_size = stream, length, block_size

    def read(self) -> bytes:
        """The next block; b"" once `length` bytes were read. Raises BodyIncomplete on early EOF."""
        if self.remaining <= 0:
            return b""
        block = self._stream.read(min(self._block_size, self.remaining))
        if not block:
            raise BodyIncomplete(f"connection ended with {self.remaining} bytes of the body missing")
        self.remaining -= len(block)
        return block

    def drain(self) -> None:
        """Read and discard what is left of the body."""
        while self.read():
            pass


@dataclass
class Form:
    """What a multipart body held, apart from the file's bytes (those went to the sink)."""

    fields: list[tuple[str, str]] = field(default_factory=list)  # before the file, in order
    has_file: bool = False
    filename: str | None = None
    file_size: int = 0
    field_after_file: str | None = None  # name of the first part after the file, if any


def boundary_from_content_type(content_type: str) -> bytes | None:
    """The boundary of a multipart/form-data Content-Type, or None if it is not one."""
    parser_input = f"Content-Type: {content_type}\r\n\r\n"
    message = HeaderParser().parsestr(parser_input)
    if message.get_content_type() != "multipart/form-data":
        return None
    boundary = message.get_param("boundary")
    if not isinstance(boundary, str) or not 1 <= len(boundary) <= 70:
        return None
    return boundary.encode("latin-1", errors="replace")


class _Parser:
    def __init__(self, reader: BodyReader, boundary: bytes) -> None:
        self._reader = reader
        self._sep = b"\r\n--" + boundary
        # A virtual CRLF lets the first delimiter (at the very start of the body) match self._sep.
        self._buf = b"\r\n"

    def _more(self) -> None:
        block = self._reader.read()
        if not block:
            raise MalformedBody("the body ended inside a part")
        self._buf += block

    def _need(self, count: int) -> None:
        while len(self._buf) < count:
            self._more()

    def stream_until(self, separator: bytes, emit: Callable[[bytes], object]) -> None:
        """Pass everything up to `separator` to `emit`, consume the separator."""
        keep = len(separator) - 1
        while True:
            index = self._buf.find(separator)
            if index >= 0:
                if index:
                    emit(self._buf[:index])
                self._buf = self._buf[index + len(separator):]
                return
            if len(self._buf) > keep:
                emit(self._buf[:-keep] if keep else self._buf)
                self._buf = self._buf[-keep:] if keep else b""
            self._more()

    def after_delimiter(self) -> bool:
        """Consume what follows a delimiter; True if another part follows, False at the close."""
        self._need(2)
        if self._buf.startswith(b"--"):
            return False
        self._buf = self._buf.lstrip(b" \t")  # transport padding (RFC 2046 5.1.1)
        self._need(2)
        if not self._buf.startswith(b"\r\n"):
            raise MalformedBody("a delimiter is not followed by CRLF")
        self._buf = self._buf[2:]
        return True

    def part_headers(self) -> tuple[str, str | None]:
        """Read one part's headers; return its field name and filename."""
        self._need(2)
        if self._buf.startswith(b"\r\n"):
            raise MalformedBody("a part has no Content-Disposition")
        chunks: list[bytes] = []

        def collect(data: bytes) -> None:
            chunks.append(data)
            if sum(map(len, chunks)) > MAX_PART_HEADERS_BYTES:
                raise MalformedBody("a part's headers are too long")

        self.stream_until(b"\r\n\r\n", collect)
        message = HeaderParser().parsestr(b"".join(chunks).decode("utf-8", errors="replace") + "\r\n\r\n")
        name = message.get_param("name", header="content-disposition")
        if message.get("Content-Disposition") is None or not isinstance(name, str):
            raise MalformedBody("a part has no form-data name")
        return name, message.get_filename()


def read_form(reader: BodyReader, boundary: bytes, open_sink: Callable[[str | None], Sink]) -> Form:
    """Parse the body; the part named "file" goes to `open_sink(filename)`, block by block.

    Stops at the first part after the file (S3 ignores or refuses those) and drains the rest.
    Raises MalformedBody, FieldsTooLarge, BodyIncomplete.
    """
    parser, form = _Parser(reader, boundary), Form()
    parser.stream_until(parser._sep, lambda _preamble: None)
    fields_bytes = 0
    while parser.after_delimiter():
        name, filename = parser.part_headers()
        if form.has_file:
            form.field_after_file = name
            break
        if name.lower() == "file":
            form.has_file, form.filename = True, filename
            sink = open_sink(filename)

            def to_sink(data: bytes) -> None:
                form.file_size += len(data)
                sink.write(data)

            parser.stream_until(parser._sep, to_sink)
            continue
        chunks: list[bytes] = []

        def collect(data: bytes) -> None:
            nonlocal fields_bytes
            fields_bytes += len(data)
            if fields_bytes > MAX_FIELDS_BYTES:
                raise FieldsTooLarge("the form fields before the file are too large")
            chunks.append(data)

        parser.stream_until(parser._sep, collect)
        form.fields.append((name, b"".join(chunks).decode("utf-8", errors="replace")))
    reader.drain()  # the epilogue, or whatever follows a part after the file
    return form
