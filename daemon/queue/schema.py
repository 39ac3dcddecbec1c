"""The SQLite queue's format: its tables, the version number, forward migration, and the refusal of
a queue written by a newer seqdrop. Only daemon/queue/sqlite.py uses it."""

from __future__ import annotations

import sqlite3

from daemon import __version__
from daemon.queue.base import QueueTooNew

# The queue's format. 2: the columns init_at and posted_at, the index files_inode (turn 2). 3: samples
# (the table samples; files.sample, role, lane, follower, flags; the trigger sample_mirror). A newer
# seqdrop migrates an older queue forward when it opens it; an older seqdrop refuses a newer queue
# (QueueTooNew) instead of writing rows it does not understand.
SCHEMA_VERSION = 3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id              INTEGER PRIMARY KEY,
    path            TEXT    NOT NULL,
    dev             INTEGER NOT NULL,
    inode           INTEGER NOT NULL,
    size            INTEGER NOT NULL,
    mtime_ns        INTEGER NOT NULL,
    state           TEXT    NOT NULL,
    step            TEXT    NOT NULL DEFAULT '',   -- '', 'initialized', 'posted' (standard route);
                                                   -- 'mp_initialized', 'mp_complete' (multipart route)
    sample_id       TEXT,
    init            TEXT,                          -- JSON: upload_url, fields, expiry / bucket, key,
                                                   -- callback_url (never the API key or S3 credentials)
    md5             TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL    NOT NULL DEFAULT 0,
    error           TEXT,
    claimed_by      TEXT,
    stable_since    REAL    NOT NULL,
    created_at      REAL    NOT NULL,
    updated_at      REAL    NOT NULL,
    init_at         REAL,                          -- when the current sample was initialised
    posted_at       REAL                           -- when S3 last accepted its bytes (audit journal)
);
CREATE INDEX IF NOT EXISTS files_path ON files(path, id);
CREATE INDEX IF NOT EXISTS files_due ON files(state, next_attempt_at);
CREATE INDEX IF NOT EXISTS files_state_updated ON files(state, updated_at);
CREATE INDEX IF NOT EXISTS files_inode ON files(inode, dev);       -- a done file found under a new path
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS samples (
    id              INTEGER PRIMARY KEY,
    key             TEXT    NOT NULL,              -- folder, stem and name family (assembly/group.py)
    folder          TEXT    NOT NULL,
    name            TEXT    NOT NULL,
    run             TEXT,
    paired          INTEGER NOT NULL DEFAULT 0,
    lead            INTEGER NOT NULL,              -- files.id carrying the upload's state
    late            INTEGER NOT NULL DEFAULT 0,
    warnings        TEXT,                          -- JSON list of sentences
    landing         TEXT,                          -- JSON: project, tags, metadata, omitted (never a secret)
    created_at      REAL    NOT NULL
);
CREATE INDEX IF NOT EXISTS samples_folder ON samples(folder, key);
"""

# After the columns exist: the members of a sample move as one. An update of the lead's state, step,
# sample_id, error or attempts is copied onto the other members in the same transaction (a trigger, so
# that no verb can forget it). recursive_triggers is off: the copy does not fire the trigger again.
_AFTER_COLUMNS = """
CREATE INDEX IF NOT EXISTS files_sample ON files(sample);
CREATE TRIGGER IF NOT EXISTS sample_mirror
AFTER UPDATE OF state, step, sample_id, error, attempts ON files
WHEN NEW.sample IS NOT NULL AND NEW.follower = 0
BEGIN
    UPDATE files SET state = NEW.state, step = NEW.step, sample_id = NEW.sample_id, error = NEW.error,
                     attempts = NEW.attempts, updated_at = NEW.updated_at, claimed_by = NULL
     WHERE sample = NEW.sample AND id != NEW.id;
END;
"""

# Columns added after a queue's table was created: (name, declaration), added at open.
_ADDED_COLUMNS = (("init_at", "REAL"), ("posted_at", "REAL"), ("sample", "INTEGER"), ("role", "TEXT"),
                  ("lane", "INTEGER"), ("follower", "INTEGER NOT NULL DEFAULT 0"), ("flags", "TEXT"))


def migrate(db: sqlite3.Connection) -> None:
    """Create what is missing (tables, indexes, columns added since) and record the current format."""
    db.executescript(_SCHEMA)
    have = {row[1] for row in db.execute("PRAGMA table_info(files)")}
    for name, declaration in _ADDED_COLUMNS:      # NULL in rows an older seqdrop wrote
        if name not in have:
            db.execute(f"ALTER TABLE files ADD COLUMN {name} {declaration}")
    db.executescript(_AFTER_COLUMNS)
    db.execute("INSERT INTO meta(key, value) VALUES ('schema_version', ?) ON CONFLICT(key) DO UPDATE"
               " SET value = excluded.value", (str(SCHEMA_VERSION),))


def refuse_newer(db: sqlite3.Connection, path: str) -> None:
    """A queue written by a newer seqdrop (after a rollback): refuse it, name both versions and the fix."""
    try:
        row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except sqlite3.OperationalError:        # no meta table yet: a new queue
        return
    try:
        found = int(row[0]) if row else 0
    except ValueError:
        found = 0
    if found > SCHEMA_VERSION:
        db.close()
        raise QueueTooNew(
            f"the queue {path} was written by a newer seqdrop (queue format {found}; this seqdrop "
            f"{__version__} knows formats up to {SCHEMA_VERSION})", file=path, key="queue.path",
            fix="upgrade seqdrop to the version that wrote it, or restore the copy of the queue made "
                "before the upgrade (docs/operations.md, 'Roll back')")
