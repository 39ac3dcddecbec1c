"""The retry policy, kept apart from the code that calls the network.

Only Transient errors are retried (name what is retryable; nothing by default), and not those
marked not to be repeated at once (Transient.immediate False: the file's backoff decides).
Backoff is exponential with full jitter, at least the server's Retry-After, and
capped both in attempts and in total time, so one call never hides an outage for
long: after the caps the Transient error reaches the worker, which persists a
later attempt time for the file (transient errors delay a file, never fail it).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import tenacity

from daemon.errors import Transient

T = TypeVar("T")

# A testing switch (as stamina has): tests turn the waits off; retries still happen.
_waits_enabled = True


def set_waits(enabled: bool) -> None:
    global _waits_enabled
    _waits_enabled = enabled


def parse_retry_after(value: str | None, *, now: Callable[[], float] = time.time) -> float | None:
    """A Retry-After header as seconds from now (RFC 9110 §10.2.3: delay-seconds or an HTTP date);
    None when absent or unreadable. The one parser for the API, S3 and webhook answers."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now())
    except (TypeError, ValueError, IndexError):
        return None


def backoff_s(attempt: int, *, initial_s: float = 1.0, max_s: float = 60.0,
              retry_after_s: float | None = None, rng: random.Random | None = None) -> float:
    """Full-jitter exponential backoff for the given attempt (1-based), honouring Retry-After."""
    cap = min(max_s, initial_s * (2 ** (attempt - 1)))
    wait = (rng or random).uniform(cap / 2, cap)
    if retry_after_s is not None:
        wait = max(wait, min(retry_after_s, max_s * 10))
    return wait


class _Wait(tenacity.wait.wait_base):
    def __init__(self, initial_s: float, max_s: float) -> None:
        self.initial_s, self.max_s = initial_s, max_s

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        retry_after = getattr(exc, "retry_after_s", None)
        return backoff_s(retry_state.attempt_number, initial_s=self.initial_s, max_s=self.max_s,
                         retry_after_s=retry_after)


def call(fn: Callable[[], T], *, what: str, log: Any, max_attempts: int = 5, max_time_s: float = 120.0,
         initial_s: float = 1.0, max_wait_s: float = 30.0,
         sleep: Callable[[float], Any] | None = None,
         on_retry: Callable[[BaseException], None] | None = None, **log_fields: Any) -> T:
    """Call fn, retrying Transient errors; re-raise the last one when the caps are reached.

    sleep: how to wait (the daemon passes its stop event's wait, so shutdown cuts a wait short).
    on_retry: told of each retried error (metrics count retries by reason).
    """

    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning("upload.retry_scheduled", step=what, attempt=state.attempt_number,
                    wait_s=round(state.upcoming_sleep, 2), error=str(exc), **log_fields)
        if on_retry is not None and exc is not None:
            on_retry(exc)

    retryer = tenacity.Retrying(
        retry=tenacity.retry_if_exception(lambda e: isinstance(e, Transient) and e.immediate),
        stop=tenacity.stop_after_attempt(max_attempts) | tenacity.stop_after_delay(max_time_s),
        wait=_Wait(initial_s, max_wait_s),
        sleep=lambda s: (sleep or time.sleep)(s if _waits_enabled else 0),
        before_sleep=before_sleep,
        reraise=True,
    )
    return retryer(fn)
