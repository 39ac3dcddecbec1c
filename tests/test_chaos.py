"""Issue 10, Must show 2: chaos. The real daemon (tests/harness.py) against the sandbox, killed with
SIGKILL at random moments while random faults from the sandbox's whole catalogue come and go between
restarts, and its queue damaged between two runs (truncated to 0 bytes; the WAL removed after a
kill -9). At the end, faults off: every file is confirmed exactly once at the sandbox, byte-identical,
no duplicate sample, and no form of the API key in anything seqdrop wrote or printed.

The RNG is seeded (SEQDROP_CHAOS_SEED replays or varies a run); the seed and the figures are printed
(run with -s to see them). The default-suite variant is small; `-m slow` runs the 40-file soak.
"""

from __future__ import annotations

import base64
import collections
import gzip
import json
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from harness import (
    Daemon,
    all_in,
    by_name,
    cli,
    fastq_bytes,
    md5_file,
    wait_for,
    write_config,
)

from daemon import redact
from daemon.queue.journal import FILE_ENDED, journal_path, read_records
from daemon.sandbox import Fault, Sandbox

SEED = int(os.environ.get("SEQDROP_CHAOS_SEED", "20261202"))
# A key of its own, distinct from every other string in the run, so that a leak cannot hide.
KEY = "sk_live_chaos_5f0c1e9a7b3d2468ace0"
BASIC = base64.b64encode(f"{KEY}:".encode()).decode()     # what a server echoing the auth header shows
SECRET_FORMS = (KEY, BASIC, BASIC.rstrip("="))
CALL_DEADLINE_S = 4.0
STALL_TIMEOUT_S = 3.0
TARGETS = ("init_upload", "s3", "confirm_upload")
FaultMaker = Callable[[random.Random, Sandbox], list[Fault]]


def _status(rng: random.Random, sb: Sandbox) -> list[Fault]:
    return [Fault(rng.choice(TARGETS), "status", status=rng.choice([500, 502, 503]), times=rng.randint(1, 6),
                  after=rng.randint(0, 2))]


def _too_many(rng: random.Random, sb: Sandbox) -> list[Fault]:
    return [Fault(rng.choice(TARGETS), "status", status=429, retry_after_s=1, times=rng.randint(1, 5))]


def _drop(rng: random.Random, sb: Sandbox) -> list[Fault]:
    return [Fault(rng.choice(TARGETS), "drop", after_body=rng.random() < 0.5, times=rng.randint(1, 5),
                  after=rng.randint(0, 2))]


def _slow(rng: random.Random, sb: Sandbox) -> list[Fault]:
    # Past the call deadline: the client gives up, the server performs the request later anyway.
    return [Fault(rng.choice(TARGETS + ("any",)), "delay", delay_s=rng.choice([0.3, CALL_DEADLINE_S + 2]),
                  times=rng.randint(1, 3))]


def _trickle(rng: random.Random, sb: Sandbox) -> list[Fault]:
    return [Fault(rng.choice(TARGETS + ("samples",)), "trickle", interval_s=1, times=rng.randint(1, 2))]


def _endless(rng: random.Random, sb: Sandbox) -> list[Fault]:
    return [Fault(rng.choice(TARGETS), "endless", times=rng.randint(1, 2))]


def _echo_secret(rng: random.Random, sb: Sandbox) -> list[Fault]:
    # API 401 (uploads pause, then resume) or S3's SignatureDoesNotMatch (the file fails: retried at the end).
    if rng.random() < 0.6:
        return [Fault(rng.choice(("init_upload", "confirm_upload")), "echo_secret", status=401)]
    return [Fault("s3", "echo_secret")]


def _s3_hostile(rng: random.Random, sb: Sandbox) -> list[Fault]:
    kind = rng.choice(["no_etag", "alter", "stall"])
    if kind == "no_etag":
        return [Fault("s3", "no_etag", success_status=rng.choice([200, 201, 204]), times=rng.randint(1, 2))]
    if kind == "alter":
        return [Fault("s3", "alter", byte_offset=rng.randint(0, 5000), times=rng.randint(1, 2))]
    return [Fault("s3", "stall", byte_offset=65536, delay_s=STALL_TIMEOUT_S + 3)]


def _ambiguous(rng: random.Random, sb: Sandbox) -> list[Fault]:
    return [Fault("confirm_upload", "drop", after_body=True), Fault("confirm_upload", "ambiguous_repeat")]


