"""Prometheus metrics: one registry per Metrics object (no global state), served on loopback.

Every name starts with ``seqdrop_``. Updating a metric is a few attribute writes under a lock, so
the daemon calls these unconditionally; when ``[metrics] enabled = false`` nothing is served and
nothing else happens.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Mapping
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    make_wsgi_app,
)

from daemon import __version__
from daemon.config import is_loopback_host as is_loopback
from daemon.queue.base import STATES

# Each of the queue's STATES (design.md's external states) is always exported (0 when empty), so
# dashboards and alerts never see a series vanish.

_DURATION_BUCKETS_S = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200)
# 1 Mbps .. 10 Gbps, in bytes per second.
_THROUGHPUT_BUCKETS_BPS = (125e3, 625e3, 1.25e6, 2.5e6, 6.25e6, 12.5e6, 25e6, 62.5e6, 125e6,
                           312.5e6, 625e6, 1.25e9)
_REASON_RE = re.compile(r"[^a-z0-9_]+")


class Metrics:
    """The daemon's metrics; call the verbs from anywhere, start_server() only when enabled."""

    def __init__(self, *, version: str = __version__) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._files = Gauge("seqdrop_files", "File versions in the queue, by state.",
                            ["state"], registry=r)
        self._uploaded_files = Counter("seqdrop_uploaded_files",
                                       "Files confirmed by One Codex since start.", registry=r)
        self._uploaded_bytes = Counter("seqdrop_uploaded_bytes",
                                       "Bytes of confirmed files since start.", registry=r)
        self._duration = Histogram("seqdrop_upload_duration_seconds",
                                   "Time from init_upload to confirm_upload per file.",
                                   buckets=_DURATION_BUCKETS_S, registry=r)
        self._throughput = Histogram("seqdrop_upload_throughput_bytes_per_second",
                                     "Average rate of each confirmed upload.",
                                     buckets=_THROUGHPUT_BUCKETS_BPS, registry=r)
        self._last_throughput = Gauge("seqdrop_last_upload_throughput_bytes_per_second",
                                      "Average rate of the last confirmed upload.", registry=r)
        self._last_success = Gauge("seqdrop_last_upload_timestamp_seconds",
                                   "Unix time of the last confirmed upload (0: none yet).",
                                   registry=r)
        self._retries = Counter("seqdrop_retries", "Upload steps retried, by reason.",
                                ["reason"], registry=r)
        self._failed = Counter("seqdrop_files_failed",
                               "Files refused for good by the API or S3.", registry=r)
        self._rejected = Counter("seqdrop_files_rejected",
                                 "Files rejected by seqdrop's own content checks.", registry=r)
        self._paused = Gauge("seqdrop_paused",
                             "1 while uploads are paused (API key or account refused).",
                             registry=r)
        self._watcher_healthy = Gauge("seqdrop_watcher_healthy",
                                      "1 while the folder observer is alive.", registry=r)
        self._started = Gauge("seqdrop_start_time_seconds", "Unix time the daemon started.",
                              registry=r)
        self._started.set(time.time())
        # The usual *_info pattern: a constant 1 whose label carries the value, so a query can join
        # it to any series (`* on (instance) group_left (version) seqdrop_build_info`).
        self._build_info = Gauge("seqdrop_build_info", "The running seqdrop's version (always 1).",
                                 ["version"], registry=r)
        self._build_info.labels(version=version).set(1)
        self._oldest_waiting = Gauge("seqdrop_oldest_waiting_file_timestamp_seconds",
                                     "Unix time since which the longest-waiting seen or queued file "
                                     "has waited (0: none waits).", registry=r)
        self._folder_present = Gauge("seqdrop_watch_folder_present",
                                     "1 while a configured watch folder exists, by path.",
                                     ["path"], registry=r)
        for state in STATES:
            self._files.labels(state=state).set(0)
        self._lock = threading.Lock()
        self._folder_paths: set[str] = set()
        self._server = None
        self._thread: threading.Thread | None = None

    # -- updates -------------------------------------------------------------------------------

    def set_files_by_state(self, counts: Mapping[str, int]) -> None:
        """Set the per-state gauge; known states missing from counts read 0."""
        for state in STATES:
            self._files.labels(state=state).set(counts.get(state, 0))
        for state, n in counts.items():
            if state not in STATES:
                self._files.labels(state=state).set(n)

    def file_uploaded(self, bytes_: int, duration_s: float, *, now: float | None = None) -> None:
        """A file was confirmed: count it, its bytes, its duration and its throughput."""
        self._uploaded_files.inc()
        self._uploaded_bytes.inc(max(0, bytes_))
        self._duration.observe(max(0.0, duration_s))
        if duration_s > 0:
            rate = bytes_ / duration_s
            self._throughput.observe(rate)
            self._last_throughput.set(rate)
        self._last_success.set(time.time() if now is None else now)

    def retry(self, reason: str) -> None:
        """An upload step will be retried; reason is a short identifier ("timeout", "http_503")."""
        # Keep label values few and tidy: an unexpected string must not explode the series count.
        label = _REASON_RE.sub("_", reason.lower()).strip("_")[:40] or "other"
        self._retries.labels(reason=label).inc()

    def file_failed(self) -> None:
        self._failed.inc()

    def file_rejected(self) -> None:
        self._rejected.inc()

    def set_paused(self, paused: bool) -> None:
        self._paused.set(1 if paused else 0)

    def set_watcher_healthy(self, healthy: bool) -> None:
        self._watcher_healthy.set(1 if healthy else 0)

    def set_oldest_waiting(self, since_s: float | None) -> None:
        """The Unix time since which the longest-waiting seen/queued file waits; None: none waits."""
        self._oldest_waiting.set(since_s if since_s else 0)

    def set_watch_folders_present(self, present: Mapping[str, bool]) -> None:
        """Whether each configured watch folder exists (path → bool); pass every folder each time.

        A path missing from this call loses its series: nothing alerts about a folder no longer watched.
        """
        with self._lock:
            for path in self._folder_paths - set(present):
                self._folder_present.remove(path)
            for path, ok in present.items():
                self._folder_present.labels(path=path).set(1 if ok else 0)
            self._folder_paths = set(present)

    # -- the endpoint --------------------------------------------------------------------------

    def start_server(self, host: str = "127.0.0.1", port: int = 9808, *,
                     allow_remote: bool = False) -> int:
        """Serve /metrics on host:port in a daemon thread; return the bound port (port 0: any free).

        Only loopback addresses are accepted unless allow_remote: the numbers reveal the lab's
        activity, and the endpoint has no authentication.
        """
        host = host.strip("[]")
        if not allow_remote and not is_loopback(host):
            raise ValueError(f"metrics listen address {host!r} is not loopback; use 127.0.0.1 or "
                             "::1 (or allow remote listening explicitly)")
        with self._lock:
            if self._server is not None:
                raise RuntimeError("metrics server already running")
            server_class = _Server6 if ":" in host else _Server4
            server = make_server(host, port, make_wsgi_app(self.registry), server_class,
                                 handler_class=_QuietHandler)
            # A short poll interval lets stop_server() return in tens of milliseconds.
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                      name="seqdrop-metrics", daemon=True)
            thread.start()
            self._server, self._thread = server, thread
            return int(server.server_port)

    def stop_server(self, timeout_s: float = 5.0) -> None:
        """Stop serving (idempotent)."""
        with self._lock:
            server, thread = self._server, self._thread
            self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
            if thread is not None:
                thread.join(timeout_s)


class _Server4(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a hung scraper must not hold the daemon's exit


class _Server6(_Server4):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args) -> None:  # scrapes every 15 s are not news
        pass

