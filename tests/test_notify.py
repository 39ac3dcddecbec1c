"""sd_notify over a real AF_UNIX datagram socket, as systemd would receive it."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid

import pytest
import structlog

from daemon.operations.notify import SystemdNotifier


@pytest.fixture
def receiver(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    sock.settimeout(5.0)
    yield sock, path
    sock.close()


def _recv(sock: socket.socket) -> dict[str, str]:
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.split("\n"))


def test_messages_arrive_in_order_on_a_path_socket(receiver):
    """READY, STATUS, WATCHDOG and STOPPING arrive as separate datagrams, in the order sent."""
    sock, path = receiver
    n = SystemdNotifier.from_env({"NOTIFY_SOCKET": path})
    assert n.enabled
    n.ready()
    n.status("queued=3 uploading=1 done_today=10 failed=0 paused=no")
    n.watchdog()
    n.stopping()
    assert _recv(sock) == {"READY": "1"}
    assert _recv(sock) == {"STATUS": "queued=3 uploading=1 done_today=10 failed=0 paused=no"}
    assert _recv(sock) == {"WATCHDOG": "1"}
    assert _recv(sock) == {"STOPPING": "1"}
    n.close()


def test_abstract_socket_name_with_at_sign():
    """An @name NOTIFY_SOCKET reaches a socket bound in the abstract namespace."""
    name = f"seqdrop-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5.0)
    try:
        n = SystemdNotifier.from_env({"NOTIFY_SOCKET": "@" + name})
        n.ready()
        n.status("hello")
        assert _recv(sock) == {"READY": "1"}
        assert _recv(sock) == {"STATUS": "hello"}
    finally:
        sock.close()


def test_notify_sends_several_fields_and_flattens_newlines(receiver):
    """notify(**fields) sends KEY=value lines in one datagram; a newline in a value cannot inject a key."""
    sock, path = receiver
    n = SystemdNotifier.from_env({"NOTIFY_SOCKET": path})
    assert n.notify(status="two\nlines", extend_timeout_usec=5_000_000)
    assert _recv(sock) == {"STATUS": "two lines", "EXTEND_TIMEOUT_USEC": "5000000"}


def test_without_notify_socket_everything_is_a_no_op():
    """With no NOTIFY_SOCKET nothing is sent, nothing raises, and no watchdog is asked for."""
    n = SystemdNotifier.from_env({"WATCHDOG_USEC": "60000000"})
    assert not n.enabled
    assert n.watchdog_interval_s is None
    n.ready(), n.status("x"), n.watchdog(), n.stopping()
    assert n.notify(READY=1) is False
    assert n.start_watchdog(lambda: True) is None


def test_unreachable_socket_never_raises(tmp_path):
    """A socket path nobody listens on is logged at debug and ignored."""
    with structlog.testing.capture_logs() as logs:
        n = SystemdNotifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "missing.sock")})
        n.ready()
        assert n.notify(STATUS="x") is False
    assert [e["event"] for e in logs] == ["notify.send_failed", "notify.send_failed"]
    assert all(e["log_level"] == "debug" for e in logs)


def test_watchdog_interval_is_half_of_watchdog_usec(receiver):
    """watchdog_interval_s is WATCHDOG_USEC/2 in seconds, only for our own pid."""
    _, path = receiver
    n = SystemdNotifier.from_env({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "60000000"})
    assert n.watchdog_interval_s == pytest.approx(30.0)
    mine = SystemdNotifier.from_env({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "60000000",
                                     "WATCHDOG_PID": str(os.getpid())})
    assert mine.watchdog_interval_s == pytest.approx(30.0)
    other = SystemdNotifier.from_env({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "60000000",
                                      "WATCHDOG_PID": str(os.getpid() + 1)})
    assert other.watchdog_interval_s is None
    garbage = SystemdNotifier.from_env({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "soon"})
    assert garbage.watchdog_interval_s is None


def test_watchdog_thread_pings_only_while_healthy(receiver):
    """The watchdog thread sends WATCHDOG=1 while healthy() is true and stops when it turns false."""
    sock, path = receiver
    n = SystemdNotifier.from_env({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "60000000"})
    alive = threading.Event()
    alive.set()
    thread = n.start_watchdog(alive.is_set, interval_s=0.02)
    assert thread is not None
    try:
        for _ in range(3):
            assert _recv(sock) == {"WATCHDOG": "1"}
        alive.clear()  # the observer died
        # Drain what was in flight, then prove silence for several intervals.
        sock.settimeout(0.2)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            try:
                sock.recv(4096)
            except TimeoutError:
                break
        else:
            pytest.fail("watchdog kept pinging after the observer died")
    finally:
        thread.stop()
    assert not thread.is_alive()


def test_watchdog_thread_treats_a_crashing_health_check_as_unhealthy(receiver):
    """A health check that raises withholds the ping (and the thread survives)."""
    sock, path = receiver
    n = SystemdNotifier.from_env({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"})
    calls = []

    def broken() -> bool:
        calls.append(1)
        raise RuntimeError("boom")

    thread = n.start_watchdog(broken, interval_s=0.01)
    deadline = time.monotonic() + 5.0
    while len(calls) < 3 and time.monotonic() < deadline:
        time.sleep(0.005)
    thread.stop()
    assert len(calls) >= 3 and not thread.is_alive()
    sock.settimeout(0.05)
    with pytest.raises(TimeoutError):
        sock.recv(4096)


def test_close_stops_the_watchdog_thread(receiver):
    """close() ends every watchdog thread the notifier started, so no ping follows shutdown."""
    sock, path = receiver
    n = SystemdNotifier.from_env({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"})
    thread = n.start_watchdog(lambda: True, interval_s=0.01)
    assert _recv(sock) == {"WATCHDOG": "1"}
    n.stopping()
    n.close()
    assert not thread.is_alive()
