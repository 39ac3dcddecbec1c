"""SqliteStore's read-only verbs for the operator's commands: `status` filters, `seqdrop show`, and
`seqdrop upload`'s look-up of what the daemon already confirmed.

A mixin of SqliteStore (same connection, same lock), kept apart from the daemon's verbs: none of these
writes, so `status` may use them on a read-only connection beside the running daemon. They must answer
on a 100,000-file queue within a fraction of a second (bench/status.py).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterable
from typing import Any

from daemon.queue.base import TERMINAL, FileRow, Identity, Listed, SampleBrief, SampleRow, Version
from daemon.queue.sqlite_samples import _ROLE_ORDER

MATCH_CHUNK = 400       # files per look-up query in confirmed_matches (SQLite allows 32,766 parameters)
_LISTED = "id, path, state, attempts, sample_id, error, updated_at, sample, flags"   # Listed's fields, in order
_IN_CHUNK = 500         # ids per `IN (...)` look-up

# The row as `status --json` shows it (FileRow.public()'s keys, in its order), encoded by SQLite's JSON
# functions: a 100,000-file queue is written in ~0.3 s instead of ~3 s through FileRow objects.
_PUBLIC_JSON = ("json_object('id', id, 'path', path, 'state', state, 'size', size, 'sample_id', sample_id,"
                " 'attempts', attempts, 'error', error,"
                " 'updated_at', strftime('%Y-%m-%dT%H:%M:%SZ', CAST(updated_at AS INTEGER), 'unixepoch'),"
                " 'sample', sample, 'role', CASE WHEN role IS NULL AND sample IS NOT NULL THEN 'single' ELSE role END,"
                " 'lane', lane)")


# A sample as `status --json`'s "samples" list shows it (SampleRow.public()'s keys, in its order), built by
# SQLite from the sample row and its lead's file row (`s` and `f`): its state is its lead's.
_SAMPLE_JSON = ("json_object('id', s.id, 'name', s.name, 'run', s.run, 'paired', json(CASE WHEN s.paired THEN 'true'"
                " ELSE 'false' END), 'files', (SELECT json_group_array(m.id) FROM (SELECT id FROM files WHERE"
                " sample = s.id ORDER BY CASE role WHEN 'R2' THEN 1 ELSE 0 END, COALESCE(lane, 0), id) m),"
                " 'state', f.state, 'sample_id', f.sample_id, 'project', json_extract(s.landing, '$.project'),"
                " 'tags', json(COALESCE(json_extract(s.landing, '$.tags'), '[]')), 'error', f.error,"
                " 'updated_at', strftime('%Y-%m-%dT%H:%M:%SZ', CAST(f.updated_at AS INTEGER), 'unixepoch'))")


def _sample_filters(states: tuple[str, ...], under: str | None, run: str | None,
                    since: float | None) -> tuple[str, list[Any]]:
    """find_files' filters for samples (`s` joined with its lead `f`): the lead's state and time; run: the
    sample's run name, or a folder of that name on its folder's path; under: its folder at or below."""
    where: list[str] = []
    args: list[Any] = []
    if states:
        where.append(f"f.state IN ({','.join('?' * len(states))})")
        args.extend(states)
    if under:
        folder = under.rstrip("/")
        where.append("(s.folder = ? OR s.folder GLOB ?)")
        args.extend([folder or "/", _glob_escape(folder) + "/*"])
    if run:
        where.append("(s.run GLOB ? OR s.folder || '/' GLOB ?)")
        args.extend([run, f"*/{run}/*"])
    if since is not None:
        where.append("f.updated_at >= ?")
        args.append(since)
    return (f" WHERE {' AND '.join(where)}" if where else ""), args


def _glob_escape(text: str) -> str:
    """A literal text inside a GLOB pattern ([*], [?], [[] match themselves)."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def _filters(states: tuple[str, ...], under: str | None, run: str | None,
             since: float | None) -> tuple[str, list[Any]]:
    """The WHERE clause (with its leading space, or empty) and arguments of find_files' filters."""
    where: list[str] = []
    args: list[Any] = []
    if states:
        where.append(f"state IN ({','.join('?' * len(states))})")
        args.extend(states)
    if under:
        folder = under.rstrip("/") + "/"
        where.append("(path = ? OR (path > ? AND path < ?))")    # through the path index; "0" follows "/"
        args.extend([under.rstrip("/") or "/", folder, folder[:-1] + "0"])
    if run:
        where.append("path GLOB ?")
        args.append(f"*/{run}/*")
    if since is not None:
        where.append("updated_at >= ?")
        args.append(since)
    return (f" WHERE {' AND '.join(where)}" if where else ""), args


