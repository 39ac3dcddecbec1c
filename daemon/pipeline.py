"""One file version through init_upload → S3 POST → confirm_upload.

Every step that talks to the network persists its result before the next step
starts, so a crash anywhere resumes from the last persisted step:
  step ''            nothing sent yet (or nothing that can be confirmed)
  step 'initialized' sample_id and the POST form are stored: POST again to the same
                     key (S3 overwrites), or, if the policy has expired, init again and
                     cancel the abandoned sample
  step 'posted'      S3 holds exactly the validated bytes (MD5 == ETag): confirm the
                     same sample_id, never start a new sample
The exception classes of daemon.errors decide what happens to the row; this module
never looks at an HTTP status.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from daemon import retrying
from daemon.client import InitResult, OneCodexClient, sanitize_filename
from daemon.errors import (Aborted, AuthError, ContentRejected, FileChanged, Permanent, PolicyExpired,
                           Transient)
from daemon.multipart import MultipartBody
from daemon.store import FileRow, Identity, Store

MAX_SAMPLE_BYTES = 20 * 1000**3      # One Codex's limit for one sample (design.md: 20 GB)
MAX_POST_BYTES = 5 * 1024**3         # S3's limit for one POST upload (5 GiB)
SNIFF_BYTES = 64 * 1024
CHILD_VALIDATION_BYTES = 64 << 20   # from this size on, validate in a child process (see _ChildValidator)
POLICY_MARGIN_S = 60.0               # re-init when a stored policy has less than this left...
ASSUMED_RATE_BPS = 10e6              # ...plus the time the upload is expected to take at this rate

Emit = Callable[..., None]


def _no_emit(event: str, **fields: Any) -> None:
    pass


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


class Pipeline:
    def __init__(self, *, store: Store, client: OneCodexClient, log: Any, validate: bool = True,
                 block_size: int = 4 << 20, throttle: Callable[[int], None] | None = None,
                 stop: threading.Event | None = None, emit: Emit = _no_emit,
                 max_backoff_s: float = 600.0, call_attempts: int = 4, call_max_time_s: float = 90.0) -> None:
        self.store, self.client, self.log = store, client, log
        self.validate, self.block_size, self.throttle = validate, block_size, throttle
        self.stop = stop or threading.Event()
        self.emit = emit
        self.max_backoff_s = max_backoff_s
        self.call_attempts, self.call_max_time_s = call_attempts, call_max_time_s
        self.rate = RateEstimate()

    # -- the one entry point -------------------------------------------------------------------
    def process(self, row: FileRow, *, progress: Callable[[int], None] | None = None) -> str:
        """Take a claimed row as far as it can go; return the row's new state."""
        log = self.log.bind(file_id=row.id, path=row.path)
        try:
            return self._process(row, log, progress)
        except ContentRejected as e:
            return self._end(row, "rejected", e, log)
        except FileChanged as e:
            return self._end(row, "vanished", e, log)
        except Permanent as e:
            return self._end(row, "failed", e, log)
        except AuthError as e:
            # Not the file's fault: back in the queue, not counted as an attempt; the caller pauses.
            self.store.reschedule(row.id, delay_s=0, error=str(e), count_attempt=False)
            raise
        except Aborted:
            self.store.reschedule(row.id, delay_s=0, error=row.error, count_attempt=False)
            log.info("upload.interrupted")
            return "queued"
        except Transient as e:
            current = self.store.get(row.id)
            attempts = (current.attempts if current else row.attempts) + 1
            delay = retrying.backoff_s(attempts, initial_s=5.0, max_s=self.max_backoff_s,
                                       retry_after_s=e.retry_after_s)
            self.store.reschedule(row.id, delay_s=delay, error=f"{e} (will try again in {delay:.0f} s)")
            log.warning("upload.delayed", error=str(e), attempt=attempts, retry_in_s=round(delay, 1))
            self.emit("retry", reason=_reason(e))
            return "queued"

    def _end(self, row: FileRow, state: str, e: Exception, log: Any) -> str:
        """A terminal side exit: cancel any sample begun for it, record why, tell the observers."""
        self._cancel(row.id, log)
        self.store.set_state(row.id, state, error=str(e), step="")
        if state == "vanished":
            log.warning("file.vanished", error=str(e))
        else:
            log.error(f"file.{state}", error=str(e))
            self.emit(f"file_{state}", path=row.path, error=str(e))
        return state

    # -- steps ---------------------------------------------------------------------------------
    def _process(self, row: FileRow, log: Any, progress: Callable[[int], None] | None) -> str:
        if row.step == "posted" and row.sample_id:
            return self._confirm(row, row.sample_id, row.md5, log)

        self._check_identity(row)
        size = row.size
        if size == 0:
            raise ContentRejected(f"{os.path.basename(row.path)} is empty (0 bytes); nothing to upload.")
        if size > MAX_SAMPLE_BYTES:
            raise ContentRejected(f"{os.path.basename(row.path)} is {size / 1e9:.1f} GB, over One Codex's "
                                  f"20 GB limit for one sample; split it (e.g. by lane) and drop the parts in.")
        if size > MAX_POST_BYTES:
            raise Permanent(f"{os.path.basename(row.path)} is {size / 2**30:.1f} GiB: files over 5 GiB need "
                            f"One Codex's multipart upload, which this version of seqdrop does not do yet; "
                            f"upload it with the onecodex CLI.")
        if self.validate:
            self._sniff(row)

        if self._same_as_last_done(row, log):
            return "done"

        init = InitResult.from_json(row.init) if row.step == "initialized" and row.init else None
        if init and not self._policy_fits(init, size):
            log.info("upload.policy_stale", sample_id=init.sample_id)
            self._cancel(row.id, log, sample_id=init.sample_id)
            init = None
        for _ in range(3):
            if init is None:
                init = self._call("init_upload", lambda: self.client.init_upload(
                    sanitize_filename(os.path.basename(row.path)), size), log)
                self.store.save_init(row.id, init.sample_id, init.to_json())
                log.info("upload.initialized", sample_id=init.sample_id)
            try:
                md5, seconds = self._post(row, init, log, progress)
                break
            except PolicyExpired as e:
                log.warning("upload.policy_expired", sample_id=init.sample_id, error=str(e))
                self.emit("retry", reason="policy_expired")
                self._cancel(row.id, log, sample_id=init.sample_id)
                init = None
        else:
            raise Transient("the upload policy expired three times in a row; will start again later")

        self.store.save_posted(row.id, md5)
        return self._confirm(row, init.sample_id, md5, log, seconds=seconds)

    def _check_identity(self, row: FileRow) -> None:
        try:
            st = os.stat(row.path)
        except FileNotFoundError:
            if not os.path.isdir(os.path.dirname(row.path)):
                # Its whole folder is gone: far more often a share unmounted than a deletion.
                # Wait for it (the tracker does the same) instead of abandoning the sample.
                raise Transient(f"the folder {os.path.dirname(row.path)} is not there (share unmounted?); "
                                f"will try again when it returns") from None
            raise FileChanged("deleted before it was uploaded") from None
        except PermissionError:
            raise Permanent(f"cannot read {row.path} (permission denied); give the seqdrop user read "
                            f"access to the watch folder, then `seqdrop retry --failed`") from None
        if Identity.of(st) != row.identity:
            raise FileChanged("replaced or changed before it was uploaded; the new version is queued separately")

    def _sniff(self, row: FileRow) -> None:
        from daemon.validate import sniff
        try:
            with open(row.path, "rb") as f:
                head = f.read(SNIFF_BYTES)
        except FileNotFoundError:
            raise FileChanged("deleted before it was uploaded") from None
        except PermissionError:
            raise Permanent(f"cannot read {row.path} (permission denied); give the seqdrop user read "
                            f"access to the watch folder, then `seqdrop retry --failed`") from None
        sniff(head, os.path.basename(row.path))

    def _same_as_last_done(self, row: FileRow, log: Any) -> bool:
        """A new version whose bytes equal the path's last confirmed version: recorded, not re-sent."""
        prev = self.store.last_done_for_path(row.path, before_id=row.id)
        if not prev or not prev.md5 or prev.size != row.size:
            return False
        md5 = hashlib.md5()
        with open(row.path, "rb") as f:
            while block := f.read(self.block_size):
                if self.stop.is_set():
                    raise Aborted("shutdown requested")
                md5.update(block)
        if md5.hexdigest() != prev.md5:
            return False
        self._check_identity(row)
        self.store.mark_done(row.id, sample_id=prev.sample_id or "", md5=prev.md5,
                             error=f"same bytes as the version already uploaded as sample {prev.sample_id}; "
                                   f"not uploaded again")
        log.info("upload.unchanged", sample_id=prev.sample_id)
        return True

    def _policy_fits(self, init: InitResult, size: int) -> bool:
        if init.expires_at is None:
            return True
        return init.expires_at - time.time() > POLICY_MARGIN_S + size / self.rate.bps

    def _post(self, row: FileRow, init: InitResult, log: Any,
              progress: Callable[[int], None] | None) -> tuple[str, float]:
        name = os.path.basename(row.path)

        def attempt() -> tuple[str, float]:
            tap = finish = check = None
            child = None
            if self.validate and row.size >= CHILD_VALIDATION_BYTES:
                child = _ChildValidator(row.path, row.size)
                finish, check = child.finish, child.check
            elif self.validate:
                from daemon.validate import StreamValidator
                validator = StreamValidator(name=name)
                tap, finish = validator.feed, validator.finish
            body = MultipartBody(init.fields, path=row.path, filename=sanitize_filename(name), size=row.size,
                                 block_size=self.block_size, tap=tap, finish=finish, check=check,
                                 throttle=self.throttle, progress=progress, should_abort=self.stop.is_set)
            try:
                result = self.client.post_to_s3(init, body)
            finally:
                if child is not None:
                    child.close()
            if not result.etag:
                # Real S3 always sends the ETag (the MD5 for SSE-S3 objects); some S3-compatible
                # servers (moto) send none. Nothing to compare is not a mismatch: say so and go on.
                log.warning("upload.etag_missing", sample_id=init.sample_id,
                            note="the server sent no ETag; the MD5 could not be checked")
            elif result.etag != result.md5:
                raise Transient(f"S3's ETag {result.etag!r} differs from the MD5 of the bytes sent "
                                f"({result.md5}): not confirming; sending again")
            self.rate.add(result.bytes_sent, result.seconds)
            log.info("upload.posted", sample_id=init.sample_id, seconds=round(result.seconds, 3),
                     mb_s=round(result.bytes_sent / 1e6 / max(result.seconds, 1e-6), 1))
            return result.md5, result.seconds

        md5, seconds = self._call("s3_post", attempt, log)
        self._check_identity(row)   # the bytes sent are the bytes of this version
        return md5, seconds

    def _confirm(self, row: FileRow, sample_id: str, md5: str | None, log: Any, *, seconds: float = 0.0) -> str:
        try:
            self._call("confirm_upload", lambda: self.client.confirm_upload(sample_id), log)
        except Permanent as e:
            # Confirming again after a lost answer is the design's rule; a server that refuses a
            # repeat with "already confirmed/uploaded" is telling us the sample is done.
            if "already" not in str(e).lower():
                raise
            log.info("upload.already_confirmed", sample_id=sample_id, answer=str(e))
        self.store.mark_done(row.id, sample_id=sample_id, md5=md5)
        log.info("upload.confirmed", sample_id=sample_id, size=row.size)
        self.emit("file_done", path=row.path, sample_id=sample_id, size=row.size,
                  seconds=seconds)
        return "done"

    def _call(self, what: str, fn: Callable[[], Any], log: Any) -> Any:
        def guarded() -> Any:
            if self.stop.is_set():
                raise Aborted("shutdown requested")
            return fn()
        return retrying.call(guarded, what=what, log=log, max_attempts=self.call_attempts,
                             max_time_s=self.call_max_time_s, sleep=self.stop.wait,
                             on_retry=lambda exc: self.emit("retry", reason=_reason(exc)))

    def _cancel(self, file_id: int, log: Any, *, sample_id: str | None = None) -> None:
        """Best effort: tell One Codex an abandoned sample will never be confirmed."""
        if sample_id is None:
            row = self.store.get(file_id)
            if not row or not row.sample_id or row.step not in ("initialized", "posted") or row.state == "done":
                return
            sample_id = row.sample_id
        try:
            self.client.cancel_upload(sample_id)
            log.info("upload.cancelled", sample_id=sample_id)
        except (Transient, Permanent, AuthError) as e:
            log.warning("upload.cancel_failed", sample_id=sample_id, error=str(e))


