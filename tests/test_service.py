"""`seqdrop run` end to end: the daemon as a subprocess, real inotify on tmp_path, the sandbox over loopback."""

from __future__ import annotations

import gzip
import os
import re
import signal
import time
from pathlib import Path

from harness import (
    VALIDATE,
    Daemon,
    all_in,
    by_name,
    cli,
    confirmed,
    fastq_bytes,
    md5_file,
    status,
    tree_digest,
    wait_for,
    write_config,
)

from daemon.sandbox import Fault, Sandbox

DEADLINE_S = 30.0


def assert_uploaded_once(sb: Sandbox, path: Path) -> dict:
    """Exactly one confirmed sample holds path's name, and its stored object is byte-identical to path."""
    samples = [s for s in confirmed(sb) if s["filename"] == path.name]
    assert len(samples) == 1, f"{path.name}: {len(samples)} confirmed samples: {samples}"
    sample = samples[0]
    assert sample["confirm_count"] >= 1
    assert Path(sample["object_path"]).read_bytes() == path.read_bytes()
    return sample


def test_files_present_before_start_are_uploaded(tmp_path: Path, sandbox: Sandbox, watch_dir: Path) -> None:
    """Files already in the (nested) watch folder at start-up are found by the scan and uploaded once each."""
    run = watch_dir / "run_01" / "fastq"
    run.mkdir(parents=True)
    a, b = run / "s1_R1.fastq", watch_dir / "s2.fq"
    a.write_bytes(fastq_bytes(300_000, seed=1))
    b.write_bytes(fastq_bytes(50_000, seed=2))
    # pairing off: s1_R1.fastq is an R1 whose R2 never comes (it would wait group_wait_seconds, 120 s)
    cfg = write_config(tmp_path, watch=[watch_dir], api_url=sandbox.api_url, extra='[samples]\npairing = "off"\n')
    with Daemon(cfg) as d:
        files = d.wait_files(all_in("done", ["s1_R1.fastq", "s2.fq"]), DEADLINE_S, "both files done")
        assert d.terminate() == 0
    assert len(files) == 2
    for f, path in zip(sorted(files, key=lambda f: f["path"]), sorted([a, b])):
        assert f["path"] == str(path) and f["size"] == path.stat().st_size
        assert f["sample_id"] == assert_uploaded_once(sandbox, path)["sample_id"]


def test_files_dropped_while_running_are_uploaded(tmp_path: Path, sandbox: Sandbox, watch_dir: Path) -> None:
    """Files written into a running daemon's folder, including a new sub-folder, are uploaded once each."""
    cfg = write_config(tmp_path, watch=[watch_dir], api_url=sandbox.api_url)
    with Daemon(cfg) as d:
        d.wait_ready()
        paths = [watch_dir / "x.fastq", watch_dir / "new_run" / "y.fastq.gz"]
        paths[0].write_bytes(fastq_bytes(120_000, seed=3))
        paths[1].parent.mkdir()
        paths[1].write_bytes(gzip.compress(fastq_bytes(80_000, seed=4)))
        d.wait_files(all_in("done", ["x.fastq", "y.fastq.gz"]), DEADLINE_S, "both files done")
        assert d.terminate() == 0
    for p in paths:
        assert_uploaded_once(sandbox, p)
    assert len(sandbox.samples()) == 2


