"""The shared queue (PostgreSQL, daemon/queue/postgres.py): the Store contract on both backends, then what
only a queue shared by several hosts has — names relative to watch ids, leases, fencing tokens, claims
by concurrent processes. A real PostgreSQL server, started by the suite (tests/pg_server.py)."""

from __future__ import annotations

import datetime
import html
import json
import os
import subprocess
import sys
import time
import tomllib

import pytest
import structlog
from pg_server import require_psycopg

psycopg = require_psycopg()   # before the modules that import it: a clear skip (or failure under CI)

from daemon import redact
from daemon.config.document import parse
from daemon.detection.roots import WatchRoots
from daemon.errors import ConfigError, FileChanged, LeaseLost, SeqdropError
from daemon.operations.statuspage import build_status_page
from daemon.queue import postgres_schema
from daemon.queue.base import SHARED_DEV, Identity, QueueTooNew, StoreLocked
from daemon.queue.open import credential_password, open_shared
from daemon.queue.postgres import PostgresStore
from daemon.queue.postgres_reads import display_url
from daemon.queue.sqlite import SqliteStore

IDENT = Identity(1, 2, 300, 4)
OTHER = Identity(9, 9, 9, 9)


def _pg(url: str, *, host: str = "h1", lease_s: float = 60.0, watches: dict[str, str] | None = None) -> PostgresStore:
    return PostgresStore(url, watches=watches or {"root": "/"}, host=host, lease_s=lease_s)


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path):
    """The same contract on both backends (postgres: the watch folder "/" named "root")."""
    if request.param == "sqlite":
        s = SqliteStore(str(tmp_path / "q.sqlite3"))
    else:
        s = _pg(request.getfixturevalue("pg_url"))
    yield s
    s.close()


# -- the contract, on both backends -------------------------------------------------------------
def test_claim_takes_each_due_row_once(store):
    a, b = store.add_seen("/a", IDENT), store.add_seen("/b", IDENT)
    store.set_state(a, "queued")
    store.set_state(b, "queued", next_attempt_at=store.clock() + 3600)
    first = store.claim_next("w1")
    assert first.id == a and first.state == "uploading" and first.path == "/a"
    assert store.claim_next("w2") is None


def test_steps_and_stale_claims(store):
    """Steps are stored; a claim left by this host's last run is released with its step kept."""
    a = store.add_seen("/a", IDENT)
    store.set_state(a, "queued")
    store.claim_next("dead")
    store.save_init(a, "s1", '{"sample_id": "s1"}')
    store.save_posted(a, "0" * 32)
    if isinstance(store, PostgresStore):             # this host's next run (never the process holding it)
        assert store.release_stale_claims() == 0
        store = _pg(store.url)
    assert store.release_stale_claims() == 1
    row = store.get(a)
    assert (row.state, row.step, row.sample_id, row.md5) == ("queued", "posted", "s1", "0" * 32)
    assert row.init_at is not None and row.posted_at is not None


def test_reschedule_retry_and_counts(store):
    ids = [store.add_seen(f"/{n}", IDENT) for n in "abcd"]
    store.set_state(ids[3], "queued")
    store.claim_next("w")
    store.reschedule(ids[3], delay_s=30, error="HTTP 503")
    row = store.get(ids[3])
    assert (row.state, row.attempts, row.error) == ("queued", 1, "HTTP 503")
    assert row.next_attempt_at >= store.clock() + 29
    store.set_state(ids[0], "failed", error="400", step="initialized", sample_id="x")
    store.set_state(ids[1], "rejected", error="truncated")
    store.mark_done(ids[2], sample_id="s", md5=None)
    assert store.retry(states=("failed",)) == 1
    assert (store.get(ids[0]).state, store.get(ids[0]).sample_id) == ("queued", None)
    assert store.retry(states=("failed", "rejected"), ids=(ids[1],)) == 1
    assert store.counts() == {"seen": 0, "queued": 3, "uploading": 0, "done": 1, "rejected": 0,
                              "failed": 0, "vanished": 0}
    assert store.done_since(0) == 1 and store.next_due_at() == 0


