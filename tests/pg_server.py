"""A real PostgreSQL server for the shared queue's tests, started by the suite itself.

initdb + pg_ctl into a temporary folder, listening only on a unix socket in that folder (no port is
shared with anything else on the machine). Run as root, the server runs as `nobody` (PostgreSQL refuses
to run as root) in a folder owned by it. The binaries: $SEQDROP_PG_BIN, Debian's
/usr/lib/postgresql/<version>/bin (15 first), or initdb on PATH. Where none is installed the tests
skip and say so, except under CI (env CI set), where that is a failure: scripts/dev installs
postgresql-15 when it runs as root on Debian.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

try:
    import psycopg
except ImportError:            # the [test] extra installs it; a bare environment says why it skips
    psycopg = None


def _bin_dir() -> str | None:
    candidates = [os.environ.get("SEQDROP_PG_BIN", "")]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: (not p.startswith(
        "/usr/lib/postgresql/15/"), p))
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(os.path.dirname(initdb))
    return next((c for c in candidates if c and os.access(os.path.join(c, "initdb"), os.X_OK)), None)


class PgServer:
    """One server in a temporary folder; databases made per test (create_database)."""

    def __init__(self, bin_dir: str) -> None:
        self.bin_dir = bin_dir
        self.root = tempfile.mkdtemp(prefix="seqdrop-pg-")
        self.data = os.path.join(self.root, "data")
        self.socket_dir = self.root
        self.port = 5432               # only a socket file name: the folder is ours alone
        self.log = os.path.join(self.root, "server.log")
        self._as: list[str] = []
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            os.chown(self.root, nobody.pw_uid, nobody.pw_gid)
            self._as = ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups"]
        self._names = itertools.count(1)

    def _run(self, *args: str) -> None:
        env = {**os.environ, "LC_ALL": "C", "HOME": self.root}
        subprocess.run([*self._as, *args], check=True, capture_output=True, env=env, cwd=self.root, timeout=120)

    def init(self) -> None:
        self._run(os.path.join(self.bin_dir, "initdb"), "-D", self.data, "-U", "seqdrop", "--auth=trust",
                  "-E", "UTF8", "--no-sync", "--no-instructions")

    def start(self) -> None:
        options = (f"-k {self.socket_dir} -p {self.port} -c listen_addresses='' -c fsync=off"
                   f" -c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run(os.path.join(self.bin_dir, "pg_ctl"), "-D", self.data, "-l", self.log, "-o", options, "-w",
                  "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run(os.path.join(self.bin_dir, "pg_ctl"), "-D", self.data, "-m", mode, "-w", "stop")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://seqdrop@/{database}?host={self.socket_dir}&port={self.port}"

    def create_database(self) -> str:
        """A new, empty database; its URL."""
        name = f"t{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as db:
            db.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def version(self) -> str:
        with psycopg.connect(self.url()) as db:
            return db.execute("SHOW server_version").fetchone()[0]

    def remove(self) -> None:
        try:
            self.stop("immediate")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.root, ignore_errors=True)


def require_psycopg() -> Any:
    """psycopg, for a test module that needs it at import (skips the module, or fails it under CI)."""
    if psycopg is None:
        _unavailable("the Python package psycopg is not installed (pip install -e '.[test]')")
    return psycopg


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"PostgreSQL is needed under CI: {reason} (scripts/dev installs postgresql-15 as root)",
                    pytrace=False)
    pytest.skip(f"no PostgreSQL here: {reason}", allow_module_level=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A PostgreSQL server for the whole session (skips with the reason where none can be had)."""
    if psycopg is None:
        _unavailable("the Python package psycopg is not installed (pip install -e '.[test]')")
    bin_dir = _bin_dir()
    if bin_dir is None:
        _unavailable("no initdb (apt-get install postgresql-15, or set SEQDROP_PG_BIN)")
    server = PgServer(bin_dir)
    try:
        server.init()
        server.start()
    except (subprocess.CalledProcessError, OSError) as e:
        detail = getattr(e, "stderr", b"") or b""
        server.remove()
        _unavailable(f"the server did not start ({e}; {detail.decode(errors='replace')[-300:]})")
    yield server
    server.remove()


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """The URL of a fresh database on the session's server."""
    return pg_server.create_database()


def shared_queue(config: Any, url: str, watches: dict[str, str], *, host: str = "ops") -> Any:
    """Write a config at `config` (a Path) naming the shared queue at url and the watch folders {id: path}
    (they need not exist: the operator's commands only name files by them), and open that queue as this
    host: the operator's commands and the returned store then read the same rows under the same paths."""
    from daemon.queue.postgres import (
        PostgresStore,  # lazy: psycopg may be missing (the fixture says so)
    )

    folders = ", ".join(f'{{path = "{path}", id = "{watch}"}}' for watch, path in watches.items())
    config.write_text(f'[queue]\nurl = "{url}"\nhost = "{host}"\n[watch]\npaths = [{folders}]\n')
    return PostgresStore(url, watches=watches, host=host)
