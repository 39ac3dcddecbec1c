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
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any

import psycopg

from daemon.queue.base import ROLES, STATES, FileRow, SampleBrief, SampleRow
from daemon.queue.postgres_reads import like_of

_ROLE_ORDER = "CASE role WHEN 'R2' THEN 1 ELSE 0 END, COALESCE(lane, 0), id"
_IN_CHUNK = 5000        # ids per `= ANY(...)` look-up (one array parameter: no limit of placeholders)

# A sample as `status --json`'s "samples" list shows it (SampleRow.public()'s keys, in its order), built by
# the server from the sample row and its lead's file row (`s` and `f`), as sqlite_reads' _SAMPLE_JSON:
# one query for the whole list. json (not jsonb) keeps the keys in this order.
_SAMPLE_JSON = (
    "json_build_object('id', s.id, 'name', s.name, 'run', s.run, 'paired', s.paired, 'files',"
    " COALESCE((SELECT json_agg(m.id ORDER BY CASE m.role WHEN 'R2' THEN 1 ELSE 0 END, COALESCE(m.lane, 0), m.id)"
    " FROM files m WHERE m.sample = s.id), '[]'::json), 'state', f.state, 'sample_id', f.sample_id,"
    " 'project', s.landing::json -> 'project', 'tags', CASE WHEN json_typeof(s.landing::json -> 'tags') = 'array'"
    " THEN s.landing::json -> 'tags' ELSE '[]'::json END, 'error', f.error, 'updated_at',"
    " to_char(to_timestamp(trunc(f.updated_at)) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'))::text")


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
        """Each member's own MD5, in one statement (one round trip however many lanes)."""
        if not md5s:
            return
        with self.one() as db:
            db.execute("UPDATE files f SET md5 = m.md5 FROM unnest(%s::bigint[], %s::text[]) AS m(id, md5)"
                       " WHERE f.id = m.id", (list(md5s), list(md5s.values())))

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

    def _sample_row(self, r: dict[str, Any], files: tuple[FileRow, ...] | None = None) -> SampleRow:
        """The row as a SampleRow; files: its members in order if already read (else read here)."""
        if files is None:
            files = tuple(self._from_db(m) for m in self._fetch(
                f"SELECT * FROM files WHERE sample = %s ORDER BY {_ROLE_ORDER}", (r["id"],)))
        return SampleRow(id=r["id"], key=self._unshared(r["folder"], r["key"]),
                         folder=self._unshared(r["folder"], r["folder"]), name=r["name"], run=r["run"],
                         paired=bool(r["paired"]), lead=r["lead"], late=bool(r["late"]),
                         warnings=tuple(json.loads(r["warnings"])) if r["warnings"] else (),
                         landing=json.loads(r["landing"]) if r["landing"] else None, created_at=r["created_at"],
                         files=files)

    # -- the operator's reads (as sqlite_reads.py's) ----------------------------------------------
    def _sample_filters(self, states: tuple[str, ...], under: str | None, run: str | None,
                        since: float | None) -> tuple[str, list[Any]]:
        """find_files' filters for samples (`s` joined with its lead `f`): the lead's state and time; run:
        the sample's run name, or a folder of that name below the watch folder; under: its folder at or
        below (a sample's folder is stored "watch:rel", see _shared)."""
        where: list[str] = []
        args: list[Any] = []
        if states:
            where.append("f.state = ANY(%s)")
            args.append(list(states))
        if under:
            try:
                watch, rel = self._split(under.rstrip("/") or "/")
            except ValueError:
                where.append("false")            # no folder of this host's: no sample of it
            else:
                shared = f"{watch}:{rel}"
                where.append("(s.folder = %s OR starts_with(s.folder, %s))")
                args.extend([shared, shared + "/" if rel else shared])
        if run:
            where.append("(s.run LIKE %s OR ('/' || substr(s.folder, strpos(s.folder, ':') + 1) || '/') LIKE %s)")
            args.extend([like_of(run), "%/" + like_of(run) + "/%"])
        if since is not None:
            where.append("f.updated_at >= %s")
            args.append(since)
        return (f" WHERE {' AND '.join(where)}" if where else ""), args

    def samples_json(self, *, states: tuple[str, ...] = (), under: str | None = None, run: str | None = None,
                     since: float | None = None, limit: int | None = None) -> list[str]:
        """The samples the filters select (oldest first; with limit the `limit` most recently updated), as
        `status --json`'s "samples" entries, each already a JSON object (one query)."""
        clause, args = self._sample_filters(states, under, run, since)
        base = f"FROM samples s JOIN files f ON f.id = s.lead{clause}"
        sql = f"SELECT {_SAMPLE_JSON} AS j {base} ORDER BY s.id"
        if limit is not None:
            sql = (f"SELECT j FROM (SELECT s.id AS sid, {_SAMPLE_JSON} AS j {base}"
                   f" ORDER BY f.updated_at DESC, s.id DESC LIMIT %s) AS t ORDER BY sid")
            args = [*args, limit]
        return [r["j"] for r in self._fetch(sql, args)]

    def sample_counts(self) -> dict[str, int]:
        """How many samples are in each state (their lead's); states without one are left out."""
        rows = self._fetch("SELECT f.state, COUNT(*) AS n FROM samples s JOIN files f ON f.id = s.lead"
                           " GROUP BY f.state", ())
        return {r["state"]: r["n"] for r in rows}

    def samples_by_id(self, ids: Iterable[int]) -> dict[int, SampleRow]:
        """The samples with these local ids (with their members), by id; ids not found are left out.
        Two queries a chunk: 50,000 samples must not cost 50,000 round trips."""
        wanted = sorted(set(ids))
        found: dict[int, SampleRow] = {}
        for start in range(0, len(wanted), _IN_CHUNK):
            chunk = wanted[start:start + _IN_CHUNK]
            rows = self._fetch("SELECT * FROM samples WHERE id = ANY(%s)", (chunk,))
            by_sample: dict[int, list[FileRow]] = {}
            for m in self._fetch(f"SELECT * FROM files WHERE sample = ANY(%s) ORDER BY sample, {_ROLE_ORDER}",
                                 (chunk,)):
                by_sample.setdefault(m["sample"], []).append(self._from_db(m))
            found.update((r["id"], self._sample_row(r, tuple(by_sample.get(r["id"], ())))) for r in rows)
        return found

    def sample_briefs(self, ids: Iterable[int]) -> dict[int, SampleBrief]:
        """What a `status` line says of the samples with these local ids (no FileRows built)."""
        wanted = sorted(set(ids))
        found: dict[int, SampleBrief] = {}
        for start in range(0, len(wanted), _IN_CHUNK):
            chunk = wanted[start:start + _IN_CHUNK]
            rows = self._fetch("SELECT id, folder, name, late, warnings FROM samples WHERE id = ANY(%s)", (chunk,))
            by_sample: dict[int, list[tuple[str | None, int | None, str | None]]] = {}
            for m in self._fetch(f"SELECT sample, role, lane, flags FROM files WHERE sample = ANY(%s)"
                                 f" ORDER BY sample, {_ROLE_ORDER}", (chunk,)):
                by_sample.setdefault(m["sample"], []).append((m["role"] or "single", m["lane"], m["flags"]))
            for r in rows:
                found[r["id"]] = SampleBrief(r["id"], self._unshared(r["folder"], r["folder"]), r["name"],
                                             bool(r["late"]), tuple(json.loads(r["warnings"])) if r["warnings"]
                                             else (), tuple(by_sample.get(r["id"], ())))
        return found

    def run_rows(self) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """What `seqdrop runs` groups (as SQLite's): (sample id, run, folder, name, state, sample_id, member
        count, updated_at) of each sample, and (file id, path, state, sample_id, updated_at) of each
        version without a sample."""
        samples = [(r["id"], r["run"], self._unshared(r["folder"], r["folder"]), r["name"], r["state"], r["sample_id"],
                    r["n"], r["updated_at"]) for r in self._fetch(
            "SELECT s.id, s.run, s.folder, s.name, f.state, f.sample_id, (SELECT COUNT(*) FROM files m"
            " WHERE m.sample = s.id) AS n, f.updated_at FROM samples s JOIN files f ON f.id = s.lead ORDER BY s.id",
            ())]
        loose = [(r["id"], self._local(r["watch"], r["rel"]), r["state"], r["sample_id"], r["updated_at"])
                 for r in self._fetch("SELECT id, watch, rel, state, sample_id, updated_at FROM files"
                                      " WHERE sample IS NULL ORDER BY id", ())]
        return samples, loose
