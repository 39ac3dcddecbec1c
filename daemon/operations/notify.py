"""Tell systemd how the daemon is doing, over the sd_notify(3) datagram protocol.

The protocol is a few lines: one AF_UNIX datagram of newline-separated ``KEY=value`` pairs sent to
the socket named in ``$NOTIFY_SOCKET`` (a path, or an abstract name when it starts with ``@``).
We speak it directly instead of depending on a package for it (``sdnotify`` and friends are one
file each, unmaintained for years, and swallow errors in ways we cannot log).

Nothing here ever raises: a notification that cannot be sent is logged at debug level and
forgotten, because systemd is an observer and must never be able to stop an upload.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Mapping
from typing import Any

import structlog


class SystemdNotifier:
    """Sends READY/STATUS/WATCHDOG/STOPPING to systemd; every call is a no-op when disabled."""

    def __init__(self, address: str | None, *, watchdog_usec: int | None = None,
                 log: Any = None) -> None:
        self._log = log if log is not None else structlog.get_logger("seqdrop.notify")
        self._address = _socket_address(address) if address else None
        self._watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()  # the watchdog thread and the main loop share one socket
        self._watchdogs: list[WatchdogThread] = []

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *,
                 log: Any = None) -> SystemdNotifier:
        """Build from NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID (os.environ by default)."""
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        watchdog_usec = _parse_int(env.get("WATCHDOG_USEC"))
        # WATCHDOG_PID names the process the watchdog is meant for; a child that inherited the
        # environment must not ping on its parent's behalf (sd_watchdog_enabled(3)).
        watchdog_pid = _parse_int(env.get("WATCHDOG_PID"))
        if watchdog_pid is not None and watchdog_pid != os.getpid():
            watchdog_usec = None
        return cls(address, watchdog_usec=watchdog_usec, log=log)

    @property
    def enabled(self) -> bool:
        """True when a notify socket was given (we run under systemd with Type=notify)."""
        return self._address is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to send WATCHDOG=1: half of WATCHDOG_USEC, as sd_watchdog_enabled(3) advises."""
        if self._watchdog_usec is None or not self.enabled:
            return None
        return self._watchdog_usec / 2 / 1_000_000

    def ready(self) -> None:
        """Start-up is complete: systemd marks the unit active."""
        self.notify(READY=1)

    def status(self, text: str) -> None:
        """A one-line status shown by `systemctl status seqdrop`."""
        self.notify(STATUS=text)

    def watchdog(self) -> None:
        """Keep-alive: send only while the daemon is really healthy."""
        self.notify(WATCHDOG=1)

    def stopping(self) -> None:
        """Shutdown has begun."""
        self.notify(STOPPING=1)

    def notify(self, **fields: Any) -> bool:
        """Send one datagram of KEY=value lines; True if it was sent. Never raises."""
        if self._address is None or not fields:
            return False
        # A value cannot contain a newline: it would start a new assignment.
        lines = [f"{key.upper()}={' '.join(str(value).splitlines())}"
                 for key, value in fields.items()]
        payload = "\n".join(lines).encode("utf-8", "replace")
        try:
            with self._lock:
                if self._sock is None:
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                    # A receiver that stopped reading must not hang the watchdog thread.
                    sock.settimeout(2.0)
                    self._sock = sock
                self._sock.sendto(payload, self._address)
        except (OSError, ValueError) as exc:
            self._log.debug("notify.send_failed", error=str(exc), fields=sorted(fields))
            return False
        return True

    def start_watchdog(self, healthy: Callable[[], bool], *,
                       interval_s: float | None = None) -> WatchdogThread | None:
        """Ping WATCHDOG=1 every interval while healthy() is true; None if no watchdog is asked for.

        When healthy() turns false the pings stop, so systemd kills and restarts the unit after
        WatchdogSec: that is the point (a dead observer, a stuck worker or a queue that records
        nothing must not look alive).
        """
        interval = interval_s if interval_s is not None else self.watchdog_interval_s
        if interval is None or not self.enabled:
            return None
        thread = WatchdogThread(self, healthy, interval_s=interval, log=self._log)
        thread.start()
        self._watchdogs.append(thread)
        return thread

    def close(self) -> None:
        """Stop the watchdog threads started here and close the socket (later calls reopen it)."""
        while self._watchdogs:
            self._watchdogs.pop().stop()
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


class WatchdogThread(threading.Thread):
    """Background pinger; stop() ends it promptly (it waits on an event, never sleeps)."""

    def __init__(self, notifier: SystemdNotifier, healthy: Callable[[], bool], *,
                 interval_s: float, log: Any) -> None:
        super().__init__(name="seqdrop-watchdog", daemon=True)
        self._notifier, self._healthy, self._interval_s = notifier, healthy, interval_s
        self._stop_event = threading.Event()
        self._log = log

    def run(self) -> None:
        was_healthy = True
        while not self._stop_event.is_set():
            try:
                ok = bool(self._healthy())
            except Exception as exc:  # a broken health check counts as unhealthy
                self._log.debug("notify.health_check_failed", error=repr(exc))
                ok = False
            if ok:
                self._notifier.watchdog()
            elif was_healthy:
                self._log.error("notify.watchdog_withheld",
                                reason="the daemon is not healthy (see the errors before this); "
                                       "systemd restarts it after WatchdogSec")
            was_healthy = ok
            self._stop_event.wait(self._interval_s)

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop_event.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout_s)


def _socket_address(address: str) -> str | bytes:
    # "@name" is Linux's abstract namespace: the name starts with a NUL byte on the wire.
    if address.startswith("@"):
        return b"\0" + address[1:].encode()
    return address


def _parse_int(text: str | None) -> int | None:
    try:
        return int(text) if text else None
    except ValueError:
        return None
