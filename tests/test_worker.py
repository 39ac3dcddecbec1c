"""The upload worker's loop, one step at a time: a real store in tmp_path, the real pause gate, the pipeline
faked at the edge (or the real one against the sandbox over loopback where the outcome is the API's)."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from harness import API_KEY, fastq_bytes
from structlog.testing import capture_logs

from daemon.errors import Permanent
from daemon.queue.base import FileRow, Identity
from daemon.queue.sqlite import SqliteStore
from daemon.sandbox import Sandbox
from daemon.service.pause import Entry, PauseGate
from daemon.service.worker import IDLE_WAIT_S, PAUSED_WAIT_S, Doorbell, Worker
from daemon.upload.client import OneCodexClient
from daemon.upload.pipeline import Pipeline


class FailingStore(SqliteStore):
    """A store whose named verbs fail while they are in `failing` (a full disk)."""
    failing: frozenset[str] = frozenset()

    def _check(self, verb: str) -> None:
        if verb in self.failing:
            raise sqlite3.OperationalError("database or disk is full")

    def claim_next(self, worker: str) -> FileRow | None:
        self._check("claim_next")
        return super().claim_next(worker)

    def reschedule(self, file_id: int, **kwargs: Any) -> None:
        self._check("reschedule")
        super().reschedule(file_id, **kwargs)


def raises(exc: Exception) -> Callable[[], None]:
    def ask() -> None:
        raise exc
    return ask


class FakePipeline:
    """Records the rows it is given and does what it is told with each."""

    def __init__(self, store: SqliteStore, then: Callable[[FileRow], str] | None = None) -> None:
        self.store, self.rows = store, []
        self.then = then or self.done

    def done(self, row: FileRow) -> str:
        self.store.mark_done(row.id, sample_id=f"s{row.id}", md5=None)
        return "done"

    def process(self, row: FileRow) -> str:
        self.rows.append(row)
        return self.then(row)


class RecordingDoorbell(Doorbell):
    """Returns from wait() at once, recording how long the worker meant to wait."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float] = []

    def wait(self, ticket: int, timeout_s: float) -> None:
        self.waits.append(timeout_s)


class Env:
    def __init__(self, tmp_path: Path, store: SqliteStore) -> None:
        self.tmp_path, self.store = tmp_path, store
        self.stop = threading.Event()
        self.doorbell = RecordingDoorbell()
        self.gate = PauseGate(store=store, log=structlog.get_logger(), probe_interval_s=60, wake=self.doorbell.ring)

    def worker(self, pipeline: Any, name: str = "worker-0") -> Worker:
        return Worker(name, store=self.store, pipeline=pipeline, gate=self.gate, doorbell=self.doorbell,
                      stop=self.stop, log=structlog.get_logger(), hand_back_delay_s=0.0, store_error_wait_s=0.0)

    def queue(self, name: str, data: bytes | None = None) -> int:
        path = self.tmp_path / name
        path.write_bytes(data if data is not None else fastq_bytes(5_000, seed=len(name)))
        file_id = self.store.add_seen(str(path), Identity.of(os.stat(path)))
        self.store.set_state(file_id, "queued")
        return file_id

    def row(self, file_id: int) -> FileRow:
        row = self.store.get(file_id)
        assert row is not None
        return row


def real_pipeline(env: Env, sandbox: Sandbox) -> Pipeline:
    """The real pipeline and client against the sandbox, the client telling the gate of every API answer."""
    client = OneCodexClient(sandbox.api_url, API_KEY, on_answer=env.gate.answered)
    return Pipeline(store=env.store, client=client, log=structlog.get_logger(), block_size=64 * 1024)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    store = FailingStore(str(tmp_path / "queue.sqlite3"))
    yield Env(tmp_path, store)
    store.close()


def test_a_step_claims_a_due_row_and_processes_it(env: Env) -> None:
    """One step: the due row is claimed (by this worker) and handed to the pipeline; nothing waits."""
    file_id = env.queue("a.fastq")
    pipeline = FakePipeline(env.store)
    env.worker(pipeline).step()
    assert [r.id for r in pipeline.rows] == [file_id]
    assert pipeline.rows[0].state == "uploading"
    assert env.row(file_id).state == "done"
    assert env.doorbell.waits == []


def test_an_idle_worker_waits_until_the_next_row_is_due(env: Env) -> None:
    """Nothing due: the worker waits at most a second, less when a row falls due sooner; it processes nothing."""
    pipeline = FakePipeline(env.store)
    worker = env.worker(pipeline)
    worker.step()
    file_id = env.queue("later.fastq")
    env.store.claim_next("other")
    env.store.reschedule(file_id, delay_s=0.5, error="HTTP 503", count_attempt=False)
    worker.step()
    assert pipeline.rows == []
    assert env.doorbell.waits[0] == IDLE_WAIT_S and 0.05 <= env.doorbell.waits[1] <= 0.5


def test_a_refused_key_pauses_and_puts_the_row_back_uncounted(env: Env, sandbox: Sandbox) -> None:
    """The API refusing the key (401): the gate pauses, the row is queued again with no attempt counted,
    and the paused worker claims nothing more."""
    sandbox.set_api_keys([])
    first, second = env.queue("a.fastq"), env.queue("b.fastq")
    worker = env.worker(real_pipeline(env, sandbox))
    worker.step()
    assert env.gate.reason is not None and "401" in env.gate.reason
    row = env.row(first)
    assert (row.state, row.attempts) == ("queued", 0)
    worker.step()
    assert env.row(second).state == "queued" and env.doorbell.waits == [PAUSED_WAIT_S]
    assert sandbox.samples() == []


