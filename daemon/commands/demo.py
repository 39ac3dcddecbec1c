"""`seqdrop demo`: the whole product in one minute, with no setup and no credentials.

Starts the local sandbox (a strict One Codex + S3 emulator), a temporary watch
folder and the real daemon, then behaves like a sequencer: a paired-end library in
two lanes (R1 and R2 of lane 1 already there, lane 2 copied in), one file written
slowly, one broken, one that is not sequence data at all. Every file's way through
the states is shown as it happens; the four lane files become one paired sample.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import threading
import time
from importlib import resources
from typing import Any

from daemon import config as config_mod
from daemon.operations import logs
from daemon.queue.sqlite import SqliteStore
from daemon.sandbox import Sandbox
from daemon.service.service import Service

SETTLE_S = 2.0
GROUP_WAIT_S = 3.0      # the demo's folder has no run marker: files of one sample are awaited this long
DEADLINE_S = 90.0
LIBRARY = "Demo_S1_L00{lane}_R{read}_001.fastq"
_COMPLEMENT = bytes.maketrans(b"ACGTNacgtn", b"TGCANtgcan")


def _sample(name: str) -> bytes:
    return resources.files("daemon").joinpath("samples", name).read_bytes()


def _library() -> dict[str, bytes]:
    """A paired-end library in two lanes, made from demo_R1.fastq: its records split into two lanes
    for read 1, and a mate for each (the same read name, read 2: the reverse complement) for read 2."""
    lines = _sample("demo_R1.fastq").split(b"\n")
    records = [lines[i:i + 4] for i in range(0, len(lines) - 3, 4)]
    half = len(records) // 2
    out = {}
    for lane, part in ((1, records[:half]), (2, records[half:])):
        r1 = b"".join(b"\n".join(rec) + b"\n" for rec in part)
        r2 = b"".join(b"%s\n%s\n+\n%s\n" % (head.replace(b" 1:N:", b" 2:N:"), seq.translate(_COMPLEMENT)[::-1],
                                              qual[::-1]) for head, seq, _plus, qual in part)
        out[LIBRARY.format(lane=lane, read=1)], out[LIBRARY.format(lane=lane, read=2)] = r1, r2
    return out


def run_demo(*, keep: bool = False, out: Any = None) -> int:
    out = out or sys.stdout
    say = lambda text="": print(text, file=out, flush=True)
    tmp = tempfile.mkdtemp(prefix="seqdrop-demo-")
    watch = os.path.join(tmp, "sequencer-output")
    run_dir = os.path.join(watch, "run_0001")
    os.makedirs(run_dir)
    log_path = os.path.join(tmp, "seqdrop.log")
    say("seqdrop demo: a sandbox One Codex, a watch folder, and the real daemon.\n")
    with Sandbox(api_keys=("demo-key",)) as sb, open(log_path, "w") as log_file:
        cfg = os.path.join(tmp, "config.toml")
        with open(cfg, "w") as f:
            f.write(f'[api]\nbase_url = "{sb.api_url}"\n\n[watch]\npaths = ["{watch}"]\n'
                    f"settle_seconds = {SETTLE_S}\n\n[queue]\npath = \"{tmp}/queue.sqlite3\"\n\n"
                    f"[samples]\ngroup_wait_seconds = {GROUP_WAIT_S}\n")
        say(f"  sandbox API   {sb.api_url}   (S3 at {sb.s3_url})")
        say(f"  watch folder  {watch}")
        say(f"  config        {cfg}")
        say(f"  daemon log    {log_path}\n")
        # Lane 1 of the library is already there before the daemon starts.
        for name, data in _library().items():
            if "_L001_" in name:
                with open(os.path.join(run_dir, name), "wb") as f:
                    f.write(data)
        settings = config_mod.load(cfg)
        logs.configure("info", "json", stream=log_file)
        service = Service(settings, api_key="demo-key", log=logs.get("seqdrop"))
        thread = threading.Thread(target=service.run, name="seqdrop-demo-daemon", daemon=True)
        thread.start()
        reader = _wait_for_store(settings.queue.path, thread)
        try:
            ok = _drive(say, run_dir, reader, sb)
        except KeyboardInterrupt:
            ok = False
            say("\ninterrupted")
        finally:
            service.request_stop()
            thread.join(timeout=15)
            reader.close()
    if keep:
        say(f"\nkept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 1


def _wait_for_store(path: str, thread: threading.Thread) -> Any:
    """A read-only view of the daemon's queue, once the daemon has created it."""
    deadline = time.monotonic() + 30
    while not os.path.exists(path):
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the demo daemon did not start; see its log")
        time.sleep(0.05)
    return SqliteStore(path, readonly=True)