def _bad_init(rng: random.Random, sb: Sandbox) -> list[Fault]:
    return [Fault("init_upload", rng.choice(["partial_init", "hostile_sample_id"]), after=rng.randint(0, 3))]


def _short_policy(rng: random.Random, sb: Sandbox) -> list[Fault]:
    sb.policy_lifetime_s = rng.choice([-1.0, 1.0])      # already expired, or expiring during the POST
    return []


def _revoked_key(rng: random.Random, sb: Sandbox) -> list[Fault]:
    sb.set_api_keys([])
    return []


CATALOGUE: dict[str, FaultMaker] = {
    "5xx": _status, "429": _too_many, "drop": _drop, "slow": _slow, "trickle": _trickle, "endless": _endless,
    "echo_secret": _echo_secret, "s3_hostile": _s3_hostile, "ambiguous_repeat": _ambiguous,
    "bad_init": _bad_init, "short_policy": _short_policy, "revoked_key": _revoked_key,
}


@dataclass
class Chaos:
    """One chaos run: its sandbox, watch folder, files and what it did to them."""

    tmp: Path
    sb: Sandbox
    seed: int
    rng: random.Random = field(init=False)
    files: dict[str, Path] = field(default_factory=dict)
    kills: int = 0
    rounds_by_fault: collections.Counter = field(default_factory=collections.Counter)
    damage: list[str] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    @property
    def watch(self) -> Path:
        return self.tmp / "watch"

    @property
    def queue(self) -> Path:
        return self.tmp / "state" / "queue.sqlite3"

    def drop_files(self, n_small: int, n_large: int, wave: str) -> None:
        """Small FASTQ (some gzipped) and a few of several MB, in two run folders."""
        for i in range(n_small + n_large):
            large = i >= n_small
            seed = len(self.files) + 1
            data = fastq_bytes(self.rng.randint(3_000_000, 6_000_000) if large
                               else self.rng.randint(2_000, 60_000), seed=seed)
            gz = self.rng.random() < 0.3
            name = f"{wave}_{i:02d}{'_big' if large else ''}.fastq{'.gz' if gz else ''}"
            path = self.watch / f"run_{wave}_{i % 2}" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(gzip.compress(data, compresslevel=1) if gz else data)
            self.files[name] = path

    def new_faults(self) -> None:
        """Off with the last round's faults, on with 2-4 random kinds (the key and policies restored first)."""
        self.sb.clear_faults()
        self.sb.set_api_keys([KEY])
        self.sb.policy_lifetime_s = 3600.0
        for name in self.rng.sample(sorted(CATALOGUE), self.rng.randint(2, 4)):
            self.rounds_by_fault[name] += 1
            for fault in CATALOGUE[name](self.rng, self.sb):
                self.sb.add_fault(fault)

    def faults_off(self) -> None:
        self.sb.clear_faults()
        self.sb.set_api_keys([KEY])
        self.sb.policy_lifetime_s = 3600.0

    def record(self, daemon: Daemon, label: str) -> None:
        """Keep what status prints now (both forms): scanned for the key at the end."""
        self.outputs[f"status --json ({label})"] = cli(daemon.config, "status", "--json").stdout
        self.outputs[f"status ({label})"] = cli(daemon.config, "status").stdout


def _config(tmp: Path, sb: Sandbox) -> Path:
    (tmp / "watch").mkdir()
    path = write_config(tmp, watch=[tmp / "watch"], api_url=sb.api_url, workers=2, max_backoff_s=1.0,
                        upload_extra=f"stall_timeout_s = {STALL_TIMEOUT_S}\n")
    path.write_text(path.read_text().replace("[api]\n", f"[api]\ncall_deadline_s = {CALL_DEADLINE_S}\n", 1))
    return path


def _crash_round(chaos: Chaos, daemon: Daemon) -> None:
    """Start under new random faults, kill -9 at a random moment."""
    chaos.new_faults()
    daemon.start()
    daemon.wait_ready(30)
    time.sleep(chaos.rng.uniform(0.3, 4.0))       # the random moment of the crash (seeded), not a wait
    chaos.record(daemon, f"round {chaos.kills + 1}")
    assert daemon.alive(), daemon.log_tail()
    daemon.kill()
    chaos.kills += 1


