"""Live progress (issue 13, item 6): bytes sent, rate and ETA of an upload in flight, and the attempt and
reason of a step being retried, seen by `seqdrop status`/`show` in another process within seconds,
without a disk flush per update; a dead daemon's progress never shows.

The first tests drive daemon/operations/progress.py in this process (a fake clock where time matters);
the last ones run `seqdrop run` against the sandbox and read it with `seqdrop status --json` and `show`.
"""

from __future__ import annotations

import itertools
import json
import os
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from harness import Daemon, all_in, cli, fastq_bytes, status, wait_for, write_config

from daemon import redact
from daemon.errors import Transient
from daemon.operations import progress
from daemon.operations.progress import Board, Publisher, merge_json, progress_path, read_live
from daemon.queue.sqlite import SqliteStore
from daemon.sandbox import Fault, Sandbox

ROOT = Path(__file__).resolve().parents[1]
DEADLINE_S = 30.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Log:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def warning(self, event: str, **fields: Any) -> None:
        self.events.append((event, fields))

    exception = warning


# -- the board ------------------------------------------------------------------------------------
def test_the_board_tells_bytes_rate_eta_and_forgets_a_file_once_its_upload_ends() -> None:
    clock = Clock()
    board = Board(clock=clock)
    with board.uploading(7, total=10_000_000) as sent:
        board.step("init_upload", 1, None)
        assert board.snapshot()["7"]["phase"] == "init_upload"
        board.step("s3_post", 1, None)
        for _ in range(4):                      # 1 MB a second for 4 s
            clock.now += 1
            sent(1_000_000)
        p = board.snapshot()["7"]
        assert (p["bytes_sent"], p["total"], p["phase"], p["attempt"]) == (4_000_000, 10_000_000, "s3_post", 1)
        assert p["rate_bps"] == 1_000_000 and p["eta_s"] == 6 and p["retry_reason"] is None
        clock.now += 2 * progress.RATE_WINDOW_S  # nothing sent for a while: the rate falls, no ETA
        p = board.snapshot()["7"]
        assert p["rate_bps"] == 0 and p["eta_s"] is None
    assert board.snapshot() == {}


@pytest.fixture
def secret() -> Any:
    redact.register("s3cr3t-policy-value")
    yield "s3cr3t-policy-value"
    redact.reset()


def test_a_retried_step_shows_its_attempt_and_reason_and_a_new_post_starts_from_zero(secret: str) -> None:
    clock = Clock()
    board = Board(clock=clock)
    with board.uploading(3, total=5_000) as sent:
        board.step("s3_post", 1, None)
        sent(4_000)
        board.step("s3_post", 1, Transient("S3 answered HTTP 503 SlowDown: s3cr3t-policy-value\x1b[2J"))
        p = board.snapshot()["3"]
        assert p["attempt"] == 2 and p["rate_bps"] is None and p["eta_s"] is None   # waiting to try again
        assert "503 SlowDown" in p["retry_reason"]
        assert secret not in p["retry_reason"] and "\x1b" not in p["retry_reason"]
        board.step("s3_post", 2, None)          # the body is sent again from its first byte
        p = board.snapshot()["3"]
        assert (p["attempt"], p["bytes_sent"]) == (2, 0) and "503" in p["retry_reason"]
        board.step("confirm_upload", 1, None)   # a new step: the earlier reason is over
        p = board.snapshot()["3"]
        assert (p["phase"], p["attempt"], p["retry_reason"]) == ("confirm_upload", 1, None)
    board.step("confirm_upload", 2, None)       # outside an upload (another thread, `seqdrop upload`): ignored
    assert board.snapshot() == {}


def test_steps_call_tells_the_board_each_attempt_and_each_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hook in Steps.call: what a worker's board hears while a step is retried within one claim."""
    from daemon.upload import retrying
    from daemon.upload.steps import Steps
    monkeypatch.setattr(retrying, "_waits_enabled", False)
    heard: list[tuple[str, int, str | None]] = []
    steps = Steps(store=None, client=None, stop=threading.Event(), call_attempts=4)  # type: ignore[arg-type]
    steps.watch = lambda what, n, exc: heard.append((what, n, None if exc is None else str(exc)))
    answers = iter([Transient("HTTP 503", reason="http_503"), Transient("HTTP 503", reason="http_503"), "ok"])

    def flaky() -> str:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    log = type("L", (), {"warning": lambda *a, **k: None})()
    assert steps.call("s3_post", flaky, log) == "ok"
    assert heard == [("s3_post", 1, None), ("s3_post", 1, "HTTP 503"), ("s3_post", 2, None),
                     ("s3_post", 2, "HTTP 503"), ("s3_post", 3, None)]


