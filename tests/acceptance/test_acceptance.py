"""Acceptance: seqdrop as a black box (its CLI, its config, `status --json`) against an independent
One Codex + S3 emulator (tests/acceptance/emulator.py), judged by ../shared/design.md only."""

from __future__ import annotations

import bz2
import datetime as dt
import gzip
import json
import os
import random
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from emulator import Emulator, Fault
from harness import PYTHON, ROOT, Daemon, by_name, daemon_env, fastq_bytes, wait_for

KEY = "oc-accept-" + secrets.token_hex(12)
STATES = {"seen", "queued", "uploading", "done", "rejected", "failed", "vanished"}
# design.md turn 2: each file entry also names its local sample, its role and its lane.
FILE_KEYS = {"id", "path", "state", "size", "sample_id", "attempts", "error", "updated_at",
             "sample", "role", "lane"}
SAMPLE_KEYS = {"id", "name", "run", "paired", "files", "state", "sample_id", "project", "tags", "error", "updated_at"}


# -- fixtures and helpers ----------------------------------------------------------------------
@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator(api_key=KEY) as e:
        yield e
        assert e.violations == [], f"protocol violations: {e.violations}"


@pytest.fixture
def watch(tmp_path: Path) -> Path:
    path = tmp_path / "watch"
    path.mkdir()
    return path


def config(tmp_path: Path, base_url: str, watch: Path, *, settle_s: float = 0.5, workers: int = 2,
           probe_interval_s: float = 2.0, extra: str = "") -> Path:
    """A config with documented keys only (config.example.toml); relative queue path."""
    path = tmp_path / "seqdrop.toml"
    path.write_text(f'[api]\nbase_url = "{base_url}"\nprobe_interval_s = {probe_interval_s}\n'
                    f"connect_timeout_s = 3\nread_timeout_s = 10\n\n"
                    f'[watch]\npaths = ["{watch}"]\nsettle_seconds = {settle_s}\n\n'
                    f'[queue]\npath = "state/queue.sqlite3"\n\n'
                    f"[upload]\nworkers = {workers}\nmax_backoff_s = 2\n\n"
                    f'[log]\nlevel = "info"\nformat = "json"\n{extra}')
    return path


def seqdrop(cfg: Path, *args: str, key: str | None = KEY, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "daemon", *args, "--config", str(cfg)], cwd=ROOT,
                          env=daemon_env(key), capture_output=True, text=True, timeout=timeout_s)


def status(cfg: Path) -> dict[str, Any]:
    done = seqdrop(cfg, "status", "--json")
    assert done.returncode == 0, done.stderr
    assert KEY not in done.stdout + done.stderr
    return json.loads(done.stdout)


def wait_files(d: Daemon, predicate: Any, timeout_s: float, what: str,
               watch_states: set[str] | None = None) -> list[dict[str, Any]]:
    """Poll status until predicate(files); fail at once if a file enters a state in watch_states."""
    last: dict[str, Any] = {}

    def check() -> Any:
        assert d.alive(), f"the daemon exited ({d.proc.returncode}) waiting for {what}\n{d.log_tail()}"
        files = status(d.config)["files"]
        last["files"] = files
        bad = [f for f in files if watch_states and f["state"] in watch_states]
        assert not bad, f"unexpected state while waiting for {what}: {bad}"
        return files if predicate(files) else None

    return wait_for(check, timeout_s, lambda: f"{what}\n{json.dumps(last.get('files'), indent=1)}\n{d.log_tail()}",
                    interval_s=0.2)


def latest(files: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: versions[-1] for name, versions in by_name(files).items()}


def all_settled(names: dict[str, str]) -> Any:
    """Predicate: each named file's latest version is in the given state."""
    def check(files: list[dict[str, Any]]) -> bool:
        now = latest(files)
        return all(n in now and now[n]["state"] == s for n, s in names.items())
    return check


