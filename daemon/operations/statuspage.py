"""The read-only status page: did my run go up? For lab staff who are not root.

One page, plain HTML: whether uploads are paused, the files by state, the upload throughput of the
last hour as an inline SVG chart, and every run (the folder a file was written in, or the run folder
above Illumina's Data/ or MinKNOW's fastq_pass/) with its files, their states, sample ids and errors.

Served by the daemon from one thread (http.server) on loopback by default; any other address needs
basic auth. It reads the queue through its own read-only connection (SQLite, or the shared queue's
PostgreSQL), writes nothing anywhere, and shows no secret (never a row's upload fields; the servers'
words pass through redact.scrub).
Every value from the queue is HTML-escaped. No JavaScript at all: the page reloads itself
(meta refresh) and its Content-Security-Policy allows no script.
"""

from __future__ import annotations

import base64
import hmac
import os
import re
import socket
import sqlite3
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from daemon import __version__
from daemon.config import Settings, is_loopback_host, parse_listen
from daemon.errors import ConfigError
from daemon.operations import statuspage_html as view
from daemon.queue.base import FileRow, Store
from daemon.queue.open import shared_reader
from daemon.queue.sqlite import SqliteStore

#: The systemd credential holding the page's password (LoadCredential=status-page-password:/path).
CREDENTIAL_NAME = "status-page-password"
#: The meta key under which the pause gate records a pause (daemon/service/pause.py, PAUSED_META).
PAUSED_META = "paused"
REFRESH_S = 30
MAX_RUNS = 50              # the most recently active runs; `seqdrop status` lists everything
MAX_FILES_PER_RUN = 500

# Folders that sit inside a run folder: a file below one belongs to the run folder that holds it
# (Illumina: <run>/Data/Intensities/BaseCalls, <run>/Analysis/1/Data/fastq; MinKNOW:
# <run>/fastq_pass/barcode01), the folder that also holds the run's completion marker.
RUN_SUBFOLDERS = frozenset({"Data", "Analysis", "Alignment_1", "fastq_pass", "fastq_fail", "fastq_skip",
                            "pod5_pass", "pod5_fail", "bam_pass", "bam_fail"})


# -- what the page shows -------------------------------------------------------------------------

def run_folder(path: str, roots: Iterable[str] = ()) -> str:
    """The run a file belongs to, from its path alone (never the file system: a page load must not
    hang on a dead network share): the folder holding the first known run sub-folder below the
    watch root, else the file's own folder."""
    folder = os.path.dirname(path)
    root = max((r.rstrip("/") for r in roots if path.startswith(r.rstrip("/") + "/")), key=len, default="")
    parts = folder[len(root):].strip("/").split("/") if folder != root else []
    for i, part in enumerate(parts):
        if part in RUN_SUBFOLDERS:
            return os.path.join(root or "/", *parts[:i])
    return folder


@dataclass
class Run:
    """One run folder and the latest version of each of its files.

    Today a file is one sample. When samples group several files (R1/R2, lanes; a later issue),
    a Run holds samples and each sample its files: `group_runs` and `statuspage_html.run_section`
    are where that level goes.
    """
    folder: str
    files: list[FileRow] = field(default_factory=list)
    updated_at: float = 0.0
    hidden_files: int = 0       # over MAX_FILES_PER_RUN, not shown


def group_runs(rows: Iterable[FileRow], roots: Iterable[str] = (), *, max_runs: int = MAX_RUNS,
               max_files: int = MAX_FILES_PER_RUN) -> tuple[list[Run], int]:
    """The latest version of each path, grouped by run, most recently active run first; also the
    number of runs left out."""
    latest: dict[str, FileRow] = {}
    for row in rows:                           # ordered by id: a later version replaces the earlier
        latest[row.path] = row
    roots = tuple(roots)
    runs: dict[str, Run] = {}
    for row in latest.values():
        folder = run_folder(row.path, roots)
        run = runs.setdefault(folder, Run(folder))
        run.files.append(row)
        run.updated_at = max(run.updated_at, row.updated_at)
    ordered = sorted(runs.values(), key=lambda r: (-r.updated_at, r.folder))
    for run in ordered:
        run.files.sort(key=lambda r: _natural(r.path))
        run.hidden_files = max(0, len(run.files) - max_files)
        del run.files[max_files:]
    return ordered[:max_runs], max(0, len(ordered) - max_runs)


