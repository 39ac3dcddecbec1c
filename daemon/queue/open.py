"""Which queue backend a configuration names: SQLite at [queue] path (the default), or the shared
PostgreSQL queue at [queue] url (design.md, "Several hosts, one queue").

The database password is never in the configuration: libpq reads a password file itself (~/.pgpass, or
the file PGPASSFILE names), and under systemd the credential `queue-password`
(LoadCredential=queue-password:/etc/seqdrop/queue-password → $CREDENTIALS_DIRECTORY/queue-password) is
read here. Either way it is registered with daemon.redact, so no log line or message can carry it, and
URLs are shown without it (postgres_reads.display_url). TLS: `sslmode` (and sslrootcert...) in the URL.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from daemon import redact
from daemon.errors import ConfigError, SeqdropError

CREDENTIAL = "queue-password"


def credential_password() -> str | None:
    """The systemd credential queue-password, if the unit passes one; registered for redaction."""
    folder = os.environ.get("CREDENTIALS_DIRECTORY")
    if not folder:
        return None
    path = os.path.join(folder, CREDENTIAL)
    try:
        with open(path, encoding="utf-8") as f:
            password = f.read().strip("\r\n")
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ConfigError(f"cannot read the systemd credential {CREDENTIAL} ({e.strerror})", key="queue.url",
                          fix="check LoadCredential= in the unit and the file it names") from None
    if password:
        redact.register(password)
    return password or None


def open_shared(settings: Any, *, readonly: bool = False) -> Any:
    """The PostgreSQL queue of settings (a Settings: [queue] url, lease_s, host and the watch ids).
    Raises SeqdropError naming the database (never its password) when it cannot be reached."""
    # Lazy: psycopg is an optional extra ([postgresql]) that only a shared queue needs.
    try:
        import psycopg

        from daemon.queue.postgres import PostgresStore
        from daemon.queue.postgres_reads import display_url
    except ImportError:
        raise psycopg_missing() from None

    queue = settings.queue
    watches = {f.id: f.path for f in settings.watch.folders if f.id}
    try:
        return PostgresStore(queue.url, watches=watches, host=queue.claim_host, lease_s=queue.lease_s,
                             password=credential_password(), path=queue.path, readonly=readonly)
    except psycopg.Error as e:
        reason = redact.scrub(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
        raise SeqdropError(f"cannot open the queue database {display_url(queue.url)} ({reason}) — fix: check "
                           f"that the server runs and accepts this host, the user and its password (a libpq "
                           f"password file or the credential {CREDENTIAL}) and sslmode") from None


def shared_reader(settings: Any) -> tuple[str, Callable[[], Any], tuple[type[Exception], ...]]:
    """For a long-lived reader of the shared queue (the status page): the queue's name as messages show
    it, a function that opens it read-only, and the errors that it and the store's reads raise while
    the database is away (the reader says so and tries again later)."""
    try:
        import psycopg  # lazy, as in open_shared

        from daemon.queue.postgres_reads import display_url
    except ImportError:
        raise psycopg_missing() from None
    return display_url(settings.queue.url), lambda: open_shared(settings, readonly=True), (psycopg.Error, SeqdropError)


def psycopg_missing() -> SeqdropError:
    return SeqdropError("[queue] url names a PostgreSQL queue, but the Python package psycopg is not installed "
                        "— fix: pip install 'seqdrop[postgresql]' (or psycopg[binary]) into seqdrop's environment")
