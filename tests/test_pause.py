"""The pause gate: a real store in tmp_path, an injected clock (no sleeping), outcomes told as the daemon tells them."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from daemon.errors import AuthError, Permanent, Transient
from daemon.queue.sqlite import SqliteStore
from daemon.service.pause import FIRST_PROBE_S, Entry, PauseGate

CAP_S = 100.0
REFUSED = "API key rejected: Unauthorized (HTTP 401)"


class Clock:
    def __init__(self) -> None:
        self.now = 5_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Env:
    def __init__(self, store: SqliteStore, clock: Clock) -> None:
        self.store, self.clock = store, clock
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.rings = 0
        self.gate = self.new_gate()

    def new_gate(self, **kwargs: Any) -> PauseGate:
        return PauseGate(store=self.store, log=structlog.get_logger(), probe_interval_s=CAP_S, clock=self.clock,
                         emit=lambda event, **f: self.events.append((event, f)), wake=self._ring, **kwargs)

    def _ring(self) -> None:
        self.rings += 1

    def seconds_to_next_probe(self, limit_s: float = 1000.0) -> float:
        """Advance the clock second by second until a probe is due; how far it went."""
        start = self.clock.now
        while not self.gate.start_probe():
            assert self.clock.now - start < limit_s, "no probe became due"
            self.clock.advance(1.0)
        return self.clock.now - start

    def probe(self, outcome: Exception | None) -> None:
        """A probe that raises outcome (or returns normally for None)."""
        def ask() -> None:
            if outcome is not None:
                raise outcome
        self.gate.probe(ask)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    store = SqliteStore(str(tmp_path / "queue.sqlite3"))
    yield Env(store, Clock())
    store.close()


def test_a_refused_key_pauses_once_and_is_recorded(env: Env) -> None:
    """An AuthError pauses: reason shown, recorded in the store, observers told once; workers claim nothing."""
    assert env.gate.admit() is Entry.OPEN and env.gate.reason is None
    with capture_logs() as logs:
        env.gate.refused(REFUSED)
        env.gate.refused("API key rejected again (HTTP 401)")    # a second worker refused at once
    assert env.gate.reason == REFUSED
    assert env.store.get_meta("paused")["reason"] == REFUSED
    assert [e for e, _ in env.events] == ["uploads_paused"]
    assert [e["event"] for e in logs] == ["uploads.paused"]
    assert env.gate.admit() is Entry.CLOSED


def test_probe_schedule_starts_short_and_doubles_up_to_the_interval(env: Env) -> None:
    """Probes come 15 s after the pause, then 30, 60, ... capped at api.probe_interval_s; a new pause starts over."""
    env.gate.refused(REFUSED)
    delays = []
    for _ in range(5):
        delays.append(env.seconds_to_next_probe())
        env.probe(AuthError(REFUSED, status=401))
    assert delays == [FIRST_PROBE_S, 30, 60, CAP_S, CAP_S]
    assert env.gate.reason == REFUSED
    env.probe(None)                                 # ran at once: the key works again
    assert env.gate.reason is None
    env.gate.refused(REFUSED)
    assert env.seconds_to_next_probe() == FIRST_PROBE_S


def test_no_probe_while_not_paused_or_while_one_runs(env: Env) -> None:
    """start_probe says yes to one prober at a time, and never while uploads run."""
    env.clock.advance(10_000)
    assert env.gate.start_probe() is False
    env.gate.refused(REFUSED)
    env.clock.advance(FIRST_PROBE_S)
    assert env.gate.start_probe() is True
    assert env.gate.start_probe() is False          # the first is still asking
    env.probe(Transient("no answer"))
    env.clock.advance(30)
    assert env.gate.start_probe() is True


def test_a_successful_probe_resumes(env: Env) -> None:
    """A probe that returns normally ends the pause: the store forgets it, observers and workers are told."""
    env.gate.refused(REFUSED)
    env.seconds_to_next_probe()
    with capture_logs() as logs:
        env.probe(None)
    assert env.gate.reason is None and env.store.get_meta("paused") is None
    assert [e for e, _ in env.events] == ["uploads_paused", "uploads_resumed"]
    assert "uploads.resumed" in [e["event"] for e in logs]
    assert env.rings == 1 and env.gate.admit() is Entry.OPEN


def test_a_probe_without_an_answer_asks_again_soon(env: Env) -> None:
    """A Transient probe (the network, not the key) is repeated within 30 s, and the doubling goes on after."""
    env.gate.refused(REFUSED)
    for _ in range(3):                              # the delay has grown to 60 s
        env.seconds_to_next_probe()
        env.probe(AuthError(REFUSED, status=401))
    env.seconds_to_next_probe()
    env.probe(Transient("connection refused"))
    assert env.seconds_to_next_probe() == 30
    env.probe(AuthError(REFUSED, status=401))
    assert env.seconds_to_next_probe() == CAP_S
    assert env.gate.reason == REFUSED


def test_a_pause_ends_by_a_real_request_during_a_trial(env: Env) -> None:
    """The probe endpoint answers 404: one worker gets a trial; a 2xx from the API during it ends the pause."""
    env.gate.refused(REFUSED)
    env.seconds_to_next_probe()
    env.probe(Permanent("/api/v1/samples: HTTP 404: Not Found"))
    assert env.rings == 1                           # a waiting worker is woken for the trial
    assert env.gate.admit() is Entry.TRIAL
    assert env.gate.admit() is Entry.CLOSED         # one trial, one worker
    env.gate.answered("/api/v1/samples/init_upload", 403)
    assert env.gate.reason == REFUSED
    env.gate.answered("/api/v1/samples/init_upload", 200)
    assert env.gate.reason is None and env.store.get_meta("paused") is None
    env.gate.end_trial()
    assert env.gate.admit() is Entry.OPEN


def test_a_refused_trial_keeps_the_pause_quietly(env: Env) -> None:
    """A trial refused for the key keeps the pause without a second alert or a later probe; the next probe offers another."""
    env.gate.refused(REFUSED)
    env.seconds_to_next_probe()
    env.probe(Permanent("/api/v1/samples: HTTP 404: Not Found"))
    assert env.gate.admit() is Entry.TRIAL
    env.gate.refused(REFUSED)                       # the trial's init_upload: 401
    env.gate.end_trial()
    env.gate.answered("/api/v1/samples/confirm_upload", 200)   # no trial now: an old upload's answer
    assert env.gate.reason == REFUSED
    assert [e for e, _ in env.events] == ["uploads_paused"]
    assert env.gate.admit() is Entry.CLOSED
    assert env.seconds_to_next_probe() == 30        # doubled once, by the probe, not by the trial
    env.probe(Permanent("/api/v1/samples: HTTP 404: Not Found"))
    assert env.gate.admit() is Entry.TRIAL


def test_a_pause_recorded_by_an_earlier_run_holds_and_is_probed_at_once(env: Env) -> None:
    """At start-up the store's pause is restored: workers stay out, and the first probe is due now."""
    env.gate.refused(REFUSED)
    restarted = env.new_gate()
    with capture_logs() as logs:
        restarted.restore()
    assert restarted.reason == REFUSED and restarted.admit() is Entry.CLOSED
    assert [e["event"] for e in logs] == ["uploads.still_paused"]
    assert restarted.start_probe() is True