def _natural(text: str) -> list[Any]:
    """Sort key: S2 before S10, as people count."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def throughput_per_minute(rows: Iterable[FileRow], now: float, minutes: int = 60) -> list[int]:
    """Bytes confirmed in each of the last `minutes` minutes, oldest first. A file counts in the
    minute One Codex confirmed it (the queue keeps when a file was done, not when its bytes went)."""
    buckets = [0] * minutes
    start = now - minutes * 60
    for row in rows:
        if row.state == "done" and start < row.updated_at <= now:
            buckets[min(minutes - 1, int((row.updated_at - start) // 60))] += row.size
    return buckets


@dataclass
class Snapshot:
    """Everything one page shows, read from the queue in one go."""
    now: float
    counts: Mapping[str, int]
    paused: Mapping[str, Any] | None
    runs: list[Run]
    hidden_runs: int
    per_minute: list[int]


def read_snapshot(store: Store, roots: Iterable[str], now: float) -> Snapshot:
    rows = store.files()
    paused = store.get_meta(PAUSED_META)
    runs, hidden = group_runs(rows, roots)
    return Snapshot(now=now, counts=store.counts(), paused=paused if isinstance(paused, dict) else None,
                    runs=runs, hidden_runs=hidden, per_minute=throughput_per_minute(rows, now))


# -- the server ----------------------------------------------------------------------------------

class StatusPage:
    """The page on `listen` (HOST:PORT; port 0: any free one), from the queue at store_path.

    auth: (user name, password) for basic auth; required unless listen is loopback.
    ssl_context: a server context (certificate loaded) to serve HTTPS.
    """

    def __init__(self, store_path: str, listen: str, *, auth: tuple[str, str] | None = None, log: Any,
                 roots: Iterable[str] = (), ssl_context: ssl.SSLContext | None = None,
                 hostname: str | None = None, clock: Callable[[], float] = time.time,
                 opener: Callable[[], Any] | None = None, read_errors: tuple[type[Exception], ...] = ()) -> None:
        """opener: opens the queue read-only instead of the SQLite file at store_path (the shared
        PostgreSQL queue; store_path then names it); read_errors: what its reads raise when it is away."""
        self._opener, self._read_errors = opener, read_errors
        self._host, self._port = parse_listen(listen)
        if auth is None and not is_loopback_host(self._host):
            raise ValueError(f"the status page on {listen} is not loopback: it needs a user name and password")
        self._store_path, self._auth, self.log = store_path, auth, log
        self._roots = tuple(roots)
        self._ssl_context = ssl_context
        self._hostname = hostname or socket.gethostname()
        self._clock = clock
        self._store: Store | None = None
        self._read_lock = threading.Lock()   # one reader connection, one page rendered at a time
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_port if self._server is not None else self._port

    def start(self) -> int:
        """Listen and serve from a daemon thread; return the bound port."""
        if self._server is not None:
            raise RuntimeError("the status page is already running")
        server_class = _Server6 if ":" in self._host else _Server4
        server = server_class((self._host, self._port), _Handler)
        server.page = self
        if self._ssl_context is not None:
            # The handshake happens in the request's own thread (on its first read), not in accept().
            server.socket = self._ssl_context.wrap_socket(server.socket, server_side=True,
                                                          do_handshake_on_connect=False)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="seqdrop-status-page", daemon=True)
        self._thread.start()
        scheme = "https" if self._ssl_context is not None else "http"
        self.log.info("status_page.listening", url=f"{scheme}://{_url_host(self._host)}:{self.port}/",
                       auth=self._auth is not None)
        return self.port

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop serving and close the queue connection (idempotent)."""
        server, thread, self._server, self._thread = self._server, self._thread, None, None
        if server is not None:
            server.shutdown()
            server.server_close()
            if thread is not None:
                thread.join(timeout_s)
        with self._read_lock:
            if self._store is not None:
                self._store.close()
                self._store = None

    # -- called by the handler threads ---------------------------------------------------------

    def authorized(self, header: str | None) -> bool:
        if self._auth is None:
            return True
        scheme, _, value = (header or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, sep, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        # Both compared in constant time, and both always compared: no timing hint of a right name.
        ok_user = hmac.compare_digest(user.encode(), self._auth[0].encode())
        ok_password = hmac.compare_digest(password.encode(), self._auth[1].encode())
        return bool(sep) and ok_user and ok_password

    def render(self) -> tuple[int, str]:
        """(HTTP status, the page): 200 with the queue's state, 503 when the queue cannot be read."""
        now = self._clock()
        with self._read_lock:
            try:
                snapshot = read_snapshot(self._open_store(), self._roots, now)
            except (sqlite3.Error, OSError, *self._read_errors) as e:
                self.log.warning("status_page.queue_unreadable", path=self._store_path, error=str(e))
                if self._store is not None:
                    self._store.close()
                    self._store = None
                return 503, view.unavailable_page(self._hostname, __version__, self._store_path, now,
                                                  refresh_s=REFRESH_S)
        return 200, view.page(snapshot, hostname=self._hostname, version=__version__, refresh_s=REFRESH_S)

    def _open_store(self) -> Store:
        if self._store is None and self._opener is not None:
            store = self._opener()
            if not store.has_schema():
                store.close()
                raise FileNotFoundError(f"the queue {self._store_path} is being created")
            self._store = store
        if self._store is None:
            if not os.path.exists(self._store_path):
                raise FileNotFoundError(f"the queue {self._store_path} does not exist yet")
            store = SqliteStore(self._store_path, readonly=True)
            if not store.has_schema():
                store.close()
                raise FileNotFoundError(f"the queue {self._store_path} is being created")
            self._store = store
        return self._store


class _Server4(ThreadingHTTPServer):
    daemon_threads = True          # a hung browser must not hold the daemon's exit
    page: StatusPage

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up, times out or speaks plain HTTP to HTTPS: not seqdrop's trouble, and
        # socketserver's default would print a traceback to the journal.
        self.page.log.debug("status_page.request_failed", client=client_address[0],
                            error=type(sys.exc_info()[1]).__name__)


class _Server6(_Server4):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server4
    timeout = 10                   # a client that sends nothing does not keep its thread for ever
    server_version = "seqdrop"
    sys_version = ""

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _answer(self, *, body: bool) -> None:
        page = self.server.page
        if not page.authorized(self.headers.get("Authorization")):
            if self.headers.get("Authorization"):
                page.log.warning("status_page.auth_refused", client=self.client_address[0])
            self._send(401, view.message_page("Sign in to see seqdrop's status."), body,
                       {"WWW-Authenticate": 'Basic realm="seqdrop", charset="UTF-8"'})
            return
        if self.path.split("?", 1)[0] != "/":
            self._send(404, view.message_page("Not here: the status page is at /."), body)
            return
        status, text = page.render()
        self._send(status, text, body)

    def _send(self, status: int, text: str, body: bool, extra: Mapping[str, str] | None = None) -> None:
        data = text.encode("utf-8")
        self.send_response(status)
        headers = {"Content-Type": "text/html; charset=utf-8", "Content-Length": str(len(data)),
                   "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
                   "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
                   "Content-Security-Policy": view.CONTENT_SECURITY_POLICY, **(extra or {})}
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:   # a page load every 30 s is not news
        pass


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# -- from the settings ---------------------------------------------------------------------------

def build_status_page(settings: Settings, *, log: Any, env: Mapping[str, str] | None = None
                      ) -> StatusPage | None:
    """The page [status_page] describes, not started; None when it is off.

    Its password is read now (password_file, else the systemd credential status-page-password):
    on an address other than loopback a page without one is a ConfigError (exit 2).
    """
    sp = settings.status_page
    if not sp.enabled:
        return None
    host, _port = parse_listen(sp.listen)
    password = load_password(sp.password_file, env=os.environ if env is None else env, source=settings.source)
    if password is None and not is_loopback_host(host):
        raise ConfigError(f"the status page listens on {sp.listen}, beyond this machine, but has no password",
                          file=settings.source, key="status_page.listen",
                          fix=f"LoadCredential={CREDENTIAL_NAME}:/etc/seqdrop/status-page-password in a "
                              "drop-in (systemctl edit seqdrop), or password_file = \"/path\" in "
                              "[status_page]; or listen on 127.0.0.1")
    context = None
    if sp.tls_cert_file and sp.tls_key_file:
        context = _server_tls(sp.tls_cert_file, sp.tls_key_file, source=settings.source)
    elif password is not None and not is_loopback_host(host):
        log.warning("status_page.password_over_plain_http", listen=sp.listen,
                    fix="set tls_cert_file and tls_key_file in [status_page], or put an HTTPS proxy in front")
    where, opener, read_errors = settings.queue.path, None, ()
    if settings.queue.shared:            # the shared PostgreSQL queue, not a file on this host
        where, opener, read_errors = shared_reader(settings)
    return StatusPage(where, sp.listen, auth=(sp.username, password) if password else None,
                      log=log, roots=[f.path for f in settings.watch.folders], ssl_context=context,
                      opener=opener, read_errors=read_errors)


def load_password(password_file: str | None, *, env: Mapping[str, str], source: str | None) -> str | None:
    """The page's password: password_file if set (it must exist), else the systemd credential
    status-page-password if there is one, else None. Only the final line break is removed."""
    if password_file:
        path, key = Path(password_file), "status_page.password_file"
    elif creds := env.get("CREDENTIALS_DIRECTORY"):
        path, key = Path(creds) / CREDENTIAL_NAME, f"systemd credential {CREDENTIAL_NAME}"
        if not path.exists():
            return None
    else:
        return None
    try:
        password = path.read_text(encoding="utf-8").rstrip("\r\n")
    except FileNotFoundError:
        raise ConfigError(f"the password file {path} does not exist", file=source, key=key,
                          fix="write the status page's password into it (mode 0600)") from None
    except (PermissionError, IsADirectoryError, UnicodeDecodeError) as e:
        raise ConfigError(f"the password file {path} cannot be read ({type(e).__name__})", file=source,
                          key=key, fix="make it a text file readable by the user seqdrop runs as") from None
    if not password:
        raise ConfigError(f"the password file {path} is empty", file=source, key=key,
                          fix="write the status page's password into it")
    return password


def _server_tls(cert_file: str, key_file: str, *, source: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"the certificate {cert_file} or its key {key_file} cannot be loaded ({e})",
                          file=source, key="status_page.tls_cert_file",
                          fix="PEM files readable by the user seqdrop runs as; the key must match the "
                              "certificate") from None
    return context

