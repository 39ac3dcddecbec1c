"""Peak memory of `seqdrop run` (2 workers) sending two large FASTQ files at once, over HTTPS (issue 16).

    .venv/bin/python bench/cpu_daemon.py [--seqdrop PATH]      # e.g. another checkout's .venv/bin/seqdrop

Validation in the sending process puts numpy in the daemon; this measures what that costs when both
workers upload a large file at the same time: the largest VmHWM of one process and the largest sum of
VmRSS over the daemon's process tree (with validator children, if it starts any), sampled every 50 ms
until both files are confirmed. The two files are hard links to bench/cpu.py's 1 GiB FASTQ (run
bench/cpu.py once first), sent to bench/cpu_sink.py with TLS.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cpu  # bench/cpu.py: the sink, certificate and sampling helpers (after the path above)
from common import OUT, SEQDROP, write_config

NAMES = ("a.fastq", "b.fastq")


def measure(seqdrop: str, source: Path, deadline_s: float = 300.0) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="seqdrop-bench-cpu-daemon-"))
    watch = workdir / "watch"
    watch.mkdir()
    (workdir / "md5s.json").write_text(json.dumps({name: cpu.md5_of(source) for name in NAMES}))
    cert = cpu.make_cert(workdir)
    sink = cpu.Sink(workdir / "md5s.json", cert)
    try:
        cfg = write_config(workdir / "seqdrop.toml", base_url=sink.url, log_level="info",
                           queue=workdir / "queue.db", watch=[watch], settle_s=1, workers=2)
        proc = subprocess.Popen([seqdrop, "run", "--config", str(cfg)], env=cpu.env_for(cert[0]),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=str(workdir))
        os.set_blocking(proc.stdout.fileno(), False)
        for name in NAMES:
            os.link(source, watch / name)
        return _sample(proc, deadline_s)
    finally:
        sink.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _sample(proc: subprocess.Popen, deadline_s: float) -> dict:
    peak_one = peak_tree = 0
    out, started = b"", time.monotonic()
    try:
        while time.monotonic() - started < deadline_s and out.count(b"upload.confirmed") < len(NAMES):
            sizes = [cpu._rss_kib(pid) for pid in cpu._tree(proc.pid)]
            peak_tree = max(peak_tree, sum(rss for rss, _ in sizes))
            peak_one = max([peak_one] + [hwm for _, hwm in sizes])
            out += proc.stdout.read() or b""
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    return {"confirmed": out.count(b"upload.confirmed"), "seconds": round(time.monotonic() - started, 1),
            "peak_one_process_mib": peak_one // 1024, "peak_tree_mib": peak_tree // 1024}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seqdrop", default=SEQDROP)
    args = p.parse_args(argv)
    source = OUT / "validate" / f"reads_{1 << 30}.fastq"
    if not source.exists():
        raise SystemExit(f"no {source}: run bench/cpu.py once first")
    result = measure(args.seqdrop, source)
    print(json.dumps(result))
    return 0 if result["confirmed"] == len(NAMES) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
