"""SqliteStore's read-only verbs for the operator's commands: `status` filters, `seqdrop show`, and
`seqdrop upload`'s look-up of what the daemon already confirmed.

A mixin of SqliteStore (same connection, same lock), kept apart from the daemon's verbs: none of these
writes, so `status` may use them on a read-only connection beside the running daemon. They must answer
on a 100,000-file queue within a fraction of a second (bench/status.py).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from typing import Any

from daemon.queue.base import FileRow, Identity, Listed, Version

MATCH_CHUNK = 400       # files per look-up query in confirmed_matches (SQLite allows 32,766 parameters)
_LISTED = "id, path, state, attempts, sample_id, error, updated_at"     # Listed's fields, in its order

# The row as `status --json` shows it (FileRow.public()'s keys, in its order), encoded by SQLite's JSON
# functions: a 100,000-file queue is written in ~0.3 s instead of ~3 s through FileRow objects.
_PUBLIC_JSON = ("json_object('id', id, 'path', path, 'state', state, 'size', size, 'sample_id', sample_id,"
                " 'attempts', attempts, 'error', error,"
                " 'updated_at', strftime('%Y-%m-%dT%H:%M:%SZ', CAST(updated_at AS INTEGER), 'unixepoch'),"
                " 'sample', sample, 'role', CASE WHEN role IS NULL AND sample IS NOT NULL THEN 'single' ELSE role END,"
                " 'lane', lane)")


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
