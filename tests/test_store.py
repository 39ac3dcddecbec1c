"""The SQLite queue: claims, steps, retries and durability across connections."""

from __future__ import annotations

import errno
import os
import sqlite3
import stat
import subprocess
import sys

import pytest

from daemon.queue.base import Identity, StoreLocked
from daemon.queue.sqlite import SqliteStore
from daemon.queue.storage import STORE_DAMAGED, STORE_FAILING, storage_fault, take_lock

IDENT = Identity(1, 2, 300, 4)


@pytest.fixture
def store(tmp_path):
    s = SqliteStore(str(tmp_path / "q.sqlite3"))
    yield s
    s.close()


def test_claim_takes_each_due_row_once(store):
    """Two claimers never get the same row; rows not yet due are not claimed."""
    a = store.add_seen("/a", IDENT)
    b = store.add_seen("/b", IDENT)
    store.set_state(a, "queued")
    store.set_state(b, "queued", next_attempt_at=store.clock() + 3600)
    first = store.claim_next("w1")
    assert first.id == a and first.state == "uploading"
    assert store.claim_next("w2") is None


def test_stale_claims_are_released_with_their_step_kept(store):
    """A row left 'uploading' by a dead daemon goes back to 'queued' keeping its sample and step."""
    a = store.add_seen("/a", IDENT)
    store.set_state(a, "queued")
    store.claim_next("dead")
    store.save_init(a, "s1", '{"sample_id": "s1"}')
    assert store.release_stale_claims() == 1
    row = store.get(a)
    assert (row.state, row.step, row.sample_id) == ("queued", "initialized", "s1")


