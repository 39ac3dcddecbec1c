"""`seqdrop runs [--json]`: the runs the queue holds, each with its samples by state (design.md, "Runs").

A run is what an assembled sample names (`samples.run`: the folder holding a run marker or a
SampleSheet.csv, else the files' folder); a file not (yet) in a sample is a sample by itself, and its
run is its parent folder's name. Read through the same read-only connection as `status`, so it works
beside the running daemon. Runs are listed by their last change, the most recent last (a person reads
the bottom of a terminal); `--json` gives every sample of every run.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TextIO

from daemon.config import Settings
from daemon.queue.base import STATES, TERMINAL, iso_utc
from daemon.redact import escape_control

EXIT_OK = 0
NAMES_SHOWN = 8           # the samples not done named under a run's line


@dataclass
class Run:
    name: str
    samples: list[dict[str, Any]] = field(default_factory=list)
    updated_at: float = 0.0

    def counts(self) -> dict[str, int]:
        counts = {s: 0 for s in STATES}
        for s in self.samples:
            counts[s["state"]] += 1
        return counts

    @property
    def ended(self) -> bool:
        return all(s["state"] in TERMINAL for s in self.samples)

    def public(self) -> dict[str, Any]:
        return {"run": self.name, "samples": len(self.samples), "files": sum(s["files"] for s in self.samples),
                "counts": self.counts(), "ended": self.ended, "updated_at": iso_utc(self.updated_at),
                "sample_list": self.samples}


def gather(samples: Iterable[tuple[Any, ...]], loose: Iterable[tuple[Any, ...]]) -> list[Run]:
    """Runs from store.run_rows(): samples, and files without a sample (each its own sample)."""
    runs: dict[str, Run] = {}

    def add(run: str, entry: dict[str, Any], updated_at: float) -> None:
        r = runs.setdefault(run, Run(run))
        r.samples.append(entry)
        r.updated_at = max(r.updated_at, updated_at)

    for sid, run, folder, name, state, sample_id, members, updated_at in samples:
        add(run or os.path.basename(folder.rstrip("/")) or "/", {"id": sid, "name": name, "state": state,
            "sample_id": sample_id, "files": members}, updated_at)
    for fid, path, state, sample_id, updated_at in loose:
        folder = os.path.dirname(path)
        add(os.path.basename(folder) or "/", {"id": None, "name": os.path.basename(path), "state": state,
            "sample_id": sample_id, "files": 1, "file": fid}, updated_at)
    return sorted(runs.values(), key=lambda r: (r.updated_at, r.name))


def runs(settings: Settings, store: Any, *, as_json: bool = False, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    if store is None:
        if as_json:
            print(json.dumps({"runs": []}), file=out)
        else:
            print(f"No queue yet at {settings.queue.path} (the daemon has not run with this config): no runs.",
                  file=out)
        return EXIT_OK
    try:
        found = gather(*store.run_rows())
    finally:
        store.close()
    if as_json:
        print(json.dumps({"runs": [r.public() for r in found]}, indent=1, ensure_ascii=False), file=out)
        return EXIT_OK
    if not found:
        print("No runs yet: the queue holds no files. Files written into a watch folder appear here once "
              "seen (`seqdrop status` lists them).", file=out)
        return EXIT_OK
    for run in found:
        _write_run(out, run)
    return EXIT_OK


def _write_run(out: TextIO, run: Run) -> None:
    counts = {s: n for s, n in run.counts().items() if n}
    n = len(run.samples)
    print(f"{escape_control(run.name)}  {n} sample{'s' if n != 1 else ''}: "
          f"{', '.join(f'{k} {v}' for k, v in counts.items())}  "
          f"({'all ended' if run.ended else 'in progress'}; last change {iso_utc(run.updated_at)})", file=out)
    open_ones = [s for s in run.samples if s["state"] != "done"]
    for s in open_ones[:NAMES_SHOWN]:
        ref = f"s{s['id']}" if s["id"] is not None else f"file {s['file']}"
        print(f"    {s['state']:<9} {escape_control(s['name'])} ({ref})", file=out)
    if len(open_ones) > NAMES_SHOWN:
        print(f"    … and {len(open_ones) - NAMES_SHOWN} more not done: `seqdrop status --run "
              f"{escape_control(run.name)}` lists them", file=out)