def _quiet_until_done(chaos: Chaos, daemon: Daemon, timeout_s: float) -> None:
    """Faults off, failed files retried, wait until every file so far is done (the daemon is running)."""
    chaos.faults_off()
    retried = cli(daemon.config, "retry", "--failed")
    assert retried.returncode == 0, retried.stderr
    daemon.wait_files(all_in("done", chaos.files), timeout_s, "every file done with the faults off")


def _damage_round(chaos: Chaos, daemon: Daemon, kind: str) -> None:
    """With every file so far done: SIGTERM then the queue truncated to 0 bytes, or kill -9 then the
    WAL removed. (Done first: a queue that loses a file's in-flight row loses its sample id too.)"""
    daemon.start()
    daemon.wait_ready(30)
    _quiet_until_done(chaos, daemon, 120)
    wal = Path(f"{chaos.queue}-wal")
    if kind == "truncate":
        assert daemon.terminate() == 0
        os.truncate(chaos.queue, 0)
    else:
        daemon.kill()
        chaos.kills += 1
        assert wal.exists() and wal.stat().st_size > 0, "no WAL to remove after kill -9"
        wal.unlink()
    chaos.damage.append(kind)


def run_chaos(tmp: Path, *, seed: int, n_small: int, n_large: int, rounds: int) -> dict[str, Any]:
    """Two waves of files, `rounds` crash rounds around two damage rounds, then the final drain."""
    print(f"\nchaos seed: {seed} (replay with SEQDROP_CHAOS_SEED={seed})")
    redact.reset()
    started = time.monotonic()
    with Sandbox(api_keys=(KEY,)) as sb:
        chaos = Chaos(tmp, sb, seed)
        daemon = Daemon(_config(tmp, sb), api_key=KEY)
        try:
            chaos.drop_files(n_small // 2, n_large // 2, "a")
            for _ in range(rounds // 2):
                _crash_round(chaos, daemon)
            _damage_round(chaos, daemon, "truncate")
            chaos.drop_files(n_small - n_small // 2, n_large - n_large // 2, "b")
            for _ in range(rounds - rounds // 2):
                _crash_round(chaos, daemon)
            _damage_round(chaos, daemon, "wal")
            daemon.start()
            daemon.wait_ready(30)
            _quiet_until_done(chaos, daemon, 120)
            chaos.record(daemon, "final")
            daemon.signal(signal.SIGTERM)
            assert daemon.proc.wait(15) == 0
        finally:
            daemon.__exit__()
        figures = _verify(chaos, daemon)
    figures["wall_s"] = round(time.monotonic() - started, 1)
    print("chaos figures:", json.dumps(figures, sort_keys=True))
    return figures


def _verify(chaos: Chaos, daemon: Daemon) -> dict[str, Any]:
    """Every file confirmed exactly once and byte-identical; no secret anywhere; the figures."""
    samples = chaos.sb.samples()
    confirmed = [s for s in samples if s["state"] == "confirmed"]
    per_name = collections.Counter(s["filename"] for s in confirmed)
    duplicates = {n: c for n, c in per_name.items() if c > 1}
    losses = sorted(set(chaos.files) - set(per_name))
    assert not duplicates and not losses, f"confirmed more than once: {duplicates}; never confirmed: {losses}"
    assert len(confirmed) == len(chaos.files), sorted(per_name)
    by_file = by_name(json.loads(chaos.outputs["status --json (final)"])["files"])
    for name, path in chaos.files.items():
        source_md5 = md5_file(path)
        [sample] = [s for s in confirmed if s["filename"] == name]
        assert sample["md5"] == source_md5 and md5_file(sample["object_path"]) == source_md5, f"{name}: bytes differ"
        assert [r["state"] for r in by_file[name]] == ["done"], by_file[name]
        assert by_file[name][0]["sample_id"] == sample["sample_id"], name
    _assert_no_secret(chaos, daemon)
    _assert_journal_names_the_samples(chaos, by_file)
    events = [e.get("event") for e in daemon.log_events()]
    faults = collections.Counter(r["fault"] for r in chaos.sb.requests() if r.get("fault"))
    return {"seed": chaos.seed,
            "files": len(chaos.files), "kills": chaos.kills, "damage": chaos.damage,
            "fault_rounds_by_kind": dict(sorted(chaos.rounds_by_fault.items())),
            "faulted_requests_by_kind": dict(sorted(faults.items())),
            "requests": len(chaos.sb.requests()), "duplicates": len(duplicates), "losses": len(losses),
            "orphans_cancelled": sum(s["state"] == "cancelled" for s in samples),
            "orphans_left": sum(s["state"] in ("initialized", "uploaded") for s in samples),
            "failed_then_retried": events.count("file.failed"), "queue_rebuilt": events.count("queue.rebuilt")}


def _assert_journal_names_the_samples(chaos: Chaos, by_file: dict[str, list[dict[str, Any]]]) -> None:
    """At most one `done` record per file version (a kill between the queue's commit and the journal's
    append may cost one, never add a second), each naming the sample status names."""
    done = [r for r in read_records(journal_path(str(chaos.queue)), event=FILE_ENDED) if r["state"] == "done"]
    versions = collections.Counter((r["path"], r["inode"], r["size"], r["mtime_ns"]) for r in done)
    assert all(n == 1 for n in versions.values()), versions
    sample_of = {os.path.basename(r["path"]): r["sample_id"] for r in done}
    assert all(by_file[name][0]["sample_id"] == sample for name, sample in sample_of.items()), done


def _assert_no_secret(chaos: Chaos, daemon: Daemon) -> None:
    """No form of the key in the log, status output, or any state file (queue, WAL, set-aside queues, journal)."""
    outputs = dict(chaos.outputs)
    outputs["log"] = daemon.log_path.read_text(errors="replace")
    for state_file in sorted((chaos.tmp / "state").iterdir()):
        outputs[state_file.name] = state_file.read_bytes().decode("latin-1")
    assert "journal.jsonl" in outputs, sorted(outputs)
    leaks = {name: form for name, text in outputs.items() for form in SECRET_FORMS if form in text}
    assert not leaks, f"the key leaked: {leaks}"


def test_chaos_kills_faults_and_queue_damage_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    """24 files (2 of several MB, some .gz), 8 kill -9s under random faults, the queue truncated and
    its WAL removed between runs: each file confirmed once, byte-identical, no key in any output."""
    figures = run_chaos(tmp_path, seed=SEED, n_small=22, n_large=2, rounds=8)
    assert figures["kills"] == 9 and figures["duplicates"] == 0 and figures["losses"] == 0


@pytest.mark.slow
def test_chaos_soak(tmp_path: Path) -> None:
    """The longer run: 44 files (4 of several MB), 16 kill -9s (SEQDROP_CHAOS_ROUNDS), the same damage
    and checks."""
    rounds = int(os.environ.get("SEQDROP_CHAOS_ROUNDS", "16"))
    figures = run_chaos(tmp_path, seed=SEED + 1, n_small=40, n_large=4, rounds=rounds)
    assert figures["kills"] == rounds + 1 and figures["duplicates"] == 0 and figures["losses"] == 0


def test_a_lost_wal_does_not_duplicate_a_sample_confirmed_behind_a_lost_answer(tmp_path: Path) -> None:
    """Confirms performed by One Codex whose answers are lost (the rows wait at `posted`), kill -9, the
    WAL removed: after the rebuild, each file must still end with exactly one confirmed sample."""
    with Sandbox(api_keys=(KEY,)) as sb:
        chaos = Chaos(tmp_path, sb, SEED)
        daemon = Daemon(_config(tmp_path, sb), api_key=KEY)
        try:
            chaos.drop_files(6, 0, "a")
            sb.add_fault(Fault("confirm_upload", "drop", after_body=True, times=None))
            daemon.start()
            daemon.wait_ready(30)
            wait_for(lambda: sum(s["state"] == "confirmed" for s in sb.samples()) >= 3, 60,
                     lambda: f"3 samples confirmed behind lost answers\n{daemon.log_tail()}")
            daemon.kill()
            Path(f"{chaos.queue}-wal").unlink()
            chaos.faults_off()
            daemon.start()
            daemon.wait_ready(30)
            daemon.wait_files(all_in("done", chaos.files), 60, "every file done after the rebuild")
            assert daemon.terminate() == 0
        finally:
            daemon.__exit__()
        per_name = collections.Counter(s["filename"] for s in sb.samples() if s["state"] == "confirmed")
    assert all(n == 1 for n in per_name.values()), f"confirmed twice after the lost WAL: {per_name}"
