"""The tracker's decisions: a real Store in tmp_path, real files, an injected clock (no sleeping)."""

from __future__ import annotations

import dataclasses
import os
import socket
import sqlite3
import threading
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from daemon.detection.roots import WatchRoots
from daemon.detection.tracker import BATCH, MARKER_RECHECK_S, Tracker
from daemon.detection.watcher import Matcher
from daemon.queue.base import Identity, Store
from daemon.queue.sqlite import SqliteStore

SETTLE_S = 30.0


class Clock:
    """A settable clock shared by the store and the tracker."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Log:
    """Enough of a structlog logger for the tracker (events go to structlog's capture)."""

    def __getattr__(self, level: str):
        return getattr(structlog.get_logger(), level)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock):
    s = SqliteStore(str(tmp_path / "queue.sqlite3"), clock=clock)
    yield s
    s.close()


class Env:
    def __init__(self, tmp_path: Path, store: Store, clock: Clock) -> None:
        self.folder = tmp_path / "watch"
        self.folder.mkdir()
        self.store, self.clock = store, clock
        self.use_marker(None)

    def use_marker(self, marker: str | None) -> None:
        """A fresh tracker whose one watch root (the folder) has this run-marker rule."""
        roots = WatchRoots([(str(self.folder), marker)], clock=self.clock)
        self.tracker = Tracker(store=self.store, settle_s=SETTLE_S, log=Log(), clock=self.clock, roots=roots)

    def write(self, name: str, data: bytes = b"@r\nACGT\n+\nIIII\n") -> str:
        path = self.folder / name
        path.write_bytes(data)
        return str(path)

    def rows(self, path: str) -> list:
        return [r for r in self.store.files() if r.path == path]

    def state(self, path: str) -> str | None:
        row = self.store.latest_for_path(path)
        return row.state if row else None

    def settle(self, path: str) -> list[str]:
        """Let the settle time pass and the tracker's due checks run; the paths they queued."""
        self.clock.advance(SETTLE_S + 0.1)
        return self.tracker.run_due().queued


@pytest.fixture
def env(tmp_path: Path, store: Store, clock: Clock) -> Env:
    return Env(tmp_path, store, clock)


def test_new_file_is_seen_and_scheduled(env: Env) -> None:
    """A file the store has never heard of becomes one `seen` row, due for a check after settle_s."""
    path = env.write("a.fastq")
    env.tracker.observe(path)
    rows = env.rows(path)
    assert [r.state for r in rows] == ["seen"]
    assert rows[0].identity == Identity.of(os.stat(path))
    assert env.tracker.next_due() == pytest.approx(env.clock.now + SETTLE_S)


def test_observing_again_adds_no_row(env: Env) -> None:
    """Repeated hints for an unchanged file keep a single row (hints may come twice)."""
    path = env.write("a.fastq")
    for _ in range(3):
        env.tracker.observe(path)
    assert len(env.rows(path)) == 1


def test_unchanged_for_settle_is_queued(env: Env) -> None:
    """A file unchanged for settle_s is queued, and reported as queued, not a moment before."""
    path = env.write("a.fastq")
    assert env.tracker.observe(path) is False
    env.clock.advance(SETTLE_S - 1)
    assert env.tracker.observe(path) is False
    assert env.tracker.run_due().queued == []
    assert env.state(path) == "seen"
    env.clock.advance(1.1)
    assert env.tracker.run_due().queued == [path]
    assert env.state(path) == "queued"
    assert env.tracker.run_due().queued == []


def test_change_during_settle_restarts_the_clock(env: Env) -> None:
    """A file that grows while settling is re-stamped and queued only settle_s after its last change."""
    path = env.write("a.fastq")
    env.tracker.observe(path)
    env.clock.advance(SETTLE_S - 5)
    with open(path, "ab") as f:
        f.write(b"@r2\nACGT\n+\nIIII\n")
    changed_at = env.clock.now
    env.tracker.observe(path)                    # the write's event
    row = env.store.latest_for_path(path)
    assert row.state == "seen" and row.size == os.path.getsize(path)
    assert row.stable_since == changed_at
    env.clock.advance(6)                         # past the first due time, not past the new one
    env.tracker.run_due()
    assert env.state(path) == "seen"
    env.clock.advance(SETTLE_S)
    env.tracker.run_due()
    assert env.state(path) == "queued"
    assert len(env.rows(path)) == 1


