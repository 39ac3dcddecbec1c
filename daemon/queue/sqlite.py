"""The persistent queue: one SQLite row per file version. The database is the truth.

The only module that speaks SQL (the contract, its verbs and rows: daemon/queue/base.py). Contract (small verbs, each one short transaction):
  latest_for_path, add_seen, touch_seen, set_state, claim_next, save_init, save_posted,
  clear_init, mark_done, reschedule, requeue, release_stale_claims, retry, counts, files, get, meta.
A row is *claimed* (state 'uploading', claimed_by set), never popped: a crash leaves
it claimed and the next start-up releases it. No transaction is held across a
network call. WAL mode lets `seqdrop status` read while the daemon writes;
synchronous=FULL makes each recorded transition survive a power cut.
The queue holds live S3 POST policies: it is created mode 0600 (SQLite gives its -wal and -shm
the database's mode) and an existing one is made private when the daemon opens it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from daemon.queue.base import (
    HALF_POSTED_STEPS,
    INIT_STEPS,
    POSTED_STEPS,
    STATES,
    STEP_INITIALIZED,
    STEP_POSTED,
    FileRow,
    Identity,
)
from daemon.queue.schema import SCHEMA_VERSION, migrate, refuse_newer  # noqa: F401  (SCHEMA_VERSION re-exported)
from daemon.queue.sqlite_reads import OperatorReads
from daemon.queue.sqlite_samples import SampleVerbs
from daemon.queue.storage import create_private, take_lock


def _row(r: sqlite3.Row) -> FileRow:
    return FileRow(id=r["id"], path=r["path"], identity=Identity(r["dev"], r["inode"], r["size"], r["mtime_ns"]),
                   state=r["state"], step=r["step"], sample_id=r["sample_id"], init=r["init"], md5=r["md5"],
                   attempts=r["attempts"], next_attempt_at=r["next_attempt_at"], error=r["error"],
                   stable_since=r["stable_since"], updated_at=r["updated_at"],
                   init_at=_added(r, "init_at"), posted_at=_added(r, "posted_at"), sample=_added(r, "sample"),
                   role=_added(r, "role"), lane=_added(r, "lane"), follower=bool(_added(r, "follower")),
                   flags=_added(r, "flags"))


# The row a write aimed at file id ? lands on: the lead of its sample if it is a follower (a sample moves
# as one: the trigger sample_mirror copies the lead's state onto the members), else itself. Two ?s.
_LEAD_OF = ("COALESCE((SELECT s.lead FROM files f JOIN samples s ON s.id = f.sample"
            " WHERE f.id = ? AND f.follower = 1), ?)")


def _added(r: sqlite3.Row, name: str) -> Any:
    """A column added since (None in a queue an older seqdrop made, opened read-only)."""
    try:
        return r[name]
    except IndexError:
        return None


class SqliteStore(OperatorReads, SampleVerbs):
    """The queue in one SQLite file (WAL, synchronous=FULL): the default backend. The read-only verbs of
    the operator's commands (status filters, show, upload's look-up) are in sqlite_reads.py."""

    def __init__(self, path: str, *, clock: Any = time.time, readonly: bool = False,
                 lock_fd: int | None = None) -> None:
        """lock_fd: the one-daemon lock, already taken with take_lock() (start-up checks the queue
        under it before opening it); the store closes it."""
        self.path = path
        self.clock = clock
        self._lock = threading.RLock()
        self._depth = 0            # > 0 inside batch(): tx() becomes a savepoint
        self._lockfile: int | None = lock_fd
        if not readonly:
            os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
            create_private(path)
        uri = f"file:{path}?mode=ro" if readonly else f"file:{path}"
        # One connection shared by the daemon's threads behind a lock: transactions are short.
        self.db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=30)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA busy_timeout = 30000")
        refuse_newer(self.db, self.path)
        if not readonly:
            self.db.execute("PRAGMA journal_mode = WAL")
            self.db.execute("PRAGMA synchronous = FULL")
            migrate(self.db)
        self.db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()   # opens the WAL index now
        self._match_owner()

    def _match_owner(self) -> None:
        """Run as root (`seqdrop status` by an admin), give SQLite's side files to the database's
        owner: a root-owned -wal or -shm would lock the seqdrop user out of its own queue."""
        if os.geteuid() != 0:
            return
        try:
            st = os.stat(self.path)
        except OSError:
            return
        if st.st_uid == 0:
            return
        for suffix in ("-wal", "-shm"):
            try:
                side = os.stat(self.path + suffix)
                if side.st_uid != st.st_uid:
                    os.chown(self.path + suffix, st.st_uid, st.st_gid)
            except OSError:
                pass

    def close(self) -> None:
        with self._lock:
            self._match_owner()
            self.db.close()
            self._match_owner()
            if self._lockfile is not None:
                os.close(self._lockfile)
                self._lockfile = None

    def lock_exclusive(self) -> None:
        """Hold an flock beside the database for the daemon's lifetime: one daemon per queue, judged by
        the real file (take_lock resolves symbolic links; issue 10, defect 9). Held already if the
        store was opened with lock_fd."""
        if self._lockfile is None:
            self._lockfile = take_lock(self.path)

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction (BEGIN IMMEDIATE: no upgrade deadlocks). Inside batch() it is
        a savepoint: a step that fails undoes only itself, and the batch's commit records the rest."""
        with self._lock:
            if self._depth:
                self._depth += 1
                savepoint = f"step{self._depth}"
                self.db.execute(f"SAVEPOINT {savepoint}")
                try:
                    yield self.db
                except BaseException:
                    self.db.execute(f"ROLLBACK TO {savepoint}")
                    self.db.execute(f"RELEASE {savepoint}")
                    raise
                else:
                    self.db.execute(f"RELEASE {savepoint}")
                finally:
                    self._depth -= 1
                return
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self._commit()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Many transitions, one commit: one fsync for a whole batch of files found or settled
        (synchronous=FULL costs a disk flush per commit: ~10 ms on a spinning disk). Nothing in it is
        recorded (or visible to `status`) before the commit, and everything is once it returns. Other
        threads wait for the store meanwhile: keep batches short (Tracker/Service use ≤ 256 files)."""
        with self._lock:
            if self._depth:                 # already in a batch: join it
                yield
                return
            self.db.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            else:
                self._commit()
            finally:
                self._depth = 0

    def _commit(self) -> None:
        try:
            self.db.execute("COMMIT")
        except sqlite3.Error:
            # A failed COMMIT (a full disk) may leave the transaction open: end it, so the next
            # transaction can begin, and report the failure (nothing of it was recorded).
            if self.db.in_transaction:
                try:
                    self.db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            raise

    def _one(self, sql: str, args: tuple = ()) -> FileRow | None:
        with self._lock:
            r = self.db.execute(sql, args).fetchone()
        return _row(r) if r else None

    # -- reading -------------------------------------------------------------------------------
    def has_schema(self) -> bool:
        """False for a queue file a first-time daemon has created but not yet filled in."""
        with self._lock:
            return self.db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'files'"
                                   ).fetchone() is not None

    def get(self, file_id: int) -> FileRow | None:
        return self._one("SELECT * FROM files WHERE id = ?", (file_id,))

    def latest_for_path(self, path: str) -> FileRow | None:
        return self._one("SELECT * FROM files WHERE path = ? ORDER BY id DESC LIMIT 1", (path,))

    def settled_in(self, folder: str) -> dict[str, Identity]:
        """Files directly in `folder` whose latest version is done, rejected or failed, with that
        version's identity: what a rescan may pass over when it finds them unchanged. One query per
        folder instead of one per file (a rescan of 100,000 done files: ~1.1 instead of 2.8 CPU s)."""
        lo = folder.rstrip("/") + "/"
        hi = lo[:-1] + "0"                      # "0" sorts right after "/": the range is folder/...
        with self._lock:
            rows = self.db.execute(
                "SELECT path, state, dev, inode, size, mtime_ns FROM files"
                " WHERE path > ? AND path < ? AND instr(substr(path, ?), '/') = 0 ORDER BY path, id",
                (lo, hi, len(lo) + 1)).fetchall()
        latest = {r[0]: r for r in rows}        # ordered by id within a path: the last one wins
        return {path: Identity(r[2], r[3], r[4], r[5]) for path, r in latest.items()
                if r[1] in ("done", "rejected", "failed")}

    def last_done_for_path(self, path: str, *, before_id: int) -> FileRow | None:
        return self._one("SELECT * FROM files WHERE path = ? AND state = 'done' AND id < ? "
                         "ORDER BY id DESC LIMIT 1", (path, before_id))

    def with_identity(self, ident: Identity, *, states: tuple[str, ...]) -> FileRow | None:
        """The latest version in one of states with this (device, inode, size, mtime_ns), at whatever
        path: the same file, e.g. moved or renamed since it was uploaded (states=("done",))."""
        marks = ",".join("?" * len(states))
        return self._one(f"SELECT * FROM files WHERE inode = ? AND dev = ? AND size = ? AND mtime_ns = ?"
                         f" AND state IN ({marks}) ORDER BY id DESC LIMIT 1",
                         (ident.inode, ident.dev, ident.size, ident.mtime_ns, *states))

    def rows_in(self, *states: str) -> list[FileRow]:
        marks = ",".join("?" * len(states))
        with self._lock:
            rows = self.db.execute(f"SELECT * FROM files WHERE state IN ({marks}) ORDER BY id", states).fetchall()
        return [_row(r) for r in rows]

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self.db.execute("SELECT state, COUNT(*) FROM files GROUP BY state").fetchall()
        counts = {s: 0 for s in STATES}
        counts.update({r[0]: r[1] for r in rows})
        return counts

    def files(self, *, states: tuple[str, ...] | None = None, limit: int | None = None) -> list[FileRow]:
        sql, args = "SELECT * FROM files", ()
        if states:
            sql += f" WHERE state IN ({','.join('?' * len(states))})"
            args = states
        sql += " ORDER BY id"
        if limit:
            sql += f" LIMIT {int(limit)}"
        with self._lock:
            return [_row(r) for r in self.db.execute(sql, args).fetchall()]

    def next_due_at(self) -> float | None:
        with self._lock:
            r = self.db.execute("SELECT MIN(next_attempt_at) FROM files WHERE state = 'queued'").fetchone()
        return r[0] if r and r[0] is not None else None

    def done_since(self, ts: float) -> int:
        with self._lock:
            return self.db.execute("SELECT COUNT(*) FROM files WHERE state = 'done' AND updated_at >= ?",
                                   (ts,)).fetchone()[0]

    def oldest_waiting_since(self) -> float | None:
        """When the longest-waiting seen or queued version was first seen (Unix time); None: none waits."""
        with self._lock:
            r = self.db.execute("SELECT MIN(created_at) FROM files WHERE state IN ('seen', 'queued')").fetchone()
        return r[0] if r and r[0] is not None else None

    # -- writing -------------------------------------------------------------------------------
    def add_seen(self, path: str, ident: Identity) -> int:
        now = self.clock()
        with self.tx() as db:
            cur = db.execute(
                "INSERT INTO files(path, dev, inode, size, mtime_ns, state, stable_since, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, 'seen', ?, ?, ?)",
                (path, ident.dev, ident.inode, ident.size, ident.mtime_ns, now, now, now))
            return int(cur.lastrowid)

    def add_moved(self, path: str, ident: Identity, *, source: FileRow, note: str) -> int:
        """A done file found under a new path: recorded there as done, with source's sample and MD5,
        in one transaction (never a `seen` row that a crash could leave to be uploaded again)."""
        now = self.clock()
        with self.tx() as db:
            cur = db.execute(
                "INSERT INTO files(path, dev, inode, size, mtime_ns, state, sample_id, md5, error, stable_since,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'done', ?, ?, ?, ?, ?, ?)",
                (path, ident.dev, ident.inode, ident.size, ident.mtime_ns, source.sample_id, source.md5, note,
                 now, now, now))
            return int(cur.lastrowid)

    def touch_seen(self, file_id: int, ident: Identity) -> None:
        """A file still being written: new identity, the settle clock starts again."""
        now = self.clock()
        with self.tx() as db:
            db.execute("UPDATE files SET dev=?, inode=?, size=?, mtime_ns=?, stable_since=?, updated_at=?"
                       " WHERE id=? AND state='seen'",
                       (ident.dev, ident.inode, ident.size, ident.mtime_ns, now, now, file_id))

    def set_state(self, file_id: int, state: str, *, error: str | None = None,
                  only_from: tuple[str, ...] | None = None, **cols: Any) -> bool:
        """Move a row to state (if it is in one of only_from); returns whether it moved."""
        assert state in STATES, state
        sets = ["state = ?", "error = ?", "updated_at = ?", "claimed_by = NULL"]
        args: list[Any] = [state, error, self.clock()]
        for k, v in cols.items():
            assert k in ("step", "sample_id", "init", "md5", "attempts", "next_attempt_at"), k
            sets.append(f"{k} = ?")
            args.append(v)
        sql = f"UPDATE files SET {', '.join(sets)} WHERE id = {_LEAD_OF}"
        args += [file_id, file_id]
        if only_from:
            sql += f" AND state IN ({','.join('?' * len(only_from))})"
            args.extend(only_from)
        with self.tx() as db:
            return db.execute(sql, args).rowcount == 1

    def note(self, file_id: int, error: str | None) -> None:
        """Change only the message shown in status (e.g. 'waiting for run marker')."""
        with self.tx() as db:
            db.execute(f"UPDATE files SET error = ? WHERE id = {_LEAD_OF} AND (error IS NOT ? )",
                       (error, file_id, file_id, error))

    def claim_next(self, worker: str) -> FileRow | None:
        now = self.clock()
        with self.tx() as db:
            r = db.execute(
                "UPDATE files SET state='uploading', claimed_by=?, updated_at=? WHERE id = ("
                " SELECT id FROM files WHERE state='queued' AND next_attempt_at <= ? AND follower = 0"
                " ORDER BY next_attempt_at, id LIMIT 1) RETURNING *", (worker, now, now)).fetchone()
        return _row(r) if r else None

    def save_init(self, file_id: int, sample_id: str, init_json: str, *, step: str = STEP_INITIALIZED) -> None:
        assert step in INIT_STEPS, step
        with self.tx() as db:
            now = self.clock()
            db.execute("UPDATE files SET step=?, sample_id=?, init=?, md5=NULL, updated_at=?, init_at=?,"
                       " posted_at=NULL WHERE id=?", (step, sample_id, init_json, now, now, file_id))

    def save_posted(self, file_id: int, md5: str, *, step: str = STEP_POSTED) -> None:
        """S3 holds the bytes (standard: 'posted'; multipart: 'mp_complete'): confirm, never re-init.
        A pair's first read held by S3 (HALF_POSTED_STEPS): md5 is that read's (its first
        file's, where it has several); the other is next."""
        assert step in POSTED_STEPS + HALF_POSTED_STEPS, step
        with self.tx() as db:
            now = self.clock()
            db.execute("UPDATE files SET step=?, md5=?, updated_at=?, posted_at=? WHERE id=?",
                       (step, md5, now, now, file_id))

    def clear_init(self, file_id: int) -> None:
        """Its sample was cancelled: the row starts again from nothing sent."""
        with self.tx() as db:
            db.execute("UPDATE files SET step='', sample_id=NULL, init=NULL, md5=NULL, init_at=NULL, posted_at=NULL,"
                       " updated_at=? WHERE id=?", (self.clock(), file_id))

    def mark_done(self, file_id: int, *, sample_id: str, md5: str | None, error: str | None = None) -> None:
        with self.tx() as db:
            db.execute("UPDATE files SET state='done', sample_id=?, md5=COALESCE(?, md5), error=?, init=NULL,"
                       " claimed_by=NULL, updated_at=? WHERE id=?",
                       (sample_id, md5, error, self.clock(), file_id))

    def reschedule(self, file_id: int, *, delay_s: float, error: str, count_attempt: bool = True) -> None:
        """Back to the queue for a later try, with the last error for status."""
        now = self.clock()
        with self.tx() as db:
            db.execute("UPDATE files SET state='queued', claimed_by=NULL, error=?, next_attempt_at=?,"
                       " attempts = attempts + ?, updated_at=? WHERE id=?",
                       (error, now + delay_s, 1 if count_attempt else 0, now, file_id))

    def release_stale_claims(self) -> int:
        """At start-up: rows a dead daemon left 'uploading' go back to the queue, steps kept."""
        with self.tx() as db:
            return db.execute("UPDATE files SET state='queued', claimed_by=NULL, next_attempt_at=0"
                              " WHERE state='uploading'").rowcount

    def retry(self, *, states: tuple[str, ...], ids: tuple[int, ...] = ()) -> int:
        """Put failed/rejected rows back in the queue from scratch (a new sample)."""
        sql = (f"UPDATE files SET state='queued', step='', init=NULL, sample_id=NULL, error=NULL, init_at=NULL,"
               f" posted_at=NULL, next_attempt_at=0, updated_at=? WHERE follower = 0"
               f" AND state IN ({','.join('?' * len(states))})")
        args: list[Any] = [self.clock(), *states]
        if ids:      # a member's id retries its whole sample (the lead's row carries the upload)
            marks = ",".join("?" * len(ids))
            sql += (f" AND (id IN ({marks}) OR id IN (SELECT s.lead FROM samples s JOIN files f ON f.sample = s.id"
                    f" WHERE f.id IN ({marks})))")
            args.extend(ids)
            args.extend(ids)
        with self.tx() as db:
            return db.execute(sql, args).rowcount

    # -- meta ----------------------------------------------------------------------------------
    def get_meta(self, key: str) -> Any:
        with self._lock:
            r = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(r[0]) if r else None

    def set_meta(self, key: str, value: Any) -> None:
        with self.tx() as db:
            if value is None:
                db.execute("DELETE FROM meta WHERE key = ?", (key,))
            else:
                db.execute("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value"
                           " = excluded.value", (key, json.dumps(value)))

    # -- for OperatorReads (sqlite_reads.py): how a database row becomes a FileRow ---------------------
    _from_db = staticmethod(_row)