def test_settled_in_lists_the_latest_finished_version_of_each_file_directly_in_the_folder(store):
    done = store.add_seen("/w/run/a.fastq", IDENT)
    store.mark_done(done, sample_id="s", md5=None)
    old = store.add_seen("/w/run/b.fastq", IDENT)
    store.mark_done(old, sample_id="s", md5=None)
    store.add_seen("/w/run/b.fastq", OTHER)
    store.set_state(store.add_seen("/w/run/c.fastq", OTHER), "rejected")
    store.set_state(store.add_seen("/w/run/d.fastq", IDENT), "vanished")
    for path in ("/w/run/sub/e.fastq", "/w/run0/f.fastq", "/w/run-2/g.fastq", "/w/h.fastq"):
        store.mark_done(store.add_seen(path, IDENT), sample_id="s", md5=None)
    assert store.settled_in("/w/run") == {"/w/run/a.fastq": IDENT, "/w/run/c.fastq": OTHER}
    assert store.settled_in("/w/run/") == store.settled_in("/w/run")
    assert set(store.settled_in("/w/run/sub")) == {"/w/run/sub/e.fastq"}


def test_batch_is_one_transaction_and_a_failed_step_undoes_only_itself(store):
    a = store.add_seen("/a", IDENT)
    with store.batch():
        store.set_state(a, "queued")
        with pytest.raises(RuntimeError), store.tx():
            store.add_seen("/b", IDENT)
            raise RuntimeError("this step fails")
        store.add_seen("/c", IDENT)
    assert store.get(a).state == "queued"
    assert store.latest_for_path("/b") is None and store.latest_for_path("/c") is not None


def test_a_sample_moves_as_one(store):
    """The lead's state is mirrored onto the members; a write aimed at a member lands on the lead;
    a member that moved on stops add_sample from recording a half sample."""
    r1, r2 = store.add_seen("/run/A_R1.fastq", IDENT), store.add_seen("/run/A_R2.fastq", IDENT)
    sample = store.add_sample(key="/run|a|std", folder="/run", name="A", run="run", paired=True,
                              files=[(r1, "R1", 1), (r2, "R2", 1)], warnings=("w",))
    assert store.claim_next("w").id == r1                # never the follower
    store.save_init(r1, "sid", "{}")
    assert (store.get(r2).state, store.get(r2).step, store.get(r2).sample_id) == ("uploading", "initialized", "sid")
    store.save_posted(r1, "1" * 32, step="posted_r1")         # the pair's R1 is in S3, its R2 is next
    assert (store.get(r1).step, store.get(r2).step) == ("posted_r1", "posted_r1")
    store.mark_done(r1, sample_id="sid", md5=None)
    assert store.get(r2).state == "done"
    got = store.sample(sample)
    assert [f.id for f in got.files] == [r1, r2] and got.warnings == ("w",) and got.paired
    assert store.sample_of(r2).id == sample and store.sample_keys("/run") == {"/run|a|std"}
    assert store.retry(states=("done",), ids=(r2,)) == 1 and store.get(r1).state == "queued"
    assert store.set_state(r2, "vanished", error="deleted", only_from=("queued",))
    assert [store.get(i).state for i in (r1, r2)] == ["vanished", "vanished"]
    b1, b2 = store.add_seen("/run/B_R1.fastq", IDENT), store.add_seen("/run/B_R2.fastq", IDENT)
    store.set_state(b2, "vanished")
    assert store.add_sample(key="b", folder="/run", name="B", run="run", paired=True,
                            files=[(b1, "R1", None), (b2, "R2", None)]) is None
    assert store.get(b1).sample is None and len(store.samples()) == 1
    store.set_landing(sample, {"project": None, "tags": ["x"]})
    store.add_flag(r1, "partial", note="prefix")
    assert store.sample(sample).landing["tags"] == ["x"] and store.get(r1).flags == "partial"