def test_slow_writer_is_uploaded_once_and_complete(tmp_path: Path, sandbox: Sandbox, watch_dir: Path) -> None:
    """A file written in chunks with pauses shorter than settle_seconds is uploaded once, all of it."""
    settle_s = 1.0
    cfg = write_config(tmp_path, watch=[watch_dir], api_url=sandbox.api_url, settle_s=settle_s)
    data = fastq_bytes(600_000, seed=5)
    path = watch_dir / "slow.fastq"
    with Daemon(cfg) as d:
        d.wait_ready()
        pieces = 8
        with open(path, "wb") as f:
            for i in range(pieces):
                f.write(data[i * len(data) // pieces:(i + 1) * len(data) // pieces])
                f.flush()
                time.sleep(settle_s * 0.4)   # the writer's pace (the behaviour under test), not a sync
        files = d.wait_files(all_in("done", ["slow.fastq"]), DEADLINE_S, "slow.fastq done")
        assert d.terminate() == 0
    assert len(files) == 1 and files[0]["size"] == len(data)
    assert_uploaded_once(sandbox, path)
    assert len(sandbox.samples()) == 1
    assert len([r for r in sandbox.requests() if r["target"] == "init_upload"]) == 1


def test_write_then_rename_is_uploaded_once_under_the_final_name(tmp_path: Path, sandbox: Sandbox,
                                                                 watch_dir: Path) -> None:
    """Files written under a hidden or temporary name and renamed into place are uploaded once, as the final name."""
    cfg = write_config(tmp_path, watch=[watch_dir], api_url=sandbox.api_url)
    with Daemon(cfg) as d:
        d.wait_ready()
        (watch_dir / ".staging").mkdir()
        for temp, final, seed in ((".x.fastq.tmp", "x.fastq", 6), ("y.fastq.part", "y.fastq", 7),
                                  (".z.fastq.Xa93kq", "z.fastq", 8),   # rsync's own temp name
                                  (".staging/w.fastq", "w.fastq", 9)):  # written in a hidden folder
            with open(watch_dir / temp, "wb") as f:
                data = fastq_bytes(200_000, seed=seed)
                f.write(data[:100_000])
                f.flush()
                time.sleep(0.3)              # the writer pauses mid-file (behaviour under test)
                f.write(data[100_000:])
            os.rename(watch_dir / temp, watch_dir / final)
        finals = ["w.fastq", "x.fastq", "y.fastq", "z.fastq"]
        files = d.wait_files(all_in("done", finals), DEADLINE_S, "four files done")
        assert d.terminate() == 0
    assert sorted(f["path"] for f in files) == [str(watch_dir / n) for n in finals]
    for name in finals:
        assert_uploaded_once(sandbox, watch_dir / name)
    assert sorted(s["filename"] for s in sandbox.samples()) == finals


def test_deleted_before_upload_is_vanished(tmp_path: Path, sandbox: Sandbox, watch_dir: Path) -> None:
    """A file deleted while it settles ends `vanished`, and nothing is sent for it."""
    # The deletion must come while it settles: with 3 s, a loaded machine (a `status` call taking seconds)
    # let it settle and upload first. The delete event ends it at once, so a long settle costs no time.
    cfg = write_config(tmp_path, watch=[watch_dir], api_url=sandbox.api_url, settle_s=120.0)
    path = watch_dir / "gone.fastq"
    with Daemon(cfg) as d:
        d.wait_ready()
        path.write_bytes(fastq_bytes(10_000, seed=9))
        d.wait_files(all_in("seen", ["gone.fastq"]), DEADLINE_S, "gone.fastq seen")
        path.unlink()
        files = d.wait_files(all_in("vanished", ["gone.fastq"]), DEADLINE_S, "gone.fastq vanished")
        assert d.terminate() == 0
    assert len(files) == 1 and files[0]["error"]
    assert sandbox.samples() == []


def test_modified_after_upload_is_uploaded_again(tmp_path: Path, sandbox: Sandbox, watch_dir: Path) -> None:
    """A done file rewritten with other bytes is a new version: two rows, both done, two samples."""
    cfg = write_config(tmp_path, watch=[watch_dir], api_url=sandbox.api_url)
    path = watch_dir / "v.fastq"
    path.write_bytes(fastq_bytes(100_000, seed=10))
    first_md5 = md5_file(path)
    with Daemon(cfg) as d:
        d.wait_files(all_in("done", ["v.fastq"]), DEADLINE_S, "first version done")
        with open(path, "ab") as f:
            f.write(fastq_bytes(40_000, seed=11))
        files = d.wait_files(lambda fs: len(fs) == 2 and all(f["state"] == "done" for f in fs),
                             DEADLINE_S, "two versions done")
        assert d.terminate() == 0
    old, new = sorted(files, key=lambda f: f["id"])
    assert old["sample_id"] != new["sample_id"] and new["size"] == path.stat().st_size
    samples = {s["sample_id"]: s for s in confirmed(sandbox)}
    assert len(samples) == 2
    assert samples[old["sample_id"]]["md5"] == first_md5
    assert Path(samples[new["sample_id"]]["object_path"]).read_bytes() == path.read_bytes()


def test_touched_done_file_is_recorded_not_uploaded_again(tmp_path: Path, sandbox: Sandbox,
                                                          watch_dir: Path) -> None:
    """A `touch` of a done file (same bytes) adds a done row naming the same sample, and sends nothing."""
    cfg = write_config(tmp_path, watch=[watch_dir], api_url=sandbox.api_url)
    path = watch_dir / "t.fastq"
    path.write_bytes(fastq_bytes(100_000, seed=12))
    with Daemon(cfg) as d:
        d.wait_files(all_in("done", ["t.fastq"]), DEADLINE_S, "t.fastq done")
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
        files = d.wait_files(lambda fs: len(fs) == 2 and all(f["state"] == "done" for f in fs),
                             DEADLINE_S, "the touched version recorded as done")
        assert d.terminate() == 0
    old, new = sorted(files, key=lambda f: f["id"])
    assert new["sample_id"] == old["sample_id"]
    assert "not uploaded again" in (new["error"] or "")
    assert len(sandbox.samples()) == 1
    assert [r["target"] for r in sandbox.requests()].count("s3") == 1


def test_ignored_files_never_appear_and_the_folder_is_unchanged(tmp_path: Path, sandbox: Sandbox,
                                                                watch_dir: Path) -> None:
    """Non-matching, hidden and temporary files are ignored and absent from status; no file in the folder changes."""
    run = watch_dir / "run"
    (run / ".staging").mkdir(parents=True)
    ignored = {"notes.txt": b"run notes\n", "reads.bam": b"BAM\x01", ".hidden.fastq": fastq_bytes(5_000),
               ".staging/a.fastq": fastq_bytes(5_000), "b.fastq.tmp": fastq_bytes(5_000),
               "c.fastq.part": fastq_bytes(5_000), "SampleSheet.csv": b"[Header]\n"}
    for name, data in ignored.items():
        (run / name).write_bytes(data)
    (run / "good.fastq").write_bytes(fastq_bytes(150_000, seed=13))
    expected = {"good.fastq": "done"}
    if VALIDATE:
        broken = fastq_bytes(20_000, seed=14)
        (run / "broken.fastq").write_bytes(broken[: len(broken) // 2 + 7])   # truncated mid-record
        expected["broken.fastq"] = "rejected"
    before = tree_digest(watch_dir)
    cfg = write_config(tmp_path, watch=[watch_dir], api_url=sandbox.api_url)
    with Daemon(cfg) as d:
        d.wait_ready()
        (run / "late.txt").write_bytes(b"written while running\n")
        (run / ".late.fastq").write_bytes(fastq_bytes(5_000))
        before.update({"run/late.txt": tree_digest(run)["late.txt"], "run/.late.fastq": tree_digest(run)[".late.fastq"]})
        files = d.wait_files(lambda fs: all(all_in(s, [n])(fs) for n, s in expected.items()), DEADLINE_S,
                             f"{expected}")
        assert d.terminate() == 0
    assert sorted(os.path.basename(f["path"]) for f in files) == sorted(expected)
    assert tree_digest(watch_dir) == before
    assert [s["filename"] for s in confirmed(sandbox)] == ["good.fastq"]
    # The truncated file is refused by the streaming validator during its POST: S3 never gets
    # a complete body, and the sample begun for it is cancelled, never confirmed.
    assert all(s["state"] == "cancelled" for s in sandbox.samples() if s["filename"] == "broken.fastq")


def test_retry_picks_up_a_failed_file_while_running(tmp_path: Path, sandbox: Sandbox, watch_dir: Path) -> None:
    """A file failed by a 400 is put back by `seqdrop retry --failed` and uploaded, without a restart."""
    sandbox.add_fault(Fault(target="init_upload", kind="status", status=400,
                            message="Invalid filename for this account.", times=None))
    cfg = write_config(tmp_path, watch=[watch_dir], api_url=sandbox.api_url)
    path = watch_dir / "r.fastq"
    path.write_bytes(fastq_bytes(50_000, seed=15))
    with Daemon(cfg) as d:
        files = d.wait_files(all_in("failed", ["r.fastq"]), DEADLINE_S, "r.fastq failed")
        assert "Invalid filename for this account." in files[0]["error"]
        sandbox.clear_faults()
        done = cli(cfg, "retry", "--failed")
        assert done.returncode == 0 and done.stdout.startswith("1 file put back"), done.stdout + done.stderr
        files = d.wait_files(all_in("done", ["r.fastq"]), DEADLINE_S, "r.fastq done after retry")
        assert d.terminate() == 0
    assert len(files) == 1 and files[0]["error"] is None
    assert_uploaded_once(sandbox, path)


def test_status_json_shape_while_running(tmp_path: Path, sandbox: Sandbox, watch_dir: Path) -> None:
    """`status --json` read while the daemon runs has design.md's shape: counts of every state, one entry per version."""
    (watch_dir / "s.fastq").write_bytes(fastq_bytes(20_000, seed=16))
    cfg = write_config(tmp_path, watch=[watch_dir], api_url=sandbox.api_url)
    with Daemon(cfg) as d:
        d.wait_files(all_in("done", ["s.fastq"]), DEADLINE_S, "s.fastq done")
        doc = d.status()
        assert d.alive()
        assert d.terminate() == 0
    assert set(doc) >= {"counts", "files"}
    assert doc["counts"] == {"seen": 0, "queued": 0, "uploading": 0, "done": 1, "rejected": 0, "failed": 0,
                             "vanished": 0}
    [entry] = doc["files"]
    assert set(entry) == {"id", "path", "state", "size", "sample_id", "attempts", "error", "updated_at",
                          "sample", "role", "lane"}     # design.md turn 2: each file names its sample
    assert os.path.isabs(entry["path"]) and entry["path"] == str(watch_dir / "s.fastq")
    assert isinstance(entry["id"], int) and isinstance(entry["attempts"], int)
    assert entry["size"] == (watch_dir / "s.fastq").stat().st_size
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", entry["updated_at"])
    assert entry["sample_id"] == confirmed(sandbox)[0]["sample_id"]


def test_sigterm_exits_0(tmp_path: Path, sandbox: Sandbox, watch_dir: Path) -> None:
    """SIGTERM to an idle daemon stops it in order and exits 0; a restart then finds the queue intact."""
    (watch_dir / "k.fastq").write_bytes(fastq_bytes(20_000, seed=17))
    cfg = write_config(tmp_path, watch=[watch_dir], api_url=sandbox.api_url)
    with Daemon(cfg) as d:
        d.wait_files(all_in("done", ["k.fastq"]), DEADLINE_S, "k.fastq done")
        started = time.monotonic()
        assert d.terminate() == 0
        assert time.monotonic() - started < 2   # the signal wakes the main loop; no tick to wait for
        events = [e.get("event") for e in d.log_events()]
        assert "service.stopping" in events and "service.stopped" in events
        d.start()
        d.wait_ready()
        d.signal(signal.SIGINT)
        assert d.proc.wait(10) == 0
    assert [f["state"] for f in status(cfg)["files"]] == ["done"]
    assert len(sandbox.samples()) == 1


def test_file_changed_during_upload_is_not_confirmed(tmp_path: Path, sandbox: Sandbox, watch_dir: Path) -> None:
    """A file that grows while its POST is under way is not confirmed; the new version is uploaded whole."""
    # 4 Mbit/s in 64 KiB blocks: the 2 MB POST takes about 4 s, time enough to append in the middle.
    cfg = write_config(tmp_path, watch=[watch_dir], api_url=sandbox.api_url, max_mbps=4, block_size=65536)
    path = watch_dir / "g.fastq"
    path.write_bytes(fastq_bytes(2_000_000, seed=18))
    with Daemon(cfg) as d:
        d.wait_files(all_in("uploading", ["g.fastq"]), DEADLINE_S, "g.fastq uploading")
        with open(path, "ab") as f:
            f.write(fastq_bytes(100_000, seed=19))
        files = d.wait_files(lambda fs: [f["state"] for f in fs] == ["vanished", "done"], DEADLINE_S,
                             "the first version vanished, the second done")
        assert d.terminate() == 0
    assert files[1]["size"] == path.stat().st_size
    assert "changed" in files[0]["error"]
    assert_uploaded_once(sandbox, path)
    abandoned = [s for s in sandbox.samples() if s["sample_id"] != files[1]["sample_id"]]
    assert [s["state"] for s in abandoned] == ["cancelled"]


def test_file_deleted_during_upload_is_vanished_and_cancelled(tmp_path: Path, sandbox: Sandbox,
                                                              watch_dir: Path) -> None:
    """A file deleted while its POST is under way ends `vanished`, and its sample is cancelled, not confirmed."""
    cfg = write_config(tmp_path, watch=[watch_dir], api_url=sandbox.api_url, max_mbps=4, block_size=65536)
    path = watch_dir / "d.fastq"
    path.write_bytes(fastq_bytes(2_000_000, seed=20))
    with Daemon(cfg) as d:
        d.wait_files(all_in("uploading", ["d.fastq"]), DEADLINE_S, "d.fastq uploading")
        path.unlink()
        files = d.wait_files(all_in("vanished", ["d.fastq"]), DEADLINE_S, "d.fastq vanished")
        assert d.terminate() == 0
    assert len(files) == 1 and "deleted" in files[0]["error"]
    assert [s["state"] for s in sandbox.samples()] == ["cancelled"]


def test_watch_folder_that_disappears_is_waited_for_and_rescanned(tmp_path: Path, sandbox: Sandbox,
                                                                  watch_dir: Path) -> None:
    """A watch folder removed while running (a share unmounted) is waited for, and rescanned when it returns."""
    (watch_dir / "a.fastq").write_bytes(fastq_bytes(20_000, seed=21))
    cfg = write_config(tmp_path, watch=[watch_dir], api_url=sandbox.api_url)
    with Daemon(cfg) as d:
        d.wait_files(all_in("done", ["a.fastq"]), DEADLINE_S, "a.fastq done")
        aside = tmp_path / "unmounted"
        watch_dir.rename(aside)
        wait_for_event(d, "watch.root_missing")
        # The share comes back with a file written on the server meanwhile.
        (aside / "b.fastq").write_bytes(fastq_bytes(30_000, seed=22))
        aside.rename(watch_dir)
        d.wait_files(all_in("done", ["a.fastq", "b.fastq"]), DEADLINE_S, "b.fastq done after the return")
        assert d.alive()
        assert d.terminate() == 0
    assert_uploaded_once(sandbox, watch_dir / "a.fastq")
    assert_uploaded_once(sandbox, watch_dir / "b.fastq")


def wait_for_event(d: Daemon, event: str, timeout_s: float = DEADLINE_S) -> None:
    wait_for(lambda: any(e.get("event") == event for e in d.log_events()), timeout_s,
             lambda: f"the log event {event}\n{d.log_tail()}", interval_s=0.1)


def test_second_daemon_on_the_same_queue_is_refused(tmp_path: Path, sandbox: Sandbox, watch_dir: Path) -> None:
    """A second `seqdrop run` on a queue in use exits 1 with a message, and the first keeps running."""
    cfg = write_config(tmp_path, watch=[watch_dir], api_url=sandbox.api_url)
    with Daemon(cfg) as first:
        first.wait_ready()
        second = Daemon(cfg, log_path=tmp_path / "second.log")
        with second:
            code = second.proc.wait(15)
        text = second.log_path.read_text()
        assert code == 1, text
        assert "another seqdrop daemon" in text and "Traceback" not in text
        (watch_dir / "one.fastq").write_bytes(fastq_bytes(10_000, seed=23))
        first.wait_files(all_in("done", ["one.fastq"]), DEADLINE_S, "one.fastq done by the first daemon")
        assert first.terminate() == 0


def test_run_marker_holds_files_until_the_run_is_complete(tmp_path: Path, sandbox: Sandbox,
                                                          watch_dir: Path) -> None:
    """With marker = "illumina", settled files wait (with the reason shown) until CopyComplete.txt appears."""
    run = watch_dir / "240101_M00001_0001_000000000-ABCDE"
    run.mkdir()
    (run / "RunInfo.xml").write_text("<RunInfo/>\n")
    (run / "s_R1.fastq").write_bytes(fastq_bytes(20_000, seed=24))
    cfg = write_config(tmp_path, watch=[{"path": watch_dir, "marker": "illumina"}], api_url=sandbox.api_url)
    with Daemon(cfg) as d:
        files = d.wait_files(lambda fs: all_in("seen", ["s_R1.fastq"])(fs) and fs[0]["error"], DEADLINE_S,
                             "s_R1.fastq waiting for its marker")
        assert "CopyComplete.txt" in files[0]["error"]
        assert sandbox.samples() == []
        (run / "CopyComplete.txt").write_text("")
        files = d.wait_files(all_in("done", ["s_R1.fastq"]), DEADLINE_S, "s_R1.fastq done after the marker")
        assert d.terminate() == 0
    assert files[0]["error"] is None
    assert_uploaded_once(sandbox, run / "s_R1.fastq")


def test_a_flood_of_files_is_uploaded_once_each(tmp_path: Path, sandbox: Sandbox, watch_dir: Path) -> None:
    """300 small files dropped at once into a running daemon's folder: every one done, one sample each."""
    cfg = write_config(tmp_path, watch=[watch_dir], api_url=sandbox.api_url)
    names = [f"lane{i % 4}/f{i:03d}.fastq" for i in range(300)]
    with Daemon(cfg) as d:
        d.wait_ready()
        for i, name in enumerate(names):
            path = watch_dir / name
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(fastq_bytes(2_000, seed=1000 + i))
        files = d.wait_files(lambda fs: len(fs) == 300 and all(f["state"] == "done" for f in fs), 60,
                             "300 files done")
        assert d.terminate() == 0
    assert len({f["sample_id"] for f in files}) == 300
    samples = confirmed(sandbox)
    assert len(samples) == len(sandbox.samples()) == 300
    assert sorted(s["filename"] for s in samples) == sorted(os.path.basename(n) for n in names)


def test_polling_mode_uploads_without_inotify(tmp_path: Path, sandbox: Sandbox, watch_dir: Path) -> None:
    """A folder watched with polling = true (a network share) has its new files found and uploaded."""
    cfg = write_config(tmp_path, watch=[{"path": watch_dir, "polling": True}], api_url=sandbox.api_url,
                       poll_interval_s=0.3)
    with Daemon(cfg) as d:
        d.wait_ready()
        (watch_dir / "sub").mkdir()
        (watch_dir / "sub" / "n.fastq").write_bytes(fastq_bytes(30_000, seed=30))
        d.wait_files(all_in("done", ["n.fastq"]), DEADLINE_S, "n.fastq done by polling")
        assert d.terminate() == 0
    assert_uploaded_once(sandbox, watch_dir / "sub" / "n.fastq")


def test_restart_reuploads_nothing_and_finds_changes_made_while_down(tmp_path: Path, sandbox: Sandbox,
                                                                     watch_dir: Path) -> None:
    """After a restart, done files are not sent again; a file changed while the daemon was down is a new version."""
    names = [f"r{i:02d}.fastq" for i in range(15)]
    for i, name in enumerate(names):
        (watch_dir / name).write_bytes(fastq_bytes(10_000, seed=40 + i))
    cfg = write_config(tmp_path, watch=[watch_dir], api_url=sandbox.api_url)
    with Daemon(cfg) as d:
        d.wait_files(all_in("done", names), DEADLINE_S, "15 files done")
        assert d.terminate() == 0
        with open(watch_dir / "r03.fastq", "ab") as f:        # changed while the daemon is down
            f.write(fastq_bytes(5_000, seed=60))
        (watch_dir / "late.fastq").write_bytes(fastq_bytes(5_000, seed=61))   # arrived while down
        d.start()
        files = d.wait_files(lambda fs: len(fs) == 17 and all(f["state"] == "done" for f in fs), DEADLINE_S,
                             "the changed and the new file done")
        assert d.terminate() == 0
    assert len(by_name(files)["r03.fastq"]) == 2
    assert len(sandbox.samples()) == len(confirmed(sandbox)) == 17
    assert [r["target"] for r in sandbox.requests()].count("s3") == 17


def test_symlinked_watch_folder_reports_the_configured_path(tmp_path: Path, sandbox: Sandbox,
                                                            watch_dir: Path) -> None:
    """A watch folder given through a symbolic link is watched; status shows paths under the configured name."""
    link = tmp_path / "link-to-watch"
    link.symlink_to(watch_dir, target_is_directory=True)
    cfg = write_config(tmp_path, watch=[link], api_url=sandbox.api_url)
    with Daemon(cfg) as d:
        d.wait_ready()
        (watch_dir / "l.fastq").write_bytes(fastq_bytes(10_000, seed=62))
        files = d.wait_files(all_in("done", ["l.fastq"]), DEADLINE_S, "l.fastq done")
        assert d.terminate() == 0
    assert [f["path"] for f in files] == [str(link / "l.fastq")]


def test_run_folder_moved_in_is_uploaded(tmp_path: Path, sandbox: Sandbox, watch_dir: Path) -> None:
    """A finished run folder moved into the watch folder in one rename (no file events) has all its files uploaded."""
    # pairing off: each file its own sample, as this test counts them (pairs: tests/test_assembler.py)
    cfg = write_config(tmp_path, watch=[watch_dir], api_url=sandbox.api_url, extra='[samples]\npairing = "off"\n')
    outside = tmp_path / "elsewhere" / "run_7"
    (outside / "lane1").mkdir(parents=True)
    names = ["a_R1.fastq", "a_R2.fastq", "lane1/b.fq"]
    for i, name in enumerate(names):
        (outside / name).write_bytes(fastq_bytes(15_000, seed=63 + i))
    with Daemon(cfg) as d:
        d.wait_ready()
        os.rename(outside, watch_dir / "run_7")
        d.wait_files(all_in("done", [os.path.basename(n) for n in names]), DEADLINE_S, "the run's files done")
        assert d.terminate() == 0
    for name in names:
        assert_uploaded_once(sandbox, watch_dir / "run_7" / name)


def test_identical_bytes_at_two_paths_are_two_samples(tmp_path: Path, sandbox: Sandbox, watch_dir: Path) -> None:
    """Two files with the same bytes at different paths are uploaded as two samples."""
    data = fastq_bytes(20_000, seed=66)
    (watch_dir / "one").mkdir()
    (watch_dir / "one" / "same.fastq").write_bytes(data)
    (watch_dir / "copy.fastq").write_bytes(data)
    cfg = write_config(tmp_path, watch=[watch_dir], api_url=sandbox.api_url)
    with Daemon(cfg) as d:
        files = d.wait_files(all_in("done", ["same.fastq", "copy.fastq"]), DEADLINE_S, "both done")
        assert d.terminate() == 0
    assert len({f["sample_id"] for f in files}) == 2
    assert len(confirmed(sandbox)) == 2


def test_empty_file_is_rejected_then_uploaded_once_written(tmp_path: Path, sandbox: Sandbox,
                                                           watch_dir: Path) -> None:
    """A file left empty is rejected with a reason; once content is written into it, the new version is uploaded."""
    cfg = write_config(tmp_path, watch=[watch_dir], api_url=sandbox.api_url)
    path = watch_dir / "e.fastq"
    with Daemon(cfg) as d:
        d.wait_ready()
        path.write_bytes(b"")
        files = d.wait_files(all_in("rejected", ["e.fastq"]), DEADLINE_S, "e.fastq rejected")
        assert "empty" in files[0]["error"]
        path.write_bytes(fastq_bytes(10_000, seed=67))
        files = d.wait_files(all_in("done", ["e.fastq"]), DEADLINE_S, "the written version done")
        assert d.terminate() == 0
    assert [f["state"] for f in files] == ["rejected", "done"]
    assert_uploaded_once(sandbox, path)
    assert len(sandbox.samples()) == 1


# -- in-process: faults inside the daemon itself (a subprocess cannot be made to fail this way) ----
class InProcess:
    """The real Service in a thread of the test process, stopped as SIGTERM would stop it."""

    def __init__(self, cfg: Path, **kwargs: object) -> None:
        import threading

        import structlog

        from daemon import config as config_mod
        from daemon.service.service import Service
        self.settings = config_mod.load(str(cfg))
        self.service = Service(self.settings, api_key="test-key", log=structlog.get_logger("seqdrop"), **kwargs)
        self.thread = threading.Thread(target=self._run, name="test-service", daemon=True)
        self.exit_code: int | None = None

    def _run(self) -> None:
        self.exit_code = self.service.run()

    def __enter__(self) -> "InProcess":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.service.request_stop()
        self.thread.join(15)
        assert not self.thread.is_alive(), "the service did not stop"


def test_an_internal_error_in_a_worker_keeps_the_row_and_the_worker(tmp_path: Path, sandbox: Sandbox,
                                                                   watch_dir: Path) -> None:
    """A bug surfacing in a worker puts the row back in the queue (tried again later); the worker lives on."""
    from structlog.testing import capture_logs

    from daemon.upload.client import OneCodexClient

    class Flaky(OneCodexClient):
        calls = 0

        def init_upload(self, filename: str, size: int):  # type: ignore[no-untyped-def]
            Flaky.calls += 1
            if Flaky.calls == 1:
                raise RuntimeError("a bug")
            return super().init_upload(filename, size)

    cfg = write_config(tmp_path, watch=[watch_dir], api_url=sandbox.api_url, workers=1)
    (watch_dir / "bug.fastq").write_bytes(fastq_bytes(10_000, seed=70))
    with capture_logs() as events, InProcess(cfg, client=Flaky(sandbox.api_url, "test-key")) as run:
        store = run.service.store
        wait_for(lambda: [(r.state, r.attempts) for r in store.files()] == [("done", 1)], DEADLINE_S,
                 lambda: f"bug.fastq done at its second attempt: {store.files()}")
        (watch_dir / "next.fastq").write_bytes(fastq_bytes(10_000, seed=71))
        wait_for(lambda: [r.state for r in store.files() if r.path.endswith("next.fastq")] == ["done"],
                 DEADLINE_S, "the same worker uploading the next file")
        assert all(t.is_alive() for t in run.service.workers)
    assert run.exit_code == 0
    failure = next(e for e in events if e["event"] == "worker.internal_error")
    assert failure["path"].endswith("bug.fastq")
    assert len(confirmed(sandbox)) == 2


def test_an_error_on_one_path_costs_no_other_file(tmp_path: Path, sandbox: Sandbox, watch_dir: Path,
                                                  monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A path whose handling always fails is logged; the scan and the hints go on for every other file."""
    from structlog.testing import capture_logs

    from daemon.detection.tracker import Tracker
    real_observe = Tracker.observe

    def observe(self, path, st=None, **kwargs):  # type: ignore[no-untyped-def]
        if path.endswith("boom.fastq"):
            raise OSError("a filesystem error on this one path")
        return real_observe(self, path, st, **kwargs)

    monkeypatch.setattr(Tracker, "observe", observe)
    (watch_dir / "boom.fastq").write_bytes(fastq_bytes(10_000, seed=72))      # first in the start-up scan
    (watch_dir / "before.fastq").write_bytes(fastq_bytes(10_000, seed=73))
    cfg = write_config(tmp_path, watch=[watch_dir], api_url=sandbox.api_url)
    with capture_logs() as events, InProcess(cfg) as run:
        wait_for(lambda: any(e["event"] == "service.ready" for e in events), DEADLINE_S, "service.ready")
        with open(watch_dir / "boom.fastq", "ab") as f:                       # hinted with the next file
            f.write(fastq_bytes(1_000, seed=74))
        (watch_dir / "after.fastq").write_bytes(fastq_bytes(10_000, seed=75))
        store = run.service.store
        wait_for(lambda: sorted((os.path.basename(r.path), r.state) for r in store.files())
                 == [("after.fastq", "done"), ("before.fastq", "done")], DEADLINE_S, "the other files done")
    assert "tracker.observe_failed" in [e["event"] for e in events]
    assert run.exit_code == 0


def test_a_file_name_that_is_not_utf8_is_rejected_and_costs_nothing_else(tmp_path: Path, sandbox: Sandbox,
                                                                         watch_dir: Path) -> None:
    """A Latin-1 file name shows as `rejected` with the fix, under a printable name; other files go through."""
    bad = os.path.join(os.fsencode(watch_dir), b"Probe_M\xfcller.fastq")
    with open(bad, "wb") as f:
        f.write(fastq_bytes(10_000, seed=76))
    bad_folder = os.path.join(os.fsencode(watch_dir), b"Lauf_\xe4")        # a folder name, too
    os.mkdir(bad_folder)
    with open(os.path.join(bad_folder, b"in_folder.fastq"), "wb") as f:
        f.write(fastq_bytes(10_000, seed=79))
    (watch_dir / "fine.fastq").write_bytes(fastq_bytes(10_000, seed=77))
    cfg = write_config(tmp_path, watch=[watch_dir], api_url=sandbox.api_url)
    with Daemon(cfg) as d:
        d.wait_ready()
        with open(os.path.join(os.fsencode(watch_dir), b"late_\xe9.fastq"), "wb") as f:
            f.write(fastq_bytes(10_000, seed=78))
        files = d.wait_files(lambda fs: all_in("done", ["fine.fastq"])(fs)
                             and all_in("rejected", ["Probe_M\\xfcller.fastq", "late_\\xe9.fastq",
                                                     "in_folder.fastq"])(fs),
                             DEADLINE_S, "fine done, the three Latin-1 paths rejected")
        assert d.terminate() == 0
    rejected = [f for f in files if f["state"] == "rejected"]
    assert len(rejected) == 3 and all("rename" in f["error"] for f in rejected), rejected
    assert [s["filename"] for s in sandbox.samples()] == ["fine.fastq"]


def test_a_full_disk_under_the_queue_stalls_nothing_for_good(tmp_path: Path, sandbox: Sandbox,
                                                             watch_dir: Path) -> None:
    """Writes to the queue failing for a while (disk full) mid-upload: workers survive, the file is done afterwards."""
    import sqlite3

    from structlog.testing import capture_logs

    from daemon.queue.sqlite import SqliteStore

    class FillingDisk(SqliteStore):
        full_until = 0.0

        def _check(self) -> None:
            if time.monotonic() < self.full_until:
                full = sqlite3.OperationalError("database or disk is full")
                full.sqlite_errorcode = sqlite3.SQLITE_FULL     # as SQLite says it: the store's health counts it
                raise full

        def save_init(self, *a, **k):  # type: ignore[no-untyped-def]
            if not self.full_until:
                self.full_until = time.monotonic() + 2.0     # the disk fills as the first upload starts
            self._check()
            return super().save_init(*a, **k)

        def reschedule(self, *a, **k):  # type: ignore[no-untyped-def]
            self._check()
            return super().reschedule(*a, **k)

        def claim_next(self, *a, **k):  # type: ignore[no-untyped-def]
            self._check()
            return super().claim_next(*a, **k)

    cfg = write_config(tmp_path, watch=[watch_dir], api_url=sandbox.api_url, workers=1)
    (watch_dir / "full.fastq").write_bytes(fastq_bytes(10_000, seed=80))
    store = FillingDisk(str(tmp_path / "state" / "queue.sqlite3"))
    with capture_logs() as events, InProcess(cfg, store=store) as run:
        wait_for(lambda: [r.state for r in store.files()] == ["done"], DEADLINE_S,
                 lambda: f"full.fastq done after the disk recovered: {store.files()}")
        assert all(t.is_alive() for t in run.service.workers) and run.service.healthy()
    names = [e["event"] for e in events]
    assert "worker.died" not in names and "worker.store_error" in names and "service.queue_failed" not in names
    assert run.exit_code == 0
    assert len(confirmed(sandbox)) == 1


def test_metrics_and_webhook_report_what_happens(tmp_path: Path, sandbox: Sandbox, watch_dir: Path) -> None:
    """With metrics and a webhook configured, uploads show in /metrics and a failed file is announced."""
    import json
    import threading
    import urllib.request
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    received: list[dict] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    hook = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    sandbox.add_fault(Fault(target="init_upload", kind="status", status=400, message="No such project.",
                            after=1, times=None))
    (watch_dir / "ok.fastq").write_bytes(fastq_bytes(20_000, seed=90))
    cfg = write_config(tmp_path, watch=[watch_dir], api_url=sandbox.api_url, workers=1,
                       extra=f'\n[metrics]\nenabled = true\nlisten = "127.0.0.1:0"\n\n'
                             f'[notify]\nwebhook_url = "http://127.0.0.1:{hook.server_port}/hook"\nformat = "json"\n')
    try:
        with Daemon(cfg) as d:
            d.wait_files(all_in("done", ["ok.fastq"]), DEADLINE_S, "ok.fastq done")
            (watch_dir / "refused.fastq").write_bytes(fastq_bytes(20_000, seed=91))
            d.wait_files(all_in("failed", ["refused.fastq"]), DEADLINE_S, "refused.fastq failed")
            address = next(e["address"] for e in d.log_events() if e.get("event") == "metrics.listening")

            def scrape() -> str:
                with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as resp:
                    return resp.read().decode()

            text = wait_for(lambda: (lambda t: t if 'seqdrop_files{state="failed"} 1.0' in t else None)(scrape()),
                            15, "the housekeeping to publish the counts")
            assert "seqdrop_uploaded_files_total 1.0" in text
            assert 'seqdrop_files{state="done"} 1.0' in text and "seqdrop_paused 0.0" in text
            wait_for(lambda: any(r.get("event") == "file_failed" for r in received), 15, "the webhook call")
            assert d.terminate() == 0
    finally:
        hook.shutdown()
    [failed] = [r for r in received if r["event"] == "file_failed"]
    assert failed["path"].endswith("refused.fastq") and "No such project." in failed["error"]
    assert "test-key" not in json.dumps(received)


def test_systemd_hears_ready_status_watchdog_and_stopping(tmp_path: Path, sandbox: Sandbox, watch_dir: Path) -> None:
    """Under systemd (NOTIFY_SOCKET, WATCHDOG_USEC) the daemon sends READY=1, STATUS lines, WATCHDOG=1 and STOPPING=1."""
    import socket

    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(0.2)
    messages: list[str] = []

    def drain() -> list[str]:
        try:
            while True:
                messages.append(sock.recv(4096).decode())
        except (TimeoutError, BlockingIOError):
            pass
        return messages

    (watch_dir / "sd.fastq").write_bytes(fastq_bytes(10_000, seed=92))
    cfg = write_config(tmp_path, watch=[watch_dir], api_url=sandbox.api_url)
    try:
        with Daemon(cfg, env={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "2000000"}) as d:
            d.wait_files(all_in("done", ["sd.fastq"]), DEADLINE_S, "sd.fastq done")
            wait_for(lambda: any("WATCHDOG=1" in m for m in drain()), 10, lambda: f"WATCHDOG=1 in {messages}")
            assert d.terminate() == 0
            drain()
    finally:
        sock.close()
    text = "\n".join(messages)
    assert "READY=1" in text and "STOPPING=1" in text
    assert any(m.startswith("STATUS=") and "failed 0" in m for m in messages), messages
    assert text.index("READY=1") < text.index("STOPPING=1")


def test_status_while_the_queue_is_being_created(tmp_path: Path, watch_dir: Path) -> None:
    """`status --json` in the instant a first-time daemon has created the queue file but not its tables: empty, exit 0."""
    cfg = write_config(tmp_path, watch=[watch_dir], api_url="http://127.0.0.1:9")
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "queue.sqlite3").write_bytes(b"")   # what sqlite3.connect leaves before the schema
    done = cli(cfg, "status", "--json")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr


def test_files_settling_when_the_share_goes_are_not_called_vanished(tmp_path: Path, sandbox: Sandbox,
                                                                    watch_dir: Path) -> None:
    """A rescan while the whole watch folder is gone (unmounted) vanishes nothing; the file is uploaded on return."""
    cfg = write_config(tmp_path, watch=[watch_dir], api_url=sandbox.api_url, settle_s=4.0, rescan_interval_s=1)
    path = watch_dir / "w.fastq"
    with Daemon(cfg) as d:
        d.wait_ready()
        path.write_bytes(fastq_bytes(10_000, seed=93))
        d.wait_files(all_in("seen", ["w.fastq"]), DEADLINE_S, "w.fastq seen")
        aside = tmp_path / "unmounted"
        watch_dir.rename(aside)
        wait_for_event(d, "watch.root_missing")
        assert [f["state"] for f in d.files()] == ["seen"]
        aside.rename(watch_dir)
        files = d.wait_files(all_in("done", ["w.fastq"]), DEADLINE_S, "w.fastq done after the return")
        assert d.terminate() == 0
    assert [f["state"] for f in files] == ["done"]
    assert_uploaded_once(sandbox, path)


def test_files_over_the_limits_end_with_their_reason_unread(tmp_path: Path, sandbox: Sandbox, watch_dir: Path) -> None:
    """A file over One Codex's 20 GB is rejected for its size; one over 5 GiB is no longer refused for its size
    (it would take the multipart route), here its zeros are rejected by the first look; nothing is sent."""
    for name, size in (("big.fastq", 5 * 1024**3 + 1), ("huge.fastq", 20 * 1000**3 + 1)):
        with open(watch_dir / name, "wb") as f:     # sparse: no disk used, nothing worth reading
            f.truncate(size)
    cfg = write_config(tmp_path, watch=[watch_dir], api_url=sandbox.api_url)
    with Daemon(cfg) as d:
        files = d.wait_files(all_in("rejected", ["big.fastq", "huge.fastq"]), DEADLINE_S, "both rejected")
        assert d.terminate() == 0
    errors = {os.path.basename(f["path"]): f["error"] for f in files}
    assert "binary" in errors["big.fastq"] and "5 GiB" not in errors["big.fastq"]
    assert "20 GB" in errors["huge.fastq"]
    assert sandbox.requests() == []


def test_a_name_one_codex_would_refuse_is_sent_sanitised(tmp_path: Path, sandbox: Sandbox, watch_dir: Path) -> None:
    """A file name outside One Codex's filename pattern is uploaded under a sanitised name the API accepts."""
    path = watch_dir / "run#1 sample&2.fastq"
    path.write_bytes(fastq_bytes(10_000, seed=94))
    cfg = write_config(tmp_path, watch=[watch_dir], api_url=sandbox.api_url)
    with Daemon(cfg) as d:
        files = d.wait_files(all_in("done", [path.name]), DEADLINE_S, "the file done")
        assert d.terminate() == 0
    [sample] = confirmed(sandbox)
    assert re.fullmatch(r"^[\w\.]+[\w\-\.\[\]\(\)\{\} ]*\.[\w\.]+$", sample["filename"]), sample["filename"]
    assert sample["filename"].endswith(".fastq") and files[0]["path"] == str(path)
    assert Path(sample["object_path"]).read_bytes() == path.read_bytes()
