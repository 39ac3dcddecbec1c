"""PostgresStore's verbs for samples (design.md, "Samples"), as SQLite's (sqlite_samples.py): a sample
row and its members; the upload's state on the lead, copied onto the members by the trigger
sample_mirror (postgres_schema.py). A mixin of PostgresStore (same connection, lock and transactions).

Two hosts may assemble the same files at once: each member moves only from `seen` without a sample,
and the row lock makes the second host's update wait for the first and then find nothing to move, so
its add_sample records nothing and returns None.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import psycopg

from daemon.queue.base import ROLES, STATES, FileRow, SampleRow

_ROLE_ORDER = "CASE role WHEN 'R2' THEN 1 ELSE 0 END, COALESCE(lane, 0), id"


class _Changed(Exception):
    """A member moved on before its sample was recorded: the transaction is undone."""


class PgSamples:
    """The verbs; PostgresStore provides the connection, its lock, tx() and the row conversion."""

    _lock: threading.RLock
    _conn: Callable[[], psycopg.Connection]
    _from_db: Callable[[dict[str, Any]], FileRow]
    clock: Callable[[], float]
    tx: Callable[[], AbstractContextManager[psycopg.Connection]]
    one: Callable[[], AbstractContextManager[psycopg.Connection]]
    _split: Callable[[str], tuple[str, str]]
    _local: Callable[[str, str], str]

    # A sample's folder (and the key that begins with it) is stored as "watch:rel", the same on every
    # host, and read back as this host's path: a late member found by another host is still late.
    def _shared(self, folder: str, text: str) -> str:
        try:
            watch, rel = self._split(folder)
        except ValueError:
            return text
        return f"{watch}:{rel}" + text[len(folder):] if text.startswith(folder) else text

    def _unshared(self, shared_folder: str, text: str) -> str:
        watch, sep, rel = shared_folder.partition(":")
        if not sep or watch not in getattr(self, "_by_id", {}):
            return text
        local = self._local(watch, rel)
        return local + text[len(shared_folder):] if text.startswith(shared_folder) else text

    def add_sample(self, *, key: str, folder: str, name: str, run: str | None, paired: bool,
                   files: list[tuple[int, str, int | None]], warnings: tuple[str, ...] = (), late: bool = False,
                   state: str = "queued", error: str | None = None) -> int | None:
        assert files and state in STATES and all(role in ROLES for _, role, _ in files), (files, state)
        now, lead = self.clock(), files[0][0]
        try:
            with self.tx() as db:
                r = db.execute("INSERT INTO samples(key, folder, name, run, paired, lead, late, warnings, created_at)"
                               " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                               (self._shared(folder, key), self._shared(folder, folder), name, run, paired, lead, late,
                                json.dumps(list(warnings)) if warnings else None, now)).fetchone()
                sample = int(r["id"])
                for file_id, role, lane in files:
                    moved = db.execute(
                        "UPDATE files SET sample = %s, role = %s, lane = %s, follower = %s, state = %s, error = %s,"
                        " next_attempt_at = 0, updated_at = %s WHERE id = %s AND state = 'seen' AND sample IS NULL",
                        (sample, role, lane, file_id != lead, state, error, now, file_id)).rowcount
                    if moved != 1:
                        raise _Changed()
                return sample
        except _Changed:
            return None

    def _fetch(self, sql: str, args: Any) -> list[dict[str, Any]]:
        with self._lock:
            return self._conn().execute(sql, args).fetchall()

    def sample(self, sample: int) -> SampleRow | None:
        rows = self._fetch("SELECT * FROM samples WHERE id = %s", (sample,))
        return self._sample_row(rows[0]) if rows else None

    def sample_of(self, file_id: int) -> SampleRow | None:
        rows = self._fetch("SELECT s.* FROM samples s JOIN files f ON f.sample = s.id WHERE f.id = %s", (file_id,))
        return self._sample_row(rows[0]) if rows else None

    def sample_keys(self, folder: str) -> set[str]:
        rows = self._fetch("SELECT s.key FROM samples s JOIN files f ON f.id = s.lead"
                           " WHERE s.folder = %s AND f.state <> 'vanished'", (self._shared(folder, folder),))
        return {self._unshared(self._shared(folder, folder), r["key"]) for r in rows}

    def samples(self, *, states: tuple[str, ...] = (), limit: int | None = None) -> list[SampleRow]:
        sql = "SELECT s.*, f.updated_at AS lead_updated FROM samples s JOIN files f ON f.id = s.lead"
        args: list[Any] = []
        if states:
            sql += " WHERE f.state = ANY(%s)"
            args.append(list(states))
        if limit is not None:
            sql = f"SELECT * FROM ({sql} ORDER BY f.updated_at DESC, s.id DESC LIMIT %s) AS t ORDER BY id"
            args.append(int(limit))
        else:
            sql += " ORDER BY s.id"
        return [self._sample_row(r) for r in self._fetch(sql, args)]

    def save_member_md5s(self, md5s: dict[int, str]) -> None:
        with self.tx() as db:
            for file_id, md5 in md5s.items():
                db.execute("UPDATE files SET md5 = %s WHERE id = %s", (md5, file_id))

    def set_landing(self, sample: int, landing: dict[str, Any]) -> None:
        with self.one() as db:
            db.execute("UPDATE samples SET landing = %s WHERE id = %s", (json.dumps(landing), sample))

    def add_flag(self, file_id: int, flag: str, *, note: str | None = None) -> None:
        with self.tx() as db:
            r = db.execute("SELECT flags FROM files WHERE id = %s FOR UPDATE", (file_id,)).fetchone()
            if r is None:
                return
            flags = [f for f in (r["flags"] or "").split(",") if f]
            if flag not in flags:
                flags.append(flag)
            db.execute("UPDATE files SET flags = %s, error = COALESCE(%s, error) WHERE id = %s",
                       (",".join(flags), note, file_id))

    def _sample_row(self, r: dict[str, Any]) -> SampleRow:
        members = self._fetch(f"SELECT * FROM files WHERE sample = %s ORDER BY {_ROLE_ORDER}", (r["id"],))
        return SampleRow(id=r["id"], key=self._unshared(r["folder"], r["key"]),
                         folder=self._unshared(r["folder"], r["folder"]), name=r["name"], run=r["run"],
                         paired=bool(r["paired"]), lead=r["lead"], late=bool(r["late"]),
                         warnings=tuple(json.loads(r["warnings"])) if r["warnings"] else (),
                         landing=json.loads(r["landing"]) if r["landing"] else None, created_at=r["created_at"],
                         files=tuple(self._from_db(m) for m in members))