def fasta_bytes(n: int, seed: int) -> bytes:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        seq = "".join(rng.choice("ACGTN") for _ in range(150))
        out.append(f">contig_{i} len=150\n" + "\n".join(seq[j:j + 60] for j in range(0, 150, 60)) + "\n")
    return "".join(out).encode()


def samples_named(emu: Emulator, name: str) -> list[Any]:
    return [s for s in emu.confirmed() if s.filename == name]


def assert_no_key_leak(tmp_path: Path, *texts: str) -> None:
    for text in texts:
        assert KEY not in text
    for path in tmp_path.rglob("*"):
        if path.is_file() and "watch" not in path.parts:
            assert KEY.encode() not in path.read_bytes(), f"the API key is in {path}"


# -- the happy path, status, names, rejects, touch, duplicates, SIGTERM ----------------------------
def test_files_end_byte_identical_in_one_sample_each(tmp_path: Path, emu: Emulator, watch: Path) -> None:
    """Every type reaches exactly one confirmed, byte-identical sample; junk is rejected, hidden and
    temporary names stay invisible, identical files at two paths are two samples, a touch is not
    re-uploaded, retry --rejected requeues, SIGTERM exits 0 promptly, and the key leaks nowhere."""
    fq = fastq_bytes(40_000, seed=1)
    good = {"plain.fastq": fq, "zipped.fq.gz": gzip.compress(fastq_bytes(30_000, seed=2)),
            "ref.fasta": fasta_bytes(50, seed=3), "bzipped.fastq.bz2": bz2.compress(fastq_bytes(20_000, seed=4)),
            "contigs.fna.gz": gzip.compress(fasta_bytes(20, seed=5))}
    for name, data in good.items():
        (watch / name).write_bytes(data)
    (watch / "a").mkdir()
    (watch / "b").mkdir()
    same = fastq_bytes(5_000, seed=6)
    (watch / "a" / "same.fastq").write_bytes(same)
    (watch / "b" / "same.fastq").write_bytes(same)
    (watch / "truncated.fastq.gz").write_bytes(gzip.compress(fastq_bytes(50_000, seed=7))[:-4000])
    (watch / "empty.fastq").write_bytes(b"")
    with open(watch / "huge.fastq", "wb") as f:       # sparse: over One Codex's 20 GB per sample
        f.truncate(20 * 1000**3 + 1)
    (watch / "sample [1] (a).fastq").write_bytes(fastq_bytes(3_000, seed=9))   # matches the API's pattern
    (watch / "we#ird!.fastq").write_bytes(fastq_bytes(3_000, seed=10))   # does not: sanitised
    (watch / "garbage.fastq").write_bytes(random.Random(8).randbytes(30_000))
    invisible = [".hidden.fastq", ".rsync.fastq.Xy12Ab", "x.fastq.part", "y.fastq.gz.tmp", "~$z.fastq",
                 ".trash/old.fastq", "notes.txt"]
    for name in invisible:
        (watch / name).parent.mkdir(exist_ok=True)
        (watch / name).write_bytes(fq)
    cfg = config(tmp_path, emu.base_url, watch, settle_s=1.0)
    before = seqdrop(cfg, "status", "--json")
    assert before.returncode == 0 and json.loads(before.stdout)["files"] == [], before

    outputs = []
    with Daemon(cfg, api_key=KEY) as d:
        d.wait_ready()
        second = seqdrop(cfg, "run", timeout_s=20)
        assert second.returncode == 1 and "Traceback" not in second.stderr, second
        # A file still being written: appended to for ~3 s (longer than settle_seconds).
        growing = watch / "growing.fastq"
        last_write = {}

        def writer() -> None:
            with open(growing, "wb") as f:
                for i in range(12):
                    f.write(fastq_bytes(2_000, seed=100 + i))
                    f.flush()
                    last_write["t"] = time.time()
                    time.sleep(0.25)   # the sequencer's pace, not a synchronisation
        w = threading.Thread(target=writer)
        w.start()
        # Copies that write a temporary name, then rename (rsync, curl): only the final name counts.
        late = {"late.fastq": fastq_bytes(9_000, seed=17), "fetched.fq": fastq_bytes(9_000, seed=18)}
        for temp, final in ((".late.fastq.Q1w2E3", "late.fastq"), ("fetched.fq.part", "fetched.fq")):
            (watch / temp).write_bytes(late[final])
            os.rename(watch / temp, watch / final)
            invisible.append(temp)
        w.join()
        want = {**{n: "done" for n in good}, **{n: "done" for n in late}, "same.fastq": "done",
                "growing.fastq": "done", "sample [1] (a).fastq": "done", "we#ird!.fastq": "done",
                "truncated.fastq.gz": "rejected", "garbage.fastq": "rejected",
                "empty.fastq": "rejected", "huge.fastq": "rejected"}
        files = wait_files(d, all_settled(want), 40, "every file done or rejected",
                           watch_states={"failed", "vanished"})

        # status --json: the schema of design.md (plus the documented `paused`).
        doc = status(cfg)
        assert {"counts", "files"} <= set(doc) <= {"counts", "files", "samples", "paused"}
        assert set(doc["counts"]) == STATES
        for f in doc["files"]:
            assert set(f) == FILE_KEYS, f
            assert os.path.isabs(f["path"]) and f["state"] in STATES
            assert isinstance(f["id"], int) and isinstance(f["size"], int) and isinstance(f["attempts"], int)
            dt.datetime.fromisoformat(f["updated_at"].replace("Z", "+00:00"))
        for sample in doc.get("samples", []):
            assert set(sample) == SAMPLE_KEYS, sample
            assert sample["state"] in STATES and all(isinstance(i, int) for i in sample["files"])
        assert sum(doc["counts"].values()) == len(doc["files"])
        names = {os.path.relpath(f["path"], watch) for f in files}
        assert not names & set(invisible), names

        for name, data in {**good, **late}.items():
            got = samples_named(emu, name)
            assert len(got) == 1 and emu.objects[got[0].key] == data, name
            assert latest(files)[name]["sample_id"] == got[0].sample_id
            assert latest(files)[name]["size"] == len(data)
        assert [s.confirms for s in emu.confirmed()] == [1] * len(emu.confirmed())
        pair = [s for s in samples_named(emu, "same.fastq")]
        assert len(pair) == 2 and {emu.objects[s.key] for s in pair} == {same}
        assert len({f["sample_id"] for f in files if f["path"].endswith("/same.fastq")}) == 2
        grown = samples_named(emu, "growing.fastq")
        assert len(grown) == 1 and emu.objects[grown[0].key] == growing.read_bytes()
        first_init = min(r.at for r in emu.calls("init") if r.body.get("filename") == "growing.fastq")
        assert first_init > last_write["t"], "a file still being written was uploaded"
        assert len(samples_named(emu, "sample [1] (a).fastq")) == 1, "a name that matches is sent unchanged"
        assert len([s for s in emu.confirmed() if "ird" in s.filename]) == 1   # sanitised (emulator checks)
        for bad in ("truncated.fastq.gz", "garbage.fastq", "empty.fastq", "huge.fastq"):
            entry = latest(files)[bad]
            assert entry["error"] and len(entry["error"]) > 15 and "Traceback" not in entry["error"], entry
            assert not samples_named(emu, bad)

        # touch: a new version, recorded, not uploaded again.
        inits = len(emu.calls("init"))
        os.utime(watch / "plain.fastq")
        files = wait_files(d, lambda fs: len(by_name(fs)["plain.fastq"]) == 2
                           and by_name(fs)["plain.fastq"][-1]["state"] == "done", 20, "the touched version done")
        assert len(emu.calls("init")) == inits and len(samples_named(emu, "plain.fastq")) == 1
        # changed bytes: a new version, a new sample.
        more = good["ref.fasta"] + fasta_bytes(3, seed=99)
        with open(watch / "ref.fasta", "ab") as f:
            f.write(fasta_bytes(3, seed=99))
        wait_files(d, lambda fs: len(by_name(fs)["ref.fasta"]) == 2
                   and by_name(fs)["ref.fasta"][-1]["state"] == "done", 20, "the changed version done")
        assert sorted(emu.objects[s.key] for s in samples_named(emu, "ref.fasta")) == sorted([good["ref.fasta"], more])

        # retry --rejected, with the daemon running: it picks them up and judges them again.
        rejected_before = sum(1 for e in d.log_events() if e.get("event") == "file.rejected")
        done = seqdrop(cfg, "retry", "--rejected")
        outputs += [done.stdout, done.stderr]
        assert done.returncode == 0 and "4" in done.stdout, done
        wait_for(lambda: sum(1 for e in d.log_events() if e.get("event") == "file.rejected") >= rejected_before + 4,
                 20, "the retried files judged again")
        wait_files(d, all_settled(want), 20, "the retried files rejected again")

        started = time.monotonic()
        assert d.terminate(10) == 0
        stop_s = time.monotonic() - started
    assert stop_s < 10
    dangling = [s for s in emu.samples.values() if s.state == "initialized"]
    assert not dangling, "a sample left neither confirmed nor cancelled"
    text = seqdrop(cfg, "status")
    outputs += [text.stdout, text.stderr, d.log_path.read_text()]
    assert_no_key_leak(tmp_path, *outputs)


