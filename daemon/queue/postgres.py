"""The shared queue: the Store contract (base.py) in a PostgreSQL database that several ingest hosts use
at once (design.md, "Several hosts, one queue"). SQLite (sqlite.py) stays the default.

Names. A row names its file by (watch, rel): the watch folder's id and the path below it, so hosts that
mount the share at different places agree. The verbs take and give this host's absolute paths; the store
maps them through the watch folders it was given ({id: local path}). A row of a watch id this host does
not watch reads as "<id>:<rel>" and is never claimed here. Versions read back carry dev = SHARED_DEV: a
version is (watch, rel, size, mtime_ns), whatever device or inode number a host sees (base.Identity).

Claims are leases. claim_next takes a due lead row with SELECT ... FOR UPDATE SKIP LOCKED (two hosts never
take the same row, and neither waits for the other), or an `uploading` row whose lease ran out (its owner
died or stalled: the next owner resumes from the stored step, the same sample id). It sets claimed_by
(host/worker), lease_until = now() + lease_s on the DATABASE's clock (hosts' clocks may disagree), and a
new fencing token from the sequence `fences`. A thread renews the leases this process holds every third
of lease_s, on a connection of its own.

Fencing, without changing the verbs' signatures: claims are per process, so the store remembers, per
claimed row id, the token it got (self._fences). Every write this process makes to a row it holds names
that token (`... AND fence = %s`); a write that matches no row because the token moved on (the lease ran
out and another host claimed it, or a release bumped it) raises LeaseLost, and the pipeline stops that
upload without confirming (and any later write of this process to that row is refused as well, until
it claims the row again). A write that ends the claim (mark_done, reschedule, set_state out of
`uploading`) forgets the token. Transitions made by someone who does not hold the row (a release, retry,
the tracker) draw a new token, so a former holder's late write is refused too. One Codex refuses a second
confirm of a sample (AlreadyDone): a holder paused between its last fenced write and its confirm call
cannot confirm the sample twice either.

Every verb is one short transaction on one connection (behind a lock, like SQLite's) — a verb of one
statement runs it in autocommit: one round trip, no BEGIN/COMMIT — and batch() is one transaction (a
rescan of a folder: one query, then one commit per batch). A broken connection (the server restarted)
is replaced at the next verb; the verb that met the break raises, and the daemon's callers retry as
they do for a failing disk (the workers wait and try again; nothing is lost: each step was recorded).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.rows import dict_row

from daemon.errors import LeaseLost
from daemon.queue import postgres_schema as schema
from daemon.queue.base import (
    HALF_POSTED_STEPS,
    INIT_STEPS,
    POSTED_STEPS,
    SHARED_DEV,
    STATES,
    STEP_INITIALIZED,
    STEP_POSTED,
    FileRow,
    Identity,
    StoreLocked,
)
from daemon.queue.postgres_reads import PgReads, display_url
from daemon.queue.postgres_samples import PgSamples

CONNECT_TIMEOUT_S = 10
# The row a write aimed at file id %s lands on: its sample's lead if it is a follower, else itself.
LEAD_OF = ("COALESCE((SELECT s.lead FROM files f JOIN samples s ON s.id = f.sample"
           " WHERE f.id = %s AND f.follower), %s)")
_ROW_COLUMNS = ("step", "sample_id", "init", "md5", "attempts", "next_attempt_at")


class PostgresStore(PgReads, PgSamples):
    """The queue in a PostgreSQL database shared by several hosts (see the module docstring)."""

    def __init__(self, url: str, *, watches: dict[str, str], host: str, lease_s: float = 60.0,
                 password: str | None = None, path: str = "", readonly: bool = False,
                 clock: Callable[[], float] = time.time) -> None:
        """watches: {watch id: this host's path of it}; path: the local SQLite path of the settings,
        beside which this host's audit journal lives (journal_path(store.path))."""
        self.url, self.where = url, display_url(url)
        self.path = path or self.where
        self.host, self.lease_s, self.clock = host, float(lease_s), clock
        self.readonly = readonly
        self._password = password
        self._roots = sorted(((w, p.rstrip("/") or "/") for w, p in watches.items()),
                             key=lambda wp: len(wp[1]), reverse=True)     # innermost first
        self._by_id = dict(self._roots)
        self._lock = threading.RLock()
        self._depth = 0                           # > 0 inside batch()
        self._fences: dict[int, int] = {}          # row id -> token of this process's claim
        self._lost: dict[int, int] = {}            # row id -> the token a refused write named (until claimed again)
        self._fences_lock = threading.Lock()
        self._holds_host_lock = False
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self.db = self._connect()
        if readonly:
            schema.refuse_newer(schema.found_version(self.db), self.where)
        else:
            schema.migrate(self.db, self.where)

    # -- connections -------------------------------------------------------------------------
    def _connect(self) -> psycopg.Connection:
        db = psycopg.connect(self.url, autocommit=True, row_factory=dict_row, password=self._password,
                             connect_timeout=CONNECT_TIMEOUT_S, application_name=f"seqdrop {self.host}")
        if self.readonly:
            db.execute("SET default_transaction_read_only = on")
        return db

    def _conn(self) -> psycopg.Connection:
        """The connection, replaced if the last one broke (a server restart, a network cut)."""
        if self.db.closed or self.db.broken:
            if self._depth:          # the batch's transaction died with it: never go on outside it
                raise psycopg.OperationalError("the connection to the queue database broke during a batch")
            try:
                self.db.close()
            except psycopg.Error:
                pass
            self.db = self._connect()
            if self._holds_host_lock:
                try:
                    self._take_host_lock()
                except StoreLocked:
                    # The old session still holds it (a network cut the server has not noticed yet):
                    # it is this daemon's own, and goes when the server drops that session.
                    pass
        return self.db

    def close(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=5)
        with self._lock:
            self.db.close()

    def lock_exclusive(self) -> None:
        """One daemon per host name (claimed_by, release_stale_claims rely on it): a session advisory
        lock on the name. Other hosts share the queue; that is the point of it."""
        with self._lock:
            self._take_host_lock()
            self._holds_host_lock = True

    def _take_host_lock(self) -> None:
        r = self.db.execute("SELECT pg_try_advisory_lock(hashtext(%s)) AS ok", ("seqdrop host " + self.host,)).fetchone()
        if not r["ok"]:
            raise StoreLocked(f"another seqdrop daemon with the host name {self.host!r} already uses the queue "
                              f"{self.where}")

    @contextmanager
    def tx(self) -> Iterator[psycopg.Connection]:
        """One transaction; inside batch() (or another tx) a savepoint, as in SQLite."""
        with self._lock:
            db = self._conn()
            with db.transaction():
                yield db

    @contextmanager
    def one(self) -> Iterator[psycopg.Connection]:
        """For verbs of one statement (or statements that need no atomicity together): each commits
        itself (autocommit: one round trip, not BEGIN, statement, COMMIT), or joins the batch() it is in."""
        with self._lock:
            yield self._conn()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Many transitions, one transaction (a rescan's batch of files: one commit)."""
        with self.tx():
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1

    def has_schema(self) -> bool:
        with self._lock:
            return schema.found_version(self._conn()) is not None

    # -- names -------------------------------------------------------------------------------
    def _split(self, path: str) -> tuple[str, str]:
        """This host's absolute path -> (watch id, path below the watch folder)."""
        for watch, root in self._roots:
            if path == root:
                return watch, ""
            prefix = root if root == "/" else root + "/"
            if path.startswith(prefix):
                return watch, path[len(prefix):]
        raise ValueError(f"{path} is in no watch folder of this host: the shared queue names files by "
                         f"watch id ({', '.join(self._by_id) or 'none configured'})")

    def _local(self, watch: str, rel: str) -> str:
        root = self._by_id.get(watch)
        if root is None:
            return f"{watch}:{rel}"          # watched by another host only
        if not rel:
            return root
        return (root if root == "/" else root + "/") + rel

    def _from_db(self, r: dict[str, Any]) -> FileRow:
        return FileRow(id=r["id"], path=self._local(r["watch"], r["rel"]),
                       identity=Identity(SHARED_DEV, r["inode"], r["size"], r["mtime_ns"]),
                       state=r["state"], step=r["step"], sample_id=r["sample_id"], init=r["init"], md5=r["md5"],
                       attempts=r["attempts"], next_attempt_at=r["next_attempt_at"], error=r["error"],
                       stable_since=r["stable_since"], updated_at=r["updated_at"], init_at=r["init_at"],
                       posted_at=r["posted_at"], sample=r["sample"], role=r["role"], lane=r["lane"],
                       follower=bool(r["follower"]), flags=r["flags"])

    def _one(self, sql: str, args: Any = ()) -> FileRow | None:
        with self._lock:
            r = self._conn().execute(sql, args).fetchone()
        return self._from_db(r) if r else None

    # -- writing: detection ------------------------------------------------------------------
    def add_seen(self, path: str, ident: Identity) -> int:
        watch, rel = self._split(path)
        now = self.clock()
        with self.one() as db:
            r = db.execute("INSERT INTO files(watch, rel, dev, inode, size, mtime_ns, state, stable_since, created_at,"
                           " updated_at) VALUES (%s, %s, %s, %s, %s, %s, 'seen', %s, %s, %s)"
                           " ON CONFLICT (watch, rel, size, mtime_ns) WHERE state <> 'vanished' DO NOTHING"
                           " RETURNING id",
                           (watch, rel, ident.dev, ident.inode, ident.size, ident.mtime_ns, now, now, now)).fetchone()
            if r is None:       # another host recorded this version first: one row for it
                r = db.execute("SELECT id FROM files WHERE watch = %s AND rel = %s AND size = %s AND mtime_ns = %s"
                               " AND state <> 'vanished'", (watch, rel, ident.size, ident.mtime_ns)).fetchone()
        return int(r["id"])

    def add_moved(self, path: str, ident: Identity, *, source: FileRow, note: str) -> int:
        watch, rel = self._split(path)
        now = self.clock()
        with self.one() as db:
            r = db.execute("INSERT INTO files(watch, rel, dev, inode, size, mtime_ns, state, sample_id, md5, error,"
                           " stable_since, created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, 'done', %s, %s,"
                           " %s, %s, %s, %s) RETURNING id",
                           (watch, rel, ident.dev, ident.inode, ident.size, ident.mtime_ns, source.sample_id,
                            source.md5, note, now, now, now)).fetchone()
        return int(r["id"])

    def touch_seen(self, file_id: int, ident: Identity) -> None:
        now = self.clock()
        try:
            with self.tx() as db:
                db.execute("UPDATE files SET dev=%s, inode=%s, size=%s, mtime_ns=%s, stable_since=%s, updated_at=%s"
                           " WHERE id=%s AND state='seen'",
                           (ident.dev, ident.inode, ident.size, ident.mtime_ns, now, now, file_id))
        except psycopg.errors.UniqueViolation:
            pass    # a file set back to a version recorded already (the same size and mtime_ns): that row stands

    def set_state(self, file_id: int, state: str, *, error: str | None = None,
                  only_from: tuple[str, ...] | None = None, **cols: Any) -> bool:
        """Move a row to state (if it is in one of only_from); returns whether it moved."""
        assert state in STATES, state
        sets = ["state = %s", "error = %s", "updated_at = %s", "claimed_by = NULL", "lease_until = NULL"]
        args: list[Any] = [state, error, self.clock()]
        for k, v in cols.items():
            assert k in _ROW_COLUMNS, k
            sets.append(f"{k} = %s")
            args.append(v)
        where, where_args = "", []
        if only_from:
            where, where_args = " AND state = ANY(%s)", [list(only_from)]
        return self._update(file_id, ", ".join(sets), args, where=where, where_args=where_args,
                            ends_claim=state != "uploading") == 1

    def note(self, file_id: int, error: str | None) -> None:
        with self.one() as db:
            db.execute(f"UPDATE files SET error = %s WHERE id = {LEAD_OF} AND error IS DISTINCT FROM %s",
                       (error, file_id, file_id, error))

    # -- writing: upload ---------------------------------------------------------------------
    def claim_next(self, worker: str) -> FileRow | None:
        """A due lead row (or one whose lease ran out), leased to host/worker under a new token."""
        if not self._roots:
            return None
        now = self.clock()
        with self.one() as db:
            r = db.execute(
                "WITH c AS (SELECT id FROM files WHERE NOT follower AND watch = ANY(%s) AND"
                " ((state = 'queued' AND next_attempt_at <= %s) OR (state = 'uploading' AND lease_until < now()))"
                " ORDER BY next_attempt_at, id LIMIT 1 FOR UPDATE SKIP LOCKED)"
                " UPDATE files f SET state = 'uploading', claimed_by = %s, fence = nextval('fences'),"
                " lease_until = now() + make_interval(secs => %s), updated_at = %s FROM c WHERE f.id = c.id"
                " RETURNING f.*", (list(self._by_id), now, f"{self.host}/{worker}", self.lease_s, now)).fetchone()
        if r is None:
            return None
        with self._fences_lock:
            self._fences[r["id"]] = r["fence"]
            self._lost.pop(r["id"], None)
        self._start_renewer()
        return self._from_db(r)

    def save_init(self, file_id: int, sample_id: str, init_json: str, *, step: str = STEP_INITIALIZED) -> None:
        assert step in INIT_STEPS, step
        now = self.clock()
        self._update(file_id, "step=%s, sample_id=%s, init=%s, md5=NULL, updated_at=%s, init_at=%s, posted_at=NULL",
                     [step, sample_id, init_json, now, now])

    def save_posted(self, file_id: int, md5: str, *, step: str = STEP_POSTED) -> None:
        """S3 holds the bytes (POSTED_STEPS), or a pair's first read (HALF_POSTED_STEPS: md5 is its)."""
        assert step in POSTED_STEPS + HALF_POSTED_STEPS, step
        now = self.clock()
        self._update(file_id, "step=%s, md5=%s, updated_at=%s, posted_at=%s", [step, md5, now, now])

    def clear_init(self, file_id: int) -> None:
        self._update(file_id, "step='', sample_id=NULL, init=NULL, md5=NULL, init_at=NULL, posted_at=NULL,"
                              " updated_at=%s", [self.clock()])

    def mark_done(self, file_id: int, *, sample_id: str, md5: str | None, error: str | None = None) -> None:
        self._update(file_id, "state='done', sample_id=%s, md5=COALESCE(%s, md5), error=%s, init=NULL,"
                              " claimed_by=NULL, lease_until=NULL, updated_at=%s",
                     [sample_id, md5, error, self.clock()], ends_claim=True)

    def reschedule(self, file_id: int, *, delay_s: float, error: str, count_attempt: bool = True) -> None:
        now = self.clock()
        self._update(file_id, "state='queued', claimed_by=NULL, lease_until=NULL, error=%s, next_attempt_at=%s,"
                              " attempts = attempts + %s, updated_at=%s",
                     [error, now + delay_s, 1 if count_attempt else 0, now], ends_claim=True)

    def release_stale_claims(self) -> int:
        """At start-up: rows this host's previous run left `uploading` go back to the queue (steps kept;
        never a row this process holds).
        Other hosts' claims are theirs until their leases run out (claim_next then takes them)."""
        with self.one() as db:
            return db.execute("UPDATE files SET state='queued', claimed_by=NULL, lease_until=NULL, next_attempt_at=0,"
                              " fence = nextval('fences') WHERE state='uploading' AND NOT follower"
                              " AND starts_with(claimed_by, %s) AND NOT id = ANY(%s)",
                              (self.host + "/", list(self.held()))).rowcount

    def retry(self, *, states: tuple[str, ...], ids: tuple[int, ...] = ()) -> int:
        sql = ("UPDATE files SET state='queued', step='', init=NULL, sample_id=NULL, error=NULL, init_at=NULL,"
               " posted_at=NULL, next_attempt_at=0, updated_at=%s, fence = nextval('fences')"
               " WHERE NOT follower AND state = ANY(%s)")
        args: list[Any] = [self.clock(), list(states)]
        if ids:      # a member's id retries its whole sample (the lead's row carries the upload)
            sql += (" AND (id = ANY(%s) OR id IN (SELECT s.lead FROM samples s JOIN files f ON f.sample = s.id"
                    " WHERE f.id = ANY(%s)))")
            args += [list(ids), list(ids)]
        with self.one() as db:
            return db.execute(sql, args).rowcount

    # -- fencing -----------------------------------------------------------------------------
    def _update(self, file_id: int, sets: str, args: list[Any], *, where: str = "",
                where_args: list[Any] | None = None, ends_claim: bool = False) -> int:
        """UPDATE the row file_id lands on; if this process holds it, only under its token (LeaseLost
        if the token moved on). A write by a non-holder that changes the state draws a new token."""
        with self._fences_lock:
            fence = self._fences.get(file_id, self._lost.get(file_id))
        sql = f"UPDATE files SET {sets}"
        if fence is None and "state=" in sets.replace(" ", ""):
            sql += ", fence = nextval('fences')"
        sql += f" WHERE id = {LEAD_OF}{where}"
        params = [*args, file_id, file_id, *(where_args or [])]
        if fence is not None:
            sql += " AND fence = %s"
            params.append(fence)
        with self.one() as db:
            n = db.execute(sql, params).rowcount
            if n == 0 and fence is not None:
                r = db.execute("SELECT fence, claimed_by FROM files WHERE id = %s", (file_id,)).fetchone()
                self._check_fence(file_id, r["fence"] if r else None, r["claimed_by"] if r else None, fence)
        if ends_claim and fence is not None and n:
            self._forget(file_id)
        return n

    def _check_fence(self, file_id: int, found: int | None, holder: str | None, fence: int | None = None) -> None:
        """LeaseLost if this process holds file_id (under `fence`, or the token it got) and the row's
        token is no longer that one. The token is kept: any later write of this process is refused too."""
        with self._fences_lock:
            mine = fence if fence is not None else self._fences.get(file_id)
            if mine is None or found == mine:
                return
            self._lost[file_id] = self._fences.pop(file_id, mine)
        raise LeaseLost(f"the lease on queue row {file_id} was lost (now held by {holder or 'nobody'}): "
                        f"this host stops its upload")

    def _forget(self, file_id: int) -> None:
        with self._fences_lock:
            self._fences.pop(file_id, None)

    def held(self) -> dict[int, int]:
        """The rows this process holds and their tokens (for tests and `check`)."""
        with self._fences_lock:
            return dict(self._fences)

    def _start_renewer(self) -> None:
        with self._fences_lock:
            if self._renewer is None:
                self._renewer = threading.Thread(target=self._renew_loop, name="lease-renewal", daemon=True)
                self._renewer.start()

    def _renew_loop(self) -> None:
        """Every third of lease_s: extend the lease of every row still held under its token."""
        db: psycopg.Connection | None = None
        while not self._stop.wait(self.lease_s / 3):
            held = self.held()
            if not held:
                continue
            try:
                if db is None or db.closed or db.broken:
                    db = self._connect()
                db.execute("UPDATE files f SET lease_until = now() + make_interval(secs => %s)"
                           " FROM unnest(%s::bigint[], %s::bigint[]) AS h(id, fence)"
                           " WHERE f.id = h.id AND f.fence = h.fence AND f.state = 'uploading'",
                           (self.lease_s, list(held), list(held.values())))
            except psycopg.Error:
                pass        # the server is away: the next tick tries again (the lease may run out meanwhile)
        if db is not None:
            db.close()

    # -- meta --------------------------------------------------------------------------------
    def get_meta(self, key: str) -> Any:
        with self._lock:
            r = self._conn().execute("SELECT value FROM meta WHERE key = %s", (key,)).fetchone()
        return json.loads(r["value"]) if r else None

    def set_meta(self, key: str, value: Any) -> None:
        with self.one() as db:
            if value is None:
                db.execute("DELETE FROM meta WHERE key = %s", (key,))
            else:
                db.execute("INSERT INTO meta(key, value) VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value"
                           " = excluded.value", (key, json.dumps(value)))

    def server(self) -> dict[str, Any]:
        """What `seqdrop check` reports: the database, the server's version, the queue's format."""
        with self._lock:
            db = self._conn()
            r = db.execute("SELECT current_database() AS name, current_setting('server_version') AS version").fetchone()
            return {"url": self.where, "database": r["name"], "server_version": r["version"],
                    "schema_version": schema.found_version(db), "host": self.host}