# -- the publisher --------------------------------------------------------------------------------
def test_the_publisher_writes_at_most_once_per_interval_and_never_fsyncs(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    def no_fsync(fd: int) -> None:
        raise AssertionError("the publisher flushed to disk")
    monkeypatch.setattr(os, "fsync", no_fsync)
    monkeypatch.setattr(os, "fdatasync", no_fsync)
    writes: list[float] = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (writes.append(clock.now), real_replace(a, b)))
    clock = Clock()
    board = Board(clock=clock)
    path = tmp_path / "p.json"
    pub = Publisher(board, str(path), queue_path=str(tmp_path / "q.sqlite3"), log=Log(), clock=clock,
                    interval_s=1.0, heartbeat_s=2.0)
    assert not pub.publish() and not path.exists()     # nothing in flight, nothing ever written: idle costs nothing
    with board.uploading(1, total=10**9) as sent:
        board.step("s3_post", 1, None)
        for _ in range(20):                             # a change every 0.25 s for 5 s
            sent(1000)
            clock.now += 0.25
            pub.publish()
        assert len(writes) == 5 and all(b - a >= 1.0 for a, b in itertools.pairwise(writes))
        doc = json.loads(path.read_text())
        assert doc["pid"] == os.getpid() and doc["files"]["1"]["bytes_sent"] >= 17_000
        clock.now += 1
        assert pub.publish() and json.loads(path.read_text())["files"]["1"]["bytes_sent"] == 20_000
        del writes[:]
        for _ in range(16):                             # nothing changes for 4 s: a heartbeat every 2 s only
            clock.now += 0.25
            pub.publish()
        assert len(writes) == 2
    clock.now += 1
    assert pub.publish() and json.loads(path.read_text())["files"] == {}   # the upload ended: said once
    clock.now += 5
    assert not pub.publish()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.json"]        # no temporary file left


def test_the_publisher_thread_keeps_its_interval_and_removes_its_file(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    fsyncs: list[int] = []
    monkeypatch.setattr(os, "fsync", fsyncs.append)
    writes: list[float] = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (writes.append(time.monotonic()), real_replace(a, b)))
    board = Board()
    path = tmp_path / "p.json"
    pub = Publisher(board, str(path), queue_path=str(tmp_path / "q.sqlite3"), log=Log(), interval_s=0.2)
    pub.start()
    try:
        with board.uploading(1, total=10**9) as sent:
            board.step("s3_post", 1, None)

            def four_writes() -> bool:        # changes as fast as they come, until the thread wrote 4 times
                sent(1)
                return len(writes) >= 4
            wait_for(four_writes, 10, "four writes", interval_s=0.001)
    finally:
        pub.close()
    assert all(b - a >= 0.2 - 0.01 for a, b in itertools.pairwise(writes)), writes
    assert fsyncs == [] and not path.exists()


def test_a_write_that_fails_is_logged_once_and_costs_nothing(tmp_path: Path) -> None:
    clock, log = Clock(), Log()
    board = Board(clock=clock)
    pub = Publisher(board, str(tmp_path / "gone" / "p.json"), queue_path=str(tmp_path / "q"), log=log, clock=clock)
    with board.uploading(1, total=10):
        for _ in range(3):
            clock.now += 5
            board.step("s3_post", 1, None)
            assert not pub.publish()
    assert [e for e, _ in log.events] == ["progress.write_failed"]


def test_the_file_goes_to_the_runtime_directory_when_systemd_gives_one(tmp_path: Path) -> None:
    queue = str(tmp_path / "state" / "queue.sqlite3")
    assert progress_path(queue, {}) == queue + ".progress.json"
    run = progress_path(queue, {"RUNTIME_DIRECTORY": "/run/seqdrop:/run/other"})
    assert os.path.dirname(run) == "/run/seqdrop"
    assert run != progress_path(queue + "2", {"RUNTIME_DIRECTORY": "/run/seqdrop"})   # two daemons, two files
    unit = (ROOT / "systemd" / "seqdrop.service").read_text()
    assert "\nRuntimeDirectory=seqdrop\n" in unit and "\nRuntimeDirectoryMode=0700\n" in unit