def test_a_run_folder_waits_for_its_marker(tmp_path: Path, emu: Emulator, watch: Path) -> None:
    """A watch entry with a marker, nested in another watch folder: its files wait (seen, the error
    names the marker); one deleted meanwhile has vanished; the marker lets the rest go."""
    run = watch / "run2"
    run.mkdir()
    (run / "m1.fastq").write_bytes(fastq_bytes(3_000, seed=15))
    (run / "m2.fastq").write_bytes(fastq_bytes(3_000, seed=16))
    cfg = config(tmp_path, emu.base_url, watch)
    cfg.write_text(cfg.read_text().replace(
        f'paths = ["{watch}"]', f'paths = ["{watch}", {{path = "{run}", marker = "glob:RunDone.txt"}}]'))
    with Daemon(cfg, api_key=KEY) as d:
        wait_files(d, lambda fs: all(f["state"] == "seen" and "RunDone.txt" in (f["error"] or "") for f in fs)
                   and len(fs) == 2, 20, "the run's files waiting for the marker",
                   watch_states={"queued", "uploading", "done"})
        (run / "m2.fastq").unlink()
        wait_files(d, all_settled({"m2.fastq": "vanished"}), 20, "m2.fastq vanished")
        (run / "RunDone.txt").write_text("done\n")
        wait_files(d, all_settled({"m1.fastq": "done", "m2.fastq": "vanished"}), 20, "m1.fastq done")
        assert d.terminate() == 0
    assert len(samples_named(emu, "m1.fastq")) == 1 and not samples_named(emu, "m2.fastq")


