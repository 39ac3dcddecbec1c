"""`seqdrop status` on a 100,000-file queue: how long a person (or a script) waits for an answer.

    .venv/bin/python bench/status.py                  # 100,000 files, 5 runs of each command
    .venv/bin/python bench/status.py --files 20000 --runs 3
    .venv/bin/python bench/status.py --paired          # the files as R1/R2 pairs: 50,000 samples

The queue is built with the store's own verbs (add_seen, set_state, mark_done, in batches), shaped as
a busy instrument's: nearly all done, a few hundred queued, seen, rejected, failed or vanished. Then
each command runs as a user runs it (`seqdrop status ...` as a child process, start-up included, its
output read through a pipe) and the wall time of every run is printed, with the best and the median,
and the CPU seconds (user + system) of the median run: on a shared machine the wall time follows the
load, the CPU time much less.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import SEQDROP, run_measured  # noqa: E402

from daemon.queue.base import Identity  # noqa: E402
from daemon.queue.sqlite import SqliteStore  # noqa: E402

# Of every 1,000 files: how many end in each state other than done (the rest are done).
MIX_PER_1000 = {"queued": 3, "seen": 2, "rejected": 2, "failed": 1, "vanished": 2}
COMMANDS = (["status"], ["status", "--json"], ["status", "--state", "done", "--since", "1h"],
            ["status", "--run", "run_0042"])


def build_queue(path: Path, files: int, *, paired: bool = False) -> None:
    """files rows in 100 run folders, committed 2,000 at a time; paired: each odd row is the R2 of the
    row before it, the two assembled into a sample (the state set on the lead, mirrored onto the R2)."""
    store = SqliteStore(str(path))
    states = [s for s, n in MIX_PER_1000.items() for _ in range(n)]
    for start in range(0, files, 2000):
        with store.batch():
            for i in range(start, min(files, start + 2000), 2 if paired else 1):
                run = f"run_{i % 100:04d}"
                fid = store.add_seen(f"/srv/sequencer/output/{run}/Sample_{i:06d}_S1_L001_R1_001.fastq.gz",
                                     Identity(2049, 10_000 + i, 50_000_000 + i, 1_764_000_000_000_000_000 + i))
                if paired:
                    mate = store.add_seen(f"/srv/sequencer/output/{run}/Sample_{i:06d}_S1_L001_R2_001.fastq.gz",
                                          Identity(2049, 10_001 + i, 50_000_001 + i, 1_764_000_000_000_000_001 + i))
                    store.add_sample(key=f"{run}|Sample_{i:06d}", folder=f"/srv/sequencer/output/{run}",
                                     name=f"Sample_{i:06d}_S1", run=run, paired=True,
                                     files=[(fid, "R1", 1), (mate, "R2", 1)])
                state = states[i % 1000] if i % 1000 < len(states) else "done"
                if state == "done":
                    store.mark_done(fid, sample_id=f"{i:016x}", md5=f"{i:032x}")
                elif state == "rejected":
                    store.set_state(fid, state, error=f"record {i} (line {4 * i + 1}): truncated")
                elif state != "seen":
                    store.set_state(fid, state, error="HTTP 503 from S3 (will try again in 30 s)")
    store.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--paired", action="store_true", help="files as R1/R2 pairs assembled into samples")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="seqdrop-bench-status-") as tmp:
        queue, config = Path(tmp) / "queue.sqlite3", Path(tmp) / "seqdrop.toml"
        config.write_text(f'[queue]\npath = "{queue}"\n')
        started = time.monotonic()
        build_queue(queue, args.files, paired=args.paired)
        print(f"queue of {args.files:,} files built in {time.monotonic() - started:.1f} s "
              f"({queue.stat().st_size / 1e6:.0f} MB)")
        results = {}
        for command in COMMANDS:
            runs = []
            for _ in range(args.runs):
                r = run_measured([SEQDROP, *command, "--config", str(config)], timeout_s=120)
                assert r.returncode == 0, r.stderr
                if "--json" in command:
                    assert len(json.loads(r.stdout)["files"]) == args.files
                runs.append(r)
            runs.sort(key=lambda r: r.wall_s)
            median = runs[len(runs) // 2]
            name = "seqdrop " + " ".join(command)
            results[name] = {"best_s": runs[0].wall_s, "median_s": median.wall_s,
                             "median_cpu_s": median.user_s + median.sys_s, "lines": median.stdout.count("\n")}
            print(f"{name:<45} best {runs[0].wall_s:.3f} s  median {median.wall_s:.3f} s "
                  f"(CPU {median.user_s + median.sys_s:.3f} s)  {median.stdout.count(chr(10)):,} lines; "
                  f"runs: {' '.join(f'{r.wall_s:.3f}' for r in runs)}")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
