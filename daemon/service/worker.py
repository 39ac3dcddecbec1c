"""An upload worker: claim a due row → process it → act on the outcome; idle until woken.

A row that ends (done, rejected, failed, vanished) is handed to `on_ended` (the audit journal)
once the pipeline has committed its final state.

`seqdrop run` starts `upload.workers` of them, each in its own thread. A worker never dies of an
error: the key refused (AuthError) pauses the gate (the pipeline has put the row back, no attempt
counted); a bug, or the store failing mid-upload, keeps the row *held* and hands it back to the
queue before anything else is claimed, so it cannot stay 'uploading' for good; the queue itself
failing (a full disk) is logged and tried again after a short wait.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from daemon.errors import AuthError, LeaseLost
from daemon.operations.progress import Board
from daemon.queue.base import TERMINAL, FileRow, Store
from daemon.service.pause import Entry, PauseGate

STORE_ERROR_WAIT_S = 2.0   # a worker whose queue write failed (disk full) tries again after this
PAUSED_WAIT_S = 1.0        # a paused worker looks again this often (a resume also wakes it)
IDLE_WAIT_S = 1.0          # an idle worker asks the queue again at least this often (`seqdrop retry`
                           # from another process changes rows without waking anyone)


class Processor(Protocol):
    def process(self, row: FileRow, *, progress: Callable[[int], None] | None = None) -> str: ...


def _nobody(file_ids: list[int]) -> None:
    pass


class Doorbell:
    """Wakes idle workers: rung after rows were queued (committed), after a resume, at shutdown.
    Take a ticket before asking the store, wait with it after: a ring in between is not missed.
    The condition's lock is re-entrant: request_stop() rings from a signal handler."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._rings = 0

    def ticket(self) -> int:
        with self._cond:
            return self._rings

    def ring(self) -> None:
        with self._cond:
            self._rings += 1
            self._cond.notify_all()

    def wait(self, ticket: int, timeout_s: float) -> None:
        """Until a ring after ticket was taken, or timeout_s."""
        with self._cond:
            if self._rings == ticket:
                self._cond.wait(timeout=timeout_s)


class Worker:
    def __init__(self, name: str, *, store: Store, pipeline: Processor, gate: PauseGate, doorbell: Doorbell,
                 stop: threading.Event, log: Any, hand_back_delay_s: float,
                 on_ended: Callable[[list[int]], None] = _nobody,
                 store_error_wait_s: float = STORE_ERROR_WAIT_S, clock: Callable[[], float] = time.time,
                 board: Board | None = None) -> None:
        self.name = name
        self.claim_id = f"{os.getpid()}:{name}"
        self.store, self.pipeline, self.gate, self.doorbell = store, pipeline, gate, doorbell
        self.stop, self.log, self.on_ended = stop, log, on_ended
        self.hand_back_delay_s, self.store_error_wait_s = hand_back_delay_s, store_error_wait_s
        self.clock = clock                       # the store's clock (wall time): when rows are due
        self.held: tuple[int, str] | None = None  # (row id, error) the store could not take back yet
        self.board = board                       # live progress (`seqdrop status` from another process)

    def run(self) -> None:
        while not self.stop.is_set():
            self.step()

    def step(self) -> None:
        """One unit of work: hand back a held row, ask the gate, claim a due row, process it."""
        ticket = self.doorbell.ticket()       # first: a ring after this point is never missed
        try:
            self._hand_back()
            entry = self.gate.admit()
        except Exception as e:                # the queue itself failed: wait and try again, never die
            self._store_failed(e)
            return
        try:
            self._work(entry, ticket)
        finally:
            if entry is Entry.TRIAL:
                self.gate.end_trial()

    def _work(self, entry: Entry, ticket: int) -> None:
        if entry is Entry.CLOSED:             # paused, and the trial (if any) is not this worker's
            self.doorbell.wait(ticket, PAUSED_WAIT_S)
            return
        try:
            row = self.store.claim_next(self.claim_id)
            if row is None:
                # Idle: until woken or the next row is due. (A trial with nothing to try just ends:
                # the prober asks again later.)
                if entry is Entry.OPEN:
                    self.doorbell.wait(ticket, self._idle_wait_s())
                return
        except Exception as e:
            self._store_failed(e)
            return
        try:
            state = self._process(row)
        except AuthError as e:                # the key, not the file: the row is back in the queue
            self.gate.refused(str(e))
        except LeaseLost:                     # a shared queue gave the row to another host: not ours to hold
            self.log.warning("worker.lease_lost", worker=self.name, path=row.path)
        except Exception as e:                # a bug, or the store failing mid-upload: keep the row
            self.log.exception("worker.internal_error", worker=self.name, path=row.path)
            self.held = (row.id, f"internal error: {e!r}; will try again")
        else:
            if state in TERMINAL:             # committed by the pipeline: now the journal
                self.on_ended([row.id])

    def _process(self, row: FileRow) -> str:
        if self.board is None:
            return self.pipeline.process(row)
        with self.board.uploading(row.id, row.size) as progress:
            return self.pipeline.process(row, progress=progress)

    def _hand_back(self) -> None:
        if self.held is not None:
            file_id, error = self.held
            try:
                self.store.reschedule(file_id, delay_s=self.hand_back_delay_s, error=error)
            except LeaseLost:             # another host took it meanwhile: nothing to hand back
                pass
            self.held = None

    def _idle_wait_s(self) -> float:
        due = self.store.next_due_at()
        if due is None:
            return IDLE_WAIT_S
        return min(IDLE_WAIT_S, max(0.05, due - self.clock()))

    def _store_failed(self, e: Exception) -> None:
        self.log.error("worker.store_error", worker=self.name, error=repr(e),
                       fix=f"check the disk and permissions of {self.store.path}")
        self.stop.wait(self.store_error_wait_s)
