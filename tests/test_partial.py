"""A writer that pauses longer than settle_seconds at a record boundary (issue 13, item 1; Must show 3).

On a local folder the close events keep the file unfinished while the writer holds it: one sample, the
whole file. On a polled folder only settle time can help: the first half is confirmed as a sample, the
whole file as a second, and the prefix check flags the first `partial` with a notification naming both.
Through the real daemon (`seqdrop run`, real inotify on tmp_path, the sandbox, a loopback webhook), then
the parts one by one: the watcher's writing set, the tracker's hook, FormDataBody's md5_at, the check.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import structlog
from harness import (
    Daemon,
    PipelineDriver,
    all_in,
    by_name,
    cli,
    confirmed,
    fastq_bytes,
    wait_for,
    write_config,
)
from test_webhook import Receiver
from watchdog.observers.inotify_c import InotifyConstants as C
from watchdog.observers.inotify_c import InotifyEvent

from daemon.detection.tracker import WRITING_NOTE, Tracker
from daemon.detection.watcher import Matcher, Watcher
from daemon.detection.writing import WritingSet
from daemon.operations.email import compose
from daemon.queue.sqlite import SqliteStore
from daemon.sandbox import Sandbox
from daemon.upload import retrying
from daemon.upload.client import OneCodexClient
from daemon.upload.formdata import FormDataBody
from daemon.upload.pipeline import Pipeline

SETTLE_S = 1.0
DEADLINE_S = 30.0


def halves(size: int, seed: int) -> tuple[bytes, bytes]:
    """A FASTQ file cut at the record boundary nearest its middle."""
    data = fastq_bytes(size, seed=seed)
    cut = data.index(b"\n@", len(data) // 2) + 1
    return data[:cut], data[cut:]


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


# -- Must show 3, through the real daemon ---------------------------------------------------------

def test_a_writer_pausing_on_a_local_folder_gives_one_sample_of_the_whole_file(
        tmp_path: Path, sandbox: Sandbox, watch_dir: Path) -> None:
    """The writer holds the file open and pauses 2 × settle_seconds at a record boundary: the file stays
    `seen` ("still open for writing"), nothing is sent, and after the close ONE sample holds the whole
    file. (main before this change: the half was confirmed after settle_seconds, then the whole again.)"""
    first, rest = halves(300_000, seed=11)
    cfg = write_config(tmp_path, watch=[watch_dir], api_url=sandbox.api_url, settle_s=SETTLE_S)
    path = watch_dir / "p.fastq"
    with Daemon(cfg) as d:
        d.wait_ready()
        with open(path, "wb", buffering=0) as f:
            f.write(first)
            paused = time.monotonic()
            d.wait_files(lambda fs: any(x["error"] == WRITING_NOTE for x in fs), DEADLINE_S,
                         "p.fastq held back as still open for writing")
            # The scenario's pause (not a synchronisation): settle time alone would have queued it by now.
            time.sleep(max(0.0, 2 * SETTLE_S - (time.monotonic() - paused)))
            assert sandbox.samples() == [] and [x["state"] for x in d.files()] == ["seen"]
            f.write(rest)
        files = d.wait_files(all_in("done", ["p.fastq"]), DEADLINE_S, "p.fastq done")
        assert d.terminate() == 0
    assert [x["state"] for x in by_name(files)["p.fastq"]] == ["done"]
    samples = sandbox.samples()
    assert len(samples) == 1 and samples[0]["state"] == "confirmed"
    assert samples[0]["md5"] == hashlib.md5(first + rest).hexdigest() and samples[0]["size"] == len(first + rest)


def test_a_writer_pausing_on_a_polled_folder_has_the_earlier_sample_flagged_partial(
        tmp_path: Path, sandbox: Sandbox, watch_dir: Path, receiver: Receiver) -> None:
    """On a polled folder (no close events) the half is confirmed as a sample while the writer pauses;
    the whole file becomes a second sample, and the first is flagged `partial` in status (its sentence
    names both sample ids and the fix), with exactly one sample_partial notification."""
    first, rest = halves(300_000, seed=12)
    cfg = write_config(tmp_path, watch=[{"path": watch_dir, "polling": True}], api_url=sandbox.api_url,
                       settle_s=SETTLE_S, poll_interval_s=0.2,
                       extra=f'\n[notify]\nwebhook_url = "{receiver.url}"\nformat = "json"\n')
    path = watch_dir / "p.fastq"
    with Daemon(cfg) as d:
        d.wait_ready()
        with open(path, "wb", buffering=0) as f:
            f.write(first)
            wait_for(lambda: confirmed(sandbox), DEADLINE_S, "the half confirmed while the writer pauses")
            f.write(rest)
        files = d.wait_files(lambda fs: [x["state"] for x in by_name(fs).get("p.fastq", [])] == ["done", "done"],
                             DEADLINE_S, "both versions of p.fastq done")
        bodies = receiver.wait_for(1)
        text = cli(cfg, "status").stdout
        shown = cli(cfg, "show", by_name(files)["p.fastq"][0]["sample_id"]).stdout
        assert d.terminate() == 0
    part, whole = by_name(files)["p.fastq"]
    by_id = {s["sample_id"]: s for s in confirmed(sandbox)}
    assert by_id[part["sample_id"]]["md5"] == hashlib.md5(first).hexdigest()
    assert by_id[whole["sample_id"]]["md5"] == hashlib.md5(first + rest).hexdigest()
    assert part["error"].startswith("partial: ")
    assert f"uploaded again whole as sample {whole['sample_id']}" in part["error"]
    assert f"delete sample {part['sample_id']} in One Codex" in part["error"]
    assert whole["error"] is None
    assert "partial: " in text and part["sample_id"] in text
    assert f"delete sample {part['sample_id']} in One Codex" in shown
    assert [b["event"] for b in receiver.bodies] == ["sample_partial"]
    assert bodies[0]["sample_id"] == part["sample_id"] and bodies[0]["whole_sample_id"] == whole["sample_id"]
    assert bodies[0]["path"] == str(path)


# -- the watcher's writing set --------------------------------------------------------------------

def test_the_writing_set_follows_modify_and_close_and_forgets_other_files() -> None:
    w = WritingSet(max_paths=3)
    w.event("/w/a.fastq", C.IN_MODIFY)
    assert w.holds("/w/a.fastq")
    w.event("/w/a.fastq", C.IN_ATTRIB)                    # touch: still open
    assert w.holds("/w/a.fastq")
    w.event("/w/a.fastq", C.IN_CLOSE_WRITE)
    assert not w.holds("/w/a.fastq") and len(w) == 0
    for gone in (C.IN_DELETE, C.IN_MOVED_FROM, C.IN_MOVED_TO, C.IN_CREATE):
        w.event("/w/b.fastq", C.IN_MODIFY)
        w.event("/w/b.fastq", gone)
        assert not w.holds("/w/b.fastq"), gone
    for name in "cdef":                                  # memory is bounded: the oldest mark goes first
        w.event(f"/w/{name}.fastq", C.IN_MODIFY)
    assert len(w) == 3 and not w.holds("/w/c.fastq") and w.holds("/w/f.fastq")
    w.event("/x/g.fastq", C.IN_MODIFY)
    w.forget_under("/w")
    assert len(w) == 1 and w.holds("/x/g.fastq")
    w.clear()
    assert len(w) == 0


@pytest.fixture
def watcher(tmp_path: Path):
    made: list[Watcher] = []

    def make(polling: bool = False, hints: list[str] | None = None) -> Watcher:
        root = tmp_path / ("polled" if polling else "local")
        root.mkdir()
        w = Watcher([str(root)], matcher=Matcher(), on_hint=(hints if hints is not None else []).append,
                    polling=polling, poll_interval_s=0.1)
        w.start()
        made.append(w)
        return w
    yield make
    for w in made:
        w.stop()


def test_the_watcher_marks_a_file_held_open_for_writing_until_it_is_closed(tmp_path: Path, watcher) -> None:
    w = watcher()
    path = tmp_path / "local" / "a.fastq"
    with open(path, "wb", buffering=0) as f:
        f.write(b"@r1\nACGT\n+\nIIII\n")
        wait_for(lambda: w.writing(str(path)), 5, "a.fastq marked as being written")
        other = tmp_path / "local" / "notes.txt"      # not a matching name: never tracked
        other.write_text("x")
    wait_for(lambda: not w.writing(str(path)), 5, "the mark dropped at close")
    assert not w.writing(str(other))


def test_a_writer_killed_without_closing_is_closed_by_the_kernel(tmp_path: Path, watcher) -> None:
    """kill -9 leaves no chance to close: the kernel closes the descriptor at exit (IN_CLOSE_WRITE)."""
    w = watcher()
    path = tmp_path / "local" / "k.fastq"
    code = ("import sys, time\nf = open(sys.argv[1], 'wb', buffering=0)\nf.write(b'@r\\nAC\\n+\\nII\\n')\n"
            "print('written', flush=True)\ntime.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "written"
        wait_for(lambda: w.writing(str(path)), 5, "k.fastq marked while its writer lives")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    wait_for(lambda: not w.writing(str(path)), 5, "the mark dropped when the writer died")


def test_lost_events_forget_every_mark(tmp_path: Path, watcher) -> None:
    """A kernel queue overflow may have dropped a close: the marks go, settle time decides again."""
    w = watcher()
    path = tmp_path / "local" / "o.fastq"
    with open(path, "wb", buffering=0) as f:
        f.write(b"@r1\nACGT\n+\nIIII\n")
        wait_for(lambda: w.writing(str(path)), 5, "o.fastq marked")
        w._inotify.handle_event(InotifyEvent(-1, C.IN_Q_OVERFLOW, 0, b""))   # as test_watcher simulates it
        assert not w.writing(str(path))
        f.write(b"@r2\nACGT\n+\nIIII\n")                                   # the next write marks it again
        wait_for(lambda: w.writing(str(path)), 5, "o.fastq marked again")


def test_a_polled_root_marks_nothing(tmp_path: Path, watcher) -> None:
    seen: list[str] = []            # the poller's hints tell when it has looked at the file
    w = watcher(polling=True, hints=seen)
    path = tmp_path / "polled" / "a.fastq"
    with open(path, "wb", buffering=0) as f:
        f.write(b"@r1\nACGT\n+\nIIII\n")
        wait_for(lambda: str(path) in seen, 5, "the poller saw a.fastq")
        assert not w.writing(str(path))


# -- the tracker's hook -----------------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_tracker_keeps_a_file_held_open_seen_whatever_its_settle_time(tmp_path: Path) -> None:
    clock = Clock()
    store = SqliteStore(str(tmp_path / "queue.sqlite3"), clock=clock)
    held: set[str] = set()
    tracker = Tracker(store=store, settle_s=30.0, log=structlog.get_logger(), clock=clock)
    tracker.writing = lambda p: p in held
    path = tmp_path / "a.fastq"
    path.write_bytes(b"@r1\nACGT\n+\nIIII\n")
    held.add(str(path))
    tracker.observe(str(path))
    for _ in range(3):                                    # an hour of silence: still not finished
        clock.now += 1200
        assert tracker.run_due().queued == []
    row = store.latest_for_path(str(path))
    assert row is not None and row.state == "seen" and row.error == WRITING_NOTE
    assert tracker.next_due() is not None                 # looked at again: the close hint is not the only way
    held.clear()                                          # the close event, then its hint
    assert tracker.observe(str(path)) is True
    assert store.latest_for_path(str(path)).state == "queued"
    store.close()


# -- FormDataBody's md5_at --------------------------------------------------------------------------

@pytest.mark.parametrize("at", [0, 1, 4095, 4096, 4097, 8192, 9999, 10_000, 10_001, None])
def test_md5_at_is_the_md5_of_exactly_the_first_bytes(tmp_path: Path, at: int | None) -> None:
    data = os.urandom(10_000)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    body = FormDataBody([("key", "k")], path=str(path), filename="f.bin", size=len(data), block_size=4096,
                        md5_at=at)
    sent = b"".join(body)
    assert data in sent and len(sent) == len(body)
    assert body.md5.hexdigest() == hashlib.md5(data).hexdigest()     # the whole file's MD5 is unchanged
    expected = None if at is None or at > len(data) else hashlib.md5(data[:at]).hexdigest()
    assert body.md5_at_hex == expected
    b"".join(body)                                                   # sent again: noted afresh
    assert body.md5_at_hex == expected


# -- the prefix check in the pipeline --------------------------------------------------------------

KEY = "sk_test_0123456789abcdef"


class Driver(PipelineDriver):
    def __init__(self, sb: Sandbox, tmp: Path) -> None:
        self.sb, self.tmp = sb, tmp
        self.store = SqliteStore(str(tmp / "queue.sqlite3"))
        self.events: list[tuple[str, dict]] = []
        client = OneCodexClient(sb.api_url, KEY, connect_timeout_s=2, read_timeout_s=5)
        self.pipeline = Pipeline(store=self.store, client=client, log=structlog.get_logger(), block_size=4096,
                                 emit=lambda event, **fields: self.events.append((event, fields)))

    def upload(self, data: bytes) -> int:
        file_id = self.queue(self.file("p.fastq", data))
        assert self.drive(file_id) == "done"
        return file_id


@pytest.fixture
def driver(tmp_path: Path):
    retrying.set_waits(False)
    with Sandbox(api_keys=(KEY,)) as sb:
        d = Driver(sb, tmp_path)
        yield d
        d.store.close()
    retrying.set_waits(True)


def test_an_earlier_version_that_is_a_prefix_is_flagged_partial(driver: Driver) -> None:
    first, rest = halves(50_000, seed=3)
    old = driver.upload(first)
    new = driver.upload(first + rest)
    old_row, new_row = driver.store.get(old), driver.store.get(new)
    assert old_row.state == "done" and old_row.flags == "partial"
    assert old_row.error == (f"partial: its {len(first)} bytes were the start of a later version of this file "
                             f"(id {new}, {len(first + rest)} bytes: the writer paused longer than "
                             f"settle_seconds), uploaded again whole as sample {new_row.sample_id}; delete sample "
                             f"{old_row.sample_id} in One Codex")
    assert new_row.flags is None and new_row.error is None
    partial = [f for e, f in driver.events if e == "sample_partial"]
    assert partial == [{"path": new_row.path, "sample_id": old_row.sample_id,
                        "whole_sample_id": new_row.sample_id, "error": old_row.error}]


def test_a_shorter_earlier_version_with_other_bytes_is_not_flagged(driver: Driver) -> None:
    first, rest = halves(50_000, seed=4)
    other = fastq_bytes(len(first), seed=5)[:len(first)]
    old = driver.upload(other)
    driver.upload(first + rest)
    assert driver.store.get(old).flags is None
    assert [e for e, _ in driver.events if e == "sample_partial"] == []


def test_the_partial_mail_names_both_samples_and_the_fix() -> None:
    mail = compose({"event": "sample_partial", "host": "h", "time": "t", "path": "/srv/run1/p.fastq",
                    "sample_id": "part0123", "whole_sample_id": "whole456", "error": "partial: ..."},
                   sender="seqdrop@lab.example.org", recipients=["it@lab.example.org"])
    assert mail["Subject"] == "[seqdrop h] Partial sample: p.fastq"
    body = mail.get_content()
    assert "Sample:  part0123" in body and "whole_sample_id: whole456" in body
    assert "Delete the partial sample" in body
