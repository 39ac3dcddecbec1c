"""The steps both upload routes share (the standard route in daemon/upload/pipeline.py, the multipart
route in daemon/upload/multipart_route.py): a network call under the retry policy, cancelling an
abandoned sample, recording a confirmed file, and checking that the file on disk is still the
version queued. Also the collaborators both routes use: the queue, the API client, the stop event,
the observers (emit), the throttle and the recent throughput.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

from daemon.errors import (
    Aborted,
    AlreadyDone,
    AuthError,
    FileChanged,
    Permanent,
    PolicyExpired,
    Transient,
)
from daemon.detection.roots import WatchRoots
from daemon.queue.base import HALF_POSTED_STEPS, INIT_STEPS, POSTED_STEPS, FileRow, Identity, Store
from daemon.upload import retrying
from daemon.upload.client import OneCodexClient

ASSUMED_RATE_BPS = 10e6              # the upload rate assumed until one has been measured
MAX_POLICY_INITS = 3                 # the POST policy expired this often in a row: try again later

Emit = Callable[..., None]


def no_emit(event: str, **fields: Any) -> None:
    """The observer that is told nothing (no metrics, no webhook)."""


StepWatch = Callable[[str, int, BaseException | None], None]


def unwatched(what: str, attempt: int, failure: BaseException | None) -> None:
    """The step watcher that is told nothing (no progress board: `seqdrop upload`, tests)."""


def reason_of(exc: BaseException) -> str:
    """The retries metric's label for an error about to be retried."""
    return exc.reason if isinstance(exc, Transient) else "other"


class RateEstimate:
    """Recent upload throughput, to judge whether a stored policy will outlive an upload."""

    def __init__(self) -> None:
        self.bps = ASSUMED_RATE_BPS
        self._lock = threading.Lock()

    def add(self, nbytes: int, seconds: float) -> None:
        if nbytes < 1 << 20 or seconds <= 0:
            return
        with self._lock:
            self.bps = 0.7 * self.bps + 0.3 * (nbytes / seconds)


def unreadable(path: str) -> Permanent:
    """The error for a file this user may not read, with the fix."""
    return Permanent(f"cannot read {path} (permission denied); give the seqdrop user read "
                     f"access to the watch folder, then `seqdrop retry --failed`")


