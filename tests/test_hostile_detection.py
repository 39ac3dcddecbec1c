"""A hostile world for detection (issue 10, defects 5, 9, 10; issue 13, item 2), through the real daemon.

Deep folder trees, a second daemon through a symbolic link, one folder listed twice, a run folder
renamed mid-upload or archived after its upload, and a watch folder that is not there at start-up.
Each test failed on c06cae5's behaviour (said in its docstring) and passes now.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import structlog
from deep_tree import make_chain, remove_chain
from harness import (
    Daemon,
    all_in,
    by_name,
    cli,
    confirmed,
    fastq_bytes,
    wait_for,
    write_config,
)

from daemon import config as config_mod
from daemon.detection.roots import WatchRoots
from daemon.errors import FileChanged, Transient
from daemon.sandbox import Sandbox
from daemon.service.service import Service

DEADLINE_S = 30.0


def events(d: Daemon, name: str) -> list[dict]:
    return [e for e in d.log_events() if e.get("event") == name]


# -- defect 5: no folder shape stops the daemon ----------------------------------------------------

def test_a_1500_deep_tree_neither_stops_start_up_nor_uploads(tmp_path: Path, sandbox: Sandbox,
                                                             watch_dir: Path) -> None:
    """A 1,500-deep chain of folders at start-up, and another moved in while running: the daemon starts,
    uploads what lies within watch.max_depth, names each too-deep folder once, and goes on uploading.
    (c06cae5: RecursionError inside watchdog at start-up, a systemd restart loop.)"""
    make_chain(watch_dir / "run1")
    (watch_dir / "run1" / "d" / "a.fastq").write_bytes(fastq_bytes(20_000, seed=1))
    (Path(str(watch_dir / "run1") + "/d" * 40) / "deep.fastq").write_bytes(fastq_bytes(20_000, seed=2))
    staging = tmp_path / "staging"
    make_chain(staging)
    (staging / "d" / "d" / "b.fastq").write_bytes(fastq_bytes(20_000, seed=3))
    cfg = write_config(tmp_path, watch=[watch_dir], api_url=sandbox.api_url)
    try:
        with Daemon(cfg) as d:
            d.wait_files(all_in("done", ["a.fastq"]), DEADLINE_S, "a.fastq done despite the deep tree")
            os.rename(staging, watch_dir / "run2")          # the same shape moved in while running
            d.wait_files(all_in("done", ["b.fastq"]), DEADLINE_S, "b.fastq (moved in with a deep tree) done")
            (watch_dir / "later.fastq").write_bytes(fastq_bytes(20_000, seed=4))
            files = d.wait_files(all_in("done", ["later.fastq"]), DEADLINE_S, "a file dropped afterwards done")
            assert d.alive() and d.terminate() == 0
        assert "deep.fastq" not in by_name(files)
        deep = sorted(e["folder"] for e in events(d, "watch.too_deep"))
        assert deep == [str(watch_dir / "run1") + "/d" * 32, str(watch_dir / "run2") + "/d" * 32]   # depth 33
        assert not events(d, "watcher.handler_error") and not events(d, "watcher.observer_died")
        assert len(confirmed(sandbox)) == 3
    finally:
        remove_chain(watch_dir)
        remove_chain(staging)


# -- defect 9: one daemon per queue and one watch per folder, by the real file ---------------------------

def test_a_second_daemon_reaching_the_queue_through_a_symlink_is_refused(tmp_path: Path, sandbox: Sandbox,
                                                                        watch_dir: Path) -> None:
    """A second `seqdrop run` whose queue path is a symbolic link to the first one's queue file exits 1,
    as for any second daemon; the first goes on. (c06cae5: both ran, 2/30 files uploaded twice.)"""
    cfg = write_config(tmp_path, watch=[watch_dir], api_url=sandbox.api_url)
    other = tmp_path / "other"
    other.mkdir()
    (other / "alias.sqlite3").symlink_to(tmp_path / "state" / "queue.sqlite3")
    second_cfg = write_config(other, watch=[watch_dir], api_url=sandbox.api_url, name="second.toml")
    second_cfg.write_text(second_cfg.read_text().replace(f"{other}/state/queue.sqlite3", f"{other}/alias.sqlite3"))
    with Daemon(cfg) as first:
        first.wait_ready()
        second = Daemon(second_cfg, log_path=tmp_path / "second.log")
        with second:
            code = second.proc.wait(15)
        text = second.log_path.read_text()
        assert code == 1, text
        assert "another seqdrop daemon" in text and "Traceback" not in text
        (watch_dir / "one.fastq").write_bytes(fastq_bytes(10_000, seed=5))
        first.wait_files(all_in("done", ["one.fastq"]), DEADLINE_S, "one.fastq done by the first daemon")
        assert first.terminate() == 0
    assert len(sandbox.samples()) == 1


def test_one_folder_listed_twice_through_a_symlink_is_a_config_error(tmp_path: Path, sandbox: Sandbox,
                                                                    watch_dir: Path) -> None:
    """The same folder listed as itself and through a symbolic link: `run` exits 2 naming both entries and
    the fix, and `check` says the same. (c06cae5: accepted; every file uploaded twice, 3/3.)"""
    alias = tmp_path / "alias"
    alias.symlink_to(watch_dir)
    cfg = write_config(tmp_path, watch=[watch_dir, alias], api_url=sandbox.api_url)
    d = Daemon(cfg)
    with d:
        code = d.proc.wait(15)
    out = d.log_path.read_text()
    assert code == 2, out
    assert "watch.paths" in out and str(watch_dir) in out and str(alias) in out and "fix:" in out
    assert "Traceback" not in out
    checked = cli(cfg, "check")
    assert checked.returncode == 2, checked.stdout
    assert "the same folder is listed twice" in checked.stdout and str(alias) in checked.stdout


# -- defect 10: renamed and archived run folders -----------------------------------------------------

def test_a_run_folder_renamed_mid_upload_ends_that_upload_cleanly(tmp_path: Path, sandbox: Sandbox,
                                                                 watch_dir: Path) -> None:
    """The run folder is renamed while its file's POST is under way: that row ends `vanished` with the
    reason, its sample is cancelled, and the file under its new name is uploaded once.
    (c06cae5: the row stayed `queued` for ever, retrying "share unmounted?", its sample never cancelled.)"""
    # 4 Mbit/s in 64 KiB blocks: the 2 MB POST takes about 4 s, time enough to rename in the middle.
    cfg = write_config(tmp_path, watch=[watch_dir], api_url=sandbox.api_url, max_mbps=4, block_size=65536)
    (watch_dir / "run_tmp").mkdir()
    (watch_dir / "run_tmp" / "r.fastq").write_bytes(fastq_bytes(2_000_000, seed=6))
    with Daemon(cfg) as d:
        d.wait_files(all_in("uploading", ["r.fastq"]), DEADLINE_S, "r.fastq uploading")
        os.rename(watch_dir / "run_tmp", watch_dir / "run")
        files = d.wait_files(
            lambda fs: {(f["path"], f["state"]) for f in fs} == {(str(watch_dir / "run_tmp" / "r.fastq"), "vanished"),
                                                                (str(watch_dir / "run" / "r.fastq"), "done")},
            DEADLINE_S * 2, "the old path vanished, the new one done")
        assert d.terminate() == 0
    old = next(f for f in files if f["state"] == "vanished")
    assert "renamed" in old["error"] and str(watch_dir / "run_tmp") in old["error"]
    done = next(f for f in files if f["state"] == "done")
    assert [s["sample_id"] for s in confirmed(sandbox)] == [done["sample_id"]]
    assert [s["state"] for s in sandbox.samples() if s["sample_id"] != done["sample_id"]] == ["cancelled"]


def test_a_done_run_folder_archived_inside_the_share_is_not_uploaded_again(tmp_path: Path, sandbox: Sandbox,
                                                                          watch_dir: Path) -> None:
    """A run folder moved to an archive folder after its files were confirmed: status shows each file
    done at its new path with the same sample id; no new sample. (c06cae5: 5/5 uploaded again.)"""
    run = watch_dir / "run1"
    run.mkdir()
    names = [f"s{i}.fastq" for i in range(5)]
    for i, name in enumerate(names):
        (run / name).write_bytes(fastq_bytes(10_000, seed=10 + i))
    cfg = write_config(tmp_path, watch=[watch_dir], api_url=sandbox.api_url)
    with Daemon(cfg) as d:
        before = d.wait_files(all_in("done", names), DEADLINE_S, "the run's five files done")
        (watch_dir / "archive").mkdir()
        os.rename(run, watch_dir / "archive" / "run1")
        moved = [str(watch_dir / "archive" / "run1" / n) for n in names]
        files = d.wait_files(lambda fs: {f["path"] for f in fs if f["state"] == "done"} >= set(moved),
                             DEADLINE_S, "the five files done at their new paths")
        d.wait_files(lambda fs: len(fs) == 10, 3, "no other row")
        assert d.terminate() == 0
    sample_of = {os.path.basename(f["path"]): f["sample_id"] for f in before}
    for f in files:
        if f["path"] in moved:
            assert f["sample_id"] == sample_of[os.path.basename(f["path"])]
            assert "not uploaded again" in f["error"]
    assert len(sandbox.samples()) == 5 and len(confirmed(sandbox)) == 5


# -- issue 13, item 2: a watch folder missing at start-up is waited for ---------------------------------------

def test_a_watch_folder_missing_at_start_up_is_waited_for(tmp_path: Path, sandbox: Sandbox) -> None:
    """The daemon starts without its (not yet mounted) folder: a warning names it and the fix, the systemd
    STATUS line says which folder is missing, `check` reports it as a problem, and files are uploaded once
    it appears. (c06cae5: exit 2, which the unit's RestartPreventExitStatus=2 never retries.)"""
    nas = tmp_path / "nas"
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(0.2)
    messages: list[str] = []

    def status_lines() -> list[str]:
        try:
            while True:
                messages.append(sock.recv(4096).decode())
        except (TimeoutError, BlockingIOError):
            pass
        return [m for m in messages if m.startswith("STATUS=")]

    cfg = write_config(tmp_path, watch=[nas], api_url=sandbox.api_url)
    try:
        with Daemon(cfg, env={"NOTIFY_SOCKET": str(sock_path)}) as d:
            d.wait_ready()
            [warning] = [e for e in events(d, "watch.root_missing") if e.get("fix")]
            assert warning["path"] == str(nas) and warning["level"] == "warning"
            wait_for(lambda: any(str(nas) in m and "missing" in m for m in status_lines()), 10,
                     lambda: f"a STATUS line naming {nas}: {messages}")
            checked = cli(cfg, "check")
            assert checked.returncode == 1 and f"PROBLEM  watch folder: {nas} does not exist" in checked.stdout
            nas.mkdir()
            (nas / "late.fastq").write_bytes(fastq_bytes(20_000, seed=20))
            d.wait_files(all_in("done", ["late.fastq"]), DEADLINE_S, "late.fastq done once the folder appeared")
            wait_for(lambda: any("missing" not in m for m in status_lines()[-1:]), 10,
                     lambda: f"a STATUS line without the missing folder: {messages[-3:]}")
            assert d.terminate() == 0
    finally:
        sock.close()
    assert len(confirmed(sandbox)) == 1


def test_a_folder_missing_for_10_minutes_is_notified_once_per_episode(tmp_path: Path, watch_dir: Path) -> None:
    """The service emits watch_folder_missing once a folder has been missing for 10 minutes, once per
    episode (missing, back, missing again: twice in all), and its status line names the folder."""
    nas = tmp_path / "nas"
    cfg = write_config(tmp_path, watch=[watch_dir, nas], api_url="http://127.0.0.1:9")
    service = Service(config_mod.load(str(cfg)), api_key="test-key", log=structlog.get_logger("seqdrop"))
    now = [0.0]
    service.tracker.roots = WatchRoots([(str(watch_dir), None), (str(nas), None)], clock=lambda: now[0])
    emitted: list[tuple[str, dict]] = []
    service.emit = lambda event, **fields: emitted.append((event, fields))   # type: ignore[method-assign]
    try:
        for t in (0, 300, 599, 600, 601, 1200):
            now[0] = t
            service._housekeeping()
        assert emitted == [("watch_folder_missing", {"path": str(nas), "missing_s": 600})]
        assert f"missing watch folder(s) {nas};" in service.status_line(service.store.counts())
        nas.mkdir()
        now[0] = 1300
        service._housekeeping()
        assert "missing" not in service.status_line(service.store.counts())
        nas.rmdir()
        for t in (1400, 1999, 2000, 2600):
            now[0] = t
            service._housekeeping()
        assert [e for e, _ in emitted] == ["watch_folder_missing"] * 2
    finally:
        service.store.close()


# -- WatchRoots: what a missing file means ---------------------------------------------------------------

def test_a_missing_file_waits_only_while_its_watch_root_is_gone(tmp_path: Path) -> None:
    """missing_file: Transient while the watch root itself is missing; FileChanged (naming the folder)
    when only the run folder went, or the file alone; a path under no root is simply gone."""
    root = tmp_path / "share"
    (root / "run").mkdir(parents=True)
    path = str(root / "run" / "a.fastq")
    dev = os.stat(root).st_dev
    roots = WatchRoots([(str(root), None)])
    alone = roots.missing_file(path, dev)
    assert isinstance(alone, FileChanged) and "deleted or renamed" in str(alone)
    (root / "run").rename(root / "run2")
    renamed = roots.missing_file(path, dev)
    assert isinstance(renamed, FileChanged) and str(root / "run") in str(renamed)
    root.rename(tmp_path / "unmounted")
    assert isinstance(roots.missing_file(path, dev), Transient)
    assert isinstance(WatchRoots().missing_file(path, dev), FileChanged)
