"""Multipart route benchmark: `seqdrop upload` of one large file through init_multipart_upload →
S3 multipart upload → callback, with the threshold lowered so that a file of a few hundred MiB
takes the route. Prints wall time, MB/s and peak RSS.

    .venv/bin/python bench/multipart.py                  # one 600 MiB FASTQ, validate = true
    .venv/bin/python bench/multipart.py --size-mib 200 --no-validate

S3 is moto's server (`moto_server`, its own process: it keeps every part in memory, so its RSS
is not ours), the API is `seqdrop sandbox --multipart-s3-endpoint` (its own process). Peak RSS:
`VmHWM` of the seqdrop process itself, polled from /proc while it runs, and ru_maxrss from
os.wait4 (the maximum over seqdrop and the validator child it runs). MB/s are decimal. moto
parses every part in Python and keeps it in memory: it, not seqdrop, sets the speed here, so this
measures memory and correctness more than throughput.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    OUT,
    SEQDROP,
    MiB,
    Sandbox,
    child_env,
    eprint,
    load,
    machine,
    now_utc,
    proc_status,
)
from upload import make_fastq  # noqa: E402

VENV_BIN = Path(SEQDROP).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto() -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto_server did not start within 30 s")


def run_upload(cfg: Path, path: Path) -> dict:
    """`seqdrop upload` as a child; VmHWM polled while it runs, rusage from wait4 at its end."""
    started = time.monotonic()
    proc = subprocess.Popen([SEQDROP, "upload", "--config", str(cfg), str(path)], env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out: dict[str, bytes] = {}
    readers = [threading.Thread(target=lambda n=n, s=s: out.__setitem__(n, s.read()), daemon=True)
               for n, s in (("stdout", proc.stdout), ("stderr", proc.stderr))]
    for t in readers:
        t.start()
    hwm_kib = 0
    stop = threading.Event()

    def poll() -> None:
        nonlocal hwm_kib
        while not stop.is_set():
            hwm_kib = max(hwm_kib, proc_status(proc.pid).get("VmHWM", 0))
            stop.wait(0.05)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    stop.set()
    poller.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    for t in readers:
        t.join()
    return {"rc": proc.returncode, "wall_s": wall, "hwm_mib": hwm_kib / 1024, "maxrss_mib": usage.ru_maxrss / 1024,
            "cpu_s": usage.ru_utime + usage.ru_stime, "stdout": out["stdout"].decode(errors="replace"),
            "stderr": out["stderr"].decode(errors="replace")}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description="seqdrop upload through the multipart route: wall time, MB/s, peak RSS")
    p.add_argument("--size-mib", type=int, default=600, help="file size in MiB (default 600)")
    p.add_argument("--no-validate", action="store_true", help="[upload] validate = false")
    args = p.parse_args(argv)
    work = OUT / "multipart"
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"reads_{args.size_mib}MiB.fastq"
    md5 = make_fastq(path, args.size_mib * MiB)
    size = path.stat().st_size
    moto, moto_url = start_moto()
    try:
        with Sandbox(extra=("--multipart-s3-endpoint", moto_url)) as sb:
            cfg = work / "seqdrop.toml"
            cfg.write_text(f'[api]\nbase_url = "{sb.api_url}"\n\n[upload]\n'
                           f'validate = {"false" if args.no_validate else "true"}\n'
                           f"multipart_threshold_bytes = {MiB}   # rehearsal: everything over 1 MiB\n"
                           f'multipart_s3_endpoint = "{moto_url}"\n\n[log]\nformat = "json"\n')
            eprint(f"  uploading {path.name} ({size / MiB:.0f} MiB) through the multipart route ...")
            res = run_upload(cfg, path)
            samples = sb.get("samples")
    finally:
        moto.terminate()
        moto.wait(timeout=15)
    ok = res["rc"] == 0 and "confirmed as sample" in res["stdout"] and \
        [s["state"] for s in samples] == ["confirmed"] and samples[0].get("route") == "multipart"
    if not ok:
        eprint(f"FAILED: rc={res['rc']} {res['stdout'][-500:]} {res['stderr'][-2000:]} samples={samples}")
        return 1
    print(f"# multipart route, {now_utc()}\n{machine()}; {load()}")
    print(f"file {path.name}: {size / MiB:.0f} MiB, md5 {md5}, S3 ETag {samples[0].get('etag')}")
    print(f"validate = {'false' if args.no_validate else 'true'}; wall {res['wall_s']:.1f} s; "
          f"{size / 1e6 / res['wall_s']:.1f} MB/s; CPU {res['cpu_s']:.1f} s; "
          f"peak RSS {res['hwm_mib']:.1f} MiB (seqdrop, VmHWM), {res['maxrss_mib']:.1f} MiB "
          f"(wait4 ru_maxrss, incl. the validator child)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