# -- crashes ---------------------------------------------------------------------------------------
def test_kill_9_mid_upload_and_mid_confirm_makes_one_sample(tmp_path: Path, emu: Emulator, watch: Path) -> None:
    """kill -9 while S3 is answering, then while confirm is answering: after each restart, exactly one
    confirmed sample per file and no new sample for a file whose upload may be confirmed."""
    cfg = config(tmp_path, emu.base_url, watch, workers=1)
    emu.inject("s3", Fault(delay_s=2.0))
    (watch / "one.fastq").write_bytes(fastq_bytes(20_000, seed=11))
    d = Daemon(cfg, api_key=KEY)
    with d:
        wait_for(lambda: emu.calls("s3"), 20, "the S3 POST")
        d.kill()
    with d:
        wait_files(d, all_settled({"one.fastq": "done"}), 20, "one.fastq done after the restart")
        emu.inject("confirm", Fault(delay_s=2.0))
        (watch / "two.fastq").write_bytes(fastq_bytes(20_000, seed=12))
        first = samples_named(emu, "one.fastq")[0].sample_id
        wait_for(lambda: [r for r in emu.calls("confirm") if r.body["sample_id"] != first], 20,
                 "the confirm of two.fastq")
        d.kill()
    with d:
        wait_files(d, all_settled({"one.fastq": "done", "two.fastq": "done"}), 20, "both done")
        # SIGTERM while S3 takes its time: exit 0 within 10 s; the next start finishes the file.
        emu.inject("s3", Fault(delay_s=4.0))
        (watch / "three.fastq").write_bytes(fastq_bytes(20_000, seed=13))
        wait_for(lambda: len(emu.calls("s3")) == 4, 20, "the S3 POST of three.fastq")
        started = time.monotonic()
        assert d.terminate(10) == 0
        assert time.monotonic() - started < 10
    with d:
        files = wait_files(d, all_settled({"one.fastq": "done", "two.fastq": "done", "three.fastq": "done"}),
                           20, "all done")
        assert d.terminate() == 0
    for name, seed in (("one.fastq", 11), ("two.fastq", 12), ("three.fastq", 13)):
        got = samples_named(emu, name)
        assert len(got) == 1 and emu.objects[got[0].key] == fastq_bytes(20_000, seed=seed)
        assert latest(files)[name]["sample_id"] == got[0].sample_id
    assert len(emu.samples) == 3, "a new sample was started after the crash"