def _snapshot(folder: str) -> dict[str, str]:
    """Every file under folder with the SHA-256 of its bytes."""
    out = {}
    for base, _dirs, files in os.walk(folder):
        for name in files:
            path = os.path.join(base, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


# How each file must end for the demo to succeed (notes.txt must not be queued at all).
EXPECTED = {**{LIBRARY.format(lane=lane, read=read): "done" for lane in (1, 2) for read in (1, 2)},
            "demo_contigs.fasta": "done", "broken_R1.fastq": "rejected"}


def _drive(say: Any, run_dir: str, store: Any, sb: Any) -> bool:
    """Play the sequencer, show each file's way through the states, and say whether all went right."""
    say("Sequencer writes:")
    changes = _Changes(say, run_dir, store)
    _write_like_a_sequencer(say, run_dir, changes)
    written = _snapshot(run_dir)
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        changes.show()
        if _states_as_expected(_states(store)):
            break
        time.sleep(0.2)   # demo pacing: how often the screen is refreshed
    changes.show()
    unchanged = _snapshot(run_dir) == written
    return _verdict(say, _states(store), sb, unchanged=unchanged)


class _Changes:
    """Prints a line each time a file reaches a new state (or a new sample)."""

    def __init__(self, say: Any, run_dir: str, store: Any) -> None:
        self.say, self.run_dir, self.store = say, run_dir, store
        self.shown: dict[str, str] = {}

    def show(self) -> None:
        for row in self.store.files():
            name = os.path.relpath(row.path, self.run_dir)
            key = f"{row.state}:{row.sample_id}"
            if self.shown.get(name) != key:
                self.shown[name] = key
                extra = ""
                if row.state == "done":
                    extra = f"  sample {row.sample_id}"
                    if row.role in ("R1", "R2"):
                        extra += f" ({row.role}{f', lane {row.lane}' if row.lane else ''})"
                elif row.state in ("rejected", "failed", "vanished") and row.error:
                    extra = f"  — {row.error}"
                self.say(f"    {name:<30} {row.state:<9}{extra}")


def _write_like_a_sequencer(say: Any, run_dir: str, changes: _Changes) -> None:
    """Lane 2 copied in, one that is not sequence data, a crashed copy, and one written slowly."""
    say(f"  - {LIBRARY.format(lane=1, read='1|2')} (lane 1 of a paired-end library) were already there")
    say(f"  - {LIBRARY.format(lane=2, read='1|2')} (lane 2) are copied in: with lane 1, one sample")
    for name, data in _library().items():
        if "_L002_" in name:
            with open(os.path.join(run_dir, name), "wb") as f:
                f.write(data)
    say("  - notes.txt is not sequence data: ignored")
    with open(os.path.join(run_dir, "notes.txt"), "w") as f:
        f.write("run notes\n")
    say("  - broken_R1.fastq stops mid-record (a crashed copy)")
    fastq = _sample("demo_R1.fastq")
    with open(os.path.join(run_dir, "broken_R1.fastq"), "wb") as f:
        f.write(fastq[: len(fastq) // 2 + 17])
    say(f"  - demo_contigs.fasta is written slowly, in pieces (settle time is {SETTLE_S:g} s)\n")
    say("What seqdrop does:")
    fasta = _sample("demo_contigs.fasta")
    pieces = 4
    with open(os.path.join(run_dir, "demo_contigs.fasta"), "wb") as f:
        for i in range(pieces):
            f.write(fasta[i * len(fasta) // pieces:(i + 1) * len(fasta) // pieces])
            f.flush()
            changes.show()
            time.sleep(SETTLE_S / 3)   # a slow writer, pausing less than the settle time (demo pacing)


def _states(store: Any) -> dict[str, str]:
    return {os.path.basename(r.path): r.state for r in store.files()}


def _states_as_expected(states: dict[str, str]) -> bool:
    return all(states.get(name) == want for name, want in EXPECTED.items())


def _verdict(say: Any, states: dict[str, str], sb: Any, *, unchanged: bool) -> bool:
    """Say how the demo ended; True if every file ended as expected and the folder is untouched."""
    confirmed = [s for s in sb.samples() if s["state"] == "confirmed"]
    say("")
    paired = [s for s in confirmed if s.get("paired_end_filename")]
    ok = _states_as_expected(states) and "notes.txt" not in states
    if ok and len(paired) != 1:     # the four lane files must have become one paired-end sample
        say(f"Expected the library's 4 lane files to be 1 paired-end sample; the sandbox has {len(paired)}.")
        ok = False
    if not unchanged:
        say("The watch folder's contents changed during the demo: that must never happen.")
        ok = False
    if ok:
        say(f"Done: {len(confirmed)} samples confirmed by the sandbox ({len(paired)} paired-end, its 2 lanes "
            f"joined while sending), 1 file rejected with its reason, 1 ignored. The watch folder is "
            f"byte-for-byte as the 'sequencer' wrote it.")
        say("Next: `seqdrop check --config /etc/seqdrop/config.toml`, then `systemctl enable --now seqdrop` "
            "(see README).")
    else:
        say(f"The demo did not end as expected: {states}")
    return ok
