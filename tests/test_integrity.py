"""daemon.queue.integrity: real damage to a real SQLite queue is found, set aside and rebuilt."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import stat
import subprocess
import sys

import pytest

from daemon.queue import integrity
from daemon.queue.base import Identity
from daemon.queue.journal import Journal
from daemon.queue.sqlite import SqliteStore

PAGE = 4096


def version(i: int) -> tuple[str, Identity]:
    return f"/srv/run/sample{i:03d}_R1.fastq.gz", Identity(2049, 1000 + i, 100 + i, 10**18 + i)


def finish(store: SqliteStore, journal: Journal, i: int, state: str = "done") -> None:
    """What the daemon does when a version ends: the queue's commit, then the journal line."""
    path, ident = version(i)
    file_id = store.add_seen(path, ident)
    store.set_state(file_id, "queued")
    if state == "done":
        store.mark_done(file_id, sample_id=f"{i:016x}", md5=f"{i:032x}")
        journal.file_ended(path=path, identity=ident, state="done", sample_id=f"{i:016x}", md5=f"{i:032x}")
    else:
        store.set_state(file_id, state, error=f"{state} because {i}")
        journal.file_ended(path=path, identity=ident, state=state, error=f"{state} because {i}")


@pytest.fixture
def paths(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    return str(state / "queue.sqlite3"), str(state / "journal.jsonl")


def make_queue(paths, done: int = 300, rejected: int = 2, pending: int = 3) -> None:
    """A checkpointed queue: `done` confirmed versions, some rejected, some still queued."""
    queue, journal_file = paths
    store, journal = SqliteStore(queue), Journal(journal_file, host="h")
    for i in range(done):
        finish(store, journal, i)
    for i in range(done, done + rejected):
        finish(store, journal, i, "rejected")
    for i in range(done + rejected, done + rejected + pending):
        path, ident = version(i)
        store.set_state(store.add_seen(path, ident), "queued")
    store.close()


def rows(queue: str) -> dict[str, tuple]:
    store = SqliteStore(queue, readonly=True)
    try:
        return {r.path: (r.state, r.sample_id, r.md5, r.identity) for r in store.files()}
    finally:
        store.close()


def assert_rebuilt(paths, done: int = 300, rejected: int = 2) -> None:
    """The rebuilt queue holds every ended version in its final state, with sample id and md5."""
    found = rows(paths[0])
    for i in range(done):
        path, ident = version(i)
        assert found[path] == ("done", f"{i:016x}", f"{i:032x}", ident)
    for i in range(done, done + rejected):
        assert found[version(i)[0]][0] == "rejected"
    assert len(found) == done + rejected      # versions that had not ended are found again by the scan
    assert integrity.check(paths[0]).kind == "ok"


def pages_holding(data: bytes, needle: bytes) -> list[int]:
    return sorted({m.start() // PAGE for m in re.finditer(re.escape(needle), data)})


# -- a healthy queue ------------------------------------------------------------------------------

def test_healthy_queue_is_ok_even_while_in_use(paths):
    """A whole queue passes, closed or open with a live WAL (`seqdrop check` while the daemon runs)."""
    make_queue(paths)
    assert integrity.check(paths[0]).kind == "ok"
    store = SqliteStore(paths[0])
    finish(store, Journal(paths[1], host="h"), 500)
    assert os.path.getsize(paths[0] + "-wal") > 0
    verdict = integrity.check(paths[0])
    store.close()
    assert verdict.ok and not verdict.damaged


def test_no_queue_and_no_journal_is_a_first_start(paths):
    """Nothing there yet: 'new', not damage."""
    verdict = integrity.check(paths[0])
    assert verdict.kind == "new" and verdict.ok


def test_a_deleted_queue_with_a_journal_is_missing_and_rebuilt(paths):
    """The queue file gone while the journal records uploads: rebuilt without setting anything aside."""
    make_queue(paths)
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(paths[0] + suffix):
            os.remove(paths[0] + suffix)
    recovery = integrity.recover(paths[0])
    assert recovery.verdict.kind == "missing" and recovery.set_aside_as is None and recovery.restored == 302
    assert_rebuilt(paths)


# -- each kind of damage, made for real -----------------------------------------------------------

def test_queue_truncated_to_zero_bytes(paths):
    """A 0-byte queue (SQLite would open it as a new empty database) is damage, then rebuilt."""
    make_queue(paths)
    os.truncate(paths[0], 0)
    verdict = integrity.check(paths[0])
    assert verdict.kind == "empty" and verdict.damaged
    aside = integrity.set_aside(paths[0])
    assert os.path.getsize(aside) == 0 and not os.path.exists(paths[0])
    assert integrity.rebuild(paths[0], paths[1], salvage_from=aside) == 302
    assert_rebuilt(paths)


def test_queue_cut_in_half(paths):
    """A queue shorter than its header says is truncated; the rebuild restores every ended version."""
    make_queue(paths)
    os.truncate(paths[0], os.path.getsize(paths[0]) // 2 // PAGE * PAGE)
    recovery = integrity.recover(paths[0])
    assert recovery.verdict.kind == "truncated" and os.path.exists(recovery.set_aside_as)
    assert recovery.restored == 302
    assert_rebuilt(paths)


def test_queue_overwritten_with_something_else(paths):
    """A file that is not an SQLite database is named as such."""
    make_queue(paths)
    with open(paths[0], "wb") as handle:
        handle.write(b"PK\x03\x04 this is a zip file now" * 500)
    assert integrity.check(paths[0]).kind == "not_a_database"


def test_garbage_over_a_table_page(paths):
    """Random bytes over a page of the files table: corrupt; rows on other pages are salvaged and
    the journal restores the rest."""
    make_queue(paths)
    data = bytearray(open(paths[0], "rb").read())
    [page] = pages_holding(data, f"{150:032x}".encode())        # md5s live only in the table
    data[page * PAGE:(page + 1) * PAGE] = os.urandom(PAGE)
    open(paths[0], "wb").write(data)
    verdict = integrity.check(paths[0])
    assert verdict.kind == "corrupt" and verdict.damaged and verdict.problems
    salvaged = dict(integrity._salvage(paths[0]))
    assert 0 < len(salvaged) < 302            # everything but the rows on the bad page
    recovery = integrity.recover(paths[0])
    assert recovery.restored == 302
    assert_rebuilt(paths)


def test_changed_bytes_in_an_index_pass_quick_check_but_not_this_check(paths):
    """An index entry that no longer matches its row: quick_check says ok, check says corrupt."""
    make_queue(paths)
    data = bytearray(open(paths[0], "rb").read())
    needle = version(150)[0].encode()
    md5_pages = pages_holding(data, f"{150:032x}".encode())
    index_offsets = [m.start() for m in re.finditer(re.escape(needle), data) if m.start() // PAGE not in md5_pages]
    assert index_offsets, "the path should also be in the files_path index"
    data[index_offsets[0] + len(needle) - 1] ^= 0x01      # "…fastq.gz" → "…fastq.g{": sort order kept
    open(paths[0], "wb").write(data)
    db = sqlite3.connect(f"file:{paths[0]}?mode=ro", uri=True)
    assert db.execute("PRAGMA quick_check").fetchall() == [("ok",)]
    db.close()
    verdict = integrity.check(paths[0])
    assert verdict.kind == "corrupt" and "files_path" in verdict.detail
    assert integrity.recover(paths[0]).restored == 302
    assert_rebuilt(paths)


WRITER = """
import sys
from daemon.queue.journal import Journal
from daemon.queue.sqlite import SqliteStore
sys.path.insert(0, sys.argv[5])
from test_integrity import finish

queue, journal_file, first, more = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
store, journal = SqliteStore(queue), Journal(journal_file, host="h")
for i in range(first):
    finish(store, journal, i)
if first:
    store.close()                  # a clean close checkpoints: these rows are in the main file
    store = SqliteStore(queue)
for i in range(first, first + more):
    finish(store, journal, i)
print("ready", flush=True)
sys.stdin.read()                   # until killed
"""


def killed_writer(paths, first: int, more: int) -> None:
    """A writer process commits rows (each synchronous=FULL), then dies by SIGKILL: no checkpoint."""
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.Popen([sys.executable, "-c", WRITER, *paths, str(first), str(more), tests_dir],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert os.path.getsize(paths[0] + "-wal") > 0


def test_wal_deleted_after_kill_of_a_never_checkpointed_queue(paths):
    """kill -9, then the WAL removed: the main file never held the schema → no_schema, rebuilt."""
    killed_writer(paths, first=0, more=30)
    os.remove(paths[0] + "-wal")
    verdict = integrity.check(paths[0])
    assert verdict.kind == "no_schema" and verdict.damaged
    recovery = integrity.recover(paths[0])
    assert recovery.restored == 30 and os.path.exists(recovery.set_aside_as + "-shm")
    assert_rebuilt(paths, done=30, rejected=0)


@pytest.mark.parametrize("damage", ["delete", "garble"])
def test_wal_lost_after_kill_when_only_older_rows_were_checkpointed(paths, damage):
    """kill -9, then the WAL deleted or garbled: the queue opens fine but lacks the newest uploads;
    the journal shows it (behind_journal) and the rebuild restores old and new versions."""
    killed_writer(paths, first=10, more=20)
    wal = paths[0] + "-wal"
    if damage == "delete":
        os.remove(wal)
    else:
        size = os.path.getsize(wal)
        with open(wal, "r+b") as handle:
            handle.seek(32 + 24 + 100)          # past the WAL header and the first frame's header
            handle.write(os.urandom(size - 200))
    verdict = integrity.check(paths[0])
    assert verdict.kind == "behind_journal" and verdict.damaged
    assert "20 uploaded version(s)" in verdict.detail
    recovery = integrity.recover(paths[0])
    assert recovery.restored == 30
    assert_rebuilt(paths, done=30, rejected=0)


def test_unreadable_queue_is_not_called_damage(paths):
    """An I/O error (here: a directory where the file should be) is unreadable, not rebuilt."""
    os.mkdir(paths[0])
    verdict = integrity.check(paths[0])
    assert verdict.kind == "unreadable" and not verdict.ok and not verdict.damaged
    assert integrity.recover(paths[0]).restored == 0 and os.path.isdir(paths[0])


# -- matching, setting aside, rebuilding ----------------------------------------------------------

def test_a_done_file_moved_in_the_queue_is_still_matched(paths):
    """The queue showing a done version at its new path (a move) is not 'behind' the journal."""
    make_queue(paths, done=5, rejected=0, pending=0)
    db = sqlite3.connect(paths[0])
    db.execute("UPDATE files SET path = '/srv/archive/moved.fastq.gz' WHERE path = ?", (version(4)[0],))
    db.commit()
    db.close()
    assert integrity.check(paths[0]).kind == "ok"
    db = sqlite3.connect(paths[0])
    db.execute("UPDATE files SET state = 'queued' WHERE path = ?", (version(3)[0],))
    db.commit()
    db.close()
    assert integrity.check(paths[0]).kind == "behind_journal"


def test_set_aside_keeps_every_file_under_a_unique_name(paths):
    """The queue and its -wal/-shm move to <name>.damaged-<UTC time>, twice in a second without clash."""
    make_queue(paths, done=3)
    open(paths[0] + "-wal", "wb").close()
    first = integrity.set_aside(paths[0], clock=lambda: 1_900_000_000.0)
    assert first == paths[0] + ".damaged-20300317T174640Z"
    assert os.path.exists(first) and os.path.exists(first + "-wal") and not os.path.exists(paths[0])
    make_queue(paths, done=3)
    second = integrity.set_aside(paths[0], clock=lambda: 1_900_000_000.0)
    assert second == first + "-2" and os.path.exists(second)
    with pytest.raises(FileNotFoundError):
        integrity.set_aside(paths[0])


def test_rebuild_refuses_to_overwrite_a_queue(paths):
    """rebuild() never replaces an existing queue."""
    make_queue(paths, done=2)
    with pytest.raises(FileExistsError):
        integrity.rebuild(paths[0], paths[1])


def test_rebuild_keeps_the_last_ending_of_each_version_and_is_private(paths):
    """A version that failed, was retried and then confirmed is done; the new queue is mode 0600."""
    queue, journal_file = paths
    journal = Journal(journal_file, host="h")
    path, ident = version(7)
    journal.file_ended(path=path, identity=ident, state="failed", error="HTTP 400")
    journal.file_ended(path=path, identity=ident, state="done", sample_id="00000000000000aa", md5="m")
    journal.file_ended(path=path, identity=Identity(ident.dev, ident.inode, 1, ident.mtime_ns), state="vanished")
    with open(journal_file, "ab") as handle:
        handle.write(b'{"v": 1, "event": "file.ended", "time": "2030-01')       # a torn last line
    assert integrity.rebuild(queue, journal_file) == 2
    store = SqliteStore(queue, readonly=True)
    states = sorted((r.state, r.sample_id, r.size) for r in store.files())
    store.close()
    assert states == [("done", "00000000000000aa", ident.size), ("vanished", None, 1)]
    assert stat.S_IMODE(os.stat(queue).st_mode) == 0o600


def test_rebuild_skips_done_records_without_a_real_sample_id(paths):
    """A done record whose sample_id is not 16 hex digits is not trusted as confirmed."""
    queue, journal_file = paths
    path, ident = version(1)
    Journal(journal_file, host="h").file_ended(path=path, identity=ident, state="done",
                                               sample_id="0123456789abcdef\n\x1b[2J", md5="m")
    assert integrity.rebuild(queue, journal_file) == 0


# -- samples in flight ------------------------------------------------------------------------------

MP_INIT = {"route": "multipart", "sample_id": "00000000000000b3", "bucket": "b", "key": "k/3",
           "callback_url": "/api/v1/samples/00000000000000b3/callback", "filename": "f.fastq.gz"}


def test_rebuild_resumes_a_version_whose_sample_is_in_flight_with_that_sample(paths):
    """A version whose latest record is a sample (a confirm with a lost answer) is queued at its step
    with its sample and md5 (and the multipart init), never as a new upload; a later ending wins."""
    queue, journal_file = paths
    journal = Journal(journal_file, host="h")
    v = [version(i) for i in range(6)]
    journal.sample_saved(path=v[0][0], identity=v[0][1], step="initialized", sample_id="00000000000000a0",
                         posted=False)
    journal.sample_saved(path=v[1][0], identity=v[1][1], step="posted", sample_id="00000000000000a1",
                         posted=True, md5="d1")
    journal.sample_saved(path=v[2][0], identity=v[2][1], step="posted", sample_id="00000000000000a2",
                         posted=True, md5="d2")
    journal.file_ended(path=v[2][0], identity=v[2][1], state="done", sample_id="00000000000000a2", md5="d2")
    journal.sample_saved(path=v[3][0], identity=v[3][1], step="mp_complete", sample_id="00000000000000b3",
                         posted=True, md5="d3", init=MP_INIT)
    journal.sample_saved(path=v[4][0], identity=v[4][1], step="mp_complete", sample_id="00000000000000b4",
                         posted=True, md5="d4")                       # no init: it cannot be called back
    journal.sample_saved(path=v[5][0], identity=v[5][1], step="posted", sample_id="not-a-sample-id",
                         posted=True, md5="d5")
    assert integrity.rebuild(queue, journal_file) == 5
    store = SqliteStore(queue, readonly=True)
    found = {r.path: r for r in store.files()}
    store.close()
    got = {p: (found[p].state, found[p].step, found[p].sample_id, found[p].md5) for p, _ in v[:5]}
    assert got == {v[0][0]: ("queued", "initialized", "00000000000000a0", None),
                   v[1][0]: ("queued", "posted", "00000000000000a1", "d1"),
                   v[2][0]: ("done", "", "00000000000000a2", "d2"),
                   v[3][0]: ("queued", "mp_complete", "00000000000000b3", "d3"),
                   v[4][0]: ("queued", "mp_initialized", "00000000000000b4", None)}
    assert json.loads(found[v[3][0]].init) == MP_INIT and not found[v[1][0]].init
    assert found[v[1][0]].identity == v[1][1] and v[5][0] not in found
    assert integrity.check(queue).kind == "ok"


def test_a_queue_that_lost_a_posted_sample_is_behind_its_journal(paths):
    """A checkpointed queue without the sample the journal saw posted (its WAL lost) is damage; a
    queue holding that sample (in flight or done, even at a new path) is whole."""
    queue, journal_file = paths
    store, journal = SqliteStore(queue), Journal(journal_file, host="h")
    path, ident = version(1)
    file_id = store.add_seen(path, ident)
    store.set_state(file_id, "queued")
    journal.sample_saved(path=path, identity=ident, step="initialized", sample_id="00000000000000c1", posted=False)
    assert integrity.check(queue).kind == "ok"          # nothing of an initialized sample can be confirmed
    journal.sample_saved(path=path, identity=ident, step="posted", sample_id="00000000000000c1", posted=True,
                         md5="d")
    assert integrity.check(queue).kind == "behind_journal"
    store.save_init(file_id, "00000000000000c1", "{}")
    store.save_posted(file_id, "d")
    assert integrity.check(queue).kind == "ok"
    store.mark_done(file_id, sample_id="00000000000000c1", md5="d")
    store.close()
    db = sqlite3.connect(queue)
    db.execute("UPDATE files SET path = '/srv/archive/moved.fastq.gz'")
    db.commit()
    db.close()
    assert integrity.check(queue).kind == "ok"


def test_a_sample_record_alone_means_the_journal_has_something_to_lose(paths):
    """A missing queue whose journal holds only samples in flight is rebuilt, not started empty."""
    queue, journal_file = paths
    path, ident = version(2)
    Journal(journal_file, host="h").sample_saved(path=path, identity=ident, step="posted",
                                                 sample_id="00000000000000c2", posted=True, md5="d")
    assert integrity.journal_has_records(journal_file)
    recovery = integrity.recover(queue)
    assert recovery.verdict.kind == "missing" and recovery.restored == 1
    assert rows(queue)[path][:2] == ("queued", "00000000000000c2")


def test_a_salvaged_ending_beats_an_older_sample_record(paths):
    """The queue commits an ending before the journal hears of it: a done row still readable in the
    set-aside queue wins over the journal's sample in flight for that version."""
    queue, journal_file = paths
    path, ident = version(3)
    Journal(journal_file, host="h").sample_saved(path=path, identity=ident, step="posted",
                                                 sample_id="00000000000000c3", posted=True, md5="d")
    store = SqliteStore(queue)
    file_id = store.add_seen(path, ident)
    store.mark_done(file_id, sample_id="00000000000000c3", md5="d")
    store.close()
    aside = integrity.set_aside(queue)
    assert integrity.rebuild(queue, journal_file, salvage_from=aside) == 1
    assert rows(queue)[path][:2] == ("done", "00000000000000c3")


def _pair_record(lead_step_files: list[tuple[str, Identity, str, int]]) -> dict:
    """The "sample" object of a paired 2-lane sample's lead record (the lead first)."""
    return {"key": "/srv/run:P_S1", "folder": "/srv/run", "name": "P_S1", "run": "run", "paired": True,
            "late": False, "warnings": [], "landing": {"project": "5eed000000000002", "tags": ["t"]},
            "files": [{"path": p, "device": i.dev, "inode": i.inode, "size": i.size, "mtime_ns": i.mtime_ns,
                       "role": role, "lane": lane} for p, i, role, lane in lead_step_files]}


def _pair(n: int) -> list[tuple[str, Identity, str, int]]:
    members = []
    for k, (role, lane) in enumerate((("R1", 1), ("R1", 2), ("R2", 1), ("R2", 2))):
        members.append((f"/srv/run/P{n}_S1_L00{lane}_{role}_001.fastq", Identity(2049, 100 * n + k, 500 + k, 10**18 + k),
                        role, lane))
    return members


def test_rebuild_resumes_a_sample_of_several_files_whole(paths):
    """The lead of a paired 2-lane sample in flight (posted_r1's record falls back to its init, posted
    is confirmable): rebuilt with its three other members, roles, lanes, the sample row and its landing,
    queued at the lead's step — never the lead alone as a file of its own (a half sample)."""
    queue, journal_file = paths
    journal = Journal(journal_file, host="h")
    for n, step in ((1, "initialized"), (2, "posted")):
        members = _pair(n)
        journal.sample_saved(path=members[0][0], identity=members[0][1], step=step, sample_id=f"{n:016x}",
                             posted=step == "posted", md5="d" if step == "posted" else None,
                             sample=_pair_record(members))
    assert integrity.rebuild(queue, journal_file) == 2
    store = SqliteStore(queue, readonly=True)
    try:
        samples = store.samples()
        assert len(samples) == 2 and len(store.files()) == 8
        for n, (sample, step) in enumerate(zip(samples, ("initialized", "posted")), start=1):
            members = _pair(n)
            assert (sample.name, sample.paired, sample.landing["project"]) == ("P_S1", True, "5eed000000000002")
            assert [(f.path, f.identity, f.role, f.lane) for f in sample.files] == \
                [(p, i, r, lane) for p, i, r, lane in members]
            lead = next(f for f in sample.files if f.id == sample.lead)
            assert lead.path == members[0][0]
            assert {(f.state, f.step, f.sample_id) for f in sample.files} == {("queued", step, f"{n:016x}")}
    finally:
        store.close()
    assert integrity.check(queue).kind == "ok"


def test_a_sample_lead_whose_sample_is_torn_or_unreadable_is_not_resumed_alone(paths):
    """A lead in flight whose sample object is not whole, or whose members have endings of their own
    (a journal that does not hold together), is not rebuilt: alone it would be sent as a half sample;
    the start-up scan finds its file again. The members' own endings are kept."""
    queue, journal_file = paths
    journal = Journal(journal_file, host="h")
    torn, broken = _pair(1), _pair(2)
    journal.sample_saved(path=torn[0][0], identity=torn[0][1], step="posted", sample_id="1" * 16, posted=True,
                         md5="d", sample=_pair_record(torn))
    journal.file_ended(path=torn[2][0], identity=torn[2][1], state="rejected", error="r")
    record = _pair_record(broken)
    record["files"][1]["inode"] = "not a number"
    journal.sample_saved(path=broken[0][0], identity=broken[0][1], step="posted", sample_id="2" * 16, posted=True,
                         md5="d", sample=record)
    assert integrity.rebuild(queue, journal_file) == 1
    store = SqliteStore(queue, readonly=True)
    try:
        assert [(f.path, f.state) for f in store.files()] == [(torn[2][0], "rejected")]
        assert store.samples() == []
    finally:
        store.close()


def _end_pair(journal: Journal, members: list[tuple[str, Identity, str, int]], *, n: int, state: str = "done",
              key: bool = True, late: bool = False) -> None:
    """What the daemon journals when a paired sample ends: each member's file.ended, then sample.ended."""
    sid = f"{n:016x}" if state == "done" else None
    for path, ident, role, lane in members:
        journal.file_ended(path=path, identity=ident, state=state, sample_id=sid, md5=f"{n:032x}",
                           error=None if state == "done" else "bad pair", role=role, lane=lane, sample=n)
    journal.sample_ended(sample=n, state=state, name=f"P{n}_S1", run="run", paired=True,
                         files=[{"path": p, "identity": i, "md5": f"{n:032x}", "role": r, "lane": lane}
                                for p, i, r, lane in members],
                         sample_id=sid, landing={"project": "5eed000000000002", "tags": ["t"]}, init_at=None,
                         posted_at={}, confirmed_at=None, late=late, warnings=("R2 of lane 3 never came",),
                         **({"key": f'["/srv/run", "P{n}_S1"]', "folder": "/srv/run", "lead": members[0][0]}
                            if key else {}))


def test_rebuild_holds_ended_samples_again(paths):
    """Samples that ended come back as samples around their members' final rows (key, lead, roles, lanes,
    landing, late, warnings; states untouched); a record of an older seqdrop (no key) leaves its files
    as files."""
    queue, journal_file = paths
    journal = Journal(journal_file, host="h")
    _end_pair(journal, _pair(1), n=1)
    _end_pair(journal, _pair(2), n=2, state="rejected", late=True)
    _end_pair(journal, _pair(3), n=3, key=False)
    assert integrity.rebuild(queue, journal_file) == 12
    store = SqliteStore(queue, readonly=True)
    try:
        samples = {s.name: s for s in store.samples()}
        assert sorted(samples) == ["P1_S1", "P2_S1"]
        for n, state in ((1, "done"), (2, "rejected")):
            sample = samples[f"P{n}_S1"]
            assert [(f.path, f.role, f.lane, f.state) for f in sample.files] == \
                [(p, r, lane, state) for p, _, r, lane in _pair(n)]
            assert next(f for f in sample.files if f.id == sample.lead).path == _pair(n)[0][0]
            assert (sample.key, sample.folder, sample.paired, sample.late) == (
                f'["/srv/run", "P{n}_S1"]', "/srv/run", True, n == 2)
            assert sample.warnings == ("R2 of lane 3 never came",) and sample.landing["project"] == "5eed000000000002"
        assert {f.sample_id for f in samples["P1_S1"].files} == {f"{1:016x}"}
        assert all(f.sample is None and f.state == "done" for f in store.files() if "/P3_" in f.path)
    finally:
        store.close()
    assert integrity.check(queue).kind == "ok"