def test_change_found_by_the_due_check_restarts_the_clock(env: Env) -> None:
    """A change no event reported is caught by the stat at the due time, and settling starts over."""
    path = env.write("a.fastq")
    env.tracker.observe(path)
    env.clock.advance(SETTLE_S - 1)
    with open(path, "ab") as f:
        f.write(b"@r2\nACGT\n+\nIIII\n")
    env.clock.advance(1.1)
    env.tracker.run_due()
    assert env.state(path) == "seen"
    env.settle(path)
    assert env.state(path) == "queued"


def test_deleted_while_seen_is_vanished(env: Env) -> None:
    """A file deleted while it settles becomes `vanished` with a reason."""
    path = env.write("a.fastq")
    env.tracker.observe(path)
    os.unlink(path)
    env.tracker.observe(path)
    row = env.store.latest_for_path(path)
    assert row.state == "vanished" and "deleted" in row.error


def test_deleted_while_queued_is_vanished(env: Env) -> None:
    """A queued file deleted before anything was sent becomes `vanished`."""
    path = env.write("a.fastq")
    env.tracker.observe(path)
    env.settle(path)
    assert env.state(path) == "queued"
    os.unlink(path)
    env.tracker.observe(path)
    assert env.state(path) == "vanished"


def test_deleted_after_init_is_left_to_the_worker(env: Env) -> None:
    """A queued row whose upload has begun is not touched when the file goes: the worker cancels it."""
    path = env.write("a.fastq")
    env.tracker.observe(path)
    env.settle(path)
    row = env.store.latest_for_path(path)
    env.store.save_init(row.id, "s1", "{}")
    os.unlink(path)
    env.tracker.observe(path)
    assert env.state(path) == "queued"


def test_replaced_while_queued_old_vanished_new_seen(env: Env) -> None:
    """A queued file replaced (new inode) before upload: the old version vanishes, the new one is seen."""
    path = env.write("a.fastq")
    env.tracker.observe(path)
    env.settle(path)
    tmp = env.write("a.fastq.tmp", b"@new\nGGGG\n+\nIIII\n")
    os.replace(tmp, path)
    env.tracker.observe(path)
    old, new = env.rows(path)
    assert old.state == "vanished" and "replaced" in old.error
    assert new.state == "seen" and new.identity == Identity.of(os.stat(path))
    env.settle(path)
    assert [r.state for r in env.rows(path)] == ["vanished", "queued"]


def test_uploading_file_changed_gets_a_new_version(env: Env) -> None:
    """A file changed while a worker holds it: the worker's row is left alone, the new version is seen."""
    path = env.write("a.fastq")
    env.tracker.observe(path)
    env.settle(path)
    assert env.store.claim_next("w") is not None
    with open(path, "ab") as f:
        f.write(b"@r2\nACGT\n+\nIIII\n")
    env.tracker.observe(path)
    assert [r.state for r in env.rows(path)] == ["uploading", "seen"]


def test_done_file_unchanged_is_left_alone(env: Env) -> None:
    """Hints and scans of a done file with the same identity add nothing."""
    path = env.write("a.fastq")
    env.tracker.observe(path)
    env.settle(path)
    row = env.store.latest_for_path(path)
    env.store.mark_done(row.id, sample_id="s1", md5="x")
    env.tracker.observe(path)
    env.tracker.observe(path, os.stat(path))
    assert [r.state for r in env.rows(path)] == ["done"]


def test_done_file_touched_is_a_new_version(env: Env) -> None:
    """A done file whose mtime changes (a touch) gets a second row, which settles and queues."""
    path = env.write("a.fastq")
    env.tracker.observe(path)
    env.settle(path)
    row = env.store.latest_for_path(path)
    env.store.mark_done(row.id, sample_id="s1", md5="x")
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    env.tracker.observe(path)
    assert [r.state for r in env.rows(path)] == ["done", "seen"]
    env.settle(path)
    assert [r.state for r in env.rows(path)] == ["done", "queued"]


def test_marker_waiting_then_queued(env: Env) -> None:
    """A settled file waits in `seen` with its root's marker reason in `error`, and queues once the marker is there."""
    env.use_marker("illumina")
    run = env.folder / "run_1"
    run.mkdir()
    path = str(run / "a.fastq")
    Path(path).write_bytes(b"@r\nACGT\n+\nIIII\n")
    env.tracker.observe(path)
    assert env.settle(path) == []
    row = env.store.latest_for_path(path)
    assert row.state == "seen" and "CopyComplete.txt" in row.error
    env.clock.advance(MARKER_RECHECK_S + 0.1)
    assert env.tracker.run_due().queued == []
    assert env.state(path) == "seen"           # still waiting, rechecked again later
    (run / "CopyComplete.txt").write_text("")
    env.clock.advance(MARKER_RECHECK_S + 0.1)
    assert env.tracker.run_due().queued == [path]
    row = env.store.latest_for_path(path)
    assert row.state == "queued" and row.error is None