# -- the reader -----------------------------------------------------------------------------------
ENTRY = {"bytes_sent": 5, "total": 10, "rate_bps": 2, "eta_s": 3, "phase": "s3_post", "attempt": 1,
         "retry_reason": None}


@pytest.fixture
def queue(tmp_path: Path) -> Any:
    """A queue whose lock this process holds, as `seqdrop run` does, naming a progress file."""
    store = SqliteStore(str(tmp_path / "queue.sqlite3"))
    store.lock_exclusive()
    store.set_meta(progress.META_KEY, str(tmp_path / "queue.sqlite3.progress.json"))
    yield store
    store.close()


def publish(store: Any, **changes: Any) -> None:
    doc = {"pid": os.getpid(), "queue": os.path.realpath(store.path), "written_at": time.time(),
           "files": {"4": ENTRY}, **changes}
    Path(store.get_meta(progress.META_KEY)).write_text(json.dumps(doc))


def test_a_fresh_board_of_the_lock_holder_is_read_and_a_stale_one_is_ignored(queue: Any) -> None:
    assert read_live(queue) == {}                       # nothing published yet
    publish(queue)
    assert read_live(queue) == {4: ENTRY}
    publish(queue, written_at=time.time() - progress.STALE_S - 1)
    assert read_live(queue) == {}                       # a daemon that stopped publishing (hung, gone)
    publish(queue, queue="/elsewhere/queue.sqlite3")
    assert read_live(queue) == {}                       # another queue's daemon
    publish(queue, files={"4": {**ENTRY, "url": "https://s3/?X-Amz-Signature=x"}, "x": {}})
    assert read_live(queue) == {4: ENTRY}               # only the public keys, only file ids
    Path(queue.get_meta(progress.META_KEY)).write_text('{"pid": ')
    assert read_live(queue) == {}                       # torn or garbled: nothing, no traceback


def test_a_board_whose_writer_no_longer_holds_the_queue_lock_is_ignored(queue: Any, tmp_path: Path) -> None:
    publish(queue)
    reader = SqliteStore(queue.path, readonly=True)
    try:
        assert read_live(reader) == {4: ENTRY}
        queue.close()                                   # the daemon is gone: its lock with it
        assert read_live(reader) == {}
        assert not progress.holds_lock(os.getpid(), queue.path)
    finally:
        reader.close()


def test_merge_json_adds_progress_to_uploading_entries_only() -> None:
    up = json.dumps({"id": 4, "path": "/w/ä.fastq", "state": "uploading"}, separators=(",", ":"), ensure_ascii=False)
    done = json.dumps({"id": 5, "path": "/w/b.fastq", "state": "done"}, separators=(",", ":"))
    other = json.dumps({"id": 40, "path": "/w/c.fastq", "state": "uploading"}, separators=(",", ":"))
    merged = merge_json([up, done, other], {4: ENTRY, 5: ENTRY})
    assert json.loads(merged[0]) == {**json.loads(up), "progress": ENTRY}
    assert merged[1:] == [done, other]
    assert merge_json([up], {}) == [up]


def test_describe_reads_as_a_sentence() -> None:
    text = progress.describe({**ENTRY, "bytes_sent": 2_500_000, "total": 10_000_000, "rate_bps": 1_250_000,
                              "eta_s": 6})
    assert text == "sending 2.5 of 10.0 MB (25 %), 1.25 MB/s, about 6 s left"
    text = progress.describe({**ENTRY, "phase": "confirm_upload", "attempt": 3, "retry_reason": "HTTP 503\nx"})
    assert text == "confirming, confirm_upload attempt 3, retrying after: HTTP 503\\nx"


# -- through the real daemon ----------------------------------------------------------------------
def uploading_progress(config: Path, name: str) -> dict[str, Any] | None:
    """The progress `seqdrop status --json` shows for the file named name, if it shows any."""
    for f in status(config)["files"]:
        if os.path.basename(f["path"]) == name and "progress" in f:
            assert f["state"] == "uploading"
            return f["progress"]
    return None


