"""The `run_uploaded` notification: a run's every sample has ended (design.md, "Runs").

Told by the audit trail each time samples end (after the store's commit and the journal's records).
For each run those samples are in, it asks the queue whether anything at or below the run's folder
is still seen, queued or uploading (one indexed count); if nothing is, it names the run, its samples
by state and each sample's name, sample id, project and files.

Once per run: what was told (each sample's lead and its state) is kept in the queue's meta table
(`run_uploaded:<run folder>`) before the event is handed to the notifiers, so a restart never tells it
again. A sample that ends in that run afterwards (a late member, which becomes a sample of its own;
a failed sample retried and done) makes one more notification, marked `late: true`, listing only the
samples that are new or changed since (the counts are the whole run's). At most once: a crash between
the meta write and the delivery loses the notification rather than sending it twice.

A watch folder itself is not a run that ends: files written straight into it (no run folder) are
listed by `seqdrop runs` under its name, but the queue of a standing inbox would "end" after every
batch, so no run_uploaded is sent for it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from daemon.queue.base import STATES, FileRow, SampleRow, Store

META_PREFIX = "run_uploaded:"
RUN_UPLOADED = "run_uploaded"
_MAX_CLIMB = 64        # folders climbed from a sample's folder to its run folder


def run_folder(row: FileRow, sample: SampleRow | None) -> tuple[str, str]:
    """(the run's folder, the run's name) of a version: its sample's run, found among the folders
    above the sample's, else the file's parent folder."""
    if sample is None:
        folder = os.path.dirname(row.path)
        return folder, os.path.basename(folder) or "/"
    folder = sample.folder.rstrip("/") or "/"
    if sample.run:
        probe = folder
        for _ in range(_MAX_CLIMB):
            if os.path.basename(probe) == sample.run:
                return probe, sample.run
            parent = os.path.dirname(probe)
            if parent == probe:
                break
            probe = parent
    return folder, sample.run or os.path.basename(folder) or "/"


def run_samples(rows: list[FileRow], samples: dict[int, SampleRow]) -> list[dict[str, Any]]:
    """Each sample of a run's versions (a version without a sample is one by itself), as the event
    carries it."""
    entries: dict[int, dict[str, Any]] = {}
    for row in rows:
        sample = samples.get(row.sample) if row.sample is not None else None
        if sample is None:
            entries[row.id] = {"lead": row.id, "sample": None, "name": os.path.basename(row.path),
                               "sample_id": row.sample_id, "project": None, "state": row.state,
                               "files": [row.path]}
        elif sample.lead not in entries:
            lead = next((f for f in sample.files if f.id == sample.lead), row)
            entries[sample.lead] = {"lead": sample.lead, "sample": sample.id, "name": sample.name,
                                    "sample_id": lead.sample_id, "project": (sample.landing or {}).get("project"),
                                    "state": lead.state, "files": [f.path for f in sample.files]}
    return list(entries.values())


class RunNotices:
    def __init__(self, *, store: Store, emit: Callable[..., None], roots: Iterable[str], log: Any,
                 clock: Callable[[], float] = time.time) -> None:
        self.store, self.emit, self.log, self.clock = store, emit, log, clock
        self.roots = frozenset(os.path.normpath(r) for r in roots)
        # Workers end the last two samples of a run at the same moment: one judgement at a time, or
        # both would find the run ended and nothing told yet.
        self._lock = threading.Lock()

    def ended(self, rows: Iterable[FileRow], samples: dict[int, SampleRow]) -> None:
        """These versions ended (their samples given by local id): tell each of their runs that ended
        now. Never raises: a run that cannot be judged is logged as an error."""
        runs: dict[str, str] = {}
        for row in rows:
            folder, name = run_folder(row, samples.get(row.sample) if row.sample is not None else None)
            runs.setdefault(os.path.normpath(folder), name)
        for folder, name in runs.items():
            try:
                with self._lock:
                    self._check(folder, name)
            except Exception as e:       # a notification must never stop the journal or an upload
                self.log.error("run_uploaded.not_judged", run=name, folder=folder, error=repr(e))

    def _check(self, folder: str, name: str) -> None:
        if folder in self.roots or self.store.unended_under(folder):
            return
        rows = self.store.files_under(folder)
        samples = self.store.samples_by_id({r.sample for r in rows if r.sample is not None})
        entries = run_samples(rows, samples)
        key = META_PREFIX + folder
        before = self.store.get_meta(key) or {}
        told: dict[str, str] = before.get("samples") or {}
        fresh = [e for e in entries if told.get(str(e["lead"])) != e["state"]]
        if not entries or not fresh:
            return
        late = bool(told)
        self.store.set_meta(key, {"samples": {str(e["lead"]): e["state"] for e in entries},
                                  "told_at": self.clock(), "times": int(before.get("times") or 0) + 1})
        counts = {s: n for s in STATES if (n := sum(e["state"] == s for e in entries))}
        self.log.info("run.uploaded", run=name, folder=folder, samples=len(entries), late=late, **counts)
        self.emit(RUN_UPLOADED, run=name, path=folder, counts=counts, late=late,
                  samples=[{k: v for k, v in e.items() if k != "lead"} for e in (fresh if late else entries)])


__all__ = ["META_PREFIX", "RUN_UPLOADED", "RunNotices", "run_folder", "run_samples"]
