"""The daemon's side of the audit journal: a record for each file version that ended.

daemon/queue/journal.py writes the records; this room decides when. The places that learn a row
ended hand its id here once the store has committed it (the order integrity.check relies on: the
queue is never older than its journal): a worker, from its pipeline's outcome (done, rejected,
failed, vanished), and the main loop, from what the tracker returns (vanished, rejected). The
record is read back from the store, so it says what the queue says.

A row's sample is journaled too, once the store has saved it (`sample_saved`, called by
daemon/service/health.py's WatchedStore after save_init and save_posted): a queue rebuilt after a
lost WAL must still know the sample of a version whose confirm was performed but not answered.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from daemon.queue.base import (
    POSTED_STEPS,
    STEP_MP_COMPLETE,
    STEP_MP_INIT,
    TERMINAL,
    FileRow,
    Store,
)
from daemon.queue.journal import Journal


def _nobody(exc: BaseException) -> None:
    pass


class AuditTrail:
    def __init__(self, *, store: Store, journal: Journal, log: Any,
                 on_failure: Callable[[BaseException], None] = _nobody) -> None:
        """on_failure: told of a journal write that failed (the disk under the state directory)."""
        self.store, self.journal, self.log = store, journal, log
        self.on_failure = on_failure

    def ended(self, file_ids: Iterable[int]) -> None:
        """Journal the rows with these ids that are in a final state (one fsync for them all).
        Never raises: a record that cannot be written is logged as an error."""
        rows: list[FileRow] = []
        for file_id in file_ids:
            try:
                row = self.store.get(file_id)
            except Exception as e:          # the store's health is judged where its verbs are watched
                self.log.error("journal.row_unreadable", file_id=file_id, error=repr(e))
                continue
            if row is None or row.state not in TERMINAL:
                continue
            if row.state == "done" and not row.sample_id:   # cannot be: a done row names its sample
                self.log.error("journal.done_without_sample", file_id=file_id, path=row.path)
                continue
            rows.append(row)
        if not rows:
            return
        try:
            self.journal.files_ended([_version(row) for row in rows])
        except (OSError, ValueError) as e:
            self.on_failure(e)
            self.log.error("journal.not_written", files=len(rows), path=rows[0].path, error=repr(e),
                           fix=f"check the disk and the permissions of {self.journal.path}")

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
        try:
            self.journal.sample_saved(path=row.path, identity=row.identity, step=row.step,
                                      sample_id=row.sample_id, posted=row.step in POSTED_STEPS,
                                      md5=row.md5, init=_multipart_init(row))
        except (OSError, ValueError) as e:
            self.on_failure(e)
            self.log.error("journal.not_written", files=1, path=row.path, error=repr(e),
                           fix=f"check the disk and the permissions of {self.journal.path}")


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


def _version(row: FileRow) -> dict[str, Any]:
    return {"path": row.path, "identity": row.identity, "state": row.state, "md5": row.md5,
            "sample_id": row.sample_id, "error": row.error, "init_at": row.init_at, "posted_at": row.posted_at,
            "confirmed_at": row.updated_at if row.state == "done" else None}


__all__ = ["AuditTrail"]
