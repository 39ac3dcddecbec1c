"""Shared test helpers: deadlines instead of sleeps, FASTQ data, config files, the daemon as a subprocess.

The daemon runs exactly as systemd runs it (`python -m daemon run --config ...`), with the API key
in ONE_CODEX_API_KEY and its log (JSON lines) in a file that failing assertions quote. Its state
is read through `python -m daemon status --json`, as users and scripts read it.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
API_KEY = "test-key"
# The validator landed in its own commit; until a checkout has it, configs turn validation off.
VALIDATE = (ROOT / "daemon" / "checks" / "validate.py").exists()

T = TypeVar("T")


# -- waiting -----------------------------------------------------------------------------------
def crash_after_step(store: Any, wanted: str, crash: type[BaseException]) -> None:
    """Make store.save_posted raise `crash` right after it has recorded step `wanted`: a kill -9 at the
    instant that step is persisted (the row keeps it; nothing after it runs)."""
    real = store.save_posted

    def save_then_crash(file_id: int, md5: str, *, step: str = "posted") -> None:
        real(file_id, md5, step=step)
        if step == wanted:
            raise crash()

    store.save_posted = save_then_crash


def wait_for(predicate: Callable[[], T], timeout_s: float = 5.0,
             message: str | Callable[[], str] = "the condition", *, interval_s: float = 0.05) -> T:
    """Poll predicate until it returns something truthy (and return that); fail with message at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {text}")
        time.sleep(interval_s)


# -- data --------------------------------------------------------------------------------------
def fastq_bytes(size: int, *, seed: int = 0, read_len: int = 100) -> bytes:
    """Valid FASTQ of about `size` bytes (whole records; at least one), different for each seed."""
    rng = random.Random(seed)
    records = []
    total = 0
    # A few kilobytes of distinct records, then repeated: cheap to make even for hundreds of MB.
    while total < min(size, 64 * 1024) or not records:
        seq = "".join(rng.choice("ACGT") for _ in range(read_len))
        qual = "".join(chr(rng.randint(33, 73)) for _ in range(read_len))
        rec = f"@read_{seed}_{len(records)}\n{seq}\n+\n{qual}\n".encode()
        records.append(rec)
        total += len(rec)
    block = b"".join(records)
    if size <= len(block):
        out, n = bytearray(), 0
        while len(out) < size or n == 0:
            out += records[n % len(records)]
            n += 1
        return bytes(out)
    reps, rest = divmod(size, len(block))
    tail = bytearray()
    for rec in records:
        if len(tail) + len(rec) > rest:
            break
        tail += rec
    return block * reps + bytes(tail)


def md5_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def tree_digest(root: str | os.PathLike[str]) -> dict[str, str]:
    """Every entry under root (hidden ones too) → the SHA-256 of a file's bytes, or 'dir'."""
    out: dict[str, str] = {}
    for folder, dirs, files in os.walk(root):
        for d in dirs:
            out[os.path.relpath(os.path.join(folder, d), root)] = "dir"
        for name in files:
            path = os.path.join(folder, name)
            h = hashlib.sha256()
            with open(path, "rb") as f:
                while block := f.read(1 << 20):
                    h.update(block)
            out[os.path.relpath(path, root)] = h.hexdigest()
    return out


# -- config ------------------------------------------------------------------------------------
def _watch_entry(entry: str | os.PathLike[str] | dict[str, Any]) -> str:
    if not isinstance(entry, dict):
        return json.dumps(str(entry))
    return "{" + ", ".join(f"{k} = {json.dumps(v if isinstance(v, bool) else str(v))}"
                           for k, v in entry.items()) + "}"


def write_config(tmp_path: Path, *, watch: Iterable[str | os.PathLike[str] | dict[str, Any]], api_url: str,
                 settle_s: float = 0.5, workers: int = 2, validate: bool = VALIDATE,
                 max_backoff_s: float = 1.0, probe_interval_s: float = 1.0, max_mbps: float = 0.0,
                 rescan_interval_s: float = 300.0, poll_interval_s: float = 0.5, block_size: int = 4 << 20,
                 name: str = "config.toml",
                 extra: str = "", upload_extra: str = "") -> Path:
    """A config file in tmp_path; the queue lives in tmp_path/state (never inside a watch folder).

    A watch entry is a folder, or a dict such as {"path": folder, "marker": "illumina"}.
    upload_extra: more lines for the [upload] table; extra: more tables after [log].
    """
    paths = ", ".join(_watch_entry(p) for p in watch)
    text = (f'[api]\nbase_url = "{api_url}"\nprobe_interval_s = {probe_interval_s}\n'
            f"connect_timeout_s = 5\nread_timeout_s = 20\n\n"
            f"[watch]\npaths = [{paths}]\nsettle_seconds = {settle_s}\nrescan_interval_s = {rescan_interval_s}\n"
            f"poll_interval_s = {poll_interval_s}\n\n"
            f'[queue]\npath = "{tmp_path}/state/queue.sqlite3"\n\n'
            f"[upload]\nworkers = {workers}\nvalidate = {'true' if validate else 'false'}\n"
            f"max_backoff_s = {max_backoff_s}\nmax_mbps = {max_mbps}\nblock_size = {block_size}\n{upload_extra}\n"
            f'[log]\nlevel = "info"\nformat = "json"\n{extra}')
    path = tmp_path / name
    path.write_text(text)
    return path


def daemon_env(api_key: str | None = API_KEY) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "SEQDROP_CONFIG",
                        "CREDENTIALS_DIRECTORY", "ONE_CODEX_API_KEY")}
    if api_key is not None:
        env["ONE_CODEX_API_KEY"] = api_key
    return env


