"""daemon.queue.journal: durable, private, append-only records that survive a torn write."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import threading
from datetime import datetime, timezone

import pytest

import daemon
from daemon import redact
from daemon.queue.base import SHARED_DEV, Identity
from daemon.queue.journal import FILE_ENDED, Journal, journal_path, read_records

KEY = "journal-test-api-key-0123"
T0 = 1_900_000_000.0          # 2030-03-17T17:46:40Z


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def journal(tmp_path, clock):
    return Journal(str(tmp_path / "state" / "journal.jsonl"), host="seq-pc", clock=clock)


def ended(journal: Journal, n: int, **kw):
    defaults = dict(path=f"/srv/run/s{n}_R1.fastq.gz", identity=Identity(2049, 1000 + n, 10 * n + 1, 7 * 10**18 + n),
                    state="done", md5=f"{n:032x}", sample_id=f"{n:016x}", init_at=T0 - 3, posted_at=T0 - 2,
                    confirmed_at=T0 - 1)
    defaults.update(kw)
    return journal.file_ended(**defaults)


@pytest.fixture(autouse=True)
def clean_registry():
    redact.reset()
    yield
    redact.reset()


def test_round_trip_keeps_every_field(journal):
    """A file_ended record reads back with its identity, result, times, host and version."""
    written = ended(journal, 1, run="230101_M001", tags=["a"], lane=3)
    [record] = list(journal.records())
    assert record == written
    assert record == {
        "v": 1, "event": FILE_ENDED, "time": "2030-03-17T17:46:40.000Z", "state": "done",
        "path": "/srv/run/s1_R1.fastq.gz", "device": 2049, "inode": 1001, "size": 11, "mtime_ns": 7 * 10**18 + 1,
        "md5": f"{1:032x}", "sample_id": f"{1:016x}", "error": None, "init_at": "2030-03-17T17:46:37.000Z",
        "posted_at": "2030-03-17T17:46:38.000Z", "confirmed_at": "2030-03-17T17:46:39.000Z",
        "sample_name": None, "project": None, "tags": ["a"], "run": "230101_M001", "lane": 3,
        "host": "seq-pc", "version": daemon.__version__}


def test_records_filter_by_time_and_event(journal, clock):
    """since is inclusive, until exclusive; epoch seconds, aware datetimes and ISO text all work."""
    for n in range(5):
        clock.now = T0 + 60 * n
        ended(journal, n)
    journal.append("queue.rebuilt", restored=5)
    times = [r["inode"] for r in journal.records(since=T0 + 60, until=T0 + 180)]
    assert times == [1001, 1002]
    aware = datetime.fromtimestamp(T0 + 120, timezone.utc)
    assert [r["inode"] for r in journal.records(since=aware, event=FILE_ENDED)] == [1002, 1003, 1004]
    assert [r["inode"] for r in journal.records(until="2030-03-17T17:47:40Z")] == [1000]
    assert [r["restored"] for r in journal.records(event="queue.rebuilt")] == [5]


def test_new_journal_is_private_even_with_a_permissive_umask(journal):
    """The journal is created mode 0600 whatever the umask."""
    old = os.umask(0)
    try:
        ended(journal, 1)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(journal.path).st_mode) == 0o600


def test_existing_readable_journal_is_made_private(journal):
    """A journal someone left 0644 is 0600 after the next append."""
    ended(journal, 1)
    os.chmod(journal.path, 0o644)
    ended(journal, 2)
    assert stat.S_IMODE(os.stat(journal.path).st_mode) == 0o600


def test_each_record_is_fsynced_after_its_write_and_a_new_file_fsyncs_its_directory(journal, monkeypatch):
    """write → fsync(file) → fsync(directory) on creation; later appends: write → fsync(file)."""
    events = []
    real_write, real_fsync = os.write, os.fsync

    def write(fd, data):
        events.append("write")
        return real_write(fd, data)

    def fsync(fd):
        events.append("fsync-dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync-file")
        return real_fsync(fd)

    monkeypatch.setattr(os, "write", write)
    monkeypatch.setattr(os, "fsync", fsync)
    ended(journal, 1)
    assert events == ["write", "fsync-file", "fsync-dir"]
    events.clear()
    ended(journal, 2)
    assert events == ["write", "fsync-file"]


def test_a_failed_fsync_is_reported(journal, monkeypatch):
    """An fsync error (EIO) reaches the caller: the record is not known to be durable."""
    def failing(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(OSError):
        ended(journal, 1)


def test_power_cut_at_any_byte_loses_at_most_the_torn_line(tmp_path, clock):
    """Cut the file at every offset: the reader yields the whole lines before the cut, reports the
    torn one, and the next append is a whole record of its own."""
    source = Journal(str(tmp_path / "full.jsonl"), host="h", clock=clock)
    for n in range(3):
        ended(source, n)
    data = open(source.path, "rb").read()
    line_ends = [i + 1 for i, byte in enumerate(data) if byte == ord("\n")]
    for cut in range(len(data) + 1):
        path = tmp_path / f"cut{cut}.jsonl"
        path.write_bytes(data[:cut])
        whole = sum(1 for end in line_ends if end <= cut)
        torn = []
        got = [r["inode"] for r in read_records(str(path), on_bad_line=lambda n, raw: torn.append(n))]
        if cut == 0 or cut in line_ends:
            assert (got, torn) == ([1000 + n for n in range(whole)], [])
        elif cut + 1 in line_ends:      # only the newline is missing: a complete record
            assert (got, torn) == ([1000 + n for n in range(whole + 1)], [])
        else:
            assert (got, torn) == ([1000 + n for n in range(whole)], [whole + 1])
        ended(Journal(str(path), host="h", clock=clock), 99)
        after = [r["inode"] for r in read_records(str(path))]
        assert after == got + [1099]


def test_secrets_are_never_written(journal):
    """A server's echo of the API key (plain or basic-auth base64) in error is masked on disk."""
    redact.register(KEY)
    basic = base64.b64encode(f"{KEY}:".encode()).decode()
    ended(journal, 1, state="failed", sample_id=None, error=f"HTTP 400: bad key {KEY} (Basic {basic})")
    raw = open(journal.path, "rb").read()
    assert KEY.encode() not in raw and basic.encode() not in raw and basic.rstrip("=").encode() not in raw
    assert "[redacted]" in next(journal.records())["error"]


