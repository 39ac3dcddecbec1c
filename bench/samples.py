"""Paired-sample benchmark (issue 11, Must show 4): a 2 × 1 GiB paired sample in 4 lanes per read
against one 2 GiB file, through `seqdrop upload`, in one run.

    .venv/bin/python bench/samples.py                  # 2 × 1 GiB in 4 lanes vs 2 GiB, 3 repetitions
    .venv/bin/python bench/samples.py --gib 0.25 --repeat 1      # a smoke run

The files are generated under bench/out/samples/ (valid FASTQ; R1 and R2 carry the same read names, so
the pair check passes). Both runs go to the same `seqdrop sandbox --no-store` (strict: policy,
signature, the multipart body parsed, every byte MD5'd) as its own process, with the default
`validate = true`. Wall time is spawn → exit of `seqdrop upload`; peak RSS is that process's own
ru_maxrss (os.wait4) plus, reported apart, its validator children's (RUSAGE_CHILDREN of the
benchmark covers every child, so it is the largest of them). MB/s are decimal, bytes of the files.
"""

from __future__ import annotations

import argparse
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


def one(api_url: str, workdir: Path, target: Path) -> dict:
    cfg = write_config(workdir / "seqdrop.toml", base_url=api_url, queue=workdir / "queue.sqlite3")
    for side in ("queue.sqlite3", "queue.sqlite3-wal", "queue.sqlite3-shm", "queue.sqlite3.lock", "journal.jsonl"):
        (workdir / side).unlink(missing_ok=True)
    res = run_measured([SEQDROP, "upload", "--config", str(cfg), str(target)], env=child_env())
    ok = res.returncode == 0
    if not ok:
        eprint(f"  FAILED rc={res.returncode}: {res.stdout[-800:]} {res.stderr[-1500:]}")
    return {"ok": ok, "wall_s": res.wall_s, "rss_mib": res.maxrss_mib, "cpu_s": res.user_s + res.sys_s}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gib", type=float, default=1.0, help="GiB per read (default 1)")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    per_read = int(args.gib * GiB) // MiB * MiB
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
    results: dict[str, list[dict]] = {"paired (2 reads × 4 lanes)": [], "one file": []}
    with Sandbox() as sb:
        for rep in range(args.repeat):
            for label, target in (("one file", single / "Bench_whole.fastq"),
                                  ("paired (2 reads × 4 lanes)", paired)):
                r = one(sb.api_url, root / "work", target)
                r["mb_s"] = total / 1e6 / r["wall_s"]
                results[label].append(r)
                eprint(f"  rep {rep + 1} {label}: {r['mb_s']:.0f} MB/s, {r['cpu_s']:.1f} CPU s, "
                       f"{r['rss_mib']:.0f} MiB, ok={r['ok']}")
    rows = []
    for label, runs in results.items():
        rows.append([label, f"{total / GiB:.2f}", f"{statistics.median(r['mb_s'] for r in runs):.0f}",
                     f"{statistics.median(r['cpu_s'] for r in runs) / (total / GiB):.2f}",
                     f"{max(r['rss_mib'] for r in runs):.0f}", all(r["ok"] for r in runs)])
    ratio = statistics.median(r["mb_s"] for r in results["paired (2 reads × 4 lanes)"]) / \
        statistics.median(r["mb_s"] for r in results["one file"])
    print(f"# bench/samples.py — {now_utc()} — {machine()} — load {load()}")
    print(table(["upload", "GiB", "MB/s (median)", "CPU s per GiB", "peak RSS MiB", "all ok"], rows))
    print(f"\npaired / one file, per byte: {ratio:.2f}x (target ≥ 0.95)")
    return 0 if all(r["ok"] for runs in results.values() for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