def cli(config: Path, *args: str, timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run a seqdrop subcommand (not `run`) and return what it did."""
    return subprocess.run([PYTHON, "-m", "daemon", *args, "--config", str(config)], cwd=ROOT,
                          env=daemon_env(), capture_output=True, text=True, timeout=timeout_s)


def status(config: Path) -> dict[str, Any]:
    """`seqdrop status --json`, parsed."""
    done = cli(config, "status", "--json")
    assert done.returncode == 0, f"status failed ({done.returncode}): {done.stderr}"
    return json.loads(done.stdout)


# -- the daemon --------------------------------------------------------------------------------
class Daemon:
    """`seqdrop run` as a subprocess; a context manager that never leaves it running."""

    def __init__(self, config: Path, *, log_path: Path | None = None, api_key: str | None = API_KEY,
                 env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log_path = log_path or config.with_suffix(".log")
        self.api_key = api_key
        self.extra_env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "Daemon":
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self._ready_before = self._ready_count()
        self._ready = False
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([PYTHON, "-m", "daemon", "run", "--config", str(self.config)],
                                         cwd=ROOT, env={**daemon_env(self.api_key), **self.extra_env}, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return self

    def __enter__(self) -> "Daemon":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout_s: float = 15.0) -> None:
        """Until this run of the daemon has logged service.ready (its start-up scan is over)."""
        def ready() -> bool:
            assert self.alive(), f"the daemon exited early ({self.proc.poll()}):\n{self.log_tail()}"
            return self._ready_count() > self._ready_before
        wait_for(ready, timeout_s, lambda: f"service.ready\n{self.log_tail()}")
        self._ready = True

    def _ready_count(self) -> int:
        if not self.log_path.exists():
            return 0
        return self.log_path.read_bytes().count(b'"service.ready"')

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def terminate(self, timeout_s: float = 10.0) -> int:
        """SIGTERM; returns the exit code (fails if it takes longer than timeout_s)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"no exit within {timeout_s:g} s of SIGTERM:\n{self.log_tail()}") from None

    def kill(self) -> None:
        """SIGKILL (kill -9): no cleanup of any kind."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def status(self) -> dict[str, Any]:
        """`status --json`; while this run is starting, first wait until it is ready (the instant a
        daemon creates a new queue has its own test: test_status_while_the_queue_is_being_created)."""
        if self.alive() and not getattr(self, "_ready", False):
            self.wait_ready()
        return status(self.config)

    def files(self) -> list[dict[str, Any]]:
        return self.status()["files"]

    def wait_files(self, predicate: Callable[[list[dict[str, Any]]], Any], timeout_s: float,
                   message: str) -> list[dict[str, Any]]:
        """Poll status --json until predicate(files) holds; the failure shows the files and the log."""
        seen: dict[str, Any] = {}

        def check() -> list[dict[str, Any]] | None:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"the daemon exited ({self.proc.returncode}) while waiting for "
                                     f"{message}:\n{self.log_tail()}")
            seen["files"] = self.files()
            return seen["files"] if predicate(seen["files"]) else None

        return wait_for(check, timeout_s,
                        lambda: f"{message}\nfiles: {json.dumps(seen.get('files'), indent=1)}\n{self.log_tail()}",
                        interval_s=0.2)

    def log_events(self) -> list[dict[str, Any]]:
        events = []
        if self.log_path.exists():
            for line in self.log_path.read_text(errors="replace").splitlines():
                try:
                    events.append(json.loads(line))
                except ValueError:
                    events.append({"event": "<not json>", "line": line})
        return events

    def log_tail(self, n: int = 40) -> str:
        if not self.log_path.exists():
            return "(no log)"
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "--- daemon log (last lines) ---\n" + "\n".join(lines[-n:])


# -- predicates on status files ----------------------------------------------------------------
def by_name(files: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Status entries grouped by file name, oldest version first."""
    out: dict[str, list[dict[str, Any]]] = {}
    for f in files:
        out.setdefault(os.path.basename(f["path"]), []).append(f)
    return out


def all_in(state: str, names: Iterable[str]) -> Callable[[list[dict[str, Any]]], bool]:
    """A predicate: the latest version of each named file is in state."""
    wanted = list(names)

    def check(files: list[dict[str, Any]]) -> bool:
        groups = by_name(files)
        return all(n in groups and groups[n][-1]["state"] == state for n in wanted)
    return check


def confirmed(sb: Any) -> list[dict[str, Any]]:
    return [s for s in sb.samples() if s["state"] == "confirmed"]


class PipelineDriver:
    """The pipeline in the test process, its queue in a tmp folder: put a file in the queue and run
    it until it leaves the queue (the time between attempts skipped). Subclasses build
    self.store, self.pipeline and self.sb."""

    tmp: Path
    store: Any
    pipeline: Any
    sb: Any

    def file(self, name: str, data: bytes) -> Path:
        p = self.tmp / "watch" / name
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(data)
        return p

    def queue(self, path: Path) -> int:
        from daemon.queue.base import Identity
        file_id = self.store.add_seen(str(path), Identity.of(os.stat(path)))
        self.store.set_state(file_id, "queued")
        return file_id

    def drive(self, file_id: int, rounds: int = 6, progress: Any = None) -> str:
        state = "queued"
        for _ in range(rounds):
            self.store.set_state(file_id, "uploading", only_from=("queued",))
            state = self.pipeline.process(self.store.get(file_id), progress=progress)
            if state != "queued":
                break
        return state

    def requests_to(self, target: str) -> list[dict]:
        return [r for r in self.sb.requests() if r["target"] == target]

