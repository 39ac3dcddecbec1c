"""Helpers shared by the benchmarks: child processes with their own rusage, the sandbox, configs.

Nothing here imports the daemon: the benchmarks drive seqdrop as users do, through its command line.
"""

from __future__ import annotations

import json
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = REPO / ".venv" / "bin"
SEQDROP = str(VENV_BIN / "seqdrop")
PYTHON = str(VENV_BIN / "python")
OUT = REPO / "bench" / "out"
API_KEY = "sandbox-key"
MiB = 1 << 20
GiB = 1 << 30


@dataclass
class ChildResult:
    """What one child process cost: exit code, wall time, CPU, peak RSS (its own, via wait4)."""

    returncode: int
    wall_s: float
    user_s: float
    sys_s: float
    maxrss_kib: int
    stdout: str = ""
    stderr: str = ""

    @property
    def maxrss_mib(self) -> float:
        return self.maxrss_kib / 1024


def run_measured(argv: list[str], *, env: dict[str, str] | None = None, timeout_s: float = 3600,
                 cwd: str | None = None) -> ChildResult:
    """Run argv to completion; wall time from spawn to exit, rusage of exactly this child (wait4)."""
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd)
    out_chunks: list[bytes] = []
    err_chunks: list[bytes] = []
    readers = [threading.Thread(target=lambda s=s, c=c: c.append(s.read()), daemon=True)
               for s, c in ((proc.stdout, out_chunks), (proc.stderr, err_chunks))]
    for t in readers:
        t.start()
    timer = threading.Timer(timeout_s, lambda: proc.kill())
    timer.start()
    try:
        _pid, status, usage = os.wait4(proc.pid, 0)
    finally:
        timer.cancel()
    wall = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)   # tell Popen it was reaped
    for t in readers:
        t.join()
    return ChildResult(proc.returncode, wall, usage.ru_utime, usage.ru_stime, usage.ru_maxrss,
                       b"".join(out_chunks).decode(errors="replace"), b"".join(err_chunks).decode(errors="replace"))


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM (KiB) of a live process."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    out[line.split(":")[0]] = int(line.split()[1])
    except FileNotFoundError:
        pass
    return out


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a live process (seconds), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    fields = text[text.rindex(")") + 2:].split()
    # after the ")": state is field 3, utime field 14, stime field 15 (1-based in proc(5))
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


class Sandbox:
    """`seqdrop sandbox` as its own process (so its CPU and memory are not the client's)."""

    def __init__(self, *, store: bool = False, nodelay: bool = False, extra: tuple[str, ...] = ()) -> None:
        # nodelay: bench/sandbox_nodelay.py, the same sandbox with TCP_NODELAY on its sockets
        argv = ([PYTHON, str(REPO / "bench" / "sandbox_nodelay.py")] if nodelay else [SEQDROP, "sandbox"]) + \
            ["--api-port", "0", "--s3-port", "0", *extra]
        if not store:
            argv.append("--no-store")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        banner = ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"seqdrop sandbox exited early: {banner}")
            banner += line
            m = re.search(r"One Codex API on (http://\S+), S3 on (http://\S+)", line)
            if m:
                self.api_url, self.s3_url = m.group(1).rstrip(","), m.group(2)
                break
        else:
            raise RuntimeError("seqdrop sandbox printed no banner within 30 s")
        # Keep draining its output so it can never block on a full pipe.
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        for _ in self.proc.stdout:
            pass

    def get(self, what: str):
        import requests
        r = requests.get(f"{self.api_url}/_sandbox/{what}", timeout=120)
        r.raise_for_status()
        return r.json()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def write_config(path: Path, *, base_url: str, queue: Path | None = None, watch: list[Path] = (),
                 settle_s: float | None = None, validate: bool | None = None, log_level: str | None = None,
                 workers: int | None = None) -> Path:
    lines = ["[api]", f'base_url = "{base_url}"']
    if watch or settle_s is not None:
        lines += ["", "[watch]"]
        if watch:
            lines.append("paths = [" + ", ".join(json.dumps(str(p)) for p in watch) + "]")
        if settle_s is not None:
            lines.append(f"settle_seconds = {settle_s}")
    if queue is not None:
        lines += ["", "[queue]", f"path = {json.dumps(str(queue))}"]
    if validate is not None or workers is not None:
        lines += ["", "[upload]"]
        if validate is not None:
            lines.append(f"validate = {'true' if validate else 'false'}")
        if workers is not None:
            lines.append(f"workers = {workers}")
    lines += ["", "[log]", 'format = "json"']
    if log_level:
        lines.append(f'level = "{log_level}"')
    path.write_text("\n".join(lines) + "\n")
    return path


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["ONE_CODEX_API_KEY"] = API_KEY
    env.pop("SEQDROP_CONFIG", None)
    env.update(extra)
    return env


def machine() -> str:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB
    return (f"{platform.node()}: {os.cpu_count()} CPU ({cpu}), {mem:.0f} GiB RAM, "
            f"Linux {platform.release()}, Python {platform.python_version()}")


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def table(headers: list[str], rows: list[list[object]]) -> str:
    """A Markdown table (also readable on a terminal)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    fmt = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([fmt(cells[0]), sep] + [fmt(r) for r in cells[1:]])


def now_utc() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def eprint(*args: object) -> None:
    print(*args, file=sys.stderr, flush=True)


__all__ = ["ChildResult", "run_measured", "proc_status", "proc_cpu_s", "Sandbox", "write_config", "child_env",
           "machine", "load", "table", "now_utc", "eprint", "REPO", "SEQDROP", "PYTHON", "OUT", "API_KEY",
           "MiB", "GiB"]