def test_vanished_file_that_returns_is_seen_again(env: Env) -> None:
    """A file that vanished and comes back unchanged (moved out and back, a share remounted) is uploaded."""
    path = env.write("a.fastq")
    env.tracker.observe(path)
    aside = str(env.folder.parent / "aside.fastq")
    os.rename(path, aside)
    env.tracker.observe(path)
    assert env.state(path) == "vanished"
    os.rename(aside, path)                     # same inode, size and mtime as the vanished row
    env.tracker.observe(path)
    assert [r.state for r in env.rows(path)] == ["vanished", "seen"]
    env.settle(path)
    assert env.state(path) == "queued"


def test_failed_file_unchanged_stays_failed(env: Env) -> None:
    """A failed file is not retried by rescans (only `seqdrop retry` does that), unless it changes."""
    path = env.write("a.fastq")
    env.tracker.observe(path)
    env.settle(path)
    env.store.set_state(env.store.latest_for_path(path).id, "failed", error="HTTP 400")
    env.tracker.observe(path)
    assert [r.state for r in env.rows(path)] == ["failed"]


def test_resume_settles_again_from_the_restart(env: Env, store: Store, clock: Clock) -> None:
    """After a restart, rows left `seen` settle again from the restart (how long they were still is unknown)."""
    path = env.write("a.fastq")
    env.tracker.observe(path)
    clock.advance(SETTLE_S + 10)                 # the daemon was down longer than settle_s
    fresh = Tracker(store=store, settle_s=SETTLE_S, log=Log(), clock=clock)
    fresh.resume()
    assert fresh.next_due() == pytest.approx(clock.now + SETTLE_S)
    fresh.observe(path)                          # the start-up scan
    assert env.state(path) == "seen"
    clock.advance(SETTLE_S + 0.1)
    fresh.run_due()
    assert env.state(path) == "queued"


def test_wall_clock_jumps_do_not_change_settling(env: Env, store: Store, clock: Clock) -> None:
    """Settling is timed on the monotonic clock: a wall-clock jump forward queues nothing early, one back holds nothing."""
    mono = Clock()
    env.tracker = Tracker(store=store, settle_s=SETTLE_S, log=Log(), clock=mono)
    path = env.write("a.fastq")
    env.tracker.observe(path)
    clock.advance(86_400)                        # NTP sets the wall clock a day forward
    mono.advance(1)
    env.tracker.observe(path)
    env.tracker.run_due()
    assert env.state(path) == "seen"
    clock.advance(-365 * 86_400)                 # and then a year back
    mono.advance(SETTLE_S)
    env.tracker.run_due()
    assert env.state(path) == "queued"


