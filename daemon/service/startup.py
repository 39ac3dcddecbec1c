"""Opening the queue at start-up: the one-daemon lock, a real integrity check, and a damaged queue
set aside and rebuilt from the audit journal — before anything else touches the queue.

design.md ("Rules"): the queue is never silently replaced by an empty one. SQLite opens a
truncated file as a new database and a queue whose WAL was lost as an older one, and opening it
for writing creates tables in whatever it finds; so the check runs first, on the file as the last
run left it, under the lock (two daemons started together cannot both rebuild):
  ok / new                        → open it
  damaged (integrity.DAMAGE)      → set it aside (kept, named in the log), rebuild it from the
                                    journal (nothing confirmed is uploaded again), open the new one
  unreadable (EIO, permissions)   → QueueUnusable: exit 1, systemd tries again later
Two cases where there is nothing to repair: an empty file and no journal records (a first start
cut short before SQLite wrote its header) is opened as new; a file that is no SQLite database and
no journal beside it says the path is wrong, not that a queue is damaged (NotAQueue, and nobody's
file is renamed).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from daemon.errors import SeqdropError
from daemon.queue import integrity
from daemon.queue.journal import Journal, journal_path
from daemon.queue.open import open_shared
from daemon.queue.sqlite import SqliteStore
from daemon.queue.storage import make_private, take_lock


class QueueUnusable(SeqdropError):
    """The queue cannot be read (an I/O error, permissions): a person or the disk must act."""


class NotAQueue(SeqdropError):
    """queue.path names a file that is no SQLite database, and no audit journal is beside it."""


@dataclass(frozen=True)
class Rebuilt:
    """A damaged queue was set aside and rebuilt: what was wrong, where it went, what came back."""
    damage: str
    detail: str
    set_aside_as: str | None
    restored: int
    journal: str

    def fields(self) -> dict[str, Any]:
        return {"damage": self.damage, "detail": self.detail, "set_aside_as": self.set_aside_as,
                "restored": self.restored, "journal": self.journal}


def open_configured_queue(settings: Any, *, log: Any) -> tuple[Any, Rebuilt | None]:
    """The daemon's queue as settings name it: the shared PostgreSQL queue ([queue] url: no file to
    check or rebuild; the database keeps its own integrity), or the SQLite queue at [queue] path."""
    if settings.queue.shared:
        store = open_shared(settings)
        log.info("queue.opened", backend="postgresql", url=store.where, host=store.host, lease_s=store.lease_s)
        return store, None
    return open_queue(settings.queue.path, log=log)


def open_queue(path: str, *, log: Any) -> tuple[SqliteStore, Rebuilt | None]:
    """Lock, check (and if need be set aside and rebuild), then open the queue at `path`. The store
    returned holds the lock. Raises StoreLocked, QueueUnusable, NotAQueue (or OSError, sqlite3.Error
    from a disk that fails meanwhile)."""
    if os.path.isdir(path):
        raise QueueUnusable(f"the queue path {path} is a folder")     # no lock file beside a wrong path
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    lock_fd = take_lock(path)
    try:
        _make_private_if_there(journal_path(path))
        rebuilt = _repair(path, log)
        return SqliteStore(path, lock_fd=lock_fd), rebuilt
    except BaseException:
        os.close(lock_fd)
        raise


def _make_private_if_there(path: str) -> None:
    """A journal an older seqdrop (or a copy) left readable is private from the start, not from its
    next record."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return
    try:
        make_private(fd)
    finally:
        os.close(fd)


def _repair(path: str, log: Any) -> Rebuilt | None:
    journal = journal_path(path)
    verdict = integrity.check(path, journal=journal)
    if verdict.ok:
        return None
    if verdict.kind == integrity.UNREADABLE:
        raise QueueUnusable(verdict.detail)
    if verdict.kind in (integrity.EMPTY, integrity.NOT_A_DATABASE) and not integrity.journal_has_records(journal):
        if verdict.kind == integrity.EMPTY:
            return None            # nothing was ever recorded in it: SQLite starts it afresh
        raise NotAQueue(verdict.detail)
    log.error("queue.damaged", path=path, damage=verdict.kind, detail=verdict.detail,
              problems=list(verdict.problems[:5]))
    aside = None
    if any(os.path.lexists(path + suffix) for suffix in ("", "-wal", "-shm")):
        aside = integrity.set_aside(path)
    salvage = aside if aside is not None and os.path.exists(aside) else None
    restored = integrity.rebuild(path, journal, salvage_from=salvage)
    rebuilt = Rebuilt(verdict.kind, verdict.detail, aside, restored, journal)
    log.warning("queue.rebuilt", path=path, set_aside_as=aside, restored=restored, journal=journal,
                note="the damaged files are kept for inspection; nothing confirmed is uploaded again")
    try:
        Journal(journal).append("queue.rebuilt", path=path, **rebuilt.fields())
    except OSError as e:      # the rebuild stands; only its note in the journal is missing
        log.error("journal.not_written", path=journal, error=repr(e))
    return rebuilt


__all__ = ["NotAQueue", "QueueUnusable", "Rebuilt", "open_configured_queue", "open_queue"]