def test_transitions_are_visible_to_another_process_at_once(store, tmp_path):
    """A state recorded by one connection is read by a separate process (status beside the daemon)."""
    a = store.add_seen("/a", IDENT)
    store.mark_done(a, sample_id="abc", md5="0" * 32)
    code = ("import sys; from daemon.queue.sqlite import SqliteStore; s = SqliteStore(sys.argv[1], readonly=True);"
            "r = s.get(1); print(r.state, r.sample_id)")
    out = subprocess.run([sys.executable, "-c", code, store.path], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["done", "abc"]


def test_reschedule_counts_attempts_and_keeps_the_error(store):
    """A transient error puts the row back with a later attempt time, attempts+1 and the message."""
    a = store.add_seen("/a", IDENT)
    store.set_state(a, "queued")
    store.claim_next("w")
    store.reschedule(a, delay_s=30, error="HTTP 503")
    row = store.get(a)
    assert row.state == "queued" and row.attempts == 1 and row.error == "HTTP 503"
    assert row.next_attempt_at >= store.clock() + 29


def test_retry_resets_failed_and_rejected_rows(store):
    """retry puts failed/rejected rows back from scratch; only the chosen states and ids move."""
    ids = [store.add_seen(f"/{n}", IDENT) for n in "abc"]
    store.set_state(ids[0], "failed", error="400", step="initialized", sample_id="x")
    store.set_state(ids[1], "rejected", error="truncated")
    store.set_state(ids[2], "done")
    assert store.retry(states=("failed",)) == 1
    row = store.get(ids[0])
    assert (row.state, row.step, row.sample_id, row.error) == ("queued", "", None, None)
    assert store.get(ids[1]).state == "rejected"
    assert store.retry(states=("failed", "rejected"), ids=(ids[1],)) == 1
    assert store.get(ids[2]).state == "done"


def test_one_daemon_per_queue(store, tmp_path):
    """A second daemon on the same queue is refused."""
    store.lock_exclusive()
    other = SqliteStore(store.path)
    with pytest.raises(StoreLocked, match="another seqdrop daemon"):
        other.lock_exclusive()
    other.close()


def test_counts_cover_every_state(store):
    """counts() names all seven states, zeros included."""
    store.add_seen("/a", IDENT)
    assert store.counts() == {"seen": 1, "queued": 0, "uploading": 0, "done": 0, "rejected": 0,
                              "failed": 0, "vanished": 0}


def test_public_row_has_the_status_fields_and_no_upload_secrets(store):
    """status rows carry the contract's fields and nothing of the S3 form (policy, signature)."""
    a = store.add_seen("/a", IDENT)
    store.save_init(a, "s1", '{"fields": [["signature", "SECRET"]]}')
    doc = store.get(a).public()
    assert set(doc) == {"id", "path", "state", "size", "sample_id", "attempts", "error", "updated_at",
                        "sample", "role", "lane"}     # design.md turn 2: each file names its sample
    assert "SECRET" not in repr(doc)


def test_synchronous_full_and_wal(store):
    """The queue runs in WAL mode with synchronous=FULL (a recorded change survives a power cut)."""
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.db.execute("PRAGMA synchronous").fetchone()[0] == 2


def test_settled_in_lists_the_latest_finished_version_of_each_file_directly_in_the_folder(store):
    """settled_in: done/rejected/failed latest versions in that folder only (not subfolders, not
    look-alike sibling folders, not files whose newest version is still open or vanished)."""
    other = Identity(9, 9, 9, 9)
    done = store.add_seen("/w/run/a.fastq", IDENT)
    store.mark_done(done, sample_id="s", md5=None)
    old = store.add_seen("/w/run/b.fastq", IDENT)              # done, then a newer version seen
    store.mark_done(old, sample_id="s", md5=None)
    store.add_seen("/w/run/b.fastq", other)
    rejected = store.add_seen("/w/run/c.fastq", other)
    store.set_state(rejected, "rejected")
    gone = store.add_seen("/w/run/d.fastq", IDENT)
    store.set_state(gone, "vanished")
    for path in ("/w/run/sub/e.fastq", "/w/run0/f.fastq", "/w/run-2/g.fastq", "/w/h.fastq"):
        store.mark_done(store.add_seen(path, IDENT), sample_id="s", md5=None)
    assert store.settled_in("/w/run") == {"/w/run/a.fastq": IDENT, "/w/run/c.fastq": other}
    assert store.settled_in("/w/run/") == store.settled_in("/w/run")
    assert set(store.settled_in("/w/run/sub")) == {"/w/run/sub/e.fastq"}


def test_batch_records_everything_at_its_end_and_a_failed_step_undoes_only_itself(tmp_path):
    """Inside batch(): nothing is visible to another connection; a step that raises is undone alone;
    at the end every other step is recorded at once."""
    path = str(tmp_path / "q.sqlite3")
    store, reader = SqliteStore(path), None
    try:
        reader = SqliteStore(path, readonly=True)
        with store.batch():
            a = store.add_seen("/w/a.fastq", IDENT)
            with pytest.raises(RuntimeError):
                with store.tx() as db:                       # a step that fails halfway
                    db.execute("UPDATE files SET state='queued' WHERE id=?", (a,))
                    raise RuntimeError("boom")
            store.set_state(a, "queued", only_from=("seen",))
            b = store.add_seen("/w/b.fastq", IDENT)
            assert reader.counts()["queued"] == 0 and reader.get(a) is None, "visible before the batch ended"
        assert reader.get(a).state == "queued" and reader.get(b).state == "seen"
        with pytest.raises(ValueError):
            with store.batch():
                store.add_seen("/w/c.fastq", IDENT)
                raise ValueError("the batch itself fails")
        assert reader.latest_for_path("/w/c.fastq") is None
        store.add_seen("/w/d.fastq", IDENT)                   # and the store works on
        assert reader.latest_for_path("/w/d.fastq") is not None
    finally:
        store.close()
        if reader is not None:
            reader.close()


# -- issue 10: private files, storage faults by their code, the times the audit journal needs ------

def test_a_new_queue_and_its_side_files_are_private_whatever_the_umask(tmp_path):
    """Created with umask 022 the queue, -wal, -shm and lock are 0600; an old 0644 queue is made 0600."""
    old = os.umask(0o022)
    try:
        path = str(tmp_path / "state" / "q.sqlite3")
        s = SqliteStore(path)
        s.lock_exclusive()
        s.add_seen("/a", IDENT)
        modes = {suffix: stat.S_IMODE(os.stat(path + suffix).st_mode) for suffix in ("", "-wal", "-shm", ".lock")}
        s.close()
        assert modes == dict.fromkeys(("", "-wal", "-shm", ".lock"), 0o600)
        os.chmod(path, 0o644)
        SqliteStore(path).close()
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    finally:
        os.umask(old)


def test_a_lock_taken_before_opening_is_held_by_the_store(tmp_path):
    """take_lock() before the store opens (start-up checks the queue under it): the store keeps it,
    lock_exclusive() does not take it twice, close() releases it."""
    path = str(tmp_path / "q.sqlite3")
    s = SqliteStore(path, lock_fd=take_lock(path))
    s.lock_exclusive()
    with pytest.raises(StoreLocked):
        take_lock(path)
    s.close()
    os.close(take_lock(path))


def test_storage_faults_are_told_by_sqlite_result_codes(store, tmp_path):
    """A real full database (max_page_count), a real damaged one and a real lock are storage faults of
    their kind; a constraint violation (a bug) is none; EIO from the OS is a failing disk."""
    def error_of(fn):
        try:
            fn()
        except (sqlite3.Error, OSError) as e:
            return e
        raise AssertionError("no error")

    db = sqlite3.connect(str(tmp_path / "full.sqlite3"), isolation_level=None)
    db.execute("CREATE TABLE t (x)")
    db.execute("CREATE TABLE u (x UNIQUE)")
    db.execute("INSERT INTO u VALUES (1)")
    db.execute(f"PRAGMA max_page_count = {db.execute('PRAGMA page_count').fetchone()[0]}")
    assert storage_fault(error_of(lambda: db.execute("INSERT INTO t VALUES (randomblob(100000))"))) == STORE_FAILING
    assert storage_fault(error_of(lambda: db.execute("INSERT INTO u VALUES (1)"))) is None
    db.close()
    with store.batch():
        for i in range(300):
            store.add_seen(f"/srv/run/{i:04d}.fastq", IDENT)
    store.close()
    with open(store.path, "r+b") as handle:
        handle.seek(4096)                              # every page but the schema's
        handle.write(os.urandom(os.path.getsize(store.path) - 4096))
    damaged = sqlite3.connect(store.path)
    assert storage_fault(error_of(lambda: damaged.execute("SELECT * FROM files").fetchall())) == STORE_DAMAGED
    damaged.close()
    holder = sqlite3.connect(str(tmp_path / "busy.sqlite3"), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    waiter = sqlite3.connect(str(tmp_path / "busy.sqlite3"), timeout=0, isolation_level=None)
    assert storage_fault(error_of(lambda: waiter.execute("BEGIN IMMEDIATE"))) == STORE_FAILING
    holder.close()
    waiter.close()
    assert storage_fault(OSError(errno.EIO, "Input/output error")) == STORE_FAILING
    assert storage_fault(OSError(errno.ENOENT, "No such file")) is None
    store.db = sqlite3.connect(":memory:")          # the fixture closes whatever the store holds


def test_steps_record_their_times_and_an_older_queue_gains_the_columns(tmp_path):
    """save_init/save_posted record when (for the audit journal); a restart clears them; a queue made
    before these columns gains them, and reads of it read-only give None."""
    path = str(tmp_path / "q.sqlite3")
    old = sqlite3.connect(path)
    old.executescript("CREATE TABLE files (id INTEGER PRIMARY KEY, path TEXT NOT NULL, dev INTEGER NOT NULL,"
                      " inode INTEGER NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, state TEXT NOT NULL,"
                      " step TEXT NOT NULL DEFAULT '', sample_id TEXT, init TEXT, md5 TEXT, attempts INTEGER NOT NULL"
                      " DEFAULT 0, next_attempt_at REAL NOT NULL DEFAULT 0, error TEXT, claimed_by TEXT, stable_since"
                      " REAL NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL);"
                      "INSERT INTO files (path, dev, inode, size, mtime_ns, state, stable_since, created_at, updated_at)"
                      " VALUES ('/old', 1, 2, 3, 4, 'done', 0, 0, 0);")
    old.close()
    ro = SqliteStore(path, readonly=True)
    assert ro.files()[0].init_at is None
    ro.close()
    now = [100.0]
    s = SqliteStore(path, clock=lambda: now[0])
    a = s.add_seen("/a", IDENT)
    s.save_init(a, "0123456789abcdef", "{}")
    now[0] = 160.0
    s.save_posted(a, "m")
    row = s.get(a)
    assert (row.init_at, row.posted_at) == (100.0, 160.0)
    s.clear_init(a)
    assert (s.get(a).init_at, s.get(a).posted_at) == (None, None)
    assert s.get(1).path == "/old" and s.get(1).init_at is None
    s.close()


def test_an_older_queue_is_migrated_forward(tmp_path):
    """A queue of format 1 (no init_at/posted_at) gains the new columns and says format 2 once opened."""
    import sqlite3

    from daemon.queue.sqlite import SCHEMA_VERSION, SqliteStore
    path = str(tmp_path / "q.sqlite3")
    old = SqliteStore(path)
    old.add_seen("/a", IDENT)
    old.close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    store = SqliteStore(path)
    assert store.get_meta("schema_version") == SCHEMA_VERSION == 3
    assert store.get(1).path == "/a"
    store.close()


def test_a_format_2_queue_gains_samples_and_its_rows_stay_single_files(tmp_path):
    """A queue as seqdrop of format 2 wrote it (no samples table, no member columns) is migrated: its
    rows keep working as one-file uploads (no sample), and new samples mirror their lead's state."""
    import sqlite3

    from daemon.queue.sqlite import SqliteStore
    path = str(tmp_path / "q.sqlite3")
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE files (id INTEGER PRIMARY KEY, path TEXT NOT NULL, dev INTEGER NOT NULL, inode INTEGER NOT NULL,
          size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, state TEXT NOT NULL, step TEXT NOT NULL DEFAULT '',
          sample_id TEXT, init TEXT, md5 TEXT, attempts INTEGER NOT NULL DEFAULT 0,
          next_attempt_at REAL NOT NULL DEFAULT 0, error TEXT, claimed_by TEXT, stable_since REAL NOT NULL,
          created_at REAL NOT NULL, updated_at REAL NOT NULL, init_at REAL, posted_at REAL);
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema_version', '2');
        INSERT INTO files(path, dev, inode, size, mtime_ns, state, stable_since, created_at, updated_at)
          VALUES ('/run/old.fastq', 1, 7, 10, 1, 'queued', 0, 0, 0);""")
    db.commit()
    db.close()
    store = SqliteStore(path)
    old = store.claim_next("w")
    assert old is not None and old.path == "/run/old.fastq" and old.sample is None and store.sample_of(old.id) is None
    assert old.public()["sample"] is None and old.public()["role"] is None
    r1, r2 = store.add_seen("/run/A_R1.fastq", IDENT), store.add_seen("/run/A_R2.fastq", IDENT)
    sample = store.add_sample(key="k", folder="/run", name="A", run="run", paired=True,
                              files=[(r1, "R1", None), (r2, "R2", None)])
    assert sample is not None
    assert store.claim_next("w").id == r1 and store.claim_next("w") is None     # only the lead is claimed
    store.save_init(r1, "0123456789abcdef", "{}")
    store.mark_done(r1, sample_id="0123456789abcdef", md5=None)
    assert (store.get(r2).state, store.get(r2).sample_id) == ("done", "0123456789abcdef")
    assert store.sample(sample).public()["state"] == "done"
    store.close()


def test_a_write_aimed_at_a_member_moves_the_whole_sample(tmp_path):
    """A member deleted before upload (the tracker marks it vanished) vanishes its sample, lead
    included; retry by a member's id puts the whole sample back; a member changed meanwhile stops
    add_sample from recording a half-sample."""
    from daemon.queue.sqlite import SqliteStore
    store = SqliteStore(str(tmp_path / "q.sqlite3"))
    r1, r2 = store.add_seen("/run/A_R1.fastq", IDENT), store.add_seen("/run/A_R2.fastq", IDENT)
    sample = store.add_sample(key="k", folder="/run", name="A", run="run", paired=True,
                              files=[(r1, "R1", 1), (r2, "R2", 1)])
    assert store.set_state(r2, "vanished", error="A_R2.fastq was deleted", only_from=("queued",))
    assert [store.get(i).state for i in (r1, r2)] == ["vanished", "vanished"]
    assert store.get(r1).error == "A_R2.fastq was deleted"
    assert store.retry(states=("vanished",), ids=(r2,)) == 1
    assert [store.get(i).state for i in (r1, r2)] == ["queued", "queued"]
    assert store.sample_keys("/run") == {"k"}
    b1, b2 = store.add_seen("/run/B_R1.fastq", IDENT), store.add_seen("/run/B_R2.fastq", IDENT)
    store.set_state(b2, "vanished")
    assert store.add_sample(key="b", folder="/run", name="B", run="run", paired=True,
                            files=[(b1, "R1", None), (b2, "R2", None)]) is None
    assert store.get(b1).state == "seen" and store.get(b1).sample is None and len(store.samples()) == 1
    assert store.sample(sample).files[0].lane == 1
    store.close()


def test_a_newer_queue_is_refused_by_an_older_seqdrop(tmp_path):
    """A queue written by a newer seqdrop is refused with both formats and the fix, and left untouched."""
    import sqlite3

    from daemon.queue.base import QueueTooNew
    from daemon.queue.sqlite import SqliteStore
    path = str(tmp_path / "q.sqlite3")
    SqliteStore(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    with pytest.raises(QueueTooNew) as e:
        SqliteStore(path)
    assert "queue format 99" in str(e.value) and "restore the copy" in str(e.value)
    with pytest.raises(QueueTooNew):
        SqliteStore(path, readonly=True)
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "99"