class _ChildValidator:
    """Validation of a large file in a child process (`python -m daemon.validate --json`).

    In one process the validator and the sending thread take turns on the GIL, and validation
    made a large upload 1.4-1.9x slower (docs/benchmarks.md). The child reads the same file from
    the page cache on its own core. The upload cannot complete without it: the body's closing
    boundary is only sent after finish() has the child's verdict, a refusal seen mid-stream
    aborts the POST, and the verdict must cover exactly the size being sent (the file is stat'ed
    again after the POST, as for every upload).
    """

    def __init__(self, path: str, size: int) -> None:
        self.path, self.size = path, size
        self.proc = subprocess.Popen([sys.executable, "-m", "daemon.validate", "--json", path],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, close_fds=True)
        self._verdict: dict[str, Any] | None = None

    def _read_verdict(self) -> dict[str, Any]:
        if self._verdict is None:
            out, err = self.proc.communicate()
            try:
                self._verdict = json.loads(out.decode().strip().splitlines()[-1])
            except (ValueError, IndexError):
                raise Transient(f"the validator process failed (exit {self.proc.returncode}): "
                                f"{err.decode(errors='replace').strip()[-300:]}") from None
        return self._verdict

    def _judge(self) -> None:
        verdict = self._read_verdict()
        if verdict.get("io_error"):
            raise FileChanged(verdict.get("error", "could not be read while it was being sent"))
        if not verdict.get("ok"):
            raise ContentRejected(verdict.get("error") or f"{os.path.basename(self.path)} is not valid")
        if verdict.get("raw_bytes") != self.size:
            raise FileChanged(f"changed while it was being validated ({verdict.get('raw_bytes')} bytes "
                              f"validated, {self.size} expected)")

    def check(self) -> None:
        """Per block: if the child has already refused the file, stop sending now."""
        if self.proc.poll() is not None and self.proc.returncode != 0:
            self._judge()

    def finish(self) -> None:
        self._judge()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def _reason(e: Exception) -> str:
    text = str(e)
    for code in ("429", "500", "502", "503", "504"):
        if f"HTTP {code}" in text:
            return f"http_{code}"
    if "SlowDown" in text:
        return "slowdown"
    if "timeout" in text:
        return "timeout"
    if "ETag" in text:
        return "etag_mismatch"
    return "connection"