class OperatorReads:
    """The verbs; SqliteStore provides the connection, its lock and the row conversion."""

    db: sqlite3.Connection
    _lock: threading.RLock
    _from_db: Callable[[sqlite3.Row], FileRow]
    _sample_row: Callable[..., SampleRow]     # SampleVerbs' (sqlite_samples.py)

    def find_files(self, *, states: tuple[str, ...] = (), under: str | None = None, run: str | None = None,
                   since: float | None = None, limit: int | None = None) -> tuple[list[Listed], int]:
        """The versions matching every filter given, in queue order (id), and how many matched; with
        limit, only the `limit` most recently updated of them. under: a folder (or a file) and all below
        it; run: a folder name anywhere in the path, as a glob (`240501_*`); since: updated at or after
        this time (epoch seconds)."""
        clause, args = _filters(states, under, run, since)
        sql = f"SELECT {_LISTED} FROM files{clause} ORDER BY id"
        if limit is not None:
            sql = (f"SELECT * FROM (SELECT {_LISTED} FROM files{clause} ORDER BY updated_at DESC, id DESC"
                   f" LIMIT ?) ORDER BY id")
        with self._lock:
            total = self.db.execute(f"SELECT COUNT(*) FROM files{clause}", args).fetchone()[0]
            cursor = self.db.cursor()
            cursor.row_factory = None      # plain tuples: a sqlite3.Row per row costs more than the query
            rows = cursor.execute(sql, [*args, limit] if limit is not None else args).fetchall()
        return [Listed._make(r) for r in rows], total

    def public_json(self, *, states: tuple[str, ...] = (), under: str | None = None, run: str | None = None,
                    since: float | None = None, limit: int | None = None) -> list[str]:
        """find_files' selection as `status --json` entries, each already a JSON object."""
        clause, args = _filters(states, under, run, since)
        sql = f"SELECT {_PUBLIC_JSON} FROM files{clause} ORDER BY id"
        if limit is not None:
            sql = (f"SELECT j FROM (SELECT id, {_PUBLIC_JSON} AS j FROM files{clause}"
                   f" ORDER BY updated_at DESC, id DESC LIMIT ?) ORDER BY id")
            args = [*args, limit]
        with self._lock:
            return [r[0] for r in self.db.execute(sql, args).fetchall()]

    def samples_json(self, *, states: tuple[str, ...] = (), under: str | None = None, run: str | None = None,
                     since: float | None = None, limit: int | None = None) -> list[str]:
        """The samples the filters select (oldest first; with limit the `limit` most recently updated), as
        `status --json`'s "samples" entries, each already a JSON object."""
        clause, args = _sample_filters(states, under, run, since)
        base = f"FROM samples s JOIN files f ON f.id = s.lead{clause}"
        sql = f"SELECT {_SAMPLE_JSON} {base} ORDER BY s.id"
        if limit is not None:
            sql = (f"SELECT j FROM (SELECT s.id AS sid, {_SAMPLE_JSON} AS j {base}"
                   f" ORDER BY f.updated_at DESC, s.id DESC LIMIT ?) ORDER BY sid")
            args = [*args, limit]
        with self._lock:
            return [r[0] for r in self.db.execute(sql, args).fetchall()]

    def sample_counts(self) -> dict[str, int]:
        """How many samples are in each state (their lead's); states without one are left out."""
        with self._lock:
            rows = self.db.execute("SELECT f.state, COUNT(*) FROM samples s JOIN files f ON f.id = s.lead"
                                   " GROUP BY f.state").fetchall()
        return {r[0]: r[1] for r in rows}

    def samples_by_id(self, ids: Iterable[int]) -> dict[int, SampleRow]:
        """The samples with these local ids (with their members), by id; ids not found are left out."""
        wanted = sorted(set(ids))
        found: dict[int, SampleRow] = {}
        for start in range(0, len(wanted), _IN_CHUNK):
            chunk = wanted[start:start + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            with self._lock:    # two queries a chunk: 50,000 samples must not cost 50,000 look-ups
                rows = self.db.execute(f"SELECT * FROM samples WHERE id IN ({marks})", chunk).fetchall()
                members = self.db.execute(f"SELECT * FROM files WHERE sample IN ({marks}) ORDER BY sample,"
                                          f" {_ROLE_ORDER}", chunk).fetchall()
            by_sample: dict[int, list[FileRow]] = {}
            for m in members:
                by_sample.setdefault(m["sample"], []).append(self._from_db(m))
            found.update((r["id"], self._sample_row(r, tuple(by_sample.get(r["id"], ())))) for r in rows)
        return found

    def sample_briefs(self, ids: Iterable[int]) -> dict[int, SampleBrief]:
        """What a `status` line says of the samples with these local ids (plain tuples: the text view of
        50,000 samples must not build 100,000 FileRows)."""
        wanted = sorted(set(ids))
        found: dict[int, SampleBrief] = {}
        for start in range(0, len(wanted), _IN_CHUNK):
            chunk = wanted[start:start + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            with self._lock:
                cursor = self.db.cursor()
                cursor.row_factory = None
                rows = cursor.execute(f"SELECT id, folder, name, late, warnings FROM samples WHERE id IN ({marks})",
                                      chunk).fetchall()
                members = cursor.execute(f"SELECT sample, role, lane, flags FROM files WHERE sample IN ({marks})"
                                         f" ORDER BY sample, {_ROLE_ORDER}", chunk).fetchall()
            by_sample: dict[int, list[tuple[str | None, int | None, str | None]]] = {}
            for sample, role, lane, flags in members:
                by_sample.setdefault(sample, []).append((role or "single", lane, flags))
            for sid, folder, name, late, warnings in rows:
                found[sid] = SampleBrief(sid, folder, name, bool(late), tuple(json.loads(warnings)) if warnings else (),
                                         tuple(by_sample.get(sid, ())))
        return found

    def files_under(self, folder: str) -> list[FileRow]:
        """Every version at or below `folder`, in queue order (a run's files)."""
        clause, args = _filters((), folder, None, None)
        with self._lock:
            rows = self.db.execute(f"SELECT * FROM files{clause} ORDER BY id", args).fetchall()
        return [self._from_db(r) for r in rows]

    def unended_under(self, folder: str) -> int:
        """How many versions at or below `folder` have not ended (seen, queued, uploading)."""
        clause, args = _filters((), folder, None, None)
        ended = ",".join(f"'{s}'" for s in sorted(TERMINAL))
        with self._lock:
            return int(self.db.execute(f"SELECT COUNT(*) FROM files{clause} AND state NOT IN ({ended})",
                                       args).fetchone()[0])

    def run_rows(self) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """What `seqdrop runs` groups: (sample id, run, folder, name, state, sample_id, member count,
        updated_at) of each sample, and (file id, path, state, sample_id, updated_at) of each version
        without a sample."""
        with self._lock:
            cursor = self.db.cursor()
            cursor.row_factory = None
            samples = cursor.execute(
                "SELECT s.id, s.run, s.folder, s.name, f.state, f.sample_id, (SELECT COUNT(*) FROM files m"
                " WHERE m.sample = s.id), f.updated_at FROM samples s JOIN files f ON f.id = s.lead"
                " ORDER BY s.id").fetchall()
            loose = cursor.execute("SELECT id, path, state, sample_id, updated_at FROM files WHERE sample IS NULL"
                                   " ORDER BY id").fetchall()
        return samples, loose

    def versions(self, *, path: str | None = None, sample_id: str | None = None,
                 file_id: int | None = None) -> list[Version]:
        """Every version of a path, the files of a sample id, or one file: oldest first."""
        (column, value), = [(c, v) for c, v in (("path", path), ("sample_id", sample_id), ("id", file_id))
                            if v is not None]
        with self._lock:
            rows = self.db.execute(f"SELECT * FROM files WHERE {column} = ? ORDER BY id", (value,)).fetchall()
        return [Version(row=self._from_db(r), created_at=r["created_at"]) for r in rows]

    def confirmed_matches(self, files: list[tuple[str, Identity]]) -> dict[str, FileRow]:
        """For each (path, identity) given, the newest confirmed (done) version that is the same file
        version: the same path, size and mtime_ns, or the same device, inode, size and mtime_ns at another
        path (moved or renamed). Paths without one are left out. Inodes have no index: each query reads
        the table once, for MATCH_CHUNK files."""
        found: dict[str, FileRow] = {}
        for start in range(0, len(files), MATCH_CHUNK):
            chunk = files[start:start + MATCH_CHUNK]
            paths = sorted({p for p, _ in chunk})
            inodes = sorted({ident.inode for _, ident in chunk})
            with self._lock:
                rows = self.db.execute(
                    f"SELECT * FROM files WHERE state = 'done' AND (path IN ({','.join('?' * len(paths))})"
                    f" OR inode IN ({','.join('?' * len(inodes))})) ORDER BY id DESC", [*paths, *inodes]).fetchall()
            by_path: dict[tuple[str, int, int], FileRow] = {}
            by_identity: dict[Identity, FileRow] = {}
            for row in map(self._from_db, rows):
                by_path.setdefault((row.path, row.size, row.identity.mtime_ns), row)
                by_identity.setdefault(row.identity, row)
            for path, ident in chunk:
                match = by_path.get((path, ident.size, ident.mtime_ns)) or by_identity.get(ident)
                if match is not None:
                    found[path] = match
        return found