def test_unreadable_stat_is_logged_and_skipped(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stat that fails with an unexpected OSError changes nothing and is logged."""
    path = env.write("a.fastq")

    def broken_stat(p: str, *a: object, **k: object) -> os.stat_result:
        raise PermissionError(13, "Permission denied", p)

    monkeypatch.setattr(os, "stat", broken_stat)
    monkeypatch.setattr(os, "lstat", broken_stat)
    with capture_logs() as events:
        env.tracker.observe(path)
    assert env.rows(path) == []
    assert [e["event"] for e in events] == ["tracker.stat_failed"]


def test_name_that_is_not_utf8_is_rejected_once_settled(env: Env) -> None:
    """A non-UTF-8 name settles like any file, then is one `rejected` row per version under a printable name."""
    raw = os.path.join(os.fsencode(env.folder), b"M\xfcller.fastq")
    with open(raw, "wb") as f:
        f.write(b"@r\nACGT\n+\nIIII\n")
    path = os.fsdecode(raw)
    stand_in = str(env.folder / "M\\xfcller.fastq")
    env.tracker.observe(path)
    assert env.store.files() == []                # nothing recorded while it may still be written
    env.settle(path)
    [row] = env.store.files()
    assert row.path == stand_in and row.state == "rejected" and "not valid UTF-8" in row.error
    env.tracker.observe(path)
    env.settle(path)
    assert len(env.store.files()) == 1            # the same version is not rejected twice
    with open(raw, "ab") as f:
        f.write(b"@r2\nACGT\n+\nIIII\n")
    env.tracker.observe(path)
    env.settle(path)
    assert env.settle(path) == []
    assert [r.state for r in env.store.files()] == ["rejected", "rejected"]


def test_file_missing_with_its_whole_watch_folder_is_not_vanished(env: Env, tmp_path: Path) -> None:
    """A file that is missing because its watch folder is (an unmounted share) keeps its row; it is no deletion."""
    path = env.write("a.fastq")
    env.tracker.observe(path)
    os.unlink(path)
    aside = tmp_path / "unmounted"
    env.folder.rename(aside)
    env.tracker.observe(path)
    env.settle(path)
    assert env.state(path) == "seen"
    aside.rename(env.folder)
    env.tracker.observe(path)
    assert env.state(path) == "vanished"


def test_a_failing_due_check_is_tried_again(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """A due check that fails (a passing store error) is logged and scheduled again, not dropped."""
    path = env.write("a.fastq")
    env.tracker.observe(path)
    real = env.store.add_sample      # the verb that queues a settled file (as a sample of one)
    calls = []

    def failing_once(*a: object, **k: object) -> int | None:
        calls.append(a)
        if len(calls) == 1:
            raise OSError("disk I/O error")
        return real(*a, **k)

    monkeypatch.setattr(env.store, "add_sample", failing_once)
    with capture_logs() as events:
        env.settle(path)
    assert env.state(path) == "seen"
    assert [e["event"] for e in events] == ["tracker.observe_failed"]
    assert env.tracker.next_due() is not None
    env.settle(path)
    assert env.state(path) == "queued"


def test_hinted_paths_that_are_no_regular_file_get_no_row(env: Env, tmp_path: Path) -> None:
    """A FIFO, a socket, a symbolic link (to a file outside the folder, or dangling) named like FASTQ and
    hinted by an event get no row, as the scan skips them: a FIFO would block the reading worker."""
    outside = tmp_path / "outside.fastq"
    outside.write_bytes(b"@r\nACGT\n+\nIIII\n")
    fifo = env.folder / "pipe.fastq"
    os.mkfifo(fifo)
    link = env.folder / "link.fastq"
    link.symlink_to(outside)
    dangling = env.folder / "dangling.fastq"
    dangling.symlink_to(tmp_path / "nowhere.fastq")
    sock_path = env.folder / "s.fastq"
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(sock_path))
        for p in (fifo, link, dangling, sock_path):
            env.tracker.observe(str(p))
        queued = env.settle(str(fifo))
    finally:
        sock.close()
    assert env.store.files() == [] and queued == []


def test_file_replaced_by_a_symlink_while_seen_is_vanished(env: Env, tmp_path: Path) -> None:
    """A settling file replaced by a symbolic link is gone (that version vanished), not followed."""
    path = env.write("a.fastq")
    env.tracker.observe(path)
    outside = tmp_path / "outside.fastq"
    outside.write_bytes(b"@r\nACGT\n+\nIIII\n")
    os.unlink(path)
    os.symlink(outside, path)
    env.settle(path)
    assert [r.state for r in env.rows(path)] == ["vanished"]


def test_a_batch_reports_what_it_queued_only_once_committed(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """observe_batch returns the paths it queued after its commit; a batch whose commit fails (a full disk)
    reports nothing, records nothing, and its paths are looked at again later."""
    paths = [env.write(f"{name}.fastq") for name in ("a", "b")]
    assert env.tracker.observe_batch([(p, None) for p in paths]).queued == []     # new: seen, not queued
    env.clock.advance(SETTLE_S + 0.1)
    real_commit = env.store._commit

    def disk_full() -> None:
        env.store.db.execute("ROLLBACK")
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(env.store, "_commit", disk_full)
    with capture_logs() as events:
        assert env.tracker.observe_batch([(p, None) for p in paths]).queued == []
    assert "tracker.batch_not_recorded" in [e["event"] for e in events]
    assert [env.state(p) for p in paths] == ["seen", "seen"]
    monkeypatch.setattr(env.store, "_commit", real_commit)
    queued = env.settle(paths[0]) + env.settle(paths[0])   # looked at again, settled again, queued
    assert sorted(queued) == sorted(paths)
    assert [env.state(p) for p in paths] == ["queued", "queued"]


def test_full_scan_finds_new_files_and_reports_those_it_queued(env: Env) -> None:
    """A full scan counts the matching files, records new ones as `seen`, and returns those it queued."""
    (env.folder / "sub").mkdir()
    a, b = env.write("a.fastq"), env.write("sub/b.fq")
    env.write("notes.txt")
    found = env.tracker.full_scan(Matcher())
    assert found.files == 2 and found.queued == []
    assert env.state(a) == env.state(b) == "seen"
    env.clock.advance(SETTLE_S + 0.1)
    assert sorted(env.tracker.full_scan(Matcher()).queued) == sorted([a, b])


def test_full_scan_skips_files_settled_and_unchanged(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """A done file unchanged since is not looked at again by a rescan; a changed one is."""
    done, changed = env.write("done.fastq"), env.write("changed.fastq")
    for path in (done, changed):
        env.tracker.observe(path)
    env.settle(done)
    for path in (done, changed):
        env.store.mark_done(env.store.latest_for_path(path).id, sample_id="s", md5="x")
    with open(changed, "ab") as f:
        f.write(b"@r2\nACGT\n+\nIIII\n")
    observed: list[str] = []
    real = Tracker.observe
    monkeypatch.setattr(Tracker, "observe", lambda self, p, st=None, **kw: observed.append(p) or real(self, p, st, **kw))
    assert env.tracker.full_scan(Matcher()).files == 2
    assert observed == [changed]
    assert [r.state for r in env.rows(changed)] == ["done", "seen"]


def test_full_scan_sweeps_deletions_no_event_reported(env: Env) -> None:
    """Rows `seen` or `queued` (nothing sent) whose file is gone end `vanished` at the rescan."""
    seen, queued, kept = env.write("seen.fastq"), env.write("queued.fastq"), env.write("kept.fastq")
    env.tracker.observe(queued)
    env.settle(queued)
    for path in (seen, kept):
        env.tracker.observe(path)
    os.unlink(seen)
    os.unlink(queued)
    env.tracker.full_scan(Matcher())
    assert [env.state(p) for p in (seen, queued, kept)] == ["vanished", "vanished", "seen"]


def test_full_scan_leaves_the_rows_of_a_missing_root_alone(env: Env, tmp_path: Path) -> None:
    """A rescan while a watch root is gone as a whole (a share unmounted) neither scans nor sweeps it."""
    other = tmp_path / "other"
    other.mkdir()
    env.tracker = Tracker(store=env.store, settle_s=SETTLE_S, log=Log(), clock=env.clock,
                          roots=WatchRoots([(str(env.folder), None), (str(other), None)]))
    mine, theirs = env.write("a.fastq"), str(other / "b.fastq")
    Path(theirs).write_bytes(b"@r\nACGT\n+\nIIII\n")
    env.tracker.full_scan(Matcher())
    env.folder.rename(tmp_path / "unmounted")
    os.unlink(theirs)
    found = env.tracker.full_scan(Matcher())
    assert found.files == 0
    assert env.state(mine) == "seen" and env.state(theirs) == "vanished"


def test_full_scan_stops_early_when_asked(env: Env) -> None:
    """A scan with stop set (shutdown) records nothing more and sweeps nothing."""
    gone = env.write("gone.fastq")
    env.tracker.observe(gone)
    os.unlink(gone)
    new = env.write("new.fastq")
    stop = threading.Event()
    stop.set()
    found = env.tracker.full_scan(Matcher(), stop=stop)
    assert found.files == 0 and found.queued == []
    assert env.state(gone) == "seen" and env.state(new) is None


def test_a_flood_is_observed_in_batches_and_all_reported(env: Env) -> None:
    """More files than one batch settle at once: every one is queued and reported by run_due."""
    paths = [env.write(f"f{i:03d}.fastq") for i in range(BATCH + 5)]
    env.tracker.full_scan(Matcher())
    assert sorted(env.settle(paths[0])) == sorted(paths)


# -- the same file under a new path, and what a missing file means (issue 10, defect 10) ----------

def _upload(env: Env, path: str, sample_id: str = "0123456789abcdef") -> None:
    """The file's version, seen, queued and confirmed as a worker would leave it."""
    env.tracker.observe(path)
    assert env.settle(path) == [path]
    row = env.store.latest_for_path(path)
    env.store.mark_done(row.id, sample_id=sample_id, md5="d41d8cd98f00b204e9800998ecf8427e")


def test_a_done_file_moved_to_an_archive_folder_is_recorded_done_not_queued(env: Env) -> None:
    """A done file renamed into another folder of the share is done under its new path, with the same
    sample id and MD5, and a note saying where it came from; it is never `seen` or queued again."""
    path = env.write("a.fastq")
    _upload(env, path)
    (env.folder / "archive").mkdir()
    new = str(env.folder / "archive" / "a.fastq")
    os.rename(path, new)
    with capture_logs() as logs:
        env.tracker.observe(new)
        env.tracker.observe(path)
    assert env.settle(new) == []
    [row] = env.rows(new)
    assert (row.state, row.sample_id, row.md5) == ("done", "0123456789abcdef", "d41d8cd98f00b204e9800998ecf8427e")
    assert path in row.error and "not uploaded again" in row.error
    assert env.state(path) == "done"          # the old version keeps its entry
    assert [e["event"] for e in logs if e["event"] == "file.moved"] == ["file.moved"]


def test_a_copy_of_a_done_file_is_a_new_version(env: Env) -> None:
    """A copy (same bytes and mtime, another inode) is no move: it is seen and queued as usual."""
    path = env.write("a.fastq")
    _upload(env, path)
    copy = str(env.folder / "b.fastq")
    with open(path, "rb") as src, open(copy, "wb") as dst:
        dst.write(src.read())
    st = os.stat(path)
    os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns))
    env.tracker.observe(copy)
    assert env.settle(copy) == [copy]


