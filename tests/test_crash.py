"""Crashes, stops and outages (issue 3, Must show 2-4): the daemon as a subprocess against the sandbox."""

from __future__ import annotations

import collections
import hashlib
import os
import random
import signal
import threading
import time
from pathlib import Path

from harness import (
    Daemon,
    all_in,
    by_name,
    confirmed,
    fastq_bytes,
    md5_file,
    wait_for,
    write_config,
)

from daemon.queue.journal import FILE_ENDED, journal_path, read_records
from daemon.sandbox import Fault, Sandbox

SEED = int(os.environ.get("SEQDROP_CRASH_SEED", "20261125"))   # set it to replay another run


def assert_each_file_confirmed_once(sb: Sandbox, files: dict[str, Path], status_files: list[dict]) -> None:
    """Every file is done, one confirmed sample per file version, each object byte-identical to its source."""
    groups = by_name(status_files)
    assert sorted(groups) == sorted(files), f"status lists {sorted(groups)}"
    samples = confirmed(sb)
    per_name = collections.Counter(s["filename"] for s in samples)
    assert all(n == 1 for n in per_name.values()), f"duplicate confirmed samples: {per_name}"
    by_id = {s["sample_id"]: s for s in samples}
    for name, path in files.items():
        rows = groups[name]
        assert [r["state"] for r in rows] == ["done"], f"{name}: {rows}"
        sample = by_id.get(rows[0]["sample_id"])
        assert sample is not None, f"{name}: status names sample {rows[0]['sample_id']}, not confirmed"
        assert sample["filename"] == name
        source_md5 = md5_file(path)
        assert sample["md5"] == source_md5, f"{name}: S3 holds other bytes"
        assert md5_file(sample["object_path"]) == source_md5, f"{name}: stored object differs"
    assert len(samples) == len(files)


