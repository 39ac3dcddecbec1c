"""Disk flushes per file: `seqdrop run` over N small files, counted with strace.

    .venv/bin/python bench/fsyncs.py                    # 1,000 files, this checkout
    .venv/bin/python bench/fsyncs.py --files 500 --seqdrop /other/checkout/.venv/bin/seqdrop

Every recorded state change is committed with synchronous = FULL (design.md: it must survive a
power cut), and each commit costs one flush of the WAL: ~0.2 ms on this VM's disk, 5-15 ms on a
spinning disk or an SD card, where flushes, not the network, set how many small files per second
the daemon can take. The script starts the sandbox, puts N small FASTQ files in a watch folder,
runs `strace -f -c -e trace=fsync,fdatasync seqdrop run` until `status --json` shows them all
done, stops it with SIGTERM and prints the flushes per file. strace must be installed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SEQDROP, Sandbox, child_env, eprint, load, write_config  # noqa: E402

RECORD = b"@r\nACGTACGTACGT\n+\nIIIIIIIIIIII\n"


def count(seqdrop: str, files: int, workdir: Path, api_url: str) -> dict:
    watch = workdir / "watch"
    watch.mkdir()
    for i in range(files):
        (watch / f"f{i:05d}.fastq").write_bytes(RECORD * (1 + i % 7) + b"@id%d\nAC\n+\nII\n" % i)
    cfg = write_config(workdir / "seqdrop.toml", base_url=api_url, queue=workdir / "q.sqlite3", watch=[watch],
                       settle_s=1)
    trace = workdir / "strace.txt"
    proc = subprocess.Popen(["strace", "-f", "-c", "-o", str(trace), "-e", "trace=fsync,fdatasync",
                             seqdrop, "run", "--config", str(cfg)], env=child_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started = time.monotonic()
    deadline = started + 600
    done = 0
    while time.monotonic() < deadline:
        out = subprocess.run([seqdrop, "status", "--json", "--config", str(cfg)], env=child_env(),
                             capture_output=True, text=True)
        if out.returncode == 0:
            done = json.loads(out.stdout)["counts"].get("done", 0)
            if done >= files:
                break
        time.sleep(0.5)                      # polling `status` (the condition has a deadline)
    wall = time.monotonic() - started
    # SIGTERM to seqdrop itself (strace's child); strace writes its summary when it exits.
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    for pid in children:
        os.kill(int(pid), signal.SIGTERM)
    proc.wait(timeout=60)
    text = trace.read_text()
    calls = {m.group(2): int(m.group(1)) for m in re.finditer(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$",
                                                                     text, re.M)}
    flushes = calls.get("fsync", 0) + calls.get("fdatasync", 0)
    return {"files": files, "done": done, "flushes": flushes, "per_file": flushes / max(1, files),
            "wall_s": wall, "calls": calls}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description="disk flushes per file in `seqdrop run`")
    p.add_argument("--files", type=int, default=1000)
    p.add_argument("--seqdrop", default=SEQDROP, help="the seqdrop to measure (default: this checkout's)")
    args = p.parse_args(argv)
    if not shutil.which("strace"):
        eprint("fsyncs: strace is not installed (apt-get install strace)")
        return 2
    sb = Sandbox(store=False)
    workdir = Path(tempfile.mkdtemp(prefix="seqdrop-bench-fsyncs-"))
    try:
        r = count(args.seqdrop, args.files, workdir, sb.api_url)
    finally:
        sb.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"{args.seqdrop}: {r['done']}/{r['files']} files done in {r['wall_s']:.1f} s (incl. strace overhead);"
          f" {r['flushes']} flushes = {r['per_file']:.2f} per file  {r['calls']}  ({load()})")
    return 0 if r["done"] >= r["files"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
