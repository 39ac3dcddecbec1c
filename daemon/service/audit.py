"""The daemon's side of the audit journal: a record for each file version that ended.

daemon/queue/journal.py writes the records; this room decides when. The places that learn a row
ended hand its id here once the store has committed it (the order integrity.check relies on: the
queue is never older than its journal): a worker, from its pipeline's outcome (done, rejected,
failed, vanished), and the main loop, from what the tracker returns (vanished, rejected). The
record is read back from the store, so it says what the queue says.

A version in an assembled sample (design.md, "Samples") ends with its sample: the lead carries the
upload's state and the store mirrors it onto the other members, so the id of any member stands for
all of them. Each member gets its file.ended record (what the rebuild reads), with the sample's name,
run, project and tags; then the sample gets one sample.ended record (the chain of custody: every
file's identity and MD5, the landing, the times of init, each read's POST and the confirm). Then the
runs those versions are in are judged for the run_uploaded notification (run_notice.py).

A row's sample id is journaled too, once the store has saved it (`sample_saved`, called by
daemon/service/health.py's WatchedStore after save_init and save_posted): a queue rebuilt after a
lost WAL must still know the sample of a version whose confirm was performed but not answered.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

from daemon.queue.base import (
    POSTED_STEPS,
    STEP_MP_COMPLETE,
    STEP_MP_INIT,
    STEP_MP_R2_COMPLETE,
    STEP_POSTED_R1,
    TERMINAL,
    FileRow,
    SampleRow,
    Store,
)
from daemon.queue.journal import Journal
from daemon.service.run_notice import RunNotices

# The step a half-posted paired sample reaches, and the read S3 then holds (the other read's POST is
# the last one, at the row's posted_at).
_HALF_POSTED_READ = {STEP_POSTED_R1: "R1", STEP_MP_R2_COMPLETE: "R2"}


def _nobody(exc: BaseException) -> None:
    pass


class AuditTrail:
    def __init__(self, *, store: Store, journal: Journal, log: Any,
                 on_failure: Callable[[BaseException], None] = _nobody, runs: RunNotices | None = None) -> None:
        """on_failure: told of a journal write that failed (the disk under the state directory);
        runs: told of the versions that ended, to send run_uploaded when their run has ended."""
        self.store, self.journal, self.log = store, journal, log
        self.on_failure = on_failure
        self.runs = runs
        self._half_posted: dict[int, dict[str, float]] = {}    # lead id → {read: when S3 accepted it}

    def ended(self, file_ids: Iterable[int]) -> None:
        """Journal the rows with these ids that are in a final state, with the other members of their
        samples, and those samples (one fsync for the files, one per sample). Never raises: a record
        that cannot be written is logged as an error."""
        rows, samples = self._ended_rows(file_ids)
        if not rows:
            return
        try:
            self.journal.files_ended([_version(row, samples.get(row.sample or -1)) for row in rows])
            for sample in samples.values():
                self._sample_ended(sample)
        except (OSError, ValueError) as e:
            self.on_failure(e)
            self.log.error("journal.not_written", files=len(rows), path=rows[0].path, error=repr(e),
                           fix=f"check the disk and the permissions of {self.journal.path}")
        if self.runs is not None:
            self.runs.ended(rows, samples)

    def _ended_rows(self, file_ids: Iterable[int]) -> tuple[list[FileRow], dict[int, SampleRow]]:
        """The ended rows these ids name, each sample's members with them, and those samples by id."""
        rows: dict[int, FileRow] = {}
        samples: dict[int, SampleRow] = {}
        for file_id in file_ids:
            try:
                row = self.store.get(file_id)
                sample = self.store.sample(row.sample) if row is not None and row.sample is not None else None
            except Exception as e:          # the store's health is judged where its verbs are watched
                self.log.error("journal.row_unreadable", file_id=file_id, error=repr(e))
                continue
            if row is None or row.state not in TERMINAL:
                continue
            if row.state == "done" and not row.sample_id:   # cannot be: a done row names its sample
                self.log.error("journal.done_without_sample", file_id=file_id, path=row.path)
                continue
            if sample is not None:
                samples[sample.id] = sample
                rows.update((m.id, m) for m in sample.files if m.state in TERMINAL)
            rows.setdefault(row.id, row)
        return list(rows.values()), samples

    def _sample_ended(self, sample: SampleRow) -> None:
        lead = next((f for f in sample.files if f.id == sample.lead), None)
        if lead is None or lead.state not in TERMINAL:
            return
        self.journal.sample_ended(
            sample=sample.id, state=lead.state, name=sample.name, run=sample.run, paired=sample.paired,
            files=[{"path": m.path, "identity": m.identity, "md5": m.md5, "role": m.role or "single",
                    "lane": m.lane} for m in sample.files],
            sample_id=lead.sample_id, landing=sample.landing, init_at=lead.init_at,
            posted_at=self._post_times(sample, lead), confirmed_at=lead.updated_at if lead.state == "done" else None,
            error=lead.error, late=sample.late, warnings=sample.warnings, key=sample.key, folder=sample.folder,
            lead=lead.path)

    def _post_times(self, sample: SampleRow, lead: FileRow) -> dict[str, float | None]:
        """When S3 accepted each read: the half-posted step's time (seen by this process) and the row's
        posted_at for the last read. A read whose POST time this process did not see is None."""
        half = self._half_posted.pop(lead.id, {})
        if not sample.paired:
            return {lead.role or "single": lead.posted_at}
        times: dict[str, float | None] = {"R1": half.get("R1"), "R2": half.get("R2")}
        missing = [read for read, t in times.items() if t is None]
        if len(missing) == 1:
            times[missing[0]] = lead.posted_at
        return times

    def _sample_of(self, row: FileRow) -> dict[str, Any] | None:
        """The sample the row leads, for its in-flight record, if it has several files (a rebuilt queue
        must resume it whole); None for a file that is its own sample."""
        if row.sample is None:
            return None
        sample = self.store.sample(row.sample)
        return _sample_record(sample) if sample is not None and len(sample.files) > 1 else None

    def sample_saved(self, file_id: int) -> None:
        """Journal the sample the row with this id now has (after save_init / save_posted committed).
        Never raises: a record that cannot be written is logged as an error."""
        try:
            row = self.store.get(file_id)
        except Exception as e:              # the store's health is judged where its verbs are watched
            self.log.error("journal.row_unreadable", file_id=file_id, error=repr(e))
            return
        if row is None or not row.sample_id or row.state in TERMINAL:
            return
        if (read := _HALF_POSTED_READ.get(row.step)) is not None:
            self._half_posted.setdefault(row.id, {})[read] = row.updated_at
        try:
            self.journal.sample_saved(path=row.path, identity=row.identity, step=row.step,
                                      sample_id=row.sample_id, posted=row.step in POSTED_STEPS,
                                      md5=row.md5, init=_multipart_init(row), sample=self._sample_of(row))
        except (OSError, ValueError) as e:
            self.on_failure(e)
            self.log.error("journal.not_written", files=1, path=row.path, error=repr(e),
                           fix=f"check the disk and the permissions of {self.journal.path}")


