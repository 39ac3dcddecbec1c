"""The bounds of one HTTP exchange of the client: an overall deadline, a stall limit while sending,
and a cap on the answer's size (design.md, "Rules").

requests' read timeout bounds each socket read, so a server that sends one byte every few seconds
never trips it. Here every connection the client opens has its socket wrapped (`_PacedSocket`):
before each recv the socket's timeout is shortened to what is left of the deadline of the request
in flight (a `Budget`), and the recv is refused once nothing is left; each send waits at most the
stall limit for the peer to take a byte. The answer is read by the caller (`read_bounded`, with
requests' stream=True) up to a bound, and refused beyond it without reading on.

No thread per request: the calling thread does everything. The budget is found through a
thread-local because urllib3 offers no way to hand a per-request object to the socket of a pooled
connection; a request and the reading of its answer run on one thread (a worker), so the
thread-local is exactly "the request this socket is serving now". A socket used outside `paced()`
behaves as a plain one.
"""

from __future__ import annotations

import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from daemon.errors import Transient

API_ANSWER_LIMIT_BYTES = 1 << 20     # an API answer is small JSON
S3_ANSWER_LIMIT_BYTES = 64 << 10     # an S3 answer is small XML
READ_BLOCK_BYTES = 16 << 10


class Budget:
    """The time one request may take. deadline_s counts from the start (an API call: connect, send,
    the whole answer) or, with from_answer, from the first byte awaited after the body was sent (the
    S3 POST, whose body may take hours); stall_s bounds each wait for the peer to take a byte of the
    body. `fired` says which limit ended the request ("deadline" or "stall"), if one did."""

    def __init__(self, deadline_s: float, *, stall_s: float | None = None, from_answer: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.deadline_s, self.stall_s, self._clock = deadline_s, stall_s, clock
        self.started_at: float | None = None if from_answer else clock()
        self.fired: str | None = None

    def left_s(self) -> float | None:
        """Seconds left before the deadline; None while its clock has not started."""
        if self.started_at is None:
            return None
        return self.started_at + self.deadline_s - self._clock()

    def answer_awaited(self) -> None:
        """The body is sent and the answer is awaited: a deadline counted from the answer starts."""
        if self.started_at is None:
            self.started_at = self._clock()


_local = threading.local()


def current() -> Budget | None:
    return getattr(_local, "budget", None)


@contextmanager
def paced(budget: Budget) -> Iterator[Budget]:
    """Run a request (and the reading of its answer) on this thread under `budget`."""
    before, _local.budget = current(), budget
    try:
        yield budget
    finally:
        _local.budget = before


class _PacedSocket:
    """A connected socket (plain or TLS) whose recv/send obey the current Budget. Everything else is
    the wrapped socket's; makefile() goes through this object so http.client's reads do too."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._timeout = sock.gettimeout()       # what urllib3 asked for (its per-read timeout)
        self._io_refs = 0                       # socket.SocketIO's bookkeeping (makefile)
        self._closed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def settimeout(self, timeout_s: float | None) -> None:
        self._timeout = timeout_s
        self._sock.settimeout(timeout_s)

    def gettimeout(self) -> float | None:
        return self._timeout

    def _pace(self, receiving: bool) -> str | None:
        """Set the wrapped socket's timeout for the next operation; returns the limit it enforces."""
        budget = current()
        if budget is None:
            self._sock.settimeout(self._timeout)
            return None
        if receiving:
            budget.answer_awaited()
        if not receiving and budget.stall_s is not None:
            limit, name = budget.stall_s, "stall"          # the body's pace, not urllib3's send timeout
        else:
            limit, name = (self._timeout, None) if self._timeout is not None else (float("inf"), None)
        left = budget.left_s()
        if left is not None and left <= limit:
            if left <= 0:
                budget.fired = "deadline"
                raise TimeoutError("the request's deadline has passed")
            limit, name = left, "deadline"
        self._sock.settimeout(None if limit == float("inf") else limit)
        return name

    def _timed_out(self, name: str | None) -> None:
        budget = current()
        if budget is not None and name is not None:
            budget.fired = name

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        name = self._pace(receiving=True)
        try:
            return self._sock.recv_into(buffer, nbytes, flags)
        except TimeoutError:
            self._timed_out(name)
            raise

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        name = self._pace(receiving=True)
        try:
            return self._sock.recv(bufsize, flags)
        except TimeoutError:
            self._timed_out(name)
            raise

    def send(self, data: Any, flags: int = 0) -> int:
        name = self._pace(receiving=False)
        try:
            return self._sock.send(data, flags)
        except TimeoutError:
            self._timed_out(name)
            raise

    def sendall(self, data: Any, flags: int = 0) -> None:
        # One send at a time: each may wait up to the stall limit, and any byte taken is progress
        # (socket.sendall's timeout would bound the whole block instead).
        view = memoryview(data).cast("B")
        while view:
            view = view[self.send(view, flags):]

    def makefile(self, *args: Any, **kwargs: Any) -> Any:
        return socket.socket.makefile(self, *args, **kwargs)  # type: ignore[arg-type]

    def _decref_socketios(self) -> None:
        if self._io_refs > 0:
            self._io_refs -= 1
        if self._closed and self._io_refs <= 0:
            self._sock.close()

    def close(self) -> None:
        self._closed = True
        if self._io_refs <= 0:
            self._sock.close()


def _check_left() -> None:
    budget = current()
    left = budget.left_s() if budget is not None else None
    if left is not None and left <= 0:
        budget.fired = "deadline"
        raise TimeoutError("the request's deadline passed while connecting")


class _PacedHTTPConnection(HTTPConnection):
    def connect(self) -> None:
        super().connect()
        _check_left()
        self.sock = _PacedSocket(self.sock)


class _PacedHTTPSConnection(HTTPSConnection):
    def connect(self) -> None:
        super().connect()      # TCP, then TLS on the plain socket: each step bounded by the connect timeout
        _check_left()
        self.sock = _PacedSocket(self.sock)


class _PacedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _PacedHTTPConnection


class _PacedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _PacedHTTPSConnection


PACED_POOL_CLASSES = {"http": _PacedHTTPPool, "https": _PacedHTTPSPool}


def read_bounded(raw: Any, headers: Mapping[str, str], limit_bytes: int, *, what: str) -> bytes:
    """The whole answer body of `raw` (urllib3's response, not decoded), decoded if the server
    compressed it; Transient (reason "oversized_answer") as soon as it proves longer than limit_bytes,
    without reading on."""
    declared = headers.get("Content-Length", "")
    if declared.strip().isdigit() and int(declared) > limit_bytes:
        raise _oversized(what, limit_bytes)
    body = bytearray()
    while chunk := raw.read(READ_BLOCK_BYTES, decode_content=False):
        body += chunk
        if len(body) > limit_bytes:
            raise _oversized(what, limit_bytes)
    raw.release_conn()        # read to its end: the connection may serve the next request
    encoding = headers.get("Content-Encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return bytes(body)
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise Transient(f"{what}: the answer is encoded as {encoding[:20]!r}, which seqdrop did not ask for",
                        reason="bad_answer")
    try:   # wbits 47: gzip or zlib, told apart by the header; max_length: no bomb
        decoder = zlib.decompressobj(47)
        decoded = decoder.decompress(bytes(body), limit_bytes + 1)
    except zlib.error:
        raise Transient(f"{what}: the answer's compressed body is damaged", reason="bad_answer") from None
    if len(decoded) > limit_bytes or decoder.unconsumed_tail:
        raise _oversized(what, limit_bytes)
    return decoded


def _oversized(what: str, limit_bytes: int) -> Transient:
    return Transient(f"{what}: the answer is longer than the {limit_bytes // 1024} KiB seqdrop reads; "
                     f"refused without reading on", reason="oversized_answer")
