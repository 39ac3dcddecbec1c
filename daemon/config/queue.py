"""The [queue] table: where the queue lives. SQLite at `path` (the default, one host per queue), or a
PostgreSQL database shared by several ingest hosts at `url` (design.md, "Several hosts, one queue").
(The SQLite queue's place beside the watch folders, and the watch ids a shared queue needs, are checked
once both tables are read: see document.py.)"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from daemon.config.reader import Section

MIN_LEASE_S = 0.5       # shorter than a database round trip or two is no lease at all (tests use ~1 s)


@dataclass(frozen=True)
class QueueSettings:
    path: str = "/var/lib/seqdrop/queue.sqlite3"
    url: str | None = None      # postgresql://user@host/db?sslmode=verify-full (no password: see below)
    lease_s: float = 60.0       # a claim's lease on the database's clock, renewed every third of it
    host: str = ""              # this host's name in claimed_by ("": the machine's host name, claim_host)

    @property
    def shared(self) -> bool:
        return self.url is not None

    @property
    def claim_host(self) -> str:
        return self.host or socket.gethostname()


def parse_queue(s: Section) -> QueueSettings:
    url = s.get("url", None, str, fix='url = "postgresql://seqdrop@db.example.org/seqdrop?sslmode=verify-full"')
    if url is not None:
        _check_url(s, url)
    host = s.get("host", "", str, fix='host = "ingest-1" (a name unique among the hosts sharing the queue)')
    return QueueSettings(path=s.path(s.get("path", QueueSettings.path, str,
                                           fix='path = "/var/lib/seqdrop/queue.sqlite3"')),
                         url=url,
                         lease_s=s.number("lease_s", QueueSettings.lease_s, minimum=MIN_LEASE_S,
                                          fix="seconds a claim holds without renewal, e.g. 60"),
                         host=host)


def _check_url(s: Section, url: str) -> None:
    """A PostgreSQL URL, without a password in it (the password comes from a libpq password file or
    the systemd credential queue-password: a config file is readable by more than the daemon)."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise s.error("url", f"must be a postgresql:// URL (got scheme {parts.scheme or 'none'!r})",
                      fix='url = "postgresql://seqdrop@db.example.org/seqdrop?sslmode=verify-full"')
    if parts.password:
        raise s.error("url", "must not hold a password (it would be readable by everyone who can read "
                             "the configuration)",
                      fix="remove it from the URL; put it in a libpq password file (~/.pgpass or PGPASSFILE) "
                          "or the systemd credential queue-password (LoadCredential=queue-password:...)")
