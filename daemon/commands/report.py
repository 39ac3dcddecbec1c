"""`seqdrop report [RUN] [--since DATE] [--format csv|json]`: the audit journal as a lab's report.

design.md ("Runs, the audit journal and reports"): every file version that ended, with its MD5, sample
id, sample name, run, project and times, and the totals. It reads only the audit journal
(daemon/queue/journal.py), never the queue: it is the chain-of-custody record, and it answers while
the daemon runs, after a queue was rebuilt, or on a copy of the journal elsewhere.

A version that ended more than once (failed, then retried and done) is reported as it ended last.
Records written before samples existed carry no run: a file's run is then its parent folder's name,
as `seqdrop runs` says. CSV: one row per file, the totals on stderr (a CSV of rows stays a table a
spreadsheet reads as is); JSON: {"files": [...], "totals": {...}}.
"""

from __future__ import annotations

import csv
import fnmatch
import json
import os
import sys
from collections.abc import Iterable
from typing import Any, TextIO

from daemon.config import Settings
from daemon.errors import SeqdropError
from daemon.queue.base import STATES
from daemon.queue.journal import FILE_ENDED, journal_path, read_records

EXIT_OK = 0
FORMATS = ("csv", "json")
COLUMNS = ("path", "state", "size", "md5", "sample_id", "sample", "sample_name", "role", "lane", "run", "project",
           "tags", "init_at", "posted_at", "confirmed_at", "ended_at", "device", "inode", "mtime_ns", "host", "error")


def collect(records: Iterable[dict[str, Any]], *, run: str | None = None) -> list[dict[str, Any]]:
    """The report's rows from file.ended records: the last ending of each version, of the run if given
    (a name or a glob of it; a value with a "/" is a folder: the files at or below it)."""
    latest: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in records:
        if r.get("event") != FILE_ENDED:
            continue
        row = _row(r)
        if run is not None and not _in_run(row, run):
            continue
        key = (row["path"], row["device"], row["inode"], row["size"], row["mtime_ns"])
        latest.pop(key, None)           # re-inserted: the order is that of the last ending
        latest[key] = row
    return list(latest.values())


def _row(r: dict[str, Any]) -> dict[str, Any]:
    path = str(r.get("path") or "")
    row = {c: r.get(c) for c in COLUMNS}
    row["run"] = r.get("run") or os.path.basename(os.path.dirname(path)) or None
    row["tags"] = list(r.get("tags") or [])
    row["ended_at"] = r.get("time")
    return row


def _in_run(row: dict[str, Any], run: str) -> bool:
    if "/" in run:
        folder = os.path.abspath(run).rstrip("/") + "/"
        return row["path"].startswith(folder)
    return fnmatch.fnmatchcase(row["run"] or "", run)


def totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Files and samples by state, and bytes. A sample is the local sample of a file (the files of a
    paired sample are one), else the file itself (a file without a sample is a sample by itself)."""
    files = {s: 0 for s in STATES}
    samples: dict[Any, str] = {}
    for row in rows:
        files[row["state"]] = files.get(row["state"], 0) + 1
        key = ("s", row["sample"]) if row["sample"] is not None else ("f", row["path"], row["inode"], row["mtime_ns"])
        samples[key] = row["state"]
    by_state = {s: 0 for s in STATES}
    for state in samples.values():
        by_state[state] = by_state.get(state, 0) + 1
    return {"files": len(rows), "files_by_state": files, "samples": len(samples), "samples_by_state": by_state,
            "bytes": sum(int(r["size"] or 0) for r in rows),
            "bytes_done": sum(int(r["size"] or 0) for r in rows if r["state"] == "done"),
            "runs": sorted({r["run"] for r in rows if r["run"]})}


def report(settings: Settings, *, run: str | None = None, since: float | None = None, fmt: str = "csv",
           out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    path = journal_path(settings.queue.path)
    try:
        rows = collect(read_records(path, since=since), run=run)
    except OSError as e:
        raise SeqdropError(f"cannot read the audit journal {path} ({e.strerror or e}) — fix: run as the seqdrop "
                           f"user or root") from None
    summary = totals(rows)
    if fmt == "json":
        print(json.dumps({"journal": path, "run": run, "files": rows, "totals": summary}, indent=1,
                         ensure_ascii=False), file=out)
    else:
        write_csv(out, rows)
    if not os.path.exists(path):
        print(f"seqdrop: no audit journal yet at {path}: no file has ended (been uploaded, rejected, failed or "
              f"vanished) with this config", file=err)
    elif fmt == "csv":
        by_state = ", ".join(f"{s} {n}" for s, n in summary["files_by_state"].items() if n) or "none"
        print(f"{summary['files']} files ({by_state}) in {summary['samples']} samples, {summary['bytes_done']:,} "
              f"bytes uploaded{f' (run {run})' if run else ''}", file=err)
    return EXIT_OK


def write_csv(out: TextIO, rows: list[dict[str, Any]]) -> None:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow(["" if row[c] is None else ";".join(row[c]) if c == "tags" else row[c] for c in COLUMNS])