def test_a_file_seen_under_its_new_name_while_its_old_name_uploads_is_not_queued(env: Env) -> None:
    """Renamed mid-upload but confirmed anyway (the rename came after the POST): the new name, `seen`
    meanwhile, is recorded done when it settles, not queued for a second sample."""
    path = env.write("a.fastq")
    env.tracker.observe(path)
    assert env.settle(path) == [path]
    old = env.store.claim_next("worker-0")
    new = str(env.folder / "renamed.fastq")
    os.rename(path, new)
    env.tracker.observe(new)
    assert env.state(new) == "seen"
    env.store.mark_done(old.id, sample_id="0123456789abcdef", md5="d41d8cd98f00b204e9800998ecf8427e")
    assert env.settle(new) == []
    assert env.store.latest_for_path(new).state == "done"
    assert env.store.latest_for_path(new).sample_id == "0123456789abcdef"


def test_a_missing_file_under_an_emptied_mount_point_is_not_vanished(env: Env, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A share unmounted from a mount point that stays behind (empty, on another device) is no deletion;
    the same file gone while its root's file system is mounted is."""
    (env.folder / "run").mkdir()
    path = env.write("run/a.fastq")
    env.tracker.observe(path)
    row = env.store.latest_for_path(path)
    os.unlink(path)
    (env.folder / "run").rmdir()
    other_dev = Identity(row.identity.dev + 1, row.identity.inode, row.identity.size, row.identity.mtime_ns)
    monkeypatch.setattr(env.store, "latest_for_path", lambda p: dataclasses.replace(row, identity=other_dev))
    env.tracker.observe(path)
    assert env.store.get(row.id).state == "seen"
    monkeypatch.undo()
    env.tracker.observe(path)
    assert env.store.get(row.id).state == "vanished"


def test_a_file_renamed_while_its_old_name_uploads_waits_for_that_upload(env: Env) -> None:
    """The new name of a file a worker is uploading under its old name is not queued while that upload
    runs: confirmed, it is recorded done; ended otherwise (vanished), the new name is queued."""
    for outcome in ("done", "vanished"):
        path = env.write(f"{outcome}.fastq", outcome.encode() * 10)
        env.tracker.observe(path)
        assert env.settle(path) == [path]
        old = env.store.claim_next("worker-0")
        new = str(env.folder / f"renamed-{outcome}.fastq")
        os.rename(path, new)
        env.tracker.observe(new)
        assert env.settle(new) == [] and env.state(new) == "seen"
        env.clock.advance(MARKER_RECHECK_S)
        assert env.tracker.run_due().queued == [] and env.state(new) == "seen"
        if outcome == "done":
            env.store.mark_done(old.id, sample_id="0123456789abcdef", md5="d41d8cd98f00b204e9800998ecf8427e")
        else:
            env.store.set_state(old.id, "vanished", error="its folder was renamed")
        env.clock.advance(MARKER_RECHECK_S)
        assert env.tracker.run_due().queued == ([] if outcome == "done" else [new])
        assert env.state(new) == ("done" if outcome == "done" else "queued")
