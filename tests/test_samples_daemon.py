"""Samples through the real daemon and the sandbox (issue 11, Must show 1 and 2): Illumina lanes and
pairs become one sample each, generic `_1/_2` pairs, an orphan mate, a late lane, pairing off, and
kill -9 at random moments during paired multi-lane uploads."""

from __future__ import annotations

import collections
import gzip
import json
import os
import random
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from harness import API_KEY, Daemon, cli, confirmed, wait_for, write_config

from daemon.sandbox import Fault, Sandbox

RUN = "240501_M00123_0042_000000000-ABCDE"
SEED = int(os.environ.get("SEQDROP_CRASH_SEED", "20261203"))


def pair_lane(sample: str, lane: int, reads: int, *, seed: int) -> tuple[bytes, bytes]:
    """R1 and R2 of one lane: the same read names (Illumina headers, read 1 and read 2)."""
    rng = random.Random(f"{sample}-{lane}-{seed}")
    r1, r2 = [], []
    for n in range(reads):
        name = f"@M00123:42:000000000-ABCDE:{lane}:1101:{1000 + n}:{rng.randint(1000, 9999)}"
        for out, read in ((r1, 1), (r2, 2)):
            seq = "".join(rng.choice("ACGT") for _ in range(rng.randint(60, 150)))
            out.append(f"{name} {read}:N:0:1\n{seq}\n+\n{'I' * len(seq)}\n")
    return "".join(r1).encode(), "".join(r2).encode()


def write_pair_lanes(folder: Path, prefix: str, reads: int, *, seed: int, lanes: tuple[int, ...] = (1, 2)) -> None:
    """`<prefix>_L00<lane>_R1_001.fastq` and its R2 for each lane: one paired library in lanes."""
    for lane in lanes:
        r1, r2 = pair_lane(prefix, lane, reads, seed=seed)
        (folder / f"{prefix}_L00{lane}_R1_001.fastq").write_bytes(r1)
        (folder / f"{prefix}_L00{lane}_R2_001.fastq").write_bytes(r2)


def samples_status(daemon: Daemon) -> list[dict[str, Any]]:
    return daemon.status()["samples"]


def wait_samples(daemon: Daemon, count: int, state: str = "done", timeout_s: float = 60.0) -> list[dict[str, Any]]:
    seen: dict[str, Any] = {}

    def check() -> list[dict[str, Any]] | None:
        assert daemon.alive(), daemon.log_tail()
        seen["samples"] = samples_status(daemon)
        done = [s for s in seen["samples"] if s["state"] == state]
        return seen["samples"] if len(done) >= count else None

    return wait_for(check, timeout_s, lambda: f"{count} samples {state}: {seen.get('samples')}\n{daemon.log_tail()}",
                    interval_s=0.2)


def config(tmp_path: Path, sandbox: Sandbox, watch: list[Any], samples: str = "group_wait_seconds = 1\n",
           **kwargs: Any) -> Path:
    return write_config(tmp_path, watch=watch, api_url=sandbox.api_url, extra=f"\n[samples]\n{samples}", **kwargs)


def recorded_posts(tmp_path: Path) -> set[str]:
    """The uploaded names of the reads whose POST the (killed) daemon's queue records: a lead at step
    posted_r1 has its R1 in S3; at posted, both."""
    db = sqlite3.connect(f"file:{tmp_path}/state/queue.sqlite3?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT s.name, f.step FROM files f JOIN samples s ON f.sample = s.id "
                          "WHERE f.step IN ('posted_r1', 'posted') AND f.role = 'R1'").fetchall()
    finally:
        db.close()
    return {f"{name}_{role}_001.fastq" for name, step in rows
            for role in (("R1",) if step == "posted_r1" else ("R1", "R2"))}


def posts_stored(sandbox: Sandbox) -> collections.Counter[str]:
    """Successful S3 POSTs at the sandbox, by the uploaded file name."""
    return collections.Counter(r.get("filename") for r in sandbox.requests()
                               if r["target"] == "s3" and r["status"] in (200, 201, 204) and r.get("filename"))