def test_no_resume_once_shutting_down(env: Env) -> None:
    """A probe answered after shutdown began changes nothing (the store may be closing); the next start probes."""
    stop = threading.Event()
    gate = env.new_gate(stop=stop)
    gate.refused(REFUSED)
    stop.set()
    gate.probe(lambda: None)
    assert gate.reason == REFUSED and env.store.get_meta("paused")["reason"] == REFUSED


def test_a_pause_the_store_cannot_record_still_holds(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store failing to record the pause (a full disk) is logged; uploads are paused all the same."""
    def disk_full(key: str, value: Any) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(env.store, "set_meta", disk_full)
    with capture_logs() as logs:
        env.gate.refused(REFUSED)
    assert env.gate.reason == REFUSED and env.gate.admit() is Entry.CLOSED
    assert [e["event"] for e in logs] == ["uploads.pause_not_recorded", "uploads.paused"]


# -- pause episodes (issue 10: a 402 on init_upload while the probe passed made the pause flap) --------

INIT = "/api/v1/samples/init_upload"
PROBE = "/api/v1/samples"


def refused_by(env: Env, path: str, status: int = 402) -> None:
    """What the daemon does when a worker's request is refused: the client's hook, then the worker."""
    env.gate.answered(path, status)
    env.gate.refused(f"account problem (payment required) (HTTP {status})")


def probe_answered(env: Env, status: int = 200) -> None:
    """A probe whose answer goes through the client's hook (in the prober's thread) as for real."""
    def ask() -> None:
        env.gate.answered(PROBE, status)
        if status >= 400:
            raise AuthError("refused", status=status)
    env.seconds_to_next_probe()
    env.gate.probe(ask)


def test_a_probe_that_passes_does_not_end_a_pause_begun_by_another_endpoint(env: Env) -> None:
    """init_upload refused, the probe accepted: still paused, one worker gets a trial; refused trials
    keep the pause quietly; the pause ends when init_upload accepts a request: one alert, one resume."""
    refused_by(env, INIT)
    for _ in range(5):
        probe_answered(env, 200)
        assert env.gate.reason is not None and env.gate.admit() is Entry.TRIAL
        refused_by(env, INIT)                       # the trial's init_upload: still 402
        env.gate.end_trial()
    env.gate.answered("/api/v1/samples/confirm_upload", 200)    # another endpoint proves nothing
    assert env.gate.reason is not None
    probe_answered(env, 200)
    assert env.gate.admit() is Entry.TRIAL
    env.gate.answered(INIT, 201)
    env.gate.end_trial()
    assert env.gate.reason is None and env.gate.admit() is Entry.OPEN
    assert [e for e, _ in env.events] == ["uploads_paused", "uploads_resumed"]


def test_a_pause_begun_by_the_probe_endpoint_is_ended_by_the_probe(env: Env) -> None:
    """When the endpoint refused is the probe's own, a probe that passes resumes at once (no trial)."""
    refused_by(env, PROBE, 401)
    probe_answered(env, 401)
    assert env.gate.reason is not None
    probe_answered(env, 200)
    assert env.gate.reason is None and env.gate.admit() is Entry.OPEN


def test_the_refused_endpoint_survives_a_restart(env: Env) -> None:
    """The pause's endpoint is recorded: after a restart a passing probe still only offers a trial."""
    refused_by(env, INIT)
    assert env.store.get_meta("paused")["endpoint"] == INIT
    env.gate = env.new_gate()
    env.gate.restore()
    probe_answered(env, 200)
    assert env.gate.reason is not None and env.gate.admit() is Entry.TRIAL