def test_kill_9_at_random_moments_loses_and_duplicates_nothing(tmp_path: Path, sandbox: Sandbox,
                                                               watch_dir: Path) -> None:
    """kill -9 six times at random moments while 25 files upload, one of them still being written, and connections
    drop: every file done, byte-identical, one confirmed sample each."""
    rng = random.Random(SEED)
    files: dict[str, Path] = {}
    written: dict[str, str] = {}                  # relative path -> MD5 of the bytes the "sequencer" wrote

    def make(name: str) -> None:
        path = watch_dir / ("run_b" if len(files) % 3 == 0 else "run_a") / name
        path.parent.mkdir(exist_ok=True)
        data = fastq_bytes(rng.randint(200_000, 4_000_000), seed=len(files))
        path.write_bytes(data)
        files[name] = path
        written[str(path.relative_to(watch_dir))] = hashlib.md5(data).hexdigest()

    for i in range(12):
        make(f"early_{i:02d}.fastq")
    # Lost connections on top of the crashes: POSTs cut mid-body, and confirms performed by the
    # server whose answers are lost (the daemon must confirm the same sample again, never a new one).
    # (Added first: when several faults match a request, the earliest added applies.)
    sandbox.add_fault(Fault(target="s3", kind="drop", after=3, times=2))
    sandbox.add_fault(Fault(target="confirm_upload", kind="drop", after_body=True, after=2, times=3))
    # Slow every step down a little, so that kills land between init, POST, confirm and their records.
    sandbox.add_fault(Fault(target="init_upload", kind="delay", delay_s=0.15, times=None))
    sandbox.add_fault(Fault(target="confirm_upload", kind="delay", delay_s=0.3, times=None))
    cfg = write_config(tmp_path, watch=[watch_dir], api_url=sandbox.api_url, max_mbps=160, workers=2)
    # A sequencer still writing through the crashes (pauses shorter than settle_seconds).
    slow_path = watch_dir / "run_a" / "slow_writer.fastq"
    slow_data = fastq_bytes(1_500_000, seed=999)

    def slow_writer() -> None:
        with open(slow_path, "wb") as f:
            for i in range(15):
                f.write(slow_data[i * len(slow_data) // 15:(i + 1) * len(slow_data) // 15])
                f.flush()
                time.sleep(0.15)                  # the writer's pace, well under the 0.5 s settle time

    writer = threading.Thread(target=slow_writer, name="sequencer")
    written[str(slow_path.relative_to(watch_dir))] = hashlib.md5(slow_data).hexdigest()
    kills = 0
    with Daemon(cfg) as daemon:
        for round_ in range(6):
            if round_:
                daemon.start()
            daemon.wait_ready()
            if round_ == 1:
                for i in range(12):
                    make(f"late_{i:02d}.fastq")
                files[slow_path.name] = slow_path
                writer.start()
            time.sleep(rng.uniform(0.3, 2.0))     # the random moment of the crash (seeded)
            assert daemon.alive(), daemon.log_tail()
            daemon.kill()
            kills += 1
        writer.join()
        daemon.start()
        daemon.wait_ready()
        final = daemon.wait_files(all_in("done", files), 90, "every file done after the crashes")
        assert daemon.terminate() == 0
    assert kills == 6
    assert_each_file_confirmed_once(sandbox, files, final)
    # The watch folder holds exactly what was written there, byte for byte.
    digest = {rel: md5_file(watch_dir / rel) for rel in written}
    assert digest == written
    assert {str(p.relative_to(watch_dir)) for p in watch_dir.rglob("*") if p.is_file()} == set(written)
    # The audit journal: at most one `done` record per file version, each naming the sample status names
    # (a kill between the queue's commit and the journal's append may cost a record, never add a wrong one).
    done_records = [r for r in read_records(journal_path(str(tmp_path / "state" / "queue.sqlite3")), event=FILE_ENDED)
                    if r["state"] == "done"]
    versions = collections.Counter((r["path"], r["inode"], r["size"], r["mtime_ns"]) for r in done_records)
    assert all(n == 1 for n in versions.values()), versions
    sample_of = {f["path"]: f["sample_id"] for f in final}
    assert all(sample_of[r["path"]] == r["sample_id"] for r in done_records), done_records
    # What the crashes hit, for the reader of a failure: abandoned samples are allowed, duplicates are not.
    orphans = [s for s in sandbox.samples() if s["state"] != "confirmed"]
    reconfirmed = [s for s in confirmed(sandbox) if s["confirm_count"] > 1]
    print(f"crash test: {len(orphans)} abandoned samples, {len(reconfirmed)} confirmed twice (same sample)")


def test_sigterm_during_a_large_upload_exits_0_and_resumes(tmp_path: Path, sandbox: Sandbox,
                                                           watch_dir: Path) -> None:
    """SIGTERM in the middle of a 300 MB upload exits 0 within 10 s; after a restart the same sample completes."""
    path = watch_dir / "big.fastq"
    path.write_bytes(fastq_bytes(300_000_000, seed=99))
    # 400 Mbit/s: the POST takes about 6 s, so a SIGTERM 1.5 s in lands mid-transfer.
    cfg = write_config(tmp_path, watch=[watch_dir], api_url=sandbox.api_url, max_mbps=400)
    with Daemon(cfg) as d:
        d.wait_files(all_in("uploading", ["big.fastq"]), 30, "big.fastq uploading")
        time.sleep(1.5)                            # into the transfer (the moment under test)
        started = time.monotonic()
        assert d.terminate(timeout_s=10) == 0
        stop_s = time.monotonic() - started
        [sample] = sandbox.samples()
        assert sample["state"] == "initialized", "the SIGTERM came too late to interrupt the POST"
        row = d.files()[0]
        assert row["state"] == "queued"
        write_config(tmp_path, watch=[watch_dir], api_url=sandbox.api_url)   # no cap after the restart
        d.start()
        d.wait_files(all_in("done", ["big.fastq"]), 60, "big.fastq done after the restart")
        assert d.terminate() == 0
    assert stop_s < 10
    [sample] = sandbox.samples()                   # the same sample, POSTed again, not a new one
    assert sample["state"] == "confirmed" and sample["upload_count"] == 1
    assert sample["md5"] == md5_file(path) == md5_file(sample["object_path"])


def test_api_outage_and_revoked_key_lose_nothing(tmp_path: Path, sandbox: Sandbox, watch_dir: Path) -> None:
    """503s on init, S3 and confirm, then a revoked key: nothing failed, paused shown, all done without a restart."""
    files: dict[str, Path] = {}

    def drop(names: list[str], seed: int) -> None:
        for i, name in enumerate(names):
            path = watch_dir / name
            path.write_bytes(fastq_bytes(100_000 + 10_000 * i, seed=seed + i))
            files[name] = path

    def never_failed(fs: list[dict]) -> None:
        bad = [f for f in fs if f["state"] in ("failed", "rejected", "vanished")]
        assert not bad, f"a transient or auth problem ended a file: {bad}"

    outage_started = time.monotonic()
    sandbox.add_fault(Fault(target="confirm_upload", kind="status", status=503, times=None))
    cfg = write_config(tmp_path, watch=[watch_dir], api_url=sandbox.api_url, probe_interval_s=1)
    # 1. confirm is down: the first files reach S3 and wait, step 'posted', to be confirmed.
    drop(["c1.fastq", "c2.fastq", "c3.fastq"], 100)
    with Daemon(cfg) as d:
        wait_for(lambda: sum(s["state"] == "uploaded" for s in sandbox.samples()) == 3, 30,
                 lambda: f"three objects in S3\n{sandbox.samples()}\n{d.log_tail()}")
        # 2. S3 is down too: the next files are initialised but their POSTs are refused.
        sandbox.add_fault(Fault(target="s3", kind="status", status=503, times=None))
        drop(["s1.fastq", "s2.fastq"], 200)
        d.wait_files(lambda fs: all("S3 answered HTTP 503" in (g[-1]["error"] or "")
                                    for n, g in by_name(fs).items() if n in ("s1.fastq", "s2.fastq"))
                     and all_in("queued", ["s1.fastq", "s2.fastq"])(fs), 30, "S3 refusing s1 and s2")
        # 3. init is down too: new files cannot even start.
        sandbox.add_fault(Fault(target="init_upload", kind="status", status=503, times=None))
        drop(["i1.fastq", "i2.fastq"], 300)
        fs = d.wait_files(lambda fs: all_in("queued", ["i1.fastq", "i2.fastq"])(fs)
                          and all((f["error"] or "").count("503") for f in fs if f["state"] == "queued"),
                          30, "every file queued with the 503 as its last error")
        never_failed(fs)
        # The outage goes on (20 s in all); files wait, none fails.
        while time.monotonic() - outage_started < 20:
            never_failed(d.files())
            time.sleep(1)                          # the outage's length (the condition under test)
        # 4. The key is revoked, then the service comes back: every upload pauses.
        sandbox.set_api_keys([])
        sandbox.clear_faults()
        doc = wait_for(lambda: (lambda doc: doc if doc.get("paused") else None)(d.status()), 30,
                       lambda: f"status to show the pause\n{d.log_tail()}")
        assert "API key" in doc["paused"] or "401" in doc["paused"], doc["paused"]
        drop(["p1.fastq"], 400)                    # arrives while paused: queued, not lost
        fs = d.wait_files(all_in("queued", ["p1.fastq"]), 30, "p1 queued while paused")
        never_failed(fs)
        assert d.status()["paused"], "the pause ended while the key was still revoked"
        assert confirmed(sandbox) == []
        # 5. The key works again: the daemon notices by itself and finishes everything.
        sandbox.set_api_keys(["test-key"])
        final = d.wait_files(all_in("done", files), 60, "every file done after the recovery")
        assert d.status()["paused"] is None
        assert d.alive()
        assert d.terminate() == 0
    assert [e.get("event") for e in d.log_events()].count("service.ready") == 1   # no restart
    assert_each_file_confirmed_once(sandbox, files, final)


def _confirm_held(sb: Sandbox) -> bool:
    """The one-shot delay fault on confirm_upload has been taken: a confirm is being held, unanswered."""
    return any(s["state"] == "uploaded" for s in sb.samples()) and not sb.faults()


def test_sigterm_while_confirm_hangs_exits_0_within_10_s(tmp_path: Path, sandbox: Sandbox,
                                                         watch_dir: Path) -> None:
    """SIGTERM while a worker waits on an unanswered confirm still exits 0 within 10 s; a restart confirms the same sample."""
    sandbox.add_fault(Fault(target="confirm_upload", kind="delay", delay_s=60, times=1))
    path = watch_dir / "h.fastq"
    path.write_bytes(fastq_bytes(50_000, seed=500))
    cfg = write_config(tmp_path, watch=[watch_dir], api_url=sandbox.api_url)   # read timeout 20 s
    with Daemon(cfg) as d:
        wait_for(lambda: _confirm_held(sandbox), 30, lambda: f"the POST done, the confirm held\n{d.log_tail()}")
        started = time.monotonic()
        assert d.terminate(timeout_s=10) == 0
        assert time.monotonic() - started < 10
        d.start()
        d.wait_files(all_in("done", ["h.fastq"]), 30, "h.fastq done after the restart")
        assert d.terminate() == 0
    [sample] = sandbox.samples()
    assert sample["state"] == "confirmed"
    assert md5_file(sample["object_path"]) == md5_file(path)


def test_second_signal_exits_at_once(tmp_path: Path, sandbox: Sandbox, watch_dir: Path) -> None:
    """A second SIGTERM during a slow graceful stop ends the process at once; the next start finishes the file."""
    sandbox.add_fault(Fault(target="confirm_upload", kind="delay", delay_s=60, times=1))
    path = watch_dir / "q.fastq"
    path.write_bytes(fastq_bytes(50_000, seed=501))
    cfg = write_config(tmp_path, watch=[watch_dir], api_url=sandbox.api_url)
    with Daemon(cfg) as d:
        wait_for(lambda: _confirm_held(sandbox), 30, lambda: f"the POST done, the confirm held\n{d.log_tail()}")
        d.signal(signal.SIGTERM)
        wait_for(lambda: any(e.get("event") == "service.stopping" for e in d.log_events()), 5,
                 "the graceful stop to begin")
        started = time.monotonic()
        d.signal(signal.SIGTERM)
        code = d.proc.wait(10)
        assert time.monotonic() - started < 2, "the second signal did not stop the process at once"
        assert code is not None
        d.start()
        d.wait_files(all_in("done", ["q.fastq"]), 30, "q.fastq done after the restart")
        assert d.terminate() == 0
    [sample] = sandbox.samples()
    assert sample["state"] == "confirmed"


def test_pause_survives_a_restart(tmp_path: Path, sandbox: Sandbox, watch_dir: Path) -> None:
    """A daemon paused on a revoked key and restarted stays paused (status says so) and resumes once the key works."""
    sandbox.set_api_keys([])
    path = watch_dir / "p.fastq"
    path.write_bytes(fastq_bytes(20_000, seed=502))
    cfg = write_config(tmp_path, watch=[watch_dir], api_url=sandbox.api_url, probe_interval_s=1)
    with Daemon(cfg) as d:
        wait_for(lambda: d.status().get("paused"), 30, lambda: f"the pause\n{d.log_tail()}")
        assert d.terminate() == 0
        d.start()
        d.wait_ready()
        doc = d.status()
        assert doc["paused"] and [f["state"] for f in doc["files"]] == ["queued"]
        sandbox.set_api_keys(["test-key"])
        d.wait_files(all_in("done", ["p.fastq"]), 30, "p.fastq done once the key works")
        assert d.status()["paused"] is None
        assert d.terminate() == 0
    assert len(confirmed(sandbox)) == 1


def test_pause_ends_by_a_real_request_when_the_api_has_no_probe_endpoint(tmp_path: Path, sandbox: Sandbox,
                                                                          watch_dir: Path) -> None:
    """With GET /api/v1/samples answering 404, a paused daemon tries one real upload per probe: the pause
    holds (one alert, nothing failed) while the key is refused and ends by itself once it works."""
    sandbox.add_fault(Fault(target="samples", kind="status", status=404, times=None))
    sandbox.set_api_keys([])
    names = [f"t{i}.fastq" for i in range(3)]
    for i, name in enumerate(names):
        (watch_dir / name).write_bytes(fastq_bytes(20_000, seed=610 + i))
    cfg = write_config(tmp_path, watch=[watch_dir], api_url=sandbox.api_url, probe_interval_s=1)
    with Daemon(cfg) as d:
        wait_for(lambda: d.status().get("paused"), 30, lambda: f"the pause\n{d.log_tail()}")
        # Several probes, each answered 404, each followed by one refused trial upload.
        wait_for(lambda: [e.get("event") for e in d.log_events()].count("uploads.probe_by_request") >= 3, 30,
                 lambda: f"three probes by request\n{d.log_tail()}")
        doc = d.status()
        assert doc["paused"], "a refused trial request ended the pause"
        assert sorted(f["state"] for f in doc["files"]) == ["queued"] * 3, doc["files"]
        sandbox.set_api_keys(["test-key"])
        d.wait_files(all_in("done", names), 60, "every file done once the key works")
        assert d.status()["paused"] is None
        assert d.terminate() == 0
    events = [e.get("event") for e in d.log_events()]
    assert events.count("uploads.paused") == 1 and events.count("uploads.resumed") == 1, events
    assert len(confirmed(sandbox)) == 3


def test_a_key_replaced_in_the_credential_file_is_used_without_a_restart(tmp_path: Path, sandbox: Sandbox,
                                                                          watch_dir: Path) -> None:
    """Paused on a rejected key read from the systemd credential; the admin writes the new key
    there: uploads resume by themselves, no restart, and neither key reaches the log."""
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "onecodex-api-key").write_text("old-key-revoked\n")
    sandbox.set_api_keys(["new-key-0123"])
    (watch_dir / "k.fastq").write_bytes(fastq_bytes(20_000, seed=630))
    cfg = write_config(tmp_path, watch=[watch_dir], api_url=sandbox.api_url, probe_interval_s=1)
    with Daemon(cfg, api_key=None, env={"CREDENTIALS_DIRECTORY": str(creds)}) as d:
        wait_for(lambda: d.status().get("paused"), 30, lambda: f"the pause\n{d.log_tail()}")
        (creds / "onecodex-api-key").write_text("new-key-0123\n")
        d.wait_files(all_in("done", ["k.fastq"]), 30, "k.fastq done with the new key")
        assert d.status()["paused"] is None
        assert d.terminate() == 0
    events = [e.get("event") for e in d.log_events()]
    assert events.count("service.ready") == 1 and "uploads.key_reloaded" in events, events
    text = d.log_tail(10_000)
    assert "new-key-0123" not in text and "old-key-revoked" not in text
    assert len(confirmed(sandbox)) == 1


def test_expired_policy_at_resume_starts_a_new_sample_and_cancels_the_old(tmp_path: Path, sandbox: Sandbox,
                                                                          watch_dir: Path) -> None:
    """An upload interrupted with a policy too close to expiry is re-initialised; the old sample is cancelled."""
    sandbox.policy_lifetime_s = 30      # under the pipeline's margin: a stored policy is never reused
    path = watch_dir / "e.fastq"
    path.write_bytes(fastq_bytes(30_000_000, seed=503))
    cfg = write_config(tmp_path, watch=[watch_dir], api_url=sandbox.api_url, max_mbps=80)
    with Daemon(cfg) as d:
        d.wait_files(all_in("uploading", ["e.fastq"]), 30, "e.fastq uploading")
        wait_for(lambda: sandbox.samples(), 10, "the sample to be initialised")
        assert d.terminate() == 0
        write_config(tmp_path, watch=[watch_dir], api_url=sandbox.api_url)
        d.start()
        d.wait_files(all_in("done", ["e.fastq"]), 30, "e.fastq done after the restart")
        assert d.terminate() == 0
    old, new = sandbox.samples()
    assert old["state"] == "cancelled" and new["state"] == "confirmed"
    assert md5_file(new["object_path"]) == md5_file(path)


def test_sigterm_while_a_probe_hangs_exits_0_within_10_s(tmp_path: Path, sandbox: Sandbox,
                                                         watch_dir: Path) -> None:
    """SIGTERM while paused uploads are probing an API that does not answer still exits 0 within 10 s."""
    sandbox.set_api_keys([])
    (watch_dir / "w.fastq").write_bytes(fastq_bytes(20_000, seed=504))
    cfg = write_config(tmp_path, watch=[watch_dir], api_url=sandbox.api_url, probe_interval_s=1)
    with Daemon(cfg) as d:
        wait_for(lambda: d.status().get("paused"), 30, lambda: f"the pause\n{d.log_tail()}")
        sandbox.add_fault(Fault(target="samples", kind="delay", delay_s=60, times=1))
        wait_for(lambda: not sandbox.faults(), 10, lambda: f"a probe held by the sandbox\n{d.log_tail()}")
        started = time.monotonic()
        assert d.terminate(timeout_s=12) == 0
        assert time.monotonic() - started < 10, f"took {time.monotonic() - started:.1f} s"
