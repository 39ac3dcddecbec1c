"""SqliteStore's verbs for samples (design.md, "Samples"): a sample row and its members.

A mixin of SqliteStore (same connection, lock and transactions). The upload's state stays on the
lead member's file row, claimed and stepped as any file; the schema's trigger sample_mirror copies it
onto the other members (schema.py), and writes aimed at a follower land on the lead (sqlite.py).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from daemon.queue.base import ROLES, STATES, FileRow, SampleRow

_ROLE_ORDER = "CASE role WHEN 'R2' THEN 1 ELSE 0 END, COALESCE(lane, 0), id"


class SampleVerbs:
    """The verbs; SqliteStore provides the connection, its lock, tx() and the row conversion."""

    db: sqlite3.Connection
    _lock: threading.RLock
    _from_db: Callable[[sqlite3.Row], FileRow]
    clock: Callable[[], float]
    tx: Callable[[], AbstractContextManager[sqlite3.Connection]]

    def add_sample(self, *, key: str, folder: str, name: str, run: str | None, paired: bool,
                   files: list[tuple[int, str, int | None]], warnings: tuple[str, ...] = (), late: bool = False,
                   state: str = "queued", error: str | None = None) -> int | None:
        """Record an assembled sample: `files` are (file id, role, lane), the lead first. Its members
        move from `seen` to `state` (queued, or rejected with `error`) in the same transaction. None,
        and nothing recorded, if a member is no longer a `seen` version without a sample (it changed
        or was deleted meanwhile: the caller assembles again)."""
        assert files and state in STATES and all(role in ROLES for _, role, _ in files), (files, state)
        try:
            return self._add_sample(key, folder, name, run, paired, files, warnings, late, state, error)
        except _Changed:
            return None

    def _add_sample(self, key: str, folder: str, name: str, run: str | None, paired: bool,
                    files: list[tuple[int, str, int | None]], warnings: tuple[str, ...], late: bool,
                    state: str, error: str | None) -> int:
        now, lead = self.clock(), files[0][0]
        with self.tx() as db:
            cur = db.execute("INSERT INTO samples(key, folder, name, run, paired, lead, late, warnings, created_at)"
                             " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                             (key, folder, name, run, int(paired), lead, int(late),
                              json.dumps(list(warnings)) if warnings else None, now))
            sample = int(cur.lastrowid)
            for file_id, role, lane in files:
                moved = db.execute(
                    "UPDATE files SET sample = ?, role = ?, lane = ?, follower = ?, state = ?, error = ?,"
                    " next_attempt_at = 0, updated_at = ? WHERE id = ? AND state = 'seen' AND sample IS NULL",
                    (sample, role, lane, int(file_id != lead), state, error, now, file_id)).rowcount
                if moved != 1:
                    raise _Changed()
            return sample

    def sample(self, sample: int) -> SampleRow | None:
        with self._lock:
            r = self.db.execute("SELECT * FROM samples WHERE id = ?", (sample,)).fetchone()
            return self._sample_row(r) if r else None

    def sample_of(self, file_id: int) -> SampleRow | None:
        with self._lock:
            r = self.db.execute("SELECT s.* FROM samples s JOIN files f ON f.sample = s.id WHERE f.id = ?",
                                (file_id,)).fetchone()
            return self._sample_row(r) if r else None

    def sample_keys(self, folder: str) -> set[str]:
        """The keys of the samples assembled in `folder` that still stand (not vanished): a member
        of one that appears now is late (design.md)."""
        with self._lock:
            rows = self.db.execute("SELECT s.key FROM samples s JOIN files f ON f.id = s.lead"
                                   " WHERE s.folder = ? AND f.state != 'vanished'", (folder,)).fetchall()
        return {r[0] for r in rows}

    def samples(self, *, states: tuple[str, ...] = (), limit: int | None = None) -> list[SampleRow]:
        """Samples (oldest first) whose state (their lead's) is one of `states`; with limit, the
        `limit` most recently updated."""
        sql = "SELECT s.* FROM samples s JOIN files f ON f.id = s.lead"
        args: list[Any] = []
        if states:
            sql += f" WHERE f.state IN ({','.join('?' * len(states))})"
            args.extend(states)
        if limit is not None:
            sql = f"SELECT * FROM ({sql} ORDER BY f.updated_at DESC, s.id DESC LIMIT ?) ORDER BY id"
            args.append(int(limit))
        else:
            sql += " ORDER BY s.id"
        with self._lock:
            rows = self.db.execute(sql, args).fetchall()
            return [self._sample_row(r) for r in rows]

    def save_member_md5s(self, md5s: dict[int, str]) -> None:
        """Each member's own MD5 (the audit journal's record of each file), as computed while sending."""
        with self.tx() as db:
            db.executemany("UPDATE files SET md5 = ? WHERE id = ?", [(m, i) for i, m in md5s.items()])

    def restore_ended_sample(self, *, key: str, folder: str, name: str, run: str | None, paired: bool,
                             files: list[tuple[int, str, int | None]], late: bool, warnings: tuple[str, ...],
                             landing: dict[str, Any] | None, created_at: float) -> int | None:
        """A queue rebuilt from the audit journal (daemon/queue/journal_samples.py): the sample row of
        members already restored in their final state (the lead first), their states untouched. None,
        and nothing recorded, if a member already belongs to a sample."""
        try:
            with self.tx() as db:
                cur = db.execute("INSERT INTO samples(key, folder, name, run, paired, lead, late, warnings, landing,"
                                 " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                 (key, folder, name, run, int(paired), files[0][0], int(late),
                                  json.dumps(list(warnings)) if warnings else None,
                                  json.dumps(landing) if landing else None, created_at))
                sample = int(cur.lastrowid)
                for file_id, role, lane in files:
                    if db.execute("UPDATE files SET sample = ?, role = ?, lane = ?, follower = ? WHERE id = ?"
                                  " AND sample IS NULL", (sample, role, lane, int(file_id != files[0][0]),
                                                          file_id)).rowcount != 1:
                        raise _Changed()
                return sample
        except _Changed:
            return None

    def set_landing(self, sample: int, landing: dict[str, Any]) -> None:
        with self.tx() as db:
            db.execute("UPDATE samples SET landing = ? WHERE id = ?", (json.dumps(landing), sample))

    def add_flag(self, file_id: int, flag: str, *, note: str | None = None) -> None:
        """Mark a version for people (e.g. "partial": an earlier upload was a prefix of a later version),
        with a sentence in its error column if given. Its state does not change."""
        with self.tx() as db:
            r = db.execute("SELECT flags FROM files WHERE id = ?", (file_id,)).fetchone()
            if r is None:
                return
            flags = [f for f in (r[0] or "").split(",") if f]
            if flag not in flags:
                flags.append(flag)
            db.execute("UPDATE files SET flags = ?, error = COALESCE(?, error) WHERE id = ?",
                       (",".join(flags), note, file_id))

    def _sample_row(self, r: sqlite3.Row, files: tuple[FileRow, ...] | None = None) -> SampleRow:
        """The row as a SampleRow; files: its members in order if already read (else read here)."""
        if files is None:
            files = tuple(self._from_db(m) for m in self.db.execute(
                f"SELECT * FROM files WHERE sample = ? ORDER BY {_ROLE_ORDER}", (r["id"],)).fetchall())
        return SampleRow(id=r["id"], key=r["key"], folder=r["folder"], name=r["name"], run=r["run"],
                         paired=bool(r["paired"]), lead=r["lead"], late=bool(r["late"]),
                         warnings=tuple(json.loads(r["warnings"])) if r["warnings"] else (),
                         landing=json.loads(r["landing"]) if r["landing"] else None, created_at=r["created_at"],
                         files=files)


class _Changed(Exception):
    """A member moved on before its sample was recorded: the transaction is undone."""