def test_status_in_another_process_shows_bytes_rate_and_eta_growing(tmp_path: Path, sandbox: Sandbox,
                                                                      watch_dir: Path) -> None:
    """2 Mbit/s in 64 KiB blocks: a 3.5 MB POST takes about 14 s; a status every second or so sees it grow.
    RUNTIME_DIRECTORY is the daemon's alone (as under systemd): status finds the file through the queue."""
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    path = watch_dir / "big.fastq"
    path.write_bytes(fastq_bytes(3_500_000, seed=31))
    size = path.stat().st_size
    cfg = write_config(tmp_path, watch=[watch_dir], api_url=sandbox.api_url, max_mbps=2, block_size=65536)
    with Daemon(cfg, env={"RUNTIME_DIRECTORY": str(runtime)}) as d:
        d.wait_ready()
        first = wait_for(lambda: (p := uploading_progress(cfg, "big.fastq")) and p["bytes_sent"] > 0 and p,
                         DEADLINE_S, lambda: f"progress with bytes sent\n{d.log_tail()}", interval_s=0.2)
        assert first["phase"] == "s3_post" and first["total"] == size and first["attempt"] == 1
        later = wait_for(lambda: (p := uploading_progress(cfg, "big.fastq")) and p["bytes_sent"] > first["bytes_sent"]
                         and p["rate_bps"] and p, DEADLINE_S, "more bytes and a rate", interval_s=0.2)
        assert 50_000 < later["rate_bps"] < 1_000_000                       # about 250 kB/s
        assert isinstance(later["eta_s"], int) and later["eta_s"] > 0
        [published] = list(runtime.iterdir())
        assert stat.S_IMODE(published.stat().st_mode) == 0o600
        assert "upload_url" not in published.read_text() and "policy" not in published.read_text()
        text = cli(cfg, "status").stdout
        assert "big.fastq" in text and "sending" in text and " MB/s" in text, text
        shown = cli(cfg, "show", str(path)).stdout
        assert "right now     sending" in shown, shown
        [version] = json.loads(cli(cfg, "show", str(path), "--json").stdout)
        assert version["progress"]["phase"] == "s3_post" and version["progress"]["total"] == size
        files = d.wait_files(all_in("done", ["big.fastq"]), DEADLINE_S, "big.fastq done")
        assert "progress" not in files[0]
        assert d.terminate() == 0
    assert list(runtime.iterdir()) == []                                   # removed at shutdown


def test_status_shows_the_attempt_and_reason_of_an_s3_step_being_retried(tmp_path: Path, sandbox: Sandbox,
                                                                          watch_dir: Path) -> None:
    """S3 answers 503 to every POST: within seconds status shows the step's attempt and S3's reason (before
    this, the file showed `uploading`, 0 tries and no error for the whole back-off)."""
    sandbox.add_fault(Fault(target="s3", kind="status", status=503, times=None))
    (watch_dir / "r.fastq").write_bytes(fastq_bytes(50_000, seed=32))
    cfg = write_config(tmp_path, watch=[watch_dir], api_url=sandbox.api_url)
    with Daemon(cfg) as d:
        d.wait_ready()
        started = time.monotonic()
        p = wait_for(lambda: (p := uploading_progress(cfg, "r.fastq")) and p["attempt"] >= 2 and p,
                     DEADLINE_S, lambda: f"a retried attempt\n{d.log_tail()}", interval_s=0.2)
        assert time.monotonic() - started < 15
        assert p["phase"] == "s3_post" and "503" in p["retry_reason"] and "SlowDown" in p["retry_reason"]
        text = wait_for(lambda: (t := cli(cfg, "status").stdout) and "retrying after: S3 answered HTTP 503" in t
                        and t, DEADLINE_S, "the retry in the text view")
        assert "s3_post attempt" in text
        sandbox.clear_faults()
        d.wait_files(all_in("done", ["r.fastq"]), DEADLINE_S, "r.fastq done once S3 answers")
        assert d.terminate() == 0


def test_a_killed_daemons_progress_never_shows(tmp_path: Path, sandbox: Sandbox, watch_dir: Path) -> None:
    """kill -9 mid-upload: the file it published is still fresh, but no process holds the queue's lock."""
    (watch_dir / "k.fastq").write_bytes(fastq_bytes(2_500_000, seed=33))
    cfg = write_config(tmp_path, watch=[watch_dir], api_url=sandbox.api_url, max_mbps=2, block_size=65536)
    with Daemon(cfg) as d:
        d.wait_ready()
        wait_for(lambda: uploading_progress(cfg, "k.fastq"), DEADLINE_S, "progress shown")
        d.kill()
    [f] = status(cfg)["files"]
    assert f["state"] == "uploading" and "progress" not in f                 # the claim, left by the kill
    published = Path(str(tmp_path / "state" / "queue.sqlite3") + ".progress.json")
    assert time.time() - json.loads(published.read_text())["written_at"] < progress.STALE_S   # fresh all along
