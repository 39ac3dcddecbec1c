"""The PostgreSQL queue's format: its tables, the trigger that moves a sample as one, the version
number, forward migration, and the refusal of a database written by a newer seqdrop. Only
daemon/queue/postgres.py uses it.

It mirrors the SQLite format (schema.py) with three differences: a file is named by (watch, rel) — the
watch folder's id and the path below it, the same on every host — instead of an absolute path; a claim
is a lease (claimed_by, lease_until on the database's clock); and every claim or release draws a new
fencing token (fence) from one sequence, so a write that names an older token is refused.
"""

from __future__ import annotations

from typing import Any

from daemon import __version__
from daemon.queue.base import QueueTooNew

# The shared queue's format (its own numbering: the two backends migrate separately). 1: the first.
SCHEMA_VERSION = 1

# Created together, in one transaction, the first time a daemon opens an empty database. rel is
# COLLATE "C" so that a folder's files are a byte range (settled_in: one index range scan per folder).
_TABLES = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE SEQUENCE IF NOT EXISTS fences;
CREATE TABLE IF NOT EXISTS files (
    id              BIGSERIAL PRIMARY KEY,
    watch           TEXT    NOT NULL,                -- the watch folder's id ([watch] paths ... id)
    rel             TEXT    COLLATE "C" NOT NULL,    -- the path below it
    dev             BIGINT  NOT NULL,                -- as the host that saw it last stat()ed it
    inode           BIGINT  NOT NULL,
    size            BIGINT  NOT NULL,
    mtime_ns        BIGINT  NOT NULL,
    state           TEXT    NOT NULL,
    step            TEXT    NOT NULL DEFAULT '',
    sample_id       TEXT,
    init            TEXT,                            -- JSON: as in SQLite (never the API key)
    md5             TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at DOUBLE PRECISION NOT NULL DEFAULT 0,
    error           TEXT,
    claimed_by      TEXT,                            -- host/worker holding the lease
    lease_until     TIMESTAMPTZ,                     -- the database's clock
    fence           BIGINT  NOT NULL DEFAULT 0,      -- the token of the current claim
    stable_since    DOUBLE PRECISION NOT NULL,
    created_at      DOUBLE PRECISION NOT NULL,
    updated_at      DOUBLE PRECISION NOT NULL,
    init_at         DOUBLE PRECISION,
    posted_at       DOUBLE PRECISION,
    sample          BIGINT,
    role            TEXT,
    lane            INTEGER,
    follower        BOOLEAN NOT NULL DEFAULT false,
    flags           TEXT
);
CREATE INDEX IF NOT EXISTS files_path ON files(watch, rel, id);
-- One row per version that stands: two hosts that find a new file at once record it once (add_seen's
-- ON CONFLICT). A vanished version may come back (moved out and in again) as a new row.
CREATE UNIQUE INDEX IF NOT EXISTS files_version ON files(watch, rel, size, mtime_ns) WHERE state <> 'vanished';
CREATE INDEX IF NOT EXISTS files_due ON files(state, next_attempt_at);
CREATE INDEX IF NOT EXISTS files_state_updated ON files(state, updated_at);
CREATE INDEX IF NOT EXISTS files_inode ON files(inode);
CREATE INDEX IF NOT EXISTS files_sample ON files(sample);
CREATE INDEX IF NOT EXISTS files_sample_id ON files(sample_id);
CREATE TABLE IF NOT EXISTS samples (
    id              BIGSERIAL PRIMARY KEY,
    key             TEXT    NOT NULL,
    folder          TEXT    NOT NULL,                -- local to the host that assembled it
    name            TEXT    NOT NULL,
    run             TEXT,
    paired          BOOLEAN NOT NULL DEFAULT false,
    lead            BIGINT  NOT NULL,
    late            BOOLEAN NOT NULL DEFAULT false,
    warnings        TEXT,
    landing         TEXT,
    created_at      DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS samples_folder ON samples(folder, key);

-- A sample moves as one (schema.py's sample_mirror): the lead's state, step, sample_id, error and
-- attempts are copied onto the other members in the same transaction. pg_trigger_depth() keeps the
-- copy from firing the trigger again.
CREATE OR REPLACE FUNCTION sample_mirror() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF pg_trigger_depth() = 1 THEN
        UPDATE files SET state = NEW.state, step = NEW.step, sample_id = NEW.sample_id, error = NEW.error,
                         attempts = NEW.attempts, updated_at = NEW.updated_at, claimed_by = NULL,
                         lease_until = NULL
         WHERE sample = NEW.sample AND id <> NEW.id;
    END IF;
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS sample_mirror ON files;
CREATE TRIGGER sample_mirror AFTER UPDATE OF state, step, sample_id, error, attempts ON files
    FOR EACH ROW WHEN (NEW.sample IS NOT NULL AND NOT NEW.follower) EXECUTE FUNCTION sample_mirror();
"""

# Two daemons starting together on an empty database must not both create it: a transaction-level
# advisory lock (an arbitrary constant: "seqdrop" in ASCII) serialises the migration.
_MIGRATION_LOCK = 0x73657164726f70


def found_version(db: Any) -> int | None:
    """The format recorded in the database (None: no queue in it yet)."""
    r = db.execute("SELECT to_regclass('meta') IS NOT NULL").fetchone()
    if not _first(r):
        return None
    r = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    try:
        return int(_first(r)) if r else 0
    except ValueError:
        return 0


def migrate(db: Any, where: str) -> None:
    """Create what is missing and record the current format, in one transaction; refuse a newer one."""
    with db.transaction():
        db.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        found = found_version(db)
        refuse_newer(found, where)
        if found == SCHEMA_VERSION:
            return
        db.execute(_TABLES)
        db.execute("INSERT INTO meta(key, value) VALUES ('schema_version', %s) ON CONFLICT (key) DO UPDATE"
                   " SET value = excluded.value", (str(SCHEMA_VERSION),))


def refuse_newer(found: int | None, where: str) -> None:
    """A database written by a newer seqdrop (after a rollback on one host): refuse it, with the fix."""
    if found is not None and found > SCHEMA_VERSION:
        raise QueueTooNew(
            f"the queue database {where} was written by a newer seqdrop (queue format {found}; this seqdrop "
            f"{__version__} knows formats up to {SCHEMA_VERSION})", key="queue.url",
            fix="upgrade seqdrop on this host to the version the other hosts run")


def _first(row: Any) -> Any:
    """The first column of a row, whether the cursor makes tuples or dicts."""
    if row is None:
        return None
    return next(iter(row.values())) if isinstance(row, dict) else row[0]