def show_sample(daemon: Daemon, local_id: int) -> dict[str, Any]:
    """`seqdrop show sN --json`: the whole sample, its warnings and late flag included."""
    done = cli(daemon.config, "show", f"s{local_id}", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def stored(sandbox: Sandbox, sample_id: str) -> dict[str, Any]:
    return next(s for s in sandbox.samples() if s["sample_id"] == sample_id)


def test_an_illumina_run_of_3_samples_by_4_lanes_becomes_3_paired_samples(tmp_path: Path, sandbox: Sandbox,
                                                                           watch_dir: Path) -> None:
    """3 samples × 4 lanes × R1/R2 (gzip) in a run folder with CopyComplete.txt: 3 confirmed paired samples,
    each read stored byte for byte as its lanes' concatenation, uploaded under names without the lane."""
    run = watch_dir / RUN
    run.mkdir()
    expected: dict[str, tuple[bytes, bytes]] = {}
    for n, name in enumerate(("Liver", "Kidney", "Gut"), start=1):
        r1_all, r2_all = b"", b""
        for lane in range(1, 5):
            r1, r2 = pair_lane(name, lane, 200, seed=n)
            r1z, r2z = gzip.compress(r1, mtime=0), gzip.compress(r2, mtime=0)
            (run / f"{name}_S{n}_L00{lane}_R1_001.fastq.gz").write_bytes(r1z)
            (run / f"{name}_S{n}_L00{lane}_R2_001.fastq.gz").write_bytes(r2z)
            r1_all, r2_all = r1_all + r1z, r2_all + r2z
        expected[f"{name}_S{n}_R1_001.fastq.gz"] = (r1_all, r2_all)
    (run / "Undetermined_S0_L001_I1_001.fastq.gz").write_bytes(gzip.compress(b"@i\nACGT\n+\nIIII\n"))
    cfg = config(tmp_path, sandbox, [{"path": watch_dir, "marker": "illumina"}])
    with Daemon(cfg) as daemon:
        daemon.wait_ready()
        daemon.wait_files(lambda files: len([f for f in files if "marker" in (f["error"] or "")]) >= 24, 20,
                          "every lane file settled and waiting for the marker")
        assert not [r for r in sandbox.requests() if r["target"] == "init_upload"]
        (run / "CopyComplete.txt").write_text("")
        samples = wait_samples(daemon, 3)
        files = daemon.status()["files"]
        assert daemon.terminate() == 0
    assert len(samples) == 3 and all(s["paired"] and len(s["files"]) == 8 for s in samples), samples
    assert {s["run"] for s in samples} == {RUN}
    at_sandbox = confirmed(sandbox)
    assert sorted(s["filename"] for s in at_sandbox) == sorted(expected)
    for s in at_sandbox:
        r1, r2 = expected[s["filename"]]
        assert s["paired_end_filename"] == s["filename"].replace("_R1_", "_R2_")
        assert Path(s["object_path"]).read_bytes() == r1
        assert Path(s["paired_object_path"]).read_bytes() == r2
    members = [f for f in files if "_L00" in f["path"] and "_I1_" not in f["path"]]
    assert len(members) == 24 and all(f["state"] == "done" and f["sample"] is not None for f in members)
    assert collections.Counter((f["role"], f["lane"]) for f in members) == {
        (role, lane): 3 for role in ("R1", "R2") for lane in range(1, 5)}
    assert len({f["sample_id"] for f in members}) == 3
    index = [f for f in files if "_I1_" in f["path"]]
    assert all(f["state"] != "done" or f["sample_id"] is None for f in index), index   # never uploaded


def test_a_generic_pair_an_orphan_and_a_late_lane(tmp_path: Path, sandbox: Sandbox, watch_dir: Path) -> None:
    """Without a marker: `reads_1/_2` pair after the group wait; an R1 whose R2 never comes goes single-end with
    a warning naming the missing mate; a lane that arrives after its sample was uploaded is a sample of its own,
    flagged late."""
    r1, r2 = pair_lane("generic", 1, 300, seed=7)
    (watch_dir / "reads_1.fastq").write_bytes(r1)
    (watch_dir / "reads_2.fastq").write_bytes(r2)
    lonely, _ = pair_lane("lonely", 1, 100, seed=8)
    (watch_dir / "Lonely_S9_L001_R1_001.fastq").write_bytes(lonely)
    cfg = config(tmp_path, sandbox, [watch_dir])
    with Daemon(cfg) as daemon:
        daemon.wait_ready()
        samples = wait_samples(daemon, 2)
        by_name = {s["name"]: s for s in samples}
        assert by_name["reads"]["paired"] is True
        assert by_name["Lonely_S9"]["paired"] is False
        lonely = show_sample(daemon, by_name["Lonely_S9"]["id"])
        assert any("R2" in w for w in lonely["warnings"]), lonely
        late, _ = pair_lane("lonely", 2, 100, seed=8)
        (watch_dir / "Lonely_S9_L002_R1_001.fastq").write_bytes(late)
        samples = wait_samples(daemon, 3)
        assert daemon.terminate() == 0
    late_samples = [s for s in samples if show_sample(daemon, s["id"])["late"]]
    assert len(late_samples) == 1 and late_samples[0]["state"] == "done", samples
    names = sorted((s["filename"], s.get("paired_end_filename")) for s in confirmed(sandbox))
    assert ("reads_1.fastq", "reads_2.fastq") in names and len(names) == 3, names


def test_pairing_off_uploads_each_file_as_its_own_sample(tmp_path: Path, sandbox: Sandbox, watch_dir: Path) -> None:
    r1, r2 = pair_lane("off", 1, 100, seed=9)
    (watch_dir / "Off_S1_L001_R1_001.fastq").write_bytes(r1)
    (watch_dir / "Off_S1_L001_R2_001.fastq").write_bytes(r2)
    cfg = config(tmp_path, sandbox, [watch_dir], samples='pairing = "off"\n')
    with Daemon(cfg) as daemon:
        daemon.wait_ready()
        samples = wait_samples(daemon, 2)
        assert daemon.terminate() == 0
    assert all(not s["paired"] and len(s["files"]) == 1 for s in samples)
    assert sorted(s["filename"] for s in confirmed(sandbox)) == ["Off_S1_L001_R1_001.fastq",
                                                                 "Off_S1_L001_R2_001.fastq"]


def test_kill_9_during_paired_multi_lane_uploads_confirms_each_sample_once(tmp_path: Path, sandbox: Sandbox,
                                                                            watch_dir: Path) -> None:
    """kill -9 at random (seeded) moments while 10 paired 2-lane samples upload: every sample confirmed once,
    no duplicate; no read POSTed again once the daemon had recorded its POST (the audit journal's
    sample.posted records against the sandbox's request log)."""
    rng = random.Random(SEED)
    run = watch_dir / RUN
    run.mkdir()
    for n in range(1, 11):
        write_pair_lanes(run, f"Lib{n:02d}_S{n}", 3000, seed=n)
    (run / "CopyComplete.txt").write_text("")
    sandbox.add_fault(Fault(target="init_upload", kind="delay", delay_s=0.1, times=None))
    sandbox.add_fault(Fault(target="confirm_upload", kind="delay", delay_s=0.2, times=None))
    cfg = config(tmp_path, sandbox, [{"path": watch_dir, "marker": "illumina"}], max_mbps=40)
    kills = 0
    frozen: dict[str, int] = {}      # a read whose POST was recorded: its successful POSTs at that moment
    with Daemon(cfg) as daemon:
        for round_ in range(5):
            if round_:
                daemon.start()
            daemon.wait_ready()
            time.sleep(rng.uniform(0.3, 1.5))      # a random moment to die at, not a synchronisation
            daemon.kill()
            kills += 1
            stored_now = posts_stored(sandbox)
            for name in recorded_posts(tmp_path):
                frozen.setdefault(name, stored_now[name])
        daemon.start()
        daemon.wait_ready()
        samples = wait_samples(daemon, 10, timeout_s=120)
        assert daemon.terminate() == 0
    assert kills == 5 and len(samples) == 10 and all(s["paired"] for s in samples)
    done = confirmed(sandbox)
    per_name = collections.Counter(s["filename"] for s in done)
    assert len(per_name) == 10 and set(per_name.values()) == {1}, per_name
    assert {s["sample_id"] for s in samples} == {s["sample_id"] for s in done}
    stored_end = posts_stored(sandbox)
    assert frozen, "no kill fell after a recorded POST: the check below checked nothing (change the seed)"
    assert all(n >= 1 for n in frozen.values()), frozen     # what the queue records as sent, S3 has
    assert {n: stored_end[n] for n in frozen} == frozen, "a read was POSTed again after its POST was recorded"


def test_a_run_folder_renamed_while_its_paired_sample_uploads(tmp_path: Path, sandbox: Sandbox,
                                                              watch_dir: Path) -> None:
    """design.md: a run folder renamed while one of its files is being uploaded ends that upload cleanly
    (sample cancelled, rows vanished), never a row stuck for ever — here with a paired 2-lane sample
    renamed during its R1's POST: the begun sample is cancelled, every member under the old path ends
    vanished naming the rename, and the files under the new name become one paired sample, confirmed once."""
    old, new = watch_dir / f"{RUN}_tmp", watch_dir / RUN
    old.mkdir()
    write_pair_lanes(old, "Ren_S1", 4000, seed=1)
    # 4 Mbit/s in 64 KiB blocks: each read (~1.7 MB) takes seconds, time enough to rename mid-POST
    cfg = config(tmp_path, sandbox, [watch_dir], max_mbps=4, block_size=65536)
    with Daemon(cfg) as daemon:
        daemon.wait_ready()
        daemon.wait_files(lambda files: any(f["state"] == "uploading" for f in files), 30, "the sample uploading")
        os.rename(old, new)
        samples = wait_samples(daemon, 1, timeout_s=90)
        files = daemon.wait_files(
            lambda fs: all(f["state"] in ("vanished", "done") for f in fs) and len(fs) == 8, 30,
            "the old members vanished, the new ones done")
        assert daemon.terminate() == 0
    gone = [f for f in files if f["path"].startswith(str(old) + os.sep)]
    kept = [f for f in files if f["path"].startswith(str(new) + os.sep)]
    assert len(gone) == 4 and all(f["state"] == "vanished" for f in gone), gone
    assert any(str(old) in (f["error"] or "") and "renamed" in (f["error"] or "") for f in gone), gone
    assert len(kept) == 4 and all(f["state"] == "done" for f in kept), kept
    done = [s for s in samples if s["state"] == "done"]
    assert len(done) == 1 and done[0]["paired"] and sorted(done[0]["files"]) == sorted(f["id"] for f in kept)
    at_sandbox = confirmed(sandbox)
    assert [(s["filename"], s["paired_end_filename"]) for s in at_sandbox] == [
        ("Ren_S1_R1_001.fastq", "Ren_S1_R2_001.fastq")]
    assert [s["state"] for s in sandbox.samples() if s["sample_id"] != done[0]["sample_id"]] == ["cancelled"]


def test_a_queue_truncated_after_paired_samples_uploads_none_of_them_again(tmp_path: Path, sandbox: Sandbox,
                                                                           watch_dir: Path) -> None:
    """3 paired 2-lane samples confirmed, then the queue truncated to 0 bytes (design.md: set aside, rebuilt
    from the audit journal): after the restart every member is done with its sample's id, One Codex gets
    no new sample for any of them; a paired sample dropped after the restart still goes, as one."""
    run = watch_dir / RUN
    run.mkdir()
    for n in range(1, 4):
        write_pair_lanes(run, f"Q{n}_S{n}", 300, seed=n)
    (run / "CopyComplete.txt").write_text("")
    cfg = config(tmp_path, sandbox, [{"path": watch_dir, "marker": "illumina"}])
    with Daemon(cfg) as daemon:
        daemon.wait_ready()
        wait_samples(daemon, 3)
        before = {f["path"]: f["sample_id"] for f in daemon.status()["files"]}
        assert daemon.terminate() == 0
        os.truncate(tmp_path / "state" / "queue.sqlite3", 0)
        daemon.start()
        daemon.wait_ready()
        late = watch_dir / "after"
        late.mkdir()
        r1, r2 = pair_lane("After", 1, 300, seed=99)
        (late / "After_R1.fastq").write_bytes(r1)
        (late / "After_R2.fastq").write_bytes(r2)
        (late / "CopyComplete.txt").write_text("")     # the watch path waits for Illumina's marker
        files = daemon.wait_files(lambda fs: sum(f["state"] == "done" for f in fs) == 14, 60,
                                  "the 12 members and the new pair done")
        samples_after = samples_status(daemon)
        assert daemon.terminate() == 0
    after = {f["path"]: f["sample_id"] for f in files}
    # the ended samples are samples again (from their sample.ended records), beside the new pair
    assert sorted((s["name"], s["paired"], len(s["files"]), s["state"]) for s in samples_after) == [
        ("After", True, 2, "done"), ("Q1_S1", True, 4, "done"), ("Q2_S2", True, 4, "done"), ("Q3_S3", True, 4, "done")]
    assert {s["sample_id"] for s in samples_after if s["name"] != "After"} == set(before.values())
    assert {p: after[p] for p in before} == before
    assert [e for e in daemon.log_events() if e.get("event") == "queue.rebuilt"][0]["restored"] == 12
    at_sandbox = confirmed(sandbox)
    assert len(sandbox.samples()) == len(at_sandbox) == 4, [s["filename"] for s in sandbox.samples()]
    assert ("After_R1.fastq", "After_R2.fastq") in [(s["filename"], s["paired_end_filename"]) for s in at_sandbox]


@pytest.mark.parametrize("moment", ["posted_r1", "posted"])
def test_a_queue_lost_while_a_paired_sample_is_in_flight_resumes_it_whole(tmp_path: Path, sandbox: Sandbox,
                                                                         watch_dir: Path, moment: str) -> None:
    """kill -9 while a paired 2-lane sample is in flight — its R1 in S3 and the R2's POST under way
    (posted_r1), or both reads in S3 and the confirm sent (posted) — then the queue truncated: the queue
    rebuilt from the journal resumes the sample whole. posted_r1: the begun sample cancelled (its POST
    forms are never journaled), a new one with both reads confirmed; posted: the same sample confirmed
    again. Never its lead file alone as a sample of its own (which a rebuild did before 2026-12-03:
    `P_S1_L001_R1_001.fastq` confirmed as a single-end sample, the other three members rejected)."""
    run = watch_dir / RUN
    run.mkdir()
    write_pair_lanes(run, "P_S1", 300, seed=1)
    (run / "CopyComplete.txt").write_text("")
    if moment == "posted_r1":    # the R2's POST (the second to S3) held until the daemon is dead
        sandbox.add_fault(Fault(target="s3", kind="delay", delay_s=20, times=1, after=1))
    else:
        sandbox.add_fault(Fault(target="confirm_upload", kind="delay", delay_s=20, times=1))
    journal_file = tmp_path / "state" / "journal.jsonl"
    cfg = config(tmp_path, sandbox, [{"path": watch_dir, "marker": "illumina"}])
    with Daemon(cfg) as daemon:
        daemon.wait_ready()
        # the step journaled: the R2's POST, or the confirm, is then held by the sandbox's delay
        wait_for(lambda: journal_file.exists() and f'"step": "{moment}"' in journal_file.read_text(), 30,
                 f"the sample's step {moment} journaled")
        daemon.kill()
        queue = tmp_path / "state" / "queue.sqlite3"
        os.truncate(queue, 0)
        for side in (Path(f"{queue}-wal"), Path(f"{queue}-shm")):
            side.unlink(missing_ok=True)
        daemon.start()
        daemon.wait_ready()
        [sample] = wait_samples(daemon, 1)
        files = daemon.status()["files"]
        assert daemon.terminate() == 0
    assert sample["paired"] and len(sample["files"]) == 4 and sample["state"] == "done", sample
    assert len(files) == 4 and all(f["state"] == "done" and f["sample_id"] == sample["sample_id"] for f in files)
    [kept] = confirmed(sandbox)
    assert (kept["filename"], kept["paired_end_filename"]) == ("P_S1_R1_001.fastq", "P_S1_R2_001.fastq")
    assert kept["sample_id"] == sample["sample_id"]
    others = [s["state"] for s in sandbox.samples() if s["sample_id"] != kept["sample_id"]]
    assert others == (["cancelled"] if moment == "posted_r1" else []), sandbox.samples()


@pytest.mark.parametrize("restart_key", ["same", "rotated"])
def test_an_in_flight_pairs_s3_forms_are_only_sealed_in_the_queue(tmp_path: Path, watch_dir: Path,
                                                                   restart_key: str) -> None:
    """A paired sample whose R1 is in S3 and whose R2's POST is under way (posted_r1) keeps its R2's signed
    form in the queue to resume without sending the R1 again — sealed with the API key, so no policy or
    signature the sandbox granted is in the queue's files (SQLite, WAL) nor the journal, even then (design.md:
    a policy and signature never appear in anything seqdrop stores). kill -9: restarted with the same key,
    only the R2 is sent again, one sample; with a rotated key the form cannot be opened, so that sample is
    cancelled and a new one gets both reads, confirmed once."""
    new_key = "rotated-key-0123456789abcdef0123456789"
    with Sandbox(api_keys=(API_KEY, new_key)) as sandbox:
        run = watch_dir / RUN
        run.mkdir()
        write_pair_lanes(run, "F_S1", 300, seed=1)
        (run / "CopyComplete.txt").write_text("")
        sandbox.add_fault(Fault(target="s3", kind="delay", delay_s=20, times=1, after=1))   # the R2's POST
        state = tmp_path / "state"
        cfg = config(tmp_path, sandbox, [{"path": watch_dir, "marker": "illumina"}])
        with Daemon(cfg) as daemon:
            daemon.wait_ready()
            wait_for(lambda: (state / "journal.jsonl").exists()
                     and '"step": "posted_r1"' in (state / "journal.jsonl").read_text(), 30, "posted_r1 journaled")
            wait_for(lambda: len([r for r in sandbox.requests() if r["target"] == "s3"]) >= 1
                     and recorded_posts(tmp_path) == {"F_S1_R1_001.fastq"}, 30, "the R1 recorded as posted")
            stored_bytes = {p.name: p.read_bytes() for p in sorted(state.iterdir()) if p.is_file()}
            daemon.kill()
            assert {"queue.sqlite3", "journal.jsonl"} <= set(stored_bytes), sorted(stored_bytes)
            granted = sandbox.granted_forms()
            assert len(granted) == 2, granted       # the R1's form and the R2's
            leaks = {(name, what[:12]) for name, data in stored_bytes.items() for form in granted
                     for what in form if what.encode() in data}
            assert not leaks, f"a policy or signature stored in clear: {leaks}"
            db = sqlite3.connect(f"file:{state}/queue.sqlite3?mode=ro", uri=True)
            try:
                [init] = db.execute("SELECT init FROM files WHERE step = 'posted_r1'").fetchone()
            finally:
                db.close()
            assert json.loads(init)["sealed"] and json.loads(init)["paired"] is True
            if restart_key == "rotated":
                daemon.api_key = new_key
            daemon.start()
            daemon.wait_ready()
            [sample] = wait_samples(daemon, 1)
            events = [e.get("event") for e in daemon.log_events()]
            assert daemon.terminate() == 0
        [kept] = confirmed(sandbox)
        assert kept["sample_id"] == sample["sample_id"] and kept["paired_end_filename"] == "F_S1_R2_001.fastq"
        posts = posts_stored(sandbox)
        if restart_key == "same":       # the R1 was not sent again, the begun sample went on
            assert posts == {"F_S1_R1_001.fastq": 1, "F_S1_R2_001.fastq": 1}, posts
            assert len(sandbox.samples()) == 1 and "upload.init_form_lost" not in events
        else:
            assert posts == {"F_S1_R1_001.fastq": 2, "F_S1_R2_001.fastq": 1}, posts
            # the begun sample is let go (never confirmed); the sandbox treats each key as a user of its
            # own, so the new key may not cancel it (One Codex's keys of one account could)
            assert [s["state"] for s in sandbox.samples()] in (["cancelled", "confirmed"],
                                                                ["initialized", "confirmed"])
            assert "upload.init_form_lost" in events


def test_a_touched_lane_of_a_confirmed_paired_sample_is_not_uploaded_again(tmp_path: Path, sandbox: Sandbox,
                                                                          watch_dir: Path) -> None:
    """`touch` of a lane file of a confirmed paired 2-lane sample (same bytes, new mtime): a new version
    recorded done with the same sample id, nothing sent — each lane file's own MD5 (the journal's) is what
    tells its bytes are those already confirmed."""
    write_pair_lanes(watch_dir, "T_S1", 200, seed=1)
    cfg = config(tmp_path, sandbox, [watch_dir])
    touched = watch_dir / "T_S1_L002_R2_001.fastq"
    with Daemon(cfg) as daemon:
        daemon.wait_ready()
        [sample] = wait_samples(daemon, 1)
        st = touched.stat()
        os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        files = daemon.wait_files(lambda fs: len(fs) == 5 and all(f["state"] == "done" for f in fs), 30,
                                  "the touched version recorded done")
        assert daemon.terminate() == 0
    new = max((f for f in files if f["path"] == str(touched)), key=lambda f: f["id"])
    assert new["sample_id"] == sample["sample_id"] and "not uploaded again" in (new["error"] or ""), new
    assert len(sandbox.samples()) == 1 and len(confirmed(sandbox)) == 1


def test_a_paired_init_answer_without_the_r2_form_is_cancelled_and_asked_again(tmp_path: Path, sandbox: Sandbox,
                                                                                watch_dir: Path) -> None:
    """A lying server: init_upload of a pair answers without `paired_end_upload_url`. That sample is
    cancelled (nothing could ever be sent to it), the delay names the missing field, and the next init
    gives a pair confirmed once — never the R1 sent alone as if single-end."""
    r1, r2 = pair_lane("X", 1, 100, seed=1)
    (watch_dir / "X_R1.fastq").write_bytes(r1)
    (watch_dir / "X_R2.fastq").write_bytes(r2)
    sandbox.add_fault(Fault(target="init_upload", kind="partial_init", omit=["paired_end_upload_url"], times=1))
    cfg = config(tmp_path, sandbox, [watch_dir])
    with Daemon(cfg) as daemon:
        daemon.wait_ready()
        [sample] = wait_samples(daemon, 1)
        assert daemon.terminate() == 0
    [delayed] = [e for e in daemon.log_events() if e.get("event") == "upload.delayed"]
    assert "lacks paired_end_upload_url;" in delayed["error"] and "cancelled" in delayed["error"], delayed
    assert sample["paired"] and sample["state"] == "done"
    [kept] = confirmed(sandbox)
    assert (kept["filename"], kept["paired_end_filename"]) == ("X_R1.fastq", "X_R2.fastq")
    assert [s["state"] for s in sandbox.samples() if s["sample_id"] != kept["sample_id"]] == ["cancelled"]
    assert [r.get("filename") for r in sandbox.requests() if r["target"] == "s3" and r.get("filename")] == [
        "X_R1.fastq", "X_R2.fastq"]      # nothing was POSTed under the cancelled sample
