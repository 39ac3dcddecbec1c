"""`seqdrop status` (filters, timestamps, the default view) and `seqdrop show`, through the real command line
against queues built with the store's own verbs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time

import pytest
from harness import PYTHON, ROOT, cli, daemon_env

from daemon.commands.status import parse_since
from daemon.queue.base import Identity
from daemon.queue.sqlite import SqliteStore

NOW = time.time()
DAY_S = 86400.0
STAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def setup(tmp_path):
    """A config naming a queue in tmp_path, and a store with a settable clock to fill it."""
    config = tmp_path / "seqdrop.toml"
    config.write_text(f'[queue]\npath = "{tmp_path}/q.sqlite3"\n')
    clock = Clock(NOW)
    store = SqliteStore(str(tmp_path / "q.sqlite3"), clock=clock)
    yield config, store, clock
    store.close()


def add(store, path, state="seen", *, inode=None, sample_id=None, error=None, size=100, mtime_ns=1):
    fid = store.add_seen(path, Identity(1, inode if inode is not None else hash(path) % 10**9, size, mtime_ns))
    if state == "done":
        store.mark_done(fid, sample_id=sample_id or f"{fid:016x}", md5="0" * 32, error=error)
    elif state != "seen":
        store.set_state(fid, state, error=error)
    return fid


def file_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if STAMP.search(ln)]


def test_default_view_shows_what_is_not_done_and_the_last_ten_done(setup):
    """30 done, 3 not done: the counts, the 3 and the 10 most recently done, each line with its time; a last
    line says how many were left out and how to see them."""
    config, store, clock = setup
    for i in range(30):
        clock.t = NOW - 3600 + i
        add(store, f"/srv/out/run1/d{i:02d}.fastq", "done")
    add(store, "/srv/out/run1/q.fastq", "queued", error="HTTP 503 (will try again in 30 s)")
    add(store, "/srv/out/run1/r.fastq", "rejected", error="record 2 (line 5): truncated")
    add(store, "/srv/out/run1/s.fastq")
    r = cli(config, "status")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert out.splitlines()[0] == "seen 1  queued 1  uploading 0  done 30  rejected 1  failed 0  vanished 0"
    lines = file_lines(out)
    assert len(lines) == 13, out
    assert [ln for ln in lines if " done " in ln][0].endswith("d20.fastq")       # the last ten: d20..d29
    assert any("rejected" in ln and ln.endswith("truncated") for ln in lines)
    assert time.strftime("%Y-%m-%d %H:%M", time.localtime(NOW - 3600 + 29)) in lines[9]
    assert "20 done files not shown" in out and "seqdrop status --state done" in out


def test_filters_by_state_run_since_and_limit(setup):
    """--state (repeated or comma-separated), --run (a name, a glob, a path), --since (2h, 3d, an ISO date)
    and --limit select files; the counts line stays the whole queue's."""
    config, store, clock = setup
    clock.t = NOW - 5 * DAY_S
    add(store, "/srv/out/240101_A/old.fastq", "done")
    add(store, "/srv/out/240101_A/oldfail.fastq", "failed", error="400: bad name")
    clock.t = NOW - 1800
    add(store, "/srv/out/240501_B/new1.fastq", "done")
    add(store, "/srv/out/240501_B/new2.fastq", "rejected", error="truncated")
    add(store, "/srv/out/240502_C/new3.fastq", "done")

    def names(*args: str) -> list[str]:
        r = cli(config, "status", *args)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("seen 0  queued 0  uploading 0  done 3  rejected 1  failed 1")
        return [re.search(r"/srv/out/\S+/(\S+\.fastq)", ln)[1] for ln in file_lines(r.stdout)]

    assert sorted(names("--state", "failed", "--state", "rejected")) == ["new2.fastq", "oldfail.fastq"]
    assert sorted(names("--state", "failed,rejected")) == ["new2.fastq", "oldfail.fastq"]
    assert sorted(names("--run", "240501_B")) == ["new1.fastq", "new2.fastq"]
    assert sorted(names("--run", "2405*")) == ["new1.fastq", "new2.fastq", "new3.fastq"]
    assert sorted(names("--run", "/srv/out/240101_A")) == ["old.fastq", "oldfail.fastq"]
    assert sorted(names("--since", "2h")) == ["new1.fastq", "new2.fastq", "new3.fastq"]
    assert sorted(names("--since", "1w", "--state", "done", "--run", "240101_*")) == ["old.fastq"]
    day = time.strftime("%Y-%m-%d", time.localtime(NOW - 2 * DAY_S))
    assert "old.fastq" not in names("--since", day)
    r = cli(config, "status", "--state", "done", "--limit", "2")
    assert len(file_lines(r.stdout)) == 2 and "1 more matching files not shown" in r.stdout
    assert "No file matches." in cli(config, "status", "--run", "nope").stdout