def test_operator_reads(store):
    a = store.add_seen("/runs/240501_M1/a.fastq", IDENT)
    store.mark_done(a, sample_id="sid-a", md5="m")
    store.add_seen("/runs/240502_M1/b.fastq", OTHER)
    listed, total = store.find_files(under="/runs/240501_M1")
    assert total == 1 and listed[0].path == "/runs/240501_M1/a.fastq"
    assert store.find_files(run="240502_*")[1] == 1 and store.find_files(states=("done",), limit=5)[1] == 1
    assert [v.row.id for v in store.versions(sample_id="sid-a")] == [a]
    assert [v.row.id for v in store.versions(path="/runs/240501_M1/a.fastq")] == [a]
    found = store.confirmed_matches([("/runs/240501_M1/a.fastq", IDENT), ("/elsewhere/x", IDENT),
                                     ("/runs/240502_M1/b.fastq", OTHER)])
    assert set(found) == {"/runs/240501_M1/a.fastq", "/elsewhere/x"}       # the same inode: moved
    assert '"sample_id": "sid-a"' in store.public_json(states=("done",))[0].replace(":\"", ": \"")
    store.set_meta("paused", {"reason": "x"})
    assert store.get_meta("paused") == {"reason": "x"}
    store.set_meta("paused", None)
    assert store.get_meta("paused") is None


# -- only the shared queue --------------------------------------------------------------------
def test_hosts_that_mount_the_share_at_different_places_agree(pg_url):
    """A file is (watch id, relative path, size, mtime_ns): host B finds host A's row under its own
    path, takes it for the same version whatever device number it sees, and records it once."""
    a = _pg(pg_url, host="a", watches={"miseq": "/mnt/nas/miseq"})
    b = _pg(pg_url, host="b", watches={"miseq": "/srv/share/miseq/"})
    first = a.add_seen("/mnt/nas/miseq/run1/x.fastq", Identity(11, 500, 300, 4))
    row = b.latest_for_path("/srv/share/miseq/run1/x.fastq")
    assert row.id == first and row.identity == Identity(77, 500, 300, 4) and row.identity.dev == SHARED_DEV
    assert row.identity != Identity(77, 500, 301, 4)
    assert b.add_seen("/srv/share/miseq/run1/x.fastq", Identity(77, 500, 300, 4)) == first   # not twice
    a.mark_done(first, sample_id="s", md5=None)
    assert b.settled_in("/srv/share/miseq/run1") == {"/srv/share/miseq/run1/x.fastq": Identity(77, 5, 300, 4)}
    with pytest.raises(ValueError, match="no watch folder"):
        b.add_seen("/elsewhere/y.fastq", IDENT)
    a.close()
    b.close()


def test_a_host_claims_and_sweeps_only_its_own_watch_folders(pg_url):
    a = _pg(pg_url, host="a", watches={"miseq": "/mnt/miseq"})
    b = _pg(pg_url, host="b", watches={"nanopore": "/mnt/np"})
    row = a.add_seen("/mnt/miseq/x.fastq", IDENT)
    a.set_state(row, "queued")
    assert b.claim_next("w") is None and b.rows_in("queued") == []
    assert b.get(row).path == "miseq:x.fastq"            # status elsewhere still names it
    assert a.claim_next("w").id == row
    assert b.claims() == {row: "a/w"}
    a.close()
    b.close()