# -- faults ---------------------------------------------------------------------------------------
def test_transient_faults_delay_but_never_fail(tmp_path: Path, emu: Emulator, watch: Path) -> None:
    """503 with Retry-After, 429, S3 SlowDown, drops before and after acting, slow answers, an ETag that
    is not the MD5 (never confirmed as is): all files end done, none ever failed, one sample each, no
    sample left dangling."""
    emu.etag_mode = "header"
    emu.inject("init", Fault(status=503, retry_after="2", message="Service Unavailable"),
               Fault(status=429, retry_after="1", message="Too Many Requests"), Fault(drop="before"))
    emu.inject("s3", Fault(drop="before"),
               Fault(status=503, code="SlowDown", message="Please reduce your request rate."),
               Fault(drop="after"), Fault(delay_s=1.0), Fault(etag='"0123456789abcdef0123456789abcdef"'))
    emu.inject("confirm", Fault(drop="after"), Fault(status=502, message="Bad Gateway"), Fault(drop="before"))
    data = {f"t{i}.fastq": fastq_bytes(15_000, seed=20 + i) for i in range(3)}
    for name, content in data.items():
        (watch / name).write_bytes(content)
    with Daemon(config(tmp_path, emu.base_url, watch), api_key=KEY) as d:
        files = wait_files(d, all_settled({n: "done" for n in data}), 45, "all done through the faults",
                           watch_states={"failed", "rejected", "vanished"})
        assert d.terminate() == 0
    assert not any(emu.faults.values()), f"faults not consumed: {emu.faults}"
    inits = emu.calls("init")
    first = next(r for r in inits if r.answered == 503)
    again = next(r for r in inits if r.at > first.at and r.body["filename"] == first.body["filename"])
    assert again.at - first.at >= 1.9, "Retry-After: 2 was not honoured"
    for name, content in data.items():
        got = samples_named(emu, name)
        assert len(got) == 1 and emu.objects[got[0].key] == content
        assert latest(files)[name]["error"] in (None, "") or "sample" in latest(files)[name]["error"]
    assert not [s for s in emu.samples.values() if s.state == "initialized"]