def test_a_trial_request_that_is_accepted_ends_the_pause(env: Env, sandbox: Sandbox) -> None:
    """Paused, with a trial offered: one worker uploads one file; the API's 2xx ends the pause, the file is done."""
    file_id = env.queue("t.fastq")
    env.gate.refused("API key rejected (HTTP 401)")
    env.gate.probe(raises(Permanent("/api/v1/samples: HTTP 404")))    # the probe endpoint is missing
    env.worker(real_pipeline(env, sandbox)).step()
    assert env.gate.reason is None
    assert env.row(file_id).state == "done"
    assert [s["state"] for s in sandbox.samples()] == ["confirmed"]


def test_a_trial_with_nothing_to_try_ends_without_waiting(env: Env) -> None:
    """A trial taken by a worker that finds no due row ends at once; the pause holds for the next probe."""
    env.gate.refused("API key rejected (HTTP 401)")
    env.gate.probe(raises(Permanent("/api/v1/samples: HTTP 404")))
    env.worker(FakePipeline(env.store)).step()
    assert env.doorbell.waits == [] and env.gate.reason is not None
    assert env.gate.admit() is Entry.CLOSED         # the trial was used up, and is not running any more


def test_a_bug_keeps_the_row_held_and_hands_it_back_first(env: Env) -> None:
    """A bug mid-upload while the store cannot take the row back: the row is held, nothing else is claimed until
    it is handed back, and then the worker goes on."""
    def bug(row: FileRow) -> str:
        env.store.failing = frozenset({"reschedule"})   # the disk fills as the upload breaks
        raise RuntimeError("a bug")

    first, second = env.queue("a.fastq"), env.queue("b.fastq")
    pipeline = FakePipeline(env.store, then=bug)
    worker = env.worker(pipeline)
    with capture_logs() as logs:
        worker.step()                                # the bug: the row is held
        worker.step()                                # the hand-back fails: nothing is claimed
    assert [e["event"] for e in logs] == ["worker.internal_error", "worker.store_error"]
    assert worker.held is not None and [r.id for r in pipeline.rows] == [first]
    assert env.row(first).state == "uploading" and env.row(second).state == "queued"
    env.store.failing = frozenset()
    pipeline.then = pipeline.done
    worker.step()                                    # a.fastq handed back, then the next due row claimed
    assert worker.held is None
    row = env.row(first)
    assert (row.state, row.attempts) == ("queued", 1) and "internal error" in (row.error or "")
    assert [r.id for r in pipeline.rows] == [first, second] and env.row(second).state == "done"


def test_a_store_that_cannot_claim_is_waited_for(env: Env) -> None:
    """claim_next failing (the queue's disk) is logged with the fix and tried again; the worker survives."""
    file_id = env.queue("a.fastq")
    pipeline = FakePipeline(env.store)
    worker = env.worker(pipeline)
    env.store.failing = frozenset({"claim_next"})
    with capture_logs() as logs:
        worker.step()
    [failure] = logs
    assert failure["event"] == "worker.store_error" and env.store.path in failure["fix"]
    env.store.failing = frozenset()
    worker.step()
    assert env.row(file_id).state == "done"


def test_the_stop_flag_ends_the_loop(env: Env) -> None:
    """run() steps until stop is set, and returns then (here: stop set while a file is processed)."""
    def stop_after(row: FileRow) -> str:
        env.stop.set()
        return pipeline.done(row)

    ids = [env.queue("a.fastq"), env.queue("b.fastq")]
    pipeline = FakePipeline(env.store, then=stop_after)
    thread = threading.Thread(target=env.worker(pipeline).run, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive()
    assert [r.id for r in pipeline.rows] == ids[:1]
    assert env.row(ids[1]).state == "queued"


def test_a_ring_while_the_store_is_busy_does_not_wait_for_it(tmp_path: Path) -> None:
    """An idle worker inside a store call while another thread holds the store (a tracker batch) and rings the
    doorbell: the ring returns at once (the doorbell never waits for the store), and the worker wakes."""
    store = SqliteStore(str(tmp_path / "queue.sqlite3"))
    entered, proceed = threading.Event(), threading.Event()
    real_next_due_at = store.next_due_at

    def next_due_at() -> float | None:
        if not entered.is_set():
            entered.set()
            proceed.wait(10)
        return real_next_due_at()

    store.next_due_at = next_due_at  # type: ignore[method-assign]
    doorbell, stop = Doorbell(), threading.Event()
    gate = PauseGate(store=store, log=structlog.get_logger(), probe_interval_s=60)
    worker = Worker("worker-0", store=store, pipeline=FakePipeline(store), gate=gate, doorbell=doorbell,
                    stop=stop, log=structlog.get_logger(), hand_back_delay_s=0.0)
    stepper = threading.Thread(target=worker.step, daemon=True)
    ringer = threading.Thread(target=doorbell.ring, daemon=True)
    try:
        stepper.start()
        assert entered.wait(10), "the worker never went idle"
        with store.batch():          # a tracker batch holds the store...
            proceed.set()            # ...while the worker needs it to finish its question...
            ringer.start()           # ...and someone rings
            ringer.join(5)
            rang = not ringer.is_alive()
        assert rang, "Doorbell.ring() blocked behind the store"
    finally:
        stop.set()
        doorbell.ring()
        stepper.join(5)
        store.close()


def test_a_ring_after_the_ticket_is_never_missed() -> None:
    """A ring between taking a ticket and waiting with it makes the wait return at once; without one it times out."""
    doorbell = Doorbell()
    ticket = doorbell.ticket()
    doorbell.ring()
    waiter = threading.Thread(target=doorbell.wait, args=(ticket, 60.0), daemon=True)
    waiter.start()
    waiter.join(5)
    assert not waiter.is_alive(), "wait() slept through a ring that came after its ticket"
    doorbell.wait(doorbell.ticket(), 0.01)     # no ring: returns after its timeout