def _wait_for(condition, timeout_s: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _lease_expired(url: str, file_id: int) -> bool:
    with psycopg.connect(url) as db:
        return db.execute("SELECT lease_until < now() FROM files WHERE id = %s", (file_id,)).fetchone()[0]


def test_a_lost_lease_fences_off_the_first_holder(pg_url):
    """Host A claims and stores its sample id; its lease runs out (A stalled); host B claims the row,
    resumes from the stored step (the same sample id) and confirms. A's late writes are refused."""
    a = _pg(pg_url, host="a", lease_s=0.5)
    b = _pg(pg_url, host="b", lease_s=60)
    a._stop.set()                                   # A stalls: its lease is never renewed
    row = a.add_seen("/x.fastq", IDENT)
    a.set_state(row, "queued")
    assert a.claim_next("w").id == row
    a.save_init(row, "sid-1", "{}")
    assert b.claim_next("w") is None                # A's lease still holds
    _wait_for(lambda: _lease_expired(pg_url, row), what="A's lease to run out")
    taken = b.claim_next("w")
    assert taken.id == row and (taken.step, taken.sample_id) == ("initialized", "sid-1")
    with pytest.raises(LeaseLost, match="now held by b/w"):
        a.save_posted(row, "0" * 32)
    with pytest.raises(LeaseLost):                  # and every later write of A to that row
        a.mark_done(row, sample_id="sid-1", md5=None)
    b.save_posted(row, "0" * 32)
    b.mark_done(row, sample_id="sid-1", md5=None)
    assert b.get(row).state == "done" and b.held() == {}
    a.close()
    b.close()


def test_a_release_by_another_hand_fences_off_the_holder(pg_url):
    """`retry` or a restart of the holder's host draws a new token: a write under the old one fails."""
    a = _pg(pg_url, host="a")
    row = a.add_seen("/x.fastq", IDENT)
    a.set_state(row, "queued")
    a.claim_next("w")
    restarted = _pg(pg_url, host="a")
    assert restarted.release_stale_claims() == 1
    with pytest.raises(LeaseLost):
        a.reschedule(row, delay_s=0, error="x")
    assert restarted.get(row).state == "queued"
    a.close()
    restarted.close()


def test_a_held_lease_is_renewed(pg_url):
    """While A holds a row its lease is extended every third of lease_s: B cannot take it."""
    a = _pg(pg_url, host="a", lease_s=0.6)
    b = _pg(pg_url, host="b")
    row = a.add_seen("/x.fastq", IDENT)
    a.set_state(row, "queued")
    a.claim_next("w")
    with psycopg.connect(pg_url, autocommit=True) as db:
        def lease_until() -> datetime.datetime:
            return db.execute("SELECT lease_until FROM files WHERE id = %s", (row,)).fetchone()[0]
        first = lease_until()
        _wait_for(lambda: lease_until() > first + datetime.timedelta(seconds=0.6), what="renewals past a lease")
    assert b.claim_next("w") is None
    a.mark_done(row, sample_id="s", md5=None)
    a.close()
    b.close()


CLAIMER = """
import sys
from daemon.queue.postgres import PostgresStore
s = PostgresStore(sys.argv[1], watches={"root": "/"}, host=sys.argv[2])
print("ready", flush=True)
sys.stdin.readline()
while (row := s.claim_next("w")) is not None:
    print(row.id, flush=True)
"""


def test_two_processes_claiming_at_once_never_get_the_same_row(pg_url):
    store = _pg(pg_url)
    with store.batch():
        ids = [store.add_seen(f"/f{i}", Identity(1, i, 10, 1)) for i in range(300)]
        for i in ids:
            store.set_state(i, "queued")
    procs = [subprocess.Popen([sys.executable, "-c", CLAIMER, pg_url, f"p{n}"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for n in range(2)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    for p in procs:                                  # go together
        p.stdin.write("\n")
        p.stdin.flush()
    claimed = [[int(x) for x in p.communicate(timeout=60)[0].split()] for p in procs]
    assert sorted(claimed[0] + claimed[1]) == sorted(ids)
    assert not set(claimed[0]) & set(claimed[1]) and claimed[0] and claimed[1]
    store.close()


def test_one_daemon_per_host_name(pg_url):
    a, b, c = _pg(pg_url, host="a"), _pg(pg_url, host="a"), _pg(pg_url, host="c")
    a.lock_exclusive()
    with pytest.raises(StoreLocked, match="host name 'a'"):
        b.lock_exclusive()
    c.lock_exclusive()                               # other hosts share the queue
    for s in (a, b, c):
        s.close()


def test_a_newer_database_is_refused_and_check_reports_the_server(pg_url):
    s = _pg(pg_url)
    info = s.server()
    assert info["server_version"].split(".")[0].isdigit() and info["schema_version"] == postgres_schema.SCHEMA_VERSION
    s.set_meta("x", 1)
    with psycopg.connect(pg_url, autocommit=True) as db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    s.close()
    with pytest.raises(QueueTooNew, match="queue format 99"):
        _pg(pg_url)
    with pytest.raises(QueueTooNew):
        PostgresStore(pg_url, watches={}, host="h", readonly=True)


def test_config_needs_watch_ids_and_no_password_in_the_url(tmp_path):
    watch = tmp_path / "w"
    watch.mkdir()
    base = '[queue]\nurl = "postgresql://seqdrop@db/seqdrop"\n[watch]\npaths = '
    with pytest.raises(ConfigError, match="has no id"):      # a ConfigError: exit 2
        parse(_toml(base + f'["{watch}"]\n'), file=str(tmp_path / "c.toml"))
    ok = parse(_toml(base + f'[{{path = "{watch}", id = "miseq"}}]\n'), file=str(tmp_path / "c.toml"))
    assert ok.queue.shared and ok.watch.folders[0].id == "miseq" and ok.queue.lease_s == 60
    with pytest.raises(ConfigError, match="must not hold a password"):
        parse(_toml('[queue]\nurl = "postgresql://u:hunter2@db/x"\n'), file=str(tmp_path / "c.toml"))
    assert display_url("postgresql://u:hunter2@db:5433/x") == "postgresql://u:***@db:5433/x"


def _toml(text: str) -> dict:
    return tomllib.loads(text)


def test_reading_a_row_whose_lease_was_taken_says_so(pg_url):
    """The pipeline reads its row before a side exit (cancel_upload): a row taken by another host
    raises LeaseLost there, before any network call could touch that host's sample."""
    a = _pg(pg_url, host="a", lease_s=0.5)
    b = _pg(pg_url, host="b")
    a._stop.set()
    row = a.add_seen("/x.fastq", IDENT)
    a.set_state(row, "queued")
    a.claim_next("w")
    assert a.get(row).state == "uploading"                 # still held: reads as usual
    _wait_for(lambda: _lease_expired(pg_url, row), what="A's lease to run out")
    b.claim_next("w")
    with pytest.raises(LeaseLost):
        a.get(row)
    with pytest.raises(LeaseLost):
        a.set_state(row, "failed", error="x")
    assert b.get(row).state == "uploading"
    a.close()
    b.close()


def test_the_credential_is_read_and_never_shown(tmp_path, monkeypatch):
    """The systemd credential queue-password is the password; it is registered for redaction, and a
    database that cannot be reached is named without it."""
    (tmp_path / "queue-password").write_text("s3cret-Passw0rd\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    try:
        assert credential_password() == "s3cret-Passw0rd"
        assert "s3cret-Passw0rd" not in redact.scrub("password authentication failed: s3cret-Passw0rd")
        watch = tmp_path / "w"
        watch.mkdir()
        nowhere = tmp_path / "no-server"
        nowhere.mkdir()
        settings = parse(_toml(f'[queue]\nurl = "postgresql://seqdrop@/x?host={nowhere}&port=1"\n'
                               f'[watch]\npaths = [{{path = "{watch}", id = "w"}}]\n'), file=str(tmp_path / "c.toml"))
        with pytest.raises(SeqdropError, match="cannot open the queue database postgresql://seqdrop@/x") as e:
            open_shared(settings)
        assert "s3cret" not in str(e.value) and "fix:" in str(e.value)
    finally:
        redact.reset()


def test_a_deleted_run_folder_is_no_unmounted_share_on_a_shared_queue(tmp_path):
    """A shared queue's versions carry no device (SHARED_DEV): a file whose run folder was deleted has
    vanished (FileChanged), not "its share is unmounted" (which would wait for ever)."""
    root = tmp_path / "share"
    root.mkdir()
    roots = WatchRoots([(str(root), None)])
    path = str(root / "run1" / "a.fastq")
    assert not roots.gone(path, SHARED_DEV)
    assert isinstance(roots.missing_file(path, SHARED_DEV), FileChanged)
    assert roots.gone(path, os.stat(root).st_dev + 1)        # a real other device: the unmounted-share case


# -- the operator's reads give the same answers on both backends ---------------------------------
class _Clock:
    """A clock both queues share the readings of: the same times, so the same answers."""

    def __init__(self) -> None:
        self.now = 1_714_550_000.25

    def __call__(self) -> float:
        self.now += 1.5
        return self.now


def _same_queue(store) -> float:
    """Samples and loose files over three run folders, one of a name that differs from another only where
    a LIKE pattern's `_` would match anything; returns a time between the early and the late changes."""
    def seen(path: str, inode: int) -> int:
        return store.add_seen(path, Identity(7, inode, 1000 + inode, 1_700_000_000_000_000_000 + inode))

    def paired(folder: str, name: str, inode: int, lanes: tuple[int, ...], **kw) -> tuple[int, list[int]]:
        r1 = [(seen(f"{folder}/{name}_L00{n}_R1_001.fastq", inode + n), "R1", n) for n in lanes]
        r2 = [(seen(f"{folder}/{name}_L00{n}_R2_001.fastq", inode + 50 + n), "R2", n) for n in lanes]
        sample = store.add_sample(key=f'["{folder}", "{name}"]', folder=folder, name=name,
                                  run=folder.rsplit("/", 1)[1], paired=True, files=r1 + r2, **kw)
        return sample, [f for f, _, _ in r1 + r2]

    a, a_files = paired("/srv/out/240501_M1", "Liver_S1", 10, (2, 1))
    store.set_landing(a, {"project": "0123456789abcdef", "tags": ["liver"], "metadata": {}})
    store.mark_done(a_files[0], sample_id="a" * 16, md5="1" * 32)
    store.save_member_md5s({a_files[1]: "2" * 32, a_files[2]: "3" * 32})
    _, b_files = paired("/srv/out/240502_M2", "Gut_S2", 100, (1,), warnings=("R2 of lane 2 never came",))
    store.set_state(b_files[0], "failed", error="HTTP 400 from One Codex")
    middle = store.clock()
    single = seen("/srv/out/240501_M1/Late_S9_R1_001.fastq", 300)
    store.add_sample(key='["late"]', folder="/srv/out/240501_M1", name="Late_S9", run="240501_M1", paired=False,
                     files=[(single, "single", None)], late=True)
    store.add_flag(single, "late")
    d, _ = paired("/srv/out/240501xM1", "Other_S3", 200, (1,))
    store.set_landing(d, {"project": None, "tags": None})
    store.set_state(seen("/srv/out/misc/x_1.fasta", 400), "rejected", error="not FASTA")
    seen("/srv/out/misc/y.fastq", 401)
    return middle


@pytest.fixture
def both(tmp_path, pg_url):
    clocks = _Clock(), _Clock()
    lite = SqliteStore(str(tmp_path / "q.sqlite3"), clock=clocks[0])
    shared = PostgresStore(pg_url, watches={"out": "/srv/out"}, host="h1", clock=clocks[1])
    middle = [_same_queue(s) for s in (lite, shared)]
    assert middle[0] == middle[1]
    yield lite, shared, middle[0]
    lite.close()
    shared.close()


def test_the_operator_s_reads_agree_with_sqlite_s(both):
    """status (--json and text), show, retry, runs and the run notices read samples through these verbs:
    the shared queue answers each exactly as SQLite does, filters included."""
    lite, shared, middle = both
    filters = [{}, {"states": ("failed", "done")}, {"run": "240501_M1"}, {"run": "240501_*"}, {"run": "2405?2_M2"},
               {"under": "/srv/out/240501_M1"}, {"under": "/srv/out/"}, {"under": "/elsewhere"},
               {"since": middle}, {"limit": 2}, {"states": ("queued",), "limit": 1}]
    for where in filters:
        expected = [json.loads(j) for j in lite.samples_json(**where)]
        assert [json.loads(j) for j in shared.samples_json(**where)] == expected, where
        assert shared.find_files(**where) == lite.find_files(**where), where
        assert [{k: v for k, v in json.loads(j).items() if k != "claimed_by"} for j in shared.public_json(**where)] \
            == [json.loads(j) for j in lite.public_json(**where)], where
    assert [s["name"] for s in map(json.loads, shared.samples_json(run="240501_M1"))] == ["Liver_S1", "Late_S9"]
    assert shared.sample_counts() == lite.sample_counts() == {"done": 1, "failed": 1, "queued": 2}
    ids = {1, 2, 3, 4, 999}
    assert shared.samples_by_id(ids) == lite.samples_by_id(ids) and len(lite.samples_by_id(ids)) == 4
    assert shared.sample_briefs(ids) == lite.sample_briefs(ids)
    assert shared.sample_briefs({1})[1].members == (("R1", 1, None), ("R1", 2, None), ("R2", 1, None), ("R2", 2, None))
    assert shared.run_rows() == lite.run_rows()
    for folder in ("/srv/out/240501_M1", "/srv/out/240501_M1/", "/srv/out/misc", "/srv/out", "/srv/out/none"):
        assert [r.id for r in shared.files_under(folder)] == [r.id for r in lite.files_under(folder)], folder
        assert shared.unended_under(folder) == lite.unended_under(folder), folder
    assert (lite.unended_under("/srv/out/240501_M1"), lite.unended_under("/srv/out/misc")) == (1, 1)
    # Members in lane order whatever order they were recorded in; each with its own MD5 (one statement).
    assert [f.md5 for f in shared.sample(1).files] == ["2" * 32, "1" * 32, None, "3" * 32]


def test_the_status_page_reads_the_shared_queue(tmp_path, pg_server):
    """[status_page] on a host of a shared queue shows that queue (not a SQLite file that is not there):
    503 naming the database while it has no queue yet or the server is away, the files once it has."""
    url = pg_server.create_database()
    watch = tmp_path / "w"
    watch.mkdir()
    settings = parse(_toml(f'[queue]\nurl = "{url}"\n[watch]\npaths = [{{path = "{watch}", id = "w"}}]\n'
                           f'[status_page]\nenabled = true\nlisten = "127.0.0.1:0"\n'), file=str(tmp_path / "c.toml"))
    page = build_status_page(settings, log=structlog.get_logger("test"), env={})
    code, text = page.render()
    assert code == 503 and html.escape(display_url(url)) in text
    store = PostgresStore(url, watches={"w": str(watch)}, host="h1")
    store.mark_done(store.add_seen(str(watch / "run1" / "a.fastq"), IDENT), sample_id="0123456789abcdef", md5=None)
    code, text = page.render()
    assert code == 200 and "a.fastq" in text and "0123456789abcdef" in text
    pg_server.stop("fast")
    try:
        assert page.render()[0] == 503                   # the server away: said, not raised
    finally:
        pg_server.start()
    assert page.render()[0] == 200                       # and back
    page.stop()
    store.close()