def test_refusals_fail_the_file_with_the_servers_message(tmp_path: Path, emu: Emulator, watch: Path) -> None:
    """init 400, init 413, S3 EntityTooLarge, an http:// upload_url on another host: the file is failed
    with the server's own message (or a word on https), and nothing is sent to a plain-http host."""
    messages = ["Filename extension is not allowed for this account",
                "Sample exceeds the size allowed by your plan",
                "Your proposed upload exceeds the maximum allowed size"]
    emu.inject("init", Fault(status=400, message=messages[0]), Fault(status=413, message=messages[1]),
               Fault(upload_url="http://s3.example.org/bucket"))
    emu.inject("s3", Fault(status=400, code="EntityTooLarge", message=messages[2]))
    names = [f"r{i}.fastq" for i in range(4)]
    for i, name in enumerate(names):
        (watch / name).write_bytes(fastq_bytes(5_000, seed=30 + i))
    with Daemon(config(tmp_path, emu.base_url, watch), api_key=KEY) as d:
        files = wait_files(d, all_settled({n: "failed" for n in names}), 30, "all failed",
                           watch_states={"done", "rejected"})
        assert d.terminate() == 0
    errors = [latest(files)[n]["error"] for n in names]
    for message in messages + ["plain http"]:
        assert sum(message in e for e in errors) == 1, (message, errors)
    assert not emu.confirmed() and len(emu.calls("s3")) == 1
    # the S3-refused sample and the one whose upload_url was refused: nothing will reach either
    assert len(emu.cancelled_ids()) == 2, f"abandoned samples not cancelled: {emu.cancelled_ids()}"


def test_policy_expired_means_a_new_init_and_a_cancel(tmp_path: Path, emu: Emulator, watch: Path) -> None:
    """S3 403 AccessDenied "Policy expired": init again, cancel the abandoned sample, confirm the new."""
    emu.expired_inits = 1
    (watch / "p.fastq").write_bytes(fastq_bytes(8_000, seed=40))
    with Daemon(config(tmp_path, emu.base_url, watch), api_key=KEY) as d:
        files = wait_files(d, all_settled({"p.fastq": "done"}), 30, "p.fastq done", watch_states={"failed"})
        assert d.terminate() == 0
    inits = emu.calls("init")
    assert len(inits) == 2
    assert len(emu.cancelled_ids()) == 1 and len(emu.confirmed()) == 1
    assert emu.cancelled_ids()[0] != emu.confirmed()[0].sample_id == latest(files)["p.fastq"]["sample_id"]


def test_rejected_key_pauses_then_resumes_by_itself(tmp_path: Path, emu: Emulator, watch: Path) -> None:
    """401 for ~10 s: uploads pause (said in status), then resume without a restart, although the
    emulator has no GET /api/v1/samples (design.md: the probe may be the next real request); a 401
    at confirm pauses too, and the same sample is confirmed afterwards."""
    outage_s = 10.0
    emu.fail_auth_for(outage_s)
    outage_ends = emu.auth_fail_until
    (watch / "k.fastq").write_bytes(fastq_bytes(8_000, seed=50))
    with Daemon(config(tmp_path, emu.base_url, watch, probe_interval_s=2.0), api_key=KEY) as d:
        d.wait_ready()
        wait_for(lambda: status(d.config).get("paused"), 10, "status to say uploads are paused")
        assert time.time() < outage_ends, "the pause came too late to be measured"
        files = wait_files(d, all_settled({"k.fastq": "done"}), outage_s + 30, "k.fastq done after the outage",
                           watch_states={"failed", "rejected"})
        resumed_after_s = time.time() - outage_ends
        assert status(d.config).get("paused") is None
        # A key refused at confirm, after S3 took the file: paused, then the same sample is confirmed.
        emu.inject("confirm", Fault(status=401, message="Authentication failed: invalid API key."))
        (watch / "k2.fastq").write_bytes(fastq_bytes(8_000, seed=51))
        files = wait_files(d, all_settled({"k2.fastq": "done"}), 30, "k2.fastq done after a 401 at confirm",
                           watch_states={"failed", "rejected"})
        assert status(d.config).get("paused") is None
        assert d.terminate() == 0
    k2 = [r for r in emu.calls("init") if r.body.get("filename") == "k2.fastq"]
    assert len(k2) == 1 and len(samples_named(emu, "k2.fastq")) == 1
    print(f"\nresumed {resumed_after_s:.1f} s after the key worked again (probe_interval_s = 2)")
    during = [r for r in emu.requests if r.at < outage_ends and r.answered == 401]
    assert len(during) <= outage_s / 2 * 2 + 4, f"{len(during)} requests in a {outage_s:g} s outage"
    assert len(samples_named(emu, "k.fastq")) == 1 and latest(files)["k.fastq"]["attempts"] >= 0