class Steps:
    """Shared by the routes of one Pipeline (and by its worker threads: nothing here is per file)."""

    def __init__(self, *, store: Store, client: OneCodexClient, stop: threading.Event, emit: Emit = no_emit,
                 throttle: Callable[[int], None] | None = None, call_attempts: int = 4,
                 call_max_time_s: float = 90.0, roots: WatchRoots | None = None) -> None:
        self.store, self.client, self.stop, self.emit = store, client, stop, emit
        self.roots = roots or WatchRoots()      # judges a file found missing (check_identity)
        self.throttle = throttle
        self.call_attempts, self.call_max_time_s = call_attempts, call_max_time_s
        self.rate = RateEstimate()
        # Told of each attempt of a step (what, number, None) and of each failure about to be retried
        # (what, number, error), in the worker's thread: `seqdrop run` points it at its progress board.
        self.watch: StepWatch = unwatched

    def call(self, what: str, fn: Callable[[], Any], log: Any) -> Any:
        """fn under the retry policy (daemon.upload.retrying); Aborted once a stop is requested.
        self.watch hears of each attempt and each retried failure (the live progress board)."""
        tries = 0

        def guarded() -> Any:
            nonlocal tries
            if self.stop.is_set():
                raise Aborted("shutdown requested")
            tries += 1
            self.watch(what, tries, None)
            return fn()

        def retried(exc: BaseException) -> None:
            self.emit("retry", reason=reason_of(exc))
            self.watch(what, tries, exc)
        return retrying.call(guarded, what=what, log=log, max_attempts=self.call_attempts,
                             max_time_s=self.call_max_time_s, sleep=self.stop.wait, on_retry=retried)

    def check_identity(self, row: FileRow) -> None:
        """The file at row.path is still the version queued; else FileChanged (or Transient when its
        whole folder is gone, or Permanent when it may not be read)."""
        try:
            st = os.stat(row.path)
        except FileNotFoundError:
            # Gone with its whole watch folder (a share unmounted): Transient, wait for it. Gone on its
            # own or with its run folder (renamed mid-upload): FileChanged, the row ends `vanished` and
            # its sample is cancelled, never a row queued for ever (issue 10, defect 10).
            raise self.roots.missing_file(row.path, row.identity.dev) from None
        except PermissionError:
            raise unreadable(row.path) from None
        if Identity.of(st) != row.identity:
            raise FileChanged("replaced or changed before it was uploaded; the new version is queued separately")

    def through_policy(self, row: FileRow, init: Any, make_init: Callable[[], Any], send: Callable[[Any], Any],
                       log: Any) -> tuple[Any, Any]:
        """send(init) under a POST policy: init's (None: make_init's). A policy that expires on the way
        (between a pair's two POSTs too: what S3 holds then belongs to a sample that is cancelled here)
        cancels its sample and inits again, at most MAX_POLICY_INITS times in a row; returns (init, sent)."""
        for _ in range(MAX_POLICY_INITS):
            if init is None:
                init = make_init()
            try:
                return init, send(init)
            except PolicyExpired as e:
                log.warning("upload.policy_expired", sample_id=init.sample_id, error=str(e))
                self.emit("retry", reason="policy_expired")
                self.cancel(row.id, log, sample_id=init.sample_id)
                init = None
        raise Transient("the upload policy expired three times in a row; will start again later",
                        reason="policy_expired")

    def cancel(self, file_id: int, log: Any, *, sample_id: str | None = None) -> bool:
        """Best effort: tell One Codex an abandoned sample will never be confirmed (the row's own, unless
        sample_id is given). True if One Codex answers that its upload already succeeded."""
        if sample_id is None:
            row = self.store.get(file_id)
            if (not row or not row.sample_id or row.state == "done"
                    or row.step not in INIT_STEPS + HALF_POSTED_STEPS + POSTED_STEPS):
                return False
            sample_id = row.sample_id
        try:
            self.client.cancel_upload(sample_id)
            log.info("upload.cancelled", sample_id=sample_id)
        except AlreadyDone as e:
            log.warning("upload.cancel_refused_already_done", sample_id=sample_id, error=str(e))
            return True
        except Permanent as e:
            # A refusal may mean the sample is confirmed: One Codex decides, not the refusal's words.
            try:
                if self.confirmed_at_one_codex(sample_id, log, refusal=e):
                    return True
            except (Transient, Permanent, AuthError) as asked:
                log.warning("upload.sample_state_unknown", sample_id=sample_id, error=str(asked))
            log.warning("upload.cancel_failed", sample_id=sample_id, error=str(e))
        except (Transient, AuthError) as e:
            log.warning("upload.cancel_failed", sample_id=sample_id, error=str(e))
        return False

    def confirmed_at_one_codex(self, sample_id: str, log: Any, *, refusal: Exception) -> bool:
        """Ask One Codex (GET /api/v1/samples/{id}) whether it has this sample's upload, after an
        ambiguous refusal (a repeated confirm or callback, a cancel). Transient/AuthError propagate:
        an unanswered question decides nothing."""
        state = self.call("sample_state", lambda: self.client.sample_state(sample_id), log)
        log.info("upload.sample_state_asked", sample_id=sample_id, state=state, refusal=str(refusal))
        return state == "confirmed"

    def done(self, row: FileRow, sample_id: str, md5: str | None, log: Any, *, seconds: float = 0.0,
             size: int | None = None, **fields: Any) -> str:
        """The sample is confirmed: record it, tell the observers (size: a sample's bytes, all members)."""
        self.store.mark_done(row.id, sample_id=sample_id, md5=md5)
        size = row.size if size is None else size
        log.info("upload.confirmed", sample_id=sample_id, size=size, **fields)
        self.emit("file_done", path=row.path, sample_id=sample_id, size=size, seconds=seconds)
        return "done"