def test_file_names_are_kept_exactly(journal):
    """Paths skip the shape heuristics (a long random-looking name is data, not a secret)."""
    odd = "/srv/run/" + base64.b64encode(os.urandom(60)).decode().replace("/", "x") + ".fastq"
    ended(journal, 1, path=odd, run="Run\nwith\x1bescapes")
    record = next(journal.records())
    assert record["path"] == odd and record["run"] == "Run\nwith\x1bescapes"


def test_refuses_states_that_do_not_end_and_done_without_sample(journal):
    """Only ended states are journalled, and a done record must name its sample."""
    with pytest.raises(ValueError, match="ended"):
        ended(journal, 1, state="uploading")
    with pytest.raises(ValueError, match="sample_id"):
        ended(journal, 1, sample_id=None)
    assert not os.path.exists(journal.path)


def test_missing_journal_has_no_records(tmp_path):
    """Reading a journal that was never written yields nothing (not an error)."""
    assert list(read_records(str(tmp_path / "none.jsonl"))) == []


def test_journal_path_is_beside_the_queue(tmp_path):
    """The journal lives in the queue's directory."""
    assert journal_path(str(tmp_path / "q" / "queue.sqlite3")) == str(tmp_path / "q" / "journal.jsonl")


def test_threads_append_whole_lines(journal):
    """Many threads appending at once leave only whole, parseable lines."""
    def burst(t):
        for i in range(25):
            ended(journal, t * 100 + i)

    threads = [threading.Thread(target=burst, args=(t,)) for t in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    bad = []
    records = list(read_records(journal.path, on_bad_line=lambda n, raw: bad.append(raw)))
    assert not bad and len(records) == 150


def test_processes_append_whole_lines(tmp_path):
    """Separate processes (the daemon and a one-shot `seqdrop upload`) interleave whole lines."""
    path = str(tmp_path / "journal.jsonl")
    code = ("import sys\nfrom daemon.queue.journal import Journal\nfrom daemon.queue.base import Identity\n"
            "j = Journal(sys.argv[1], host='h')\nfor i in range(60):\n"
            "    j.file_ended(path='/x/' + sys.argv[2] * 300, identity=Identity(1, i, 1, 1), state='rejected',"
            " error='e' * 2000)\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, path, letter]) for letter in "abc"]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0]
    bad = []
    records = list(read_records(path, on_bad_line=lambda n, raw: bad.append(raw)))
    assert not bad and len(records) == 180
    assert {json.dumps(sorted(r)) for r in records} == {json.dumps(sorted(records[0]))}


def test_a_sample_record_names_the_version_its_step_and_its_sample(journal):
    """sample_saved writes sample.posted (or sample.initialized) with the version's identity; a record
    without a sample id is refused before anything is written."""
    ident = Identity(2049, 1001, 11, 7 * 10**18 + 1)
    journal.sample_saved(path="/srv/run/s1_R1.fastq.gz", identity=ident, step="posted",
                         sample_id="0123456789abcdef", posted=True, md5="d" * 32)
    with pytest.raises(ValueError):
        journal.sample_saved(path="/srv/run/s2.fastq", identity=ident, step="initialized", sample_id="",
                             posted=False)
    [record] = list(journal.records())
    assert record == {
        "v": 1, "event": "sample.posted", "time": "2030-03-17T17:46:40.000Z", "path": "/srv/run/s1_R1.fastq.gz",
        "device": 2049, "inode": 1001, "size": 11, "mtime_ns": 7 * 10**18 + 1, "step": "posted",
        "sample_id": "0123456789abcdef", "md5": "d" * 32, "init": None, "host": "seq-pc",
        "version": daemon.__version__}
    assert list(journal.records(event=FILE_ENDED)) == []


def test_a_shared_queue_version_is_recorded_with_the_device_this_host_sees(journal, tmp_path):
    """A PostgreSQL row has no device (SHARED_DEV): the records name the device and inode of the file at
    its path on this host while it is still that version; a file since changed or gone keeps -1."""
    kept, changed = tmp_path / "kept_R1.fastq", tmp_path / "changed_R1.fastq"
    for p in (kept, changed):
        p.write_bytes(b"@r\nACGT\n+\nIIII\n")
    st = os.stat(kept)
    shared = Identity(SHARED_DEV, 0, st.st_size, st.st_mtime_ns)
    ended(journal, 1, path=str(kept), identity=shared)
    ended(journal, 2, path=str(changed), identity=Identity(SHARED_DEV, 0, st.st_size + 1, st.st_mtime_ns))
    ended(journal, 3, path=str(tmp_path / "gone_R1.fastq"), identity=shared)
    journal.sample_ended(sample=1, state="done", name="kept", run=None, paired=False,
                         files=[{"path": str(kept), "identity": shared, "md5": "0" * 32, "role": "single"}],
                         sample_id="0" * 16, landing=None, init_at=None, posted_at={}, confirmed_at=None)
    first, second, third, sample = journal.records()
    assert (first["device"], first["inode"]) == (st.st_dev, st.st_ino)
    assert second["device"] == third["device"] == SHARED_DEV
    assert (sample["files"][0]["device"], sample["files"][0]["inode"]) == (st.st_dev, st.st_ino)
