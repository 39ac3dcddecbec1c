"""What the multipart route's hashing costs per byte for a read of several lane files
(daemon/upload/s3multipart.py S3Upload.send_part), beside the floor of the same run: one MD5 pass
(hashlib) over the same bytes. S3 is a stand-in that only reads each part's body, so what is
measured is seqdrop's reading and hashing, not a server's.

    .venv/bin/python bench/multipart_hashing.py              # 4 lanes × 256 MiB, 3 repetitions
    .venv/bin/python bench/multipart_hashing.py --lane-mib 64 --repeat 1

A part's MD5 (S3 checks it against the part's ETag) and each lane's MD5 (the audit journal's) are the
two passes the route needs; a third, of the whole concatenation, was kept until 2026-12-03 and needed
by nothing (docs/benchmarks.md, "Fifth session, end").
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from daemon.upload.s3multipart import S3Upload  # noqa: E402

MiB = 1 << 20
PART_BYTES = 64 * MiB


class ReadingS3:
    """Reads each part's body to its end, answers the part's MD5 as its ETag (what S3 would)."""

    def upload_part(self, *, Body: Any, **_: Any) -> dict[str, str]:
        while Body.read(8 * MiB):
            pass
        return {"ETag": f'"{Body.md5.hexdigest()}"'}


def write_lanes(folder: str, lanes: int, lane_mib: int) -> list[str]:
    block = os.urandom(MiB)
    paths = []
    for i in range(lanes):
        path = os.path.join(folder, f"S1_L00{i + 1}_R1_001.fastq")
        with open(path, "wb") as f:
            for _ in range(lane_mib):
                f.write(block)
        paths.append(path)
    return paths


def seqdrop_hashing(paths: list[str]) -> float:
    """CPU s of one read's parts through S3Upload (its reading and hashing)."""
    sizes = [os.path.getsize(p) for p in paths]
    started = time.process_time()
    up = S3Upload(ReadingS3(), bucket="b", key="k", path=paths, size=sum(sizes), part_size=PART_BYTES, sizes=sizes)
    up.upload_id = "bench"
    try:
        while not up.all_sent:
            up.send_part()
        assert len(up.member_md5s) == len(paths)
    finally:
        up.close()
    return time.process_time() - started


def one_md5_pass(paths: list[str]) -> float:
    """CPU s of reading the same bytes once and hashing them once: the floor of any checked upload."""
    started = time.process_time()
    h = hashlib.md5()
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while block := f.read(8 * MiB):
                h.update(block)
    return time.process_time() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lanes", type=int, default=4)
    parser.add_argument("--lane-mib", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="seqdrop-mp-hash-") as folder:
        paths = write_lanes(folder, args.lanes, args.lane_mib)
        gib = args.lanes * args.lane_mib / 1024
        ours, floor = [], []
        for _ in range(args.repeat):
            ours.append(seqdrop_hashing(paths) / gib)
            floor.append(one_md5_pass(paths) / gib)
    print(f"# bench/multipart_hashing.py — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} — "
          f"{args.lanes} lanes × {args.lane_mib} MiB, load {os.getloadavg()[0]:.1f}")
    print("| what | CPU s per GiB (median) | each run |")
    print("|---|---|---|")
    print(f"| S3Upload.send_part (part MD5 + lane MD5) | {statistics.median(ours):.2f} | "
          f"{' / '.join(f'{v:.2f}' for v in ours)} |")
    print(f"| one MD5 pass (hashlib, the floor) | {statistics.median(floor):.2f} | "
          f"{' / '.join(f'{v:.2f}' for v in floor)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
