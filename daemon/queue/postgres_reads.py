"""PostgresStore's reading verbs: the daemon's (get, settled_in, counts...) and the operator's (`status`
filters, `seqdrop show`, `seqdrop upload`'s look-up). A mixin of PostgresStore (same connection and lock).

Rows are named (watch, rel) in the database and by this host's absolute paths in the verbs: a path
filter is turned into a watch id and a range of rel before the query (postgres.py's _split).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg

from daemon.queue.base import (
    SHARED_DEV,
    STATES,
    TERMINAL,
    FileRow,
    Identity,
    Listed,
    Version,
)

MATCH_CHUNK = 1000       # files per look-up query in confirmed_matches


def display_url(url: str) -> str:
    """The URL as logs and messages show it: never a password, even one put in the URL."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" if parts.username else f"***@{host}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _range(rel_folder: str) -> tuple[str, str]:
    """The rel range of the files below a folder ("" = the watch folder itself): ("a/", "a0")."""
    lo = rel_folder.rstrip("/") + "/" if rel_folder else ""
    hi = lo[:-1] + "0" if lo else "\U0010ffff"      # "0" sorts right after "/" (rel is COLLATE "C")
    return lo, hi


def like_of(glob: str) -> str:
    """A `--run` glob as a LIKE pattern: * and ? become % and _, and a literal %, _ or backslash stays
    literal (run folder names are full of underscores: 240501_M00123_0042)."""
    special = {"*": "%", "?": "_", "%": "\\%", "_": "\\_", "\\": "\\\\"}
    return "".join(special.get(c, c) for c in glob)


