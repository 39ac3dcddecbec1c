"""The pause gate: uploads stop when One Codex refuses the key, and start again by themselves.

design.md: a 401/402/403 pauses every upload (the files stay `queued`, no attempt counted); a
paused daemon asks again, by a cheap authenticated request or "the next real request", and resumes
once the key works. Who tells the gate what happened:
  - a worker, when a real request raised AuthError          → `refused(reason)`: paused
  - the client, of every API answer (its `on_answer` hook)   → `answered(path, status)`: a 2xx during
                                                               a trial ends the pause
  - the prober thread, with the outcome of `client.probe()`  → `probe(ask)`:
        returns normally → the key works: resumed — unless the request refused was to another
                           endpoint (see "episodes" below): then a trial
        AuthError        → still refused: the next probe later
        Permanent        → this API has no such endpoint (a 404 from an older server, a proxy, an
                           emulator): one worker may try one real request (a *trial*)
        anything else    → a network problem, not an answer: ask again within 30 s
A pause is one *episode*, announced once (uploads_paused) and ended once (uploads_resumed). The
gate remembers which endpoint's refusal began it (the client's hook reports each 401/402/403 with
its path). A probe that passes proves nothing about another endpoint: a 402 on init_upload while
`GET /api/v1/samples` answers 200 once made pause/resume flap every 15 s (issue 10, ~5,700
notifications a day). So the episode ends when that endpoint accepts a real request (during a
trial, or an upload already under way), or by the probe only if the probe's own endpoint was the
one refused (or the endpoint is not known: a pause told without it). A refused trial keeps the
episode quietly.

Probes are spaced FIRST_PROBE_S after the pause, then twice as long each time up to
api.probe_interval_s, so a short outage of the key (a 402 while billing is fixed) costs seconds,
not minutes. The pause is recorded in the store's meta 'paused' (status shows it; a restart stays
paused and probes at once).

Every state change happens under one lock (workers, the prober and the client's hook write here
from different threads); the store's meta is written under it too, so store and memory agree.
Logging, the observers (emit) and waking the workers happen after the lock is released.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable
from typing import Any

from daemon.errors import AuthError, Permanent
from daemon.queue.base import Store

FIRST_PROBE_S = 15.0
PROBE_AGAIN_S = 30.0     # after a probe that got no answer (the network, not the key)
PAUSED_META = "paused"
AUTH_STATUSES = (401, 402, 403)


class Entry(enum.Enum):
    """What the gate lets a worker do now."""
    OPEN = "open"        # not paused: claim and upload
    TRIAL = "trial"      # paused, and this worker may try one file (end it with end_trial())
    CLOSED = "closed"    # paused: claim nothing


def _nobody(*args: Any, **kwargs: Any) -> None:
    pass


class PauseGate:
    def __init__(self, *, store: Store, log: Any, probe_interval_s: float,
                 emit: Callable[..., None] = _nobody, wake: Callable[[], None] = _nobody,
                 stop: threading.Event | None = None, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self._store, self._log, self._emit, self._wake = store, log, emit, wake
        self._cap_s = probe_interval_s
        self._stop = stop or threading.Event()
        self._clock, self._wall_clock = clock, wall_clock      # probes on clock; 'since' is for people
        self._lock = threading.Lock()
        self._reason: str | None = None
        self._delay_s = 0.0
        self._next_probe_at = 0.0
        self._probing = False
        self._trial_offered = False
        self._trial_running = False
        self._refused_path: str | None = None   # the endpoint of the last refusal of a real request
        self._episode_path: str | None = None   # the endpoint whose refusal began this pause
        self._prober: int | None = None         # the thread asking the probe (its answers are the probe's)
        self._probe_path: str | None = None     # the probe's endpoint, as its answers name it

    @property
    def reason(self) -> str | None:
        """Why uploads are paused, or None while they are not."""
        with self._lock:
            return self._reason

    # -- start-up -----------------------------------------------------------------------------
    def restore(self) -> None:
        """At start-up: a pause recorded by an earlier run holds, and is probed at once."""
        recorded = self._store.get_meta(PAUSED_META)
        if not recorded:
            return
        reason = recorded.get("reason", "paused")
        with self._lock:
            self._reason = reason
            self._episode_path = recorded.get("endpoint")
            self._delay_s, self._next_probe_at = 0.0, self._clock()
        self._log.warning("uploads.still_paused", reason=reason)

    # -- workers --------------------------------------------------------------------------------
    def admit(self) -> Entry:
        """May a worker claim a file now? A trial offered by the prober goes to one worker only."""
        with self._lock:
            if self._reason is None:
                return Entry.OPEN
            if self._trial_offered:
                self._trial_offered, self._trial_running = False, True
                return Entry.TRIAL
            return Entry.CLOSED

    def end_trial(self) -> None:
        """The worker's trial is over (whatever came of it; a 2xx during it has already resumed)."""
        with self._lock:
            self._trial_running = False

    def refused(self, reason: str) -> None:
        """A real request was refused for the key (AuthError): pause, unless paused already (a trial
        refused, or several workers refused at once: the probe schedule runs on undisturbed)."""
        recorded: Exception | None = None
        with self._lock:
            if self._reason is not None:
                return
            self._reason, self._delay_s = reason, 0.0
            self._episode_path = self._refused_path
            self._schedule_probe()
            try:
                self._store.set_meta(PAUSED_META, {"reason": reason, "since": self._wall_clock(),
                                                   "endpoint": self._episode_path})
            except Exception as e:   # the pause holds in memory; status just cannot show it
                recorded = e
        if recorded is not None:
            self._log.error("uploads.pause_not_recorded", error=repr(recorded))
        self._log.error("uploads.paused", reason=reason,
                        fix="check the API key (seqdrop check); uploads resume by themselves once it works")
        self._emit("uploads_paused", reason=reason)

    def answered(self, path: str, status: int) -> None:
        """The client's on_answer hook (every API answer, never S3's): learns which endpoint refused
        the key; a 2xx from the endpoint that began the pause (or, if that is not known, any 2xx
        during a trial) ends it. The prober's own answers are judged by probe()."""
        with self._lock:
            if self._prober == threading.get_ident():
                self._probe_path = path
                return
            if status in AUTH_STATUSES:
                self._refused_path = path
                return
            if not 200 <= status < 300 or self._reason is None:
                return
            known = self._episode_path is not None
            proof = path == self._episode_path if known else self._trial_running
        if proof:
            self._resume(proof=path)

    # -- the prober -----------------------------------------------------------------------------
    def start_probe(self) -> bool:
        """Is a probe due (paused, its time come, none running)? If so it counts as running until
        probe() returns: the caller starts exactly one prober."""
        with self._lock:
            if self._reason is None or self._probing or self._clock() < self._next_probe_at:
                return False
            self._probing = True
            return True

    def probe(self, ask: Callable[[], None]) -> None:
        """Run one probe (in the prober thread: ask may wait for the network) and act on its outcome."""
        with self._lock:
            self._prober = threading.get_ident()
        try:
            ask()
        except AuthError as e:
            self._still_refused(str(e))
        except Permanent as e:
            self._offer_trial(str(e))
        except Exception as e:   # Transient (no answer, a 5xx), or a bug: no news about the key
            with self._lock:
                self._next_probe_at = self._clock() + min(PROBE_AGAIN_S, self._cap_s)
            self._log.warning("uploads.probe_failed", error=str(e))
        else:
            self._probe_passed()
        finally:
            with self._lock:
                self._probing, self._prober = False, None

    def _probe_passed(self) -> None:
        """The probe's endpoint accepts the key: that ends the pause only if it is the endpoint that
        refused (or that one is not known); otherwise one real request must show it (a trial)."""
        with self._lock:
            refused = self._episode_path
            by_probe = refused is None or refused == self._probe_path
        if by_probe:
            self._resume(proof="probe")
        else:
            self._offer_trial(f"the probe passes, but {refused} refused the key")

    def _still_refused(self, reason: str) -> None:
        with self._lock:
            if self._reason is None:
                return
            self._reason = reason
            self._schedule_probe()
        self._log.warning("uploads.still_paused", reason=reason)

    def _offer_trial(self, error: str) -> None:
        """design.md's other probe, "the next real request": one worker tries one file; an AuthError
        there keeps the pause (quietly), the right 2xx from the API ends it (answered())."""
        with self._lock:
            if self._reason is None:
                return
            self._schedule_probe()
            self._trial_offered = True
        self._log.info("uploads.probe_by_request", error=error)
        self._wake()

    # -- both -----------------------------------------------------------------------------------
    def _schedule_probe(self) -> None:
        """Under the lock: the next probe FIRST_PROBE_S after the pause, then twice as long each
        time, capped at api.probe_interval_s (design.md: at least every 5 minutes)."""
        self._delay_s = min(self._cap_s, max(FIRST_PROBE_S, self._delay_s * 2))
        self._next_probe_at = self._clock() + self._delay_s

    def _resume(self, *, proof: str) -> None:
        recorded: Exception | None = None
        with self._lock:
            if self._reason is None or self._stop.is_set():
                return   # resumed already, or shutting down (the store may be closed; the next start probes)
            reason, self._reason = self._reason, None
            self._trial_offered, self._episode_path = False, None
            try:
                self._store.set_meta(PAUSED_META, None)
            except Exception as e:   # uploads go on; a restart would find the old pause and probe at once
                recorded = e
        if recorded is not None:
            self._log.error("uploads.resume_not_recorded", error=repr(recorded))
        self._log.info("uploads.resumed", paused_reason=reason, proof=proof)
        self._emit("uploads_resumed", reason=reason)
        self._wake()
