"""Upload benchmark (issue 2, "Must show" 3): `seqdrop upload` against `curl -F`, same files, same sink.

    .venv/bin/python bench/upload.py                 # 1 GiB and 4 GiB, both sinks, 3 repetitions
    .venv/bin/python bench/upload.py --quick         # 64 MiB and 256 MiB, 1 repetition (smoke run)
    .venv/bin/python bench/upload.py --sizes 1,4 --sinks sandbox --repeat 1 --keep

In one run: generate valid FASTQ files of each size under bench/out/upload/ (one 1 MiB block of
2048 records of 512 bytes, repeated with distinct read names), start the sinks as their own
processes, then for each sink and size upload the same file with
  * curl:  the benchmark does init_upload itself (requests, not timed), then times
           `curl -sS --form-string NAME=VALUE ... -F file=@PATH UPLOAD_URL` (fields in the order
           init_upload gave them, the file last), then confirms (not timed);
  * curl + md5sum: the same curl command with `md5sum PATH` running beside it (`sh -c 'md5sum … &
           curl …; wait'`), and the ETag compared with md5sum's answer: the least a shell script must
           do to keep design.md's rule "compare the MD5 with the ETag before confirming", so the
           like-for-like reference for seqdrop (plain curl hashes nothing);
  * seqdrop: `.venv/bin/seqdrop upload --config CFG FILE` (the real CLI, ONE_CODEX_API_KEY set),
           with `[upload] validate = false` and with the default `validate = true`.
Wall time is spawn → exit of that one command; peak RSS is the child's own ru_maxrss (os.wait4).
Sinks: `sandbox` = `seqdrop sandbox --no-store` (strict: checks policy and signature, parses the
multipart body in Python, MD5s the file); `fast` = bench/sink.py (discards the body with big
readinto calls, answers 201 with a precomputed ETag). MB/s are decimal (10^6 bytes per second).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    API_KEY,
    OUT,
    PYTHON,
    SEQDROP,
    GiB,
    MiB,
    Sandbox,
    child_env,
    eprint,
    load,
    machine,
    now_utc,
    run_measured,
    table,
    write_config,
)

RECORD = 512                 # bytes per FASTQ record: a 1 MiB block holds exactly 2048 records
SEQ_LEN = (RECORD - 22) // 2   # "@r" + 8 + "_" + 6 + "\n" = 18, "+\n" = 2, two newlines: 2*245 + 22 = 512
TOKEN = b"BBBBBBBB"


def fastq_template() -> bytes:
    """2048 records (1 MiB); every read name carries TOKEN, replaced by the block number."""
    rng = random.Random(20261125)
    out = bytearray()
    for i in range(MiB // RECORD):
        seq = "".join(rng.choice("ACGT") for _ in range(SEQ_LEN)).encode()
        qual = bytes(rng.randrange(33, 75) for _ in range(SEQ_LEN))
        out += b"@r" + TOKEN + b"_%06d\n" % i + seq + b"\n+\n" + qual + b"\n"
    assert len(out) == MiB, len(out)
    return bytes(out)


def make_fastq(path: Path, size: int) -> str:
    """Write a valid FASTQ of exactly `size` bytes (a multiple of 1 MiB); return its MD5."""
    side = path.with_suffix(path.suffix + ".md5")
    if path.exists() and path.stat().st_size == size and side.exists():
        return side.read_text().strip()
    assert size % MiB == 0, "sizes must be whole MiB"
    template, md5 = fastq_template(), hashlib.md5()
    started = time.monotonic()
    with open(path, "wb") as f:
        for block in range(size // MiB):
            data = template.replace(TOKEN, b"%08d" % block)
            md5.update(data)
            f.write(data)
    side.write_text(md5.hexdigest() + "\n")
    eprint(f"  generated {path.name} ({size / GiB:.2f} GiB) in {time.monotonic() - started:.1f} s")
    return md5.hexdigest()


class FastSink:
    def __init__(self, md5s: dict[str, str], workdir: Path) -> None:
        md5_file = workdir / "sink-md5s.json"
        md5_file.write_text(json.dumps(md5s))
        self.proc = subprocess.Popen([PYTHON, str(Path(__file__).with_name("sink.py")), "--md5s", str(md5_file)],
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        m = re.match(r"sink: (http://\S+)", line)
        if not m:
            raise RuntimeError(f"bench/sink.py did not start: {line!r}")
        self.api_url = m.group(1)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def curl_upload(api_url: str, path: Path, md5: str, workdir: Path, *, check_etag: bool, hash_too: bool = False
                ) -> dict:
    import requests
    auth = (API_KEY, "")
    r = requests.post(f"{api_url}/api/v1/samples/init_upload", auth=auth, timeout=30,
                      json={"filename": path.name, "size": path.stat().st_size, "upload_type": "standard"})
    r.raise_for_status()
    init = r.json()
    argv = ["curl", "-sS", "-o", str(workdir / "curl-body.xml"), "-D", str(workdir / "curl-headers.txt"),
            "-w", "%{http_code} %{size_upload} %{speed_upload} %{time_total}"]
    for name, value in init["additional_fields"].items():       # the order init_upload gave
        argv += ["--form-string", f"{name}={value}"]
    argv += ["-F", f"file=@{path}", init["upload_url"]]
    md5_out = workdir / "md5sum.txt"
    if hash_too:   # md5sum beside curl, both from the page cache; wall time = the later of the two
        script = f"md5sum {shlex.quote(str(path))} > {shlex.quote(str(md5_out))} & {shlex.join(argv)}; rc=$?; wait; exit $rc"
        argv = ["sh", "-c", script]
    res = run_measured(argv)
    code, size_up, speed, total = res.stdout.split()
    if hash_too:
        hashed = md5_out.read_text().split()[0] if md5_out.exists() else ""
        check_etag, md5 = True, hashed if hashed == md5 else f"md5sum said {hashed!r}"
    headers = (workdir / "curl-headers.txt").read_text(errors="replace")
    etag = (re.search(r'(?im)^etag:\s*"?([0-9a-f]+)"?', headers) or [None, ""])[1]
    ok = res.returncode == 0 and code == "201" and (not check_etag or etag == md5)
    if ok:
        c = requests.post(f"{api_url}/api/v1/samples/confirm_upload", auth=auth, timeout=30,
                          json={"sample_id": init["sample_id"], "upload_type": "standard"})
        ok = c.status_code == 200
    if not ok:
        eprint(f"  curl FAILED: rc={res.returncode} http={code} etag={etag} md5={md5} {res.stderr[-500:]}")
    return {"tool": "curl + md5sum" if hash_too else "curl", "ok": ok, "wall_s": res.wall_s, "post_s": float(total), "rss_mib": res.maxrss_mib,
            "cpu_s": res.user_s + res.sys_s, "bytes_sent": int(float(size_up))}


def md5_ceiling_mb_s() -> float:
    block, h = os.urandom(2 * MiB), hashlib.md5()
    started = time.perf_counter()
    for _ in range(256):
        h.update(block)
    return 512 * MiB / 1e6 / (time.perf_counter() - started)


def seqdrop_upload(api_url: str, path: Path, workdir: Path, *, validate: bool) -> dict:
    cfg = write_config(workdir / f"seqdrop-{'v' if validate else 'nv'}.toml", base_url=api_url,
                       validate=validate, log_level="debug")
    res = run_measured([SEQDROP, "upload", "--config", str(cfg), str(path)], env=child_env())
    post_s = None
    for line in res.stderr.splitlines():
        if '"upload.posted"' in line:
            try:
                post_s = json.loads(line).get("seconds")
            except ValueError:
                pass
    ok = res.returncode == 0 and "confirmed as sample" in res.stdout
    if not ok:
        eprint(f"  seqdrop FAILED: rc={res.returncode} {res.stdout[-500:]} {res.stderr[-1500:]}")
    return {"tool": "seqdrop" + ("" if validate else " (validate=false)"), "ok": ok, "wall_s": res.wall_s,
            "post_s": post_s, "rss_mib": res.maxrss_mib, "cpu_s": res.user_s + res.sys_s}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description="seqdrop upload vs curl -F: wall time, MB/s, peak RSS")
    p.add_argument("--sizes", default="1,4", help="file sizes in GiB, comma-separated (default 1,4)")
    p.add_argument("--quick", action="store_true", help="64 MiB and 256 MiB, one repetition")
    p.add_argument("--sinks", default="sandbox,fast", help="sandbox, fast, or both (default both)")
    p.add_argument("--repeat", type=int, default=None, help="repetitions per case; the median is reported "
                                                           "(default 3, 1 with --quick)")
    p.add_argument("--keep", action="store_true", help="keep the generated files for the next run")
    p.add_argument("--json", help="also write the raw results here")
    args = p.parse_args(argv)

    sizes = [64 * MiB, 256 * MiB] if args.quick else [int(float(s) * GiB) for s in args.sizes.split(",")]
    repeat = args.repeat or (1 if args.quick else 3)
    sinks = [s.strip() for s in args.sinks.split(",") if s.strip()]
    data_dir = OUT / "upload"
    data_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="seqdrop-bench-upload-"))
    eprint(f"seqdrop upload benchmark, {now_utc()}\n{machine()}\n{load()} at start")

    files: list[tuple[Path, int, str]] = []
    for size in sizes:
        path = data_dir / f"bench_{size // MiB}MiB.fastq"
        files.append((path, size, make_fastq(path, size)))
    results: list[dict] = []
    servers: dict[str, object] = {}
    try:
        if "sandbox" in sinks:
            servers["sandbox"] = Sandbox(store=False)
        if "fast" in sinks:
            servers["fast"] = FastSink({p.name: md5 for p, _, md5 in files}, workdir)
        for rep in range(repeat):
            for sink in sinks:
                api_url = servers[sink].api_url
                for path, size, md5 in files:
                    for tool in ("curl", "curl+md5", "seqdrop-nv", "seqdrop"):
                        if tool.startswith("curl"):
                            r = curl_upload(api_url, path, md5, workdir, check_etag=(sink == "sandbox"),
                                            hash_too=(tool == "curl+md5"))
                        else:
                            r = seqdrop_upload(api_url, path, workdir, validate=(tool == "seqdrop"))
                        r.update(sink=sink, size=size, rep=rep, load=os.getloadavg()[0])
                        results.append(r)
                        eprint(f"  [{rep + 1}/{repeat}] {sink:7} {size / GiB:5.2f} GiB {r['tool']:27} "
                               f"{'ok ' if r['ok'] else 'FAIL'} wall {r['wall_s']:6.2f} s "
                               f"{size / 1e6 / r['wall_s']:7.1f} MB/s  rss {r['rss_mib']:6.1f} MiB  "
                               f"cpu {r['cpu_s']:5.2f} s  load {r['load']:.2f}")
    finally:
        for s in servers.values():
            s.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        if not args.keep:
            for path, _, _ in files:
                path.unlink(missing_ok=True)
                path.with_suffix(path.suffix + ".md5").unlink(missing_ok=True)

    rows = []
    summary = []
    for sink in sinks:
        for _, size, _ in files:
            med: dict[str, dict] = {}
            for tool in ("curl", "curl + md5sum", "seqdrop (validate=false)", "seqdrop"):
                runs = [r for r in results if r["sink"] == sink and r["size"] == size and r["tool"] == tool]
                good = [r for r in runs if r["ok"]]
                if not good:
                    continue
                wall = statistics.median(r["wall_s"] for r in good)
                posts = [r["post_s"] for r in good if r["post_s"]]
                med[tool] = {"wall_s": wall, "mb_s": size / 1e6 / wall,
                             "post_mb_s": size / 1e6 / statistics.median(posts) if posts else None,
                             "rss_mib": max(r["rss_mib"] for r in good),
                             "cpu_s": statistics.median(r["cpu_s"] for r in good),
                             "runs": f"{len(good)}/{len(runs)}"}
            base, verifying = med.get("curl"), med.get("curl + md5sum")
            for tool, m in med.items():
                ratio = m["mb_s"] / base["mb_s"] if base else None
                ratio_v = m["mb_s"] / verifying["mb_s"] if verifying else None
                rows.append([sink, f"{size / GiB:g} GiB", tool, f"{m['wall_s']:.2f}", f"{m['mb_s']:.0f}",
                             f"{m['post_mb_s']:.0f}" if m["post_mb_s"] else "-", f"{m['rss_mib']:.1f}",
                             f"{m['cpu_s']:.2f}", f"{ratio:.2f}" if ratio else "-",
                             f"{ratio_v:.2f}" if ratio_v else "-", m["runs"]])
                summary.append({"sink": sink, "size": size, "tool": tool, **m, "ratio": ratio,
                                "ratio_verifying": ratio_v})
    print()
    print(table(["sink", "size", "tool", "wall s", "MB/s", "POST-only MB/s", "peak RSS MiB", "CPU s",
                 "× curl", "× curl + md5sum", "ok runs"], rows))
    print(f"\nmedian of {repeat} run(s); MB/s = file bytes / wall time of the command; POST-only = file bytes /"
          f" the S3 POST's own time (curl's time_total; seqdrop's upload.posted seconds); peak RSS = max over"
          f" runs. {load()} at the end.")
    print(f"MD5 on one core here (hashlib, 2 MiB blocks): {md5_ceiling_mb_s():.0f} MB/s: no client that checks"
          f" the ETag can upload one file faster.")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "results": results, "summary": summary},
                                              indent=1))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