def test_json_keeps_its_shape_and_is_filtered_only_when_asked(setup):
    """--json: design.md's counts and files (every file, each with the contract's keys) and paused; with a
    filter only the matching files; a path with a newline, quotes and accents survives encoding."""
    config, store, _clock = setup
    odd = '/srv/out/run "1"\nlane\t2 ünï 日本.fastq'
    add(store, odd, "failed", error='HTTP 400: "bad"\nsecond line')
    add(store, "/srv/out/run1/a.fastq", "done", sample_id="28459508592a481c")
    store.set_meta("paused", {"reason": "API key rejected (HTTP 401)"})
    doc = json.loads(cli(config, "status", "--json").stdout)
    assert set(doc) == {"counts", "files", "samples", "paused"} and doc["paused"] == "API key rejected (HTTP 401)"
    assert doc["counts"]["failed"] == 1 and doc["counts"]["done"] == 1
    rows = {r.id: r for r in store.files()}
    assert doc["files"] == [rows[f["id"]].public() for f in doc["files"]] and len(doc["files"]) == 2
    assert doc["files"][0]["path"] == odd and doc["files"][0]["error"] == 'HTTP 400: "bad"\nsecond line'
    only = json.loads(cli(config, "status", "--json", "--state", "done").stdout)
    assert [f["sample_id"] for f in only["files"]] == ["28459508592a481c"]


def test_bad_filter_values_are_usage_errors(setup):
    """A state, time or limit that makes no sense: exit 2 naming it and what is expected, no traceback."""
    config, _store, _clock = setup
    for args, words in ((["--state", "finished"], "the states are"), (["--since", "yesterday"], "is not a time"),
                        (["--limit", "0"], "not a positive whole number")):
        r = cli(config, "status", *args)
        assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_since_reads_relative_and_iso_times():
    """2h, 3d, 1w ago; an ISO date is local midnight; a time with a zone is that instant."""
    assert parse_since("2h", now=1_000_000.0) == 1_000_000.0 - 7200
    assert parse_since("3d", now=1_000_000.0) == 1_000_000.0 - 3 * DAY_S
    assert parse_since("2026-11-25T14:00:00+00:00") == 1795615200.0
    assert parse_since("2026-11-25") == time.mktime((2026, 11, 25, 0, 0, 0, 0, 0, -1))


