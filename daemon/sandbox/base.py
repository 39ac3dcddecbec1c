"""What both servers' request handlers share: answering, dropping, waiting, recording."""

from __future__ import annotations

import logging
import socket
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterable

log = logging.getLogger("seqdrop.sandbox")
ENDLESS_CHUNK = b"A" * 65536   # what an endless body repeats (valid inside a JSON string or XML text)


class SandboxServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer that knows its Sandbox and keeps client disconnects out of stderr."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type, sandbox: Any) -> None:
        super().__init__(address, handler)
        self.sandbox = sandbox

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("sandbox.handler_error client=%s", client_address, exc_info=True)


class BaseHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive; every answer has a Content-Length and (from send_response) a Date."""

    protocol_version = "HTTP/1.1"
    idle_timeout_s = 60.0
    # Headers and body leave in two writes; with Nagle on, the body waits for the client's delayed
    # ACK (~40 ms a request): 20 files/s instead of 140+ in bench/daemon.py. Real servers set it too.
    disable_nagle_algorithm = True

    def setup(self) -> None:
        # A client that stops sending for this long is cut off (S3 answers RequestTimeout).
        self.timeout = self.idle_timeout()
        super().setup()

    def idle_timeout(self) -> float:
        return self.idle_timeout_s

    @property
    def sb(self) -> Any:
        return self.server.sandbox  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        log.debug("sandbox.http %s " + format, self.server.server_address[1], *args)

    def version_string(self) -> str:
        return self.server_version

    def send_body(self, status: int, body: bytes, content_type: str,
                  headers: Iterable[tuple[str, str]] = (), *, close: bool = False) -> None:
        """Answer with `body`; `close` ends the connection afterwards. With `self.trickle_s` set (a
        "trickle" fault), the whole answer, status line first, goes one byte per trickle_s."""
        if getattr(self, "trickle_s", None) is not None:
            head = [("Content-Type", content_type), ("Content-Length", str(len(body))), *headers]
            self.answered = status
            self.flush_record()
            self._send_slowly(self._raw_head(status, head) + body, self.trickle_s)
            return
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.answered = status
        self.flush_record()  # before the client can see the answer, so requests() is never behind it
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_endless(self, status: int, content_type: str, prefix: bytes) -> None:
        """Answer `prefix` and then bytes for ever, as fast as the client reads, until it hangs up
        or the sandbox stops. No Content-Length: the body ends when the connection does."""
        self.answered = status
        self.flush_record()
        self.close_connection = True
        head = self._raw_head(status, [("Content-Type", content_type), ("Connection", "close")])
        try:
            self.wfile.write(head + prefix)
            while not self.sb._stopping.is_set():
                self.wfile.write(ENDLESS_CHUNK)
        except OSError:
            pass  # the client hung up: the point of the exercise

    def _send_slowly(self, data: bytes, interval_s: float) -> None:
        """One byte, a pause, the next byte…; stops when the client hangs up or the sandbox stops."""
        for index in range(len(data)):
            if index and (self.wait(interval_s) or self.sb._stopping.is_set()):
                self.close_connection = True
                return
            try:
                self.wfile.write(data[index:index + 1])
            except OSError:
                self.close_connection = True
                return

    def _raw_head(self, status: int, headers: Iterable[tuple[str, str]]) -> bytes:
        """The status line and headers as send_response would write them (Server and Date too)."""
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = ""
        lines = [f"{self.protocol_version} {status} {phrase}", f"Server: {self.version_string()}",
                 f"Date: {self.date_time_string()}", *(f"{name}: {value}" for name, value in headers)]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def drop(self) -> None:
        """Close the connection without answering."""
        self.answered = None
        self.flush_record()
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def wait(self, delay_s: float) -> bool:
        """Sleep, but wake up when the sandbox stops (then True)."""
        return self.sb._stopping.wait(delay_s)

    def begin(self, target: str) -> dict:
        """Start a request: the returned dict collects extra facts for its requests() entry."""
        self.answered = None
        self.trickle_s: float | None = None
        self._record: dict | None = {"target": target}
        return self._record

    def flush_record(self) -> None:
        """Add this request to sb.requests() once (at its answer, its drop, or its end)."""
        pending, self._record = getattr(self, "_record", None), None
        if pending is not None:
            target = pending.pop("target")
            self._add_record(target, **pending)

    def _add_record(self, target: str, **extra: Any) -> None:
        """Log this request in sb.requests(); the Authorization value is redacted."""
        headers = {}
        for name, value in self.headers.items():
            if name.lower() == "authorization":
                value = value.split(" ", 1)[0] + " <redacted>"
            headers[name] = value
        entry = {"target": target, "method": self.command, "path": self.path, "headers": headers,
                 "status": getattr(self, "answered", None), "time": time.time()}
        entry.update(extra)
        self.sb._log.add(entry)
        log.debug("sandbox.request target=%s method=%s path=%s status=%s", target, self.command,
                  self.path.split("?")[0], entry["status"])