class PgReads:
    """The verbs; PostgresStore provides the connection, its lock and the name mapping."""

    _lock: threading.RLock
    _conn: Callable[[], psycopg.Connection]
    _from_db: Callable[[dict[str, Any]], FileRow]
    _one: Callable[..., FileRow | None]
    _split: Callable[[str], tuple[str, str]]
    _by_id: dict[str, str]
    _local: Callable[[str, str], str]
    _check_fence: Callable[[int, int, str | None], None]

    def _all(self, sql: str, args: Any = ()) -> list[dict[str, Any]]:
        with self._lock:
            return self._conn().execute(sql, args).fetchall()

    def _where_path(self, path: str) -> tuple[str, str] | None:
        try:
            return self._split(path)
        except ValueError:
            return None           # no file of this host's watch folders: no row names it

    def get(self, file_id: int) -> FileRow | None:
        """The row; LeaseLost if this process holds it and its token has moved on (another host took it):
        the pipeline reads its row before a side exit's network call (cancel_upload), which must not
        touch a sample another host is uploading now."""
        with self._lock:
            r = self._conn().execute("SELECT * FROM files WHERE id = %s", (file_id,)).fetchone()
        if r is not None:
            self._check_fence(file_id, r["fence"], r["claimed_by"])
        return self._from_db(r) if r else None

    def latest_for_path(self, path: str) -> FileRow | None:
        name = self._where_path(path)
        if name is None:
            return None
        return self._one("SELECT * FROM files WHERE watch = %s AND rel = %s ORDER BY id DESC LIMIT 1", name)

    def settled_in(self, folder: str) -> dict[str, Identity]:
        """Files directly in `folder` whose latest version is done, rejected or failed (one query per
        folder, as in SQLite: a rescan by each of several hosts stays one query per folder)."""
        name = self._where_path(folder)
        if name is None:
            return {}
        watch, rel_folder = name
        lo, hi = _range(rel_folder)
        rows = self._all("SELECT rel, state, inode, size, mtime_ns FROM files WHERE watch = %s AND rel > %s"
                         " AND rel < %s AND strpos(substr(rel, %s), '/') = 0 ORDER BY rel, id",
                         (watch, lo, hi, len(lo) + 1))
        latest = {r["rel"]: r for r in rows}
        return {self._local(watch, rel): Identity(SHARED_DEV, r["inode"], r["size"], r["mtime_ns"])
                for rel, r in latest.items() if r["state"] in ("done", "rejected", "failed")}

    def last_done_for_path(self, path: str, *, before_id: int) -> FileRow | None:
        name = self._where_path(path)
        if name is None:
            return None
        return self._one("SELECT * FROM files WHERE watch = %s AND rel = %s AND state = 'done' AND id < %s"
                         " ORDER BY id DESC LIMIT 1", (*name, before_id))

    def with_identity(self, ident: Identity, *, states: tuple[str, ...]) -> FileRow | None:
        """The latest version in one of states with this inode, size and mtime_ns, at whatever path.
        The device is not compared (each host numbers its mounts); an inode number the hosts do not
        share (some network filesystems) finds nothing, and a moved file is then uploaded again."""
        return self._one("SELECT * FROM files WHERE inode = %s AND size = %s AND mtime_ns = %s AND state = ANY(%s)"
                         " ORDER BY id DESC LIMIT 1", (ident.inode, ident.size, ident.mtime_ns, list(states)))

    def rows_in(self, *states: str) -> list[FileRow]:
        """This host's rows in states (of its watch folders: another host's files are not its to sweep)."""
        rows = self._all("SELECT * FROM files WHERE state = ANY(%s) AND watch = ANY(%s) ORDER BY id",
                         (list(states), list(self._by_id)))
        return [self._from_db(r) for r in rows]

    def counts(self) -> dict[str, int]:
        rows = self._all("SELECT state, COUNT(*) AS n FROM files GROUP BY state")
        counts = {s: 0 for s in STATES}
        counts.update({r["state"]: r["n"] for r in rows})
        return counts

    def files(self, *, states: tuple[str, ...] | None = None, limit: int | None = None) -> list[FileRow]:
        sql, args = "SELECT * FROM files", []
        if states:
            sql += " WHERE state = ANY(%s)"
            args.append(list(states))
        sql += " ORDER BY id"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [self._from_db(r) for r in self._all(sql, args)]

    def next_due_at(self) -> float | None:
        rows = self._all("SELECT MIN(next_attempt_at) AS t FROM files WHERE state = 'queued' AND watch = ANY(%s)",
                         (list(self._by_id),))
        return rows[0]["t"] if rows else None

    def done_since(self, ts: float) -> int:
        return self._all("SELECT COUNT(*) AS n FROM files WHERE state = 'done' AND updated_at >= %s", (ts,))[0]["n"]

    def oldest_waiting_since(self) -> float | None:
        return self._all("SELECT MIN(created_at) AS t FROM files WHERE state IN ('seen', 'queued')")[0]["t"]

    def claims(self) -> dict[int, str]:
        """Which host (and worker) holds each `uploading` row: `status` and `show` say so."""
        return {r["id"]: r["claimed_by"] for r in
                self._all("SELECT id, claimed_by FROM files WHERE state = 'uploading' AND claimed_by IS NOT NULL")}

    # -- the operator's reads ------------------------------------------------------------------
    def _filters(self, states: tuple[str, ...], under: str | None, run: str | None,
                 since: float | None) -> tuple[str, list[Any]]:
        where: list[str] = []
        args: list[Any] = []
        if states:
            where.append("state = ANY(%s)")
            args.append(list(states))
        if under:
            name = self._where_path(under.rstrip("/") or "/")
            if name is None:
                where.append("false")
            else:
                lo, hi = _range(name[1])
                where.append("watch = %s AND (rel = %s OR (rel > %s AND rel < %s))")
                args.extend([name[0], name[1], lo, hi])
        if run:
            where.append("('/' || rel) LIKE %s")
            args.append("%/" + like_of(run) + "/%")
        if since is not None:
            where.append("updated_at >= %s")
            args.append(since)
        return (f" WHERE {' AND '.join(where)}" if where else ""), args

    def find_files(self, *, states: tuple[str, ...] = (), under: str | None = None, run: str | None = None,
                   since: float | None = None, limit: int | None = None) -> tuple[list[Listed], int]:
        clause, args = self._filters(states, under, run, since)
        cols = "id, watch, rel, state, attempts, sample_id, error, updated_at, sample, flags"
        sql = f"SELECT {cols} FROM files{clause} ORDER BY id"
        if limit is not None:
            sql = (f"SELECT * FROM (SELECT {cols} FROM files{clause} ORDER BY updated_at DESC, id DESC"
                   f" LIMIT %s) AS t ORDER BY id")
        total = self._all(f"SELECT COUNT(*) AS n FROM files{clause}", args)[0]["n"]
        rows = self._all(sql, [*args, limit] if limit is not None else args)
        return [Listed(r["id"], self._local(r["watch"], r["rel"]), r["state"], r["attempts"], r["sample_id"],
                       r["error"], r["updated_at"], r["sample"], r["flags"]) for r in rows], total

    def public_json(self, *, states: tuple[str, ...] = (), under: str | None = None, run: str | None = None,
                    since: float | None = None, limit: int | None = None) -> list[str]:
        """find_files' selection as `status --json` entries (FileRow.public(), plus claimed_by)."""
        clause, args = self._filters(states, under, run, since)
        sql = f"SELECT * FROM files{clause} ORDER BY id"
        if limit is not None:
            sql = f"SELECT * FROM (SELECT * FROM files{clause} ORDER BY updated_at DESC, id DESC LIMIT %s) AS t ORDER BY id"
            args = [*args, limit]
        out = []
        for r in self._all(sql, args):
            entry = self._from_db(r).public()
            entry["claimed_by"] = r["claimed_by"] if r["state"] == "uploading" else None
            out.append(json.dumps(entry))
        return out

    def files_under(self, folder: str) -> list[FileRow]:
        """Every version at or below `folder`, in queue order (a run's files)."""
        clause, args = self._filters((), folder, None, None)
        return [self._from_db(r) for r in self._all(f"SELECT * FROM files{clause} ORDER BY id", args)]

    def unended_under(self, folder: str) -> int:
        """How many versions at or below `folder` have not ended (seen, queued, uploading)."""
        clause, args = self._filters((), folder, None, None)
        rows = self._all(f"SELECT COUNT(*) AS n FROM files{clause} AND NOT state = ANY(%s)",
                         [*args, sorted(TERMINAL)])
        return int(rows[0]["n"])

    def versions(self, *, path: str | None = None, sample_id: str | None = None,
                 file_id: int | None = None) -> list[Version]:
        if path is not None:
            name = self._where_path(path)
            rows = self._all("SELECT * FROM files WHERE watch = %s AND rel = %s ORDER BY id", name) if name else []
        elif sample_id is not None:
            rows = self._all("SELECT * FROM files WHERE sample_id = %s ORDER BY id", (sample_id,))
        else:
            rows = self._all("SELECT * FROM files WHERE id = %s", (file_id,))
        return [Version(row=self._from_db(r), created_at=r["created_at"],
                        claimed_by=r["claimed_by"] if r["state"] == "uploading" else None) for r in rows]

    def confirmed_matches(self, files: list[tuple[str, Identity]]) -> dict[str, FileRow]:
        """For each (path, identity), the newest done version that is the same file version: the same
        (watch, rel, size, mtime_ns), or the same inode, size and mtime_ns at another path."""
        found: dict[str, FileRow] = {}
        for start in range(0, len(files), MATCH_CHUNK):
            chunk = files[start:start + MATCH_CHUNK]
            names = {p: self._where_path(p) for p, _ in chunk}
            rels = sorted({n[1] for n in names.values() if n})
            inodes = sorted({ident.inode for _, ident in chunk})
            rows = self._all("SELECT * FROM files WHERE state = 'done' AND (rel = ANY(%s) OR inode = ANY(%s))"
                             " ORDER BY id DESC", (rels, inodes))
            by_name: dict[tuple[str, str, int, int], FileRow] = {}
            by_inode: dict[tuple[int, int, int], FileRow] = {}
            for r in rows:
                row = self._from_db(r)
                by_name.setdefault((r["watch"], r["rel"], r["size"], r["mtime_ns"]), row)
                by_inode.setdefault((r["inode"], r["size"], r["mtime_ns"]), row)
            for path, ident in chunk:
                name = names[path]
                match = (by_name.get((*name, ident.size, ident.mtime_ns)) if name else None) or \
                    by_inode.get((ident.inode, ident.size, ident.mtime_ns))
                if match is not None:
                    found[path] = match
        return found