# -- the command line ----------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["unknown key", "wrong type", "not finite", "http base_url",
                                  "watch folder listed twice", "missing config file"])
def test_config_errors_exit_2_with_file_key_and_fix(tmp_path: Path, watch: Path, case: str) -> None:
    """A config mistake: exit 2, a message naming the file, the key and the fix, no traceback."""
    cfg = config(tmp_path, "http://127.0.0.1:9", watch)
    text = cfg.read_text()
    key = {"unknown key": "settle_second", "wrong type": "workers", "not finite": "settle_seconds",
           "http base_url": "base_url",
           "watch folder listed twice": "paths", "missing config file": None}[case]
    if case == "unknown key":
        cfg.write_text(text.replace("settle_seconds", "settle_second"))
    elif case == "wrong type":
        cfg.write_text(text.replace("workers = 2", 'workers = "two"'))
    elif case == "not finite":   # TOML has nan: a settle time that would let every file go at once
        cfg.write_text(text.replace("settle_seconds = 0.5", "settle_seconds = nan"))
    elif case == "http base_url":
        cfg.write_text(text.replace("http://127.0.0.1:9", "http://onecodex.example.org"))
    elif case == "watch folder listed twice":   # (a missing one is waited for: design.md, turn 2)
        (tmp_path / "alias").symlink_to(watch)
        cfg.write_text(text.replace(f'"{watch}"', f'"{watch}", "{tmp_path / "alias"}"'))
    else:
        cfg = tmp_path / "absent.toml"
    done = seqdrop(cfg, "run", timeout_s=30)
    out = done.stdout + done.stderr
    assert done.returncode == 2, out
    assert "Traceback" not in out
    assert str(cfg) in out, out
    if key:
        assert key in out, out
    assert "fix" in out.lower() or "create" in out.lower(), out


def test_check_says_when_the_key_is_wrong(tmp_path: Path, watch: Path) -> None:
    """`check` passes with the right key and fails clearly with a wrong one."""
    with Emulator(api_key=KEY, samples_endpoint=True) as e:
        cfg = config(tmp_path, e.base_url, watch)
        good = seqdrop(cfg, "check")
        bad = seqdrop(cfg, "check", key="oc-wrong-key")
    assert good.returncode == 0, good.stdout + good.stderr
    out = bad.stdout + bad.stderr
    assert bad.returncode != 0 and "Traceback" not in out
    assert "key" in out.lower() and ("reject" in out.lower() or "invalid" in out.lower()), out
    assert KEY not in good.stdout + good.stderr + out


def test_upload_command_exit_codes(tmp_path: Path, emu: Emulator, watch: Path) -> None:
    """`upload FILE`: 0 when confirmed, 1 when a file is not confirmed."""
    cfg = config(tmp_path, emu.base_url, watch)
    good, bad = tmp_path / "u.fastq", tmp_path / "u_bad.fastq"
    good.write_bytes(fastq_bytes(6_000, seed=60))
    bad.write_bytes(b"this is not sequence data\n" * 100)
    ok = seqdrop(cfg, "upload", str(good))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert [emu.objects[s.key] for s in emu.confirmed()] == [good.read_bytes()]
    no = seqdrop(cfg, "upload", str(good), str(bad))
    assert no.returncode == 1, no.stdout + no.stderr
    assert not samples_named(emu, "u_bad.fastq")
    for done in (ok, no):
        assert "Traceback" not in done.stdout + done.stderr and KEY not in done.stdout + done.stderr