def _sample_record(sample: SampleRow) -> dict[str, Any]:
    """A sample of several files as its lead's in-flight journal record carries it (the lead first)."""
    files = sorted(sample.files, key=lambda f: f.id != sample.lead)
    return {"key": sample.key, "folder": sample.folder, "name": sample.name, "run": sample.run,
            "paired": sample.paired, "late": sample.late, "warnings": list(sample.warnings),
            "landing": sample.landing,
            "files": [{"path": f.path, "device": f.identity.dev, "inode": f.identity.inode, "size": f.identity.size,
                       "mtime_ns": f.identity.mtime_ns, "role": f.role, "lane": f.lane} for f in files]}


def _multipart_init(row: FileRow) -> dict[str, Any] | None:
    """The multipart route's stored init (bucket, key, callback: no credentials), which a rebuilt row
    needs to call back. The standard route's (a signed S3 POST policy) stays out of the journal."""
    if row.step not in (STEP_MP_INIT, STEP_MP_COMPLETE) or not row.init:
        return None
    try:
        init = json.loads(row.init)
    except ValueError:
        return None
    return init if isinstance(init, dict) else None


def _version(row: FileRow, sample: SampleRow | None) -> dict[str, Any]:
    """A file.ended record's fields: the version, and its sample's name, run, project and tags (a version
    without a sample: its parent folder's name as its run)."""
    landing = (sample.landing if sample is not None else None) or {}
    # A member's upload is its sample's: the times are the lead's (the only row the pipeline steps).
    lead = next((f for f in sample.files if f.id == sample.lead), row) if sample is not None else row
    return {"path": row.path, "identity": row.identity, "state": row.state, "md5": row.md5,
            "sample_id": row.sample_id, "error": row.error, "init_at": lead.init_at, "posted_at": lead.posted_at,
            "confirmed_at": lead.updated_at if row.state == "done" else None,
            "sample_name": sample.name if sample is not None else None,
            "run": sample.run if sample is not None and sample.run else os.path.basename(os.path.dirname(row.path)),
            "project": landing.get("project"), "tags": list(landing.get("tags") or []),
            "sample": row.sample, "role": row.role or ("single" if row.sample is not None else None), "lane": row.lane}


__all__ = ["AuditTrail"]