def test_show_tells_every_version_of_a_path(setup):
    """show PATH: each version with its state, sample id, MD5, attempts, times and last error; show ID and
    show SAMPLE_ID tell the same story; --json gives the versions to scripts."""
    config, store, clock = setup
    path = "/srv/out/run1/S1_R1.fastq.gz"
    clock.t = NOW - DAY_S
    first = add(store, path, "done", sample_id="28459508592a481c", size=1000)
    clock.t = NOW
    second = add(store, path, "failed", error="HTTP 413: too large", size=5000, mtime_ns=2)
    add(store, "/srv/out/run1/other.fastq", "done")
    by_path = cli(config, "show", path)
    assert by_path.returncode == 0, by_path.stderr
    out = by_path.stdout
    assert out.startswith(f"{path} — 2 versions") and "other.fastq" not in out
    assert f"version 1 (file ID {first}): done — confirmed as sample 28459508592a481c" in out
    assert f"version 2 (file ID {second}): failed" in out and "HTTP 413: too large" in out
    assert "1,000 bytes" in out and "5,000 bytes" in out and "0" * 32 in out
    assert time.strftime("%Y-%m-%d %H:%M", time.localtime(NOW - DAY_S)) in out
    assert cli(config, "show", str(second)).stdout == out
    assert cli(config, "show", "28459508592a481c").stdout == out
    doc = json.loads(cli(config, "show", path, "--json").stdout)
    assert [(v["id"], v["state"], v["size"]) for v in doc] == [(first, "done", 1000), (second, "failed", 5000)]


def test_show_finds_a_moved_file_and_names_what_it_cannot_find(setup, tmp_path):
    """show of a file moved since it was confirmed finds it by device, inode, size and mtime; anything
    unknown exits 1 with a message saying what to give it."""
    config, store, _clock = setup
    moved = tmp_path / "moved.fastq"
    moved.write_bytes(b"@r\nACGT\n+\nIIII\n")
    st = os.stat(moved)
    fid = store.add_seen("/srv/out/run1/was_here.fastq", Identity.of(st))
    store.mark_done(fid, sample_id="0123456789abcdef", md5="1" * 32)
    r = cli(config, "show", str(moved))
    assert r.returncode == 0, r.stderr
    assert "is the file version recorded at /srv/out/run1/was_here.fastq" in r.stdout
    assert "0123456789abcdef" in r.stdout
    for unknown in ("/srv/out/nothing.fastq", "99999", "fedcba9876543210"):
        miss = cli(config, "show", unknown)
        assert miss.returncode == 1 and "no file or sample" in miss.stderr and "Traceback" not in miss.stderr


def test_status_without_a_config_says_so_and_exits_2(tmp_path):
    """No config at the default or named path: "no config at PATH", exit 2 (not "No queue yet", exit 0);
    with a config and no queue yet, "No queue yet" and exit 0."""
    missing = tmp_path / "nowhere" / "config.toml"
    for env in ({"SEQDROP_CONFIG": str(missing)}, {}):
        args = [PYTHON, "-m", "daemon", "status"] + ([] if env else ["--config", str(missing)])
        r = subprocess.run(args, cwd=ROOT, env={**daemon_env(), **env}, capture_output=True, text=True, timeout=30)
        assert r.returncode == 2 and f"no config at {missing}" in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert "No queue yet" not in r.stdout
    config = tmp_path / "seqdrop.toml"
    config.write_text(f'[queue]\npath = "{tmp_path}/q.sqlite3"\n')
    r = cli(config, "status")
    assert r.returncode == 0 and "No queue yet" in r.stdout
    assert cli(config, "show", "x").returncode == 1


def test_public_json_matches_the_rows_public_form(tmp_path):
    """The store's SQLite-encoded entries equal FileRow.public() for every row (the --json contract), with
    --limit keeping the most recently updated."""
    clock = Clock(NOW)
    store = SqliteStore(str(tmp_path / "q.sqlite3"), clock=clock)
    for i, name in enumerate(["a.fastq", 'q"uote\\s.fastq', "nl\nx.fastq", "ünï.fastq", "\x1b[31m.fastq"]):
        clock.t = NOW + i + 0.999
        add(store, f"/srv/{name}", ["done", "failed", "seen", "queued", "rejected"][i], error=None if i % 2 else "e\n1")
    public = [json.loads(e) for e in store.public_json()]
    assert public == [r.public() for r in store.files()]
    assert [json.loads(e)["id"] for e in store.public_json(limit=2)] == [4, 5]
    store.close()

