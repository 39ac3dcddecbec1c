"""Paired-sample benchmark (issue 11, Must show 4): a 2 × 1 GiB paired sample in 4 lanes per read
against one 2 GiB file, through `seqdrop upload`, in one run.

    .venv/bin/python bench/samples.py                  # 2 × 1 GiB in 4 lanes vs 2 GiB, 3 repetitions
    .venv/bin/python bench/samples.py --gib 0.25 --repeat 1      # a smoke run
    .venv/bin/python bench/samples.py --max-mbps 1000  # both behind a 1 Gbit/s uplink, as at a lab

The files are generated under bench/out/samples/ (valid FASTQ; R1 and R2 carry the same read names, so
the pair check passes). Both runs go to the same `seqdrop sandbox --no-store` (strict: policy,
signature, the multipart body parsed, every byte MD5'd) as its own process, with the default
`validate = true`. Wall time is spawn → exit of `seqdrop upload`; CPU and peak RSS are that
process's rusage from os.wait4, which takes in its validator children (their CPU time, and the
largest peak RSS of it and them). The sandbox's CPU time (it MD5s every byte too) is shown apart:
on a 2-core machine the three processes compete for the same cores. MB/s are decimal, bytes of the
files. Each repetition uploads the one file, then the pair, so each pair's ratio is to a neighbour.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

from common import (
    OUT,
    SEQDROP,
    GiB,
    MiB,
    Sandbox,
    child_env,
    eprint,
    load,
    machine,
    now_utc,
    proc_cpu_s,
    run_measured,
    table,
    write_config,
)

RECORD = 512                      # bytes per record (about: the sequence fills what the header leaves)
LANES = 4


def template(read: int) -> bytes:
    """2048 records (1 MiB); names hold BLOCKTOK, replaced per block; read 1 and read 2 share the names."""
    rng = random.Random(20261203 + read)
    out = bytearray()
    for i in range(MiB // RECORD):
        header = b"@BLOCKTOK_%06d %d:N:0:1\n" % (i, read)
        seq_len = (RECORD - len(header) - 4) // 2
        seq = bytes(rng.choice(b"ACGT") for _ in range(seq_len))
        qual = bytes(rng.randrange(33, 75) for _ in range(seq_len))
        record = header + seq + b"\n+\n" + qual + b"\n"
        out += record
    return bytes(out)


def make(path: Path, size: int, read: int, first_block: int) -> None:
    if path.exists() and path.stat().st_size == (size // MiB) * len(template(read)):
        return
    block = template(read)
    with open(path, "wb") as f:
        f.writelines(block.replace(b"BLOCKTOK", b"%08d" % (first_block + n)) for n in range(size // MiB))


def one(sb: Sandbox, workdir: Path, target: Path, max_mbps: float = 0.0) -> dict:
    api_url = sb.api_url
    cfg = write_config(workdir / "seqdrop.toml", base_url=api_url, queue=workdir / "queue.sqlite3")
    if max_mbps:    # an uplink of this many megabits per second ([upload] max_mbps), as at a lab
        cfg.write_text(cfg.read_text() + f"\n[upload]\nmax_mbps = {max_mbps}\n")
    for side in ("queue.sqlite3", "queue.sqlite3-wal", "queue.sqlite3-shm", "queue.sqlite3.lock", "journal.jsonl"):
        (workdir / side).unlink(missing_ok=True)
    sandbox_before = proc_cpu_s(sb.proc.pid)
    res = run_measured([SEQDROP, "upload", "--config", str(cfg), str(target)], env=child_env())
    sandbox_s = proc_cpu_s(sb.proc.pid) - sandbox_before
    ok = res.returncode == 0
    if not ok:
        eprint(f"  FAILED rc={res.returncode}: {res.stdout[-800:]} {res.stderr[-1500:]}")
    return {"ok": ok, "wall_s": res.wall_s, "rss_mib": res.maxrss_mib, "cpu_s": res.user_s + res.sys_s,
            "sandbox_s": sandbox_s, "load": os.getloadavg()[0]}


PAIRED, SINGLE = "paired (2 reads × 4 lanes)", "one file"


def generate(gib: float) -> tuple[Path, Path, int]:
    """The lane files of the pair and the one file of the same size (kept between runs)."""
    per_read = int(gib * GiB) // MiB * MiB
    lane_size = per_read // LANES // MiB * MiB
    root = OUT / "samples"
    paired, single = root / "paired", root / "single"
    for d in (paired, single, root / "work"):
        d.mkdir(parents=True, exist_ok=True)
    eprint(f"generating {2 * per_read / GiB:.2f} GiB twice under {root} ...")
    started = time.monotonic()
    for lane in range(1, LANES + 1):
        for read in (1, 2):
            make(paired / f"Bench_S1_L00{lane}_R{read}_001.fastq", lane_size, read, (lane - 1) * (lane_size // MiB))
    make(single / "Bench_whole.fastq", 2 * LANES * lane_size, 1, 0)
    total = sum(f.stat().st_size for f in paired.iterdir())
    eprint(f"  done in {time.monotonic() - started:.0f} s; paired {total / GiB:.2f} GiB, "
           f"single {(single / 'Bench_whole.fastq').stat().st_size / GiB:.2f} GiB")
    return paired, single / "Bench_whole.fastq", total


def run(paired: Path, single: Path, total: int, repeat: int, max_mbps: float = 0.0) -> dict[str, list[dict]]:
    results: dict[str, list[dict]] = {PAIRED: [], SINGLE: []}
    with Sandbox() as sb:
        for rep in range(repeat):
            for label, target in ((SINGLE, single), (PAIRED, paired)):
                r = one(sb, OUT / "samples" / "work", target, max_mbps)
                r["mb_s"] = total / 1e6 / r["wall_s"]
                results[label].append(r)
                eprint(f"  rep {rep + 1} {label}: {r['mb_s']:.0f} MB/s, {r['cpu_s']:.1f} CPU s (sandbox "
                       f"{r['sandbox_s']:.1f}), {r['rss_mib']:.0f} MiB, load {r['load']:.1f}, ok={r['ok']}")
    return results


def report(results: dict[str, list[dict]], total: int) -> float:
    """Print the table; return the ratio of the median speeds."""
    gib = total / GiB
    rows = []
    for label, runs in results.items():
        rows.append([label, f"{gib:.2f}", f"{statistics.median(r['mb_s'] for r in runs):.0f}",
                     " / ".join(f"{r['mb_s']:.0f}" for r in runs),
                     f"{statistics.median(r['cpu_s'] for r in runs) / gib:.2f}",
                     f"{statistics.median(r['sandbox_s'] for r in runs) / gib:.2f}",
                     f"{max(r['rss_mib'] for r in runs):.0f}", all(r["ok"] for r in runs)])
    ratio = statistics.median(r["mb_s"] for r in results[PAIRED]) / statistics.median(r["mb_s"] for r in results[SINGLE])
    each = [p["mb_s"] / s["mb_s"] for p, s in zip(results[PAIRED], results[SINGLE])]
    loads = [r["load"] for runs in results.values() for r in runs]
    print(f"# bench/samples.py — {now_utc()} — {machine()} — 1-min load during the runs "
          f"{min(loads):.1f}..{max(loads):.1f}, at the end: {load()}")
    print(table(["upload", "GiB", "MB/s (median)", "MB/s each run", "client CPU s per GiB",
                 "sandbox CPU s per GiB", "peak RSS MiB", "all ok"], rows))
    print(f"\npaired / one file, per byte: {ratio:.2f}x of the medians; each repetition "
          f"{' / '.join(f'{x:.2f}' for x in each)} (target ≥ 0.95)")
    return ratio


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gib", type=float, default=1.0, help="GiB per read (default 1)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--max-mbps", type=float, default=0.0,
                   help="cap both uploads at this uplink, megabits per second ([upload] max_mbps); 0: none")
    args = p.parse_args(argv)
    paired, single, total = generate(args.gib)
    if args.max_mbps:
        print(f"# both uploads capped at {args.max_mbps:g} Mbit/s ([upload] max_mbps)")
    results = run(paired, single, total, args.repeat, args.max_mbps)
    report(results, total)
    return 0 if all(r["ok"] for runs in results.values() for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
