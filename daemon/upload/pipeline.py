"""One file version through init_upload → S3 POST → confirm_upload, or, for files over
multipart_threshold_bytes (5 GiB), init_multipart_upload → S3 multipart upload → callback.

Every step that talks to the network persists its result before the next step
starts, so a crash anywhere resumes from the last persisted step:
  step ''            nothing sent yet (or nothing that can be confirmed)
  step 'initialized' sample_id and the POST form are stored: POST again to the same
                     key (S3 overwrites), or, if the policy has expired, init again and
                     cancel the abandoned sample
  step 'posted'      S3 holds exactly the validated bytes (MD5 == ETag): confirm the
                     same sample_id, never start a new sample
The multipart route (NOT verified against the real One Codex; see daemon/upload/s3multipart.py):
  step 'mp_initialized'  sample_id, bucket, key and callback path are stored, never the
                     temporary S3 credentials: within one process a transient error resumes
                     at the next part (the credentials are in this process's memory); a new
                     process cancels that sample and starts again with a new init
  step 'mp_complete' CompleteMultipartUpload succeeded and its ETag is md5(part MD5s)-N of
                     the validated bytes: call the callback again, never start a new sample
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
from dataclasses import dataclass
from typing import Any

from daemon.config import MULTIPART_THRESHOLD_BYTES
from daemon.detection.roots import WatchRoots
from daemon.errors import (
    Aborted,
    AuthError,
    ContentRejected,
    FileChanged,
    Permanent,
    PolicyExpired,
    Transient,
)
from daemon.queue.base import FileRow, Identity, Store
from daemon.upload import retrying
from daemon.upload.client import (
    InitResult,
    MultipartInit,
    OneCodexClient,
    sanitize_filename,
)
from daemon.upload.formdata import MultipartBody
from daemon.upload.source import open_source

MAX_SAMPLE_BYTES = 20 * 1000**3      # One Codex's limit for one sample (design.md: 20 GB)
MAX_POST_BYTES = 5 * 1024**3         # S3's limit for one POST upload (5 GiB)
SNIFF_BYTES = 64 * 1024
CHILD_VALIDATION_BYTES = 64 << 20   # from this size on, validate in a child process (see _ChildValidator)
STEP_MP_INIT, STEP_MP_COMPLETE = "mp_initialized", "mp_complete"
MAX_CREDENTIAL_INITS = 3             # fresh credentials refused this often in a row: the file fails
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
                 max_backoff_s: float = 600.0, call_attempts: int = 4, call_max_time_s: float = 90.0,
                 multipart_threshold_bytes: int = MULTIPART_THRESHOLD_BYTES, s3_endpoint_url: str = "",
                 s3_region: str = "", part_size_bytes: int | None = None, roots: WatchRoots | None = None) -> None:
        self.store, self.client, self.log = store, client, log
        self.roots = roots or WatchRoots()          # judges a file found missing (see _check_identity)
        self.validate, self.block_size, self.throttle = validate, block_size, throttle
        self.stop = stop or threading.Event()
        self.emit = emit
        self.max_backoff_s = max_backoff_s
        self.call_attempts, self.call_max_time_s = call_attempts, call_max_time_s
        self.rate = RateEstimate()
        self.multipart_threshold_bytes = multipart_threshold_bytes
        self.s3_endpoint_url, self.s3_region = s3_endpoint_url, s3_region
        self.part_size_bytes = part_size_bytes      # None: the official client's rule (tests go lower)
        self._s3: Any = None                        # S3Connector, made on first use (botocore is heavy)
        self._jobs: dict[int, _MultipartJob] = {}   # multipart uploads between attempts, by file id
        self._jobs_lock = threading.Lock()

    def close(self) -> None:
        """Forget multipart uploads in flight (no network: shutdown has a budget). Their samples
        are cancelled and started again by the next process; S3 drops the orphaned parts by the
        bucket's own rules."""
        with self._jobs_lock:
            jobs, self._jobs = list(self._jobs.values()), {}
        for job in jobs:
            job.close(abort=False)

    def abandon(self, file_id: int) -> bool:
        """The caller gives up on this file (Ctrl-C in `seqdrop upload`): abort its multipart upload and
        cancel any sample begun for it. True if One Codex answers that its upload already succeeded."""
        log = self.log.bind(file_id=file_id)
        self._drop_job(file_id, log)
        return self._cancel(file_id, log)

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
        self._drop_job(row.id, log)
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
        if row.step == STEP_MP_COMPLETE and row.init:
            return self._callback(row, MultipartInit.from_json(row.init), row.md5, log)

        self._check_identity(row)
        size = row.size
        if size == 0:
            raise ContentRejected(f"{os.path.basename(row.path)} is empty (0 bytes); nothing to upload.")
        if size > MAX_SAMPLE_BYTES:
            raise ContentRejected(f"{os.path.basename(row.path)} is {size / 1e9:.1f} GB, over One Codex's "
                                  f"20 GB limit for one sample; split it (e.g. by lane) and drop the parts in.")
        # The route: a started upload keeps its own; otherwise the size decides.
        multipart = row.step == STEP_MP_INIT or (row.step == "" and size > self.multipart_threshold_bytes)
        if size > MAX_POST_BYTES and not multipart:
            raise Permanent(f"{os.path.basename(row.path)} is {size / 2**30:.1f} GiB, over S3's 5 GiB limit "
                            f"for one POST, and its upload was begun as one; `seqdrop retry --failed` starts it "
                            f"again through the multipart route.")
        if self.validate:
            self._sniff(row)

        if self._same_as_last_done(row, log):
            return "done"
        if multipart:
            return self._multipart(row, log, progress)

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
            # Gone with its whole watch folder (a share unmounted): Transient, wait for it. Gone on its
            # own or with its run folder (renamed mid-upload): FileChanged, the row ends `vanished`
            # and its sample is cancelled, never a row queued for ever (issue 10, defect 10).
            raise self.roots.missing_file(row.path, row.identity.dev) from None
        except PermissionError:
            raise Permanent(f"cannot read {row.path} (permission denied); give the seqdrop user read "
                            f"access to the watch folder, then `seqdrop retry --failed`") from None
        if Identity.of(st) != row.identity:
            raise FileChanged("replaced or changed before it was uploaded; the new version is queued separately")

    def _sniff(self, row: FileRow) -> None:
        from daemon.checks.validate import sniff
        try:
            with os.fdopen(open_source(row.path), "rb") as f:
                head = f.read(SNIFF_BYTES)
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
        with os.fdopen(open_source(row.path), "rb") as f:
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
                from daemon.checks.validate import StreamValidator
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
        return self._done(row, sample_id, md5, log, seconds=seconds)

    def _done(self, row: FileRow, sample_id: str, md5: str | None, log: Any, *, seconds: float = 0.0,
              **fields: Any) -> str:
        self.store.mark_done(row.id, sample_id=sample_id, md5=md5)
        log.info("upload.confirmed", sample_id=sample_id, size=row.size, **fields)
        self.emit("file_done", path=row.path, sample_id=sample_id, size=row.size,
                  seconds=seconds)
        return "done"

    # -- the multipart route (files over multipart_threshold_bytes) --------------------------------
    def _multipart(self, row: FileRow, log: Any, progress: Callable[[int], None] | None) -> str:
        name = sanitize_filename(os.path.basename(row.path))
        job = self._take_job(row)
        if job is None and row.step == STEP_MP_INIT and row.sample_id:
            # Begun by an earlier process: its temporary credentials were only in that process's
            # memory. Its sample will never be called back: cancel it, start again.
            log.info("upload.multipart_restarted", sample_id=row.sample_id)
            if self._cancel(row.id, log):
                return self._done(row, row.sample_id, None, log, route="multipart",
                                  note="One Codex says this sample's upload already succeeded")
            self.store.clear_init(row.id)
        child = job.child if job else None
        try:
            for _ in range(MAX_CREDENTIAL_INITS):
                if job is None:
                    init = self._call("init_multipart_upload", lambda: self.client.init_multipart_upload(name), log)
                    self.store.save_init(row.id, init.sample_id, init.to_json(), step=STEP_MP_INIT)
                    log.info("upload.initialized", sample_id=init.sample_id, route="multipart")
                    if child is None and self.validate:
                        child = _ChildValidator(row.path, row.size)
                    job = self._new_job(init, row, child)
                try:
                    md5, seconds = self._send_multipart(row, job, log, progress)
                    break
                except PolicyExpired as e:
                    refused, job = job, None
                    log.warning("upload.credentials_refused", sample_id=refused.init.sample_id, error=str(e))
                    self.emit("retry", reason="credentials")
                    refused.close(abort=True, keep_child=True)
                    self._cancel(row.id, log, sample_id=refused.init.sample_id)
                    self.store.clear_init(row.id)
                    last = e
            else:
                raise Permanent(f"S3 refused the temporary credentials of {MAX_CREDENTIAL_INITS} new uploads in a "
                                f"row ({last}); check the clock and multipart_s3_endpoint/region, then "
                                f"`seqdrop retry --failed`")
        except _EtagMismatch as e:
            # S3 completed an object that is not the bytes sent: never call back. Its sample is
            # cancelled and the next attempt starts with a new one.
            log.error("upload.etag_mismatch", sample_id=job.init.sample_id, error=str(e))
            job.close(abort=False)
            self._cancel(row.id, log, sample_id=job.init.sample_id)
            self.store.clear_init(row.id)
            raise
        except (Transient, AuthError):
            if job is not None:
                self._keep_job(row.id, job)        # the next attempt goes on at the next part
            elif child is not None:
                child.close()
            raise
        except BaseException as e:
            if job is not None:
                # Rejected, changed, refused: S3 may drop the parts now. Not on shutdown (no network then).
                if why := job.close(abort=not isinstance(e, Aborted)):
                    log.warning("upload.multipart_abort_failed", sample_id=job.init.sample_id, error=why)
            elif child is not None:
                child.close()
            raise
        job.close(abort=False)
        self.store.save_posted(row.id, md5, step=STEP_MP_COMPLETE)
        return self._callback(row, job.init, md5, log, seconds=seconds)

    def _send_multipart(self, row: FileRow, job: "_MultipartJob", log: Any,
                        progress: Callable[[int], None] | None) -> tuple[str, float]:
        up = job.upload
        started, sent_before = time.monotonic(), up.hashed

        def new_bytes(n: int) -> None:
            if self.throttle is not None:
                self.throttle(n)
            if progress is not None:
                progress(n)

        self._call("s3_create_multipart", up.create, log)
        while not up.all_sent:
            if job.child is not None:
                job.child.check()      # the validator has already refused the file: stop sending
            self._call("s3_upload_part", lambda: up.send_part(should_abort=self.stop.is_set, on_new=new_bytes), log)
        self._check_identity(row)      # the bytes sent are the bytes of this version...
        if job.child is not None:
            job.child.finish()         # ...and they are valid: only then may S3 assemble them
        md5 = up.md5
        etag = self._call("s3_complete_multipart", up.complete, log)
        if etag != up.expected_etag:
            raise _EtagMismatch(f"S3's ETag {etag!r} for the completed object differs from the one the parts "
                                f"sent make ({up.expected_etag}): not calling back; the sample is cancelled and "
                                f"the file will be sent again as a new sample")
        seconds = time.monotonic() - started
        self.rate.add(up.hashed - sent_before, seconds)
        log.info("upload.s3_complete", sample_id=job.init.sample_id, parts=up.part_count, etag=etag,
                 seconds=round(seconds, 3), mb_s=round((up.hashed - sent_before) / 1e6 / max(seconds, 1e-6), 1))
        return md5, seconds

    def _callback(self, row: FileRow, init: MultipartInit, md5: str | None, log: Any, *, seconds: float = 0.0) -> str:
        try:
            answer = self._call("multipart_callback", lambda: self.client.multipart_callback(init), log)
        except Permanent as e:
            # As for confirm_upload: a repeat refused with "already ..." means the sample exists.
            if "already" not in str(e).lower():
                raise
            log.info("upload.already_confirmed", sample_id=init.sample_id, answer=str(e))
            answer = {}
        sample_id = str(answer.get("sample_id") or init.sample_id)
        return self._done(row, sample_id, md5, log, seconds=seconds, route="multipart")

    def _new_job(self, init: MultipartInit, row: FileRow, child: "_ChildValidator | None") -> "_MultipartJob":
        from daemon.upload.s3multipart import (
            S3Connector,
            S3Credentials,
            S3Upload,
            choose_part_size,
        )
        with self._jobs_lock:
            if self._s3 is None:
                connect_s, read_s = getattr(self.client, "timeout", (10.0, 60.0))
                self._s3 = S3Connector(endpoint_url=self.s3_endpoint_url, region=self.s3_region,
                                       connect_timeout_s=connect_s, read_timeout_s=read_s)
        client = self._s3.client(S3Credentials(init.access_key_id, init.secret_access_key, init.session_token))
        upload = S3Upload(client, bucket=init.bucket, key=init.key, path=row.path, size=row.size,
                          part_size=self.part_size_bytes or choose_part_size(row.size))
        return _MultipartJob(init, upload, child)

    def _take_job(self, row: FileRow) -> "_MultipartJob | None":
        with self._jobs_lock:
            job = self._jobs.pop(row.id, None)
        if job is not None and (row.step != STEP_MP_INIT or row.sample_id != job.init.sample_id):
            job.close(abort=True)      # the row moved on without it (should not happen)
            job = None
        return job

    def _drop_job(self, file_id: int, log: Any) -> None:
        """A row that ends (rejected, vanished, failed) before its multipart upload went on: abort it."""
        with self._jobs_lock:
            job = self._jobs.pop(file_id, None)
        if job is not None and (why := job.close(abort=True)):
            log.warning("upload.multipart_abort_failed", sample_id=job.init.sample_id, error=why)

    def _keep_job(self, file_id: int, job: "_MultipartJob") -> None:
        with self._jobs_lock:
            self._jobs[file_id] = job

    def _call(self, what: str, fn: Callable[[], Any], log: Any) -> Any:
        def guarded() -> Any:
            if self.stop.is_set():
                raise Aborted("shutdown requested")
            return fn()
        return retrying.call(guarded, what=what, log=log, max_attempts=self.call_attempts,
                             max_time_s=self.call_max_time_s, sleep=self.stop.wait,
                             on_retry=lambda exc: self.emit("retry", reason=_reason(exc)))

    def _cancel(self, file_id: int, log: Any, *, sample_id: str | None = None) -> bool:
        """Best effort: tell One Codex an abandoned sample will never be confirmed. True if the answer
        is that its upload already succeeded (the official client reads "Upload already successful" so)."""
        if sample_id is None:
            row = self.store.get(file_id)
            if (not row or not row.sample_id or row.state == "done"
                    or row.step not in ("initialized", "posted", STEP_MP_INIT, STEP_MP_COMPLETE)):
                return False
            sample_id = row.sample_id
        try:
            self.client.cancel_upload(sample_id)
            log.info("upload.cancelled", sample_id=sample_id)
        except (Transient, Permanent, AuthError) as e:
            if "already successful" in str(e).lower():
                log.warning("upload.cancel_refused_already_done", sample_id=sample_id, error=str(e))
                return True
            log.warning("upload.cancel_failed", sample_id=sample_id, error=str(e))
        return False


class _EtagMismatch(Transient):
    """CompleteMultipartUpload's ETag is not the one the parts sent make."""


@dataclass
class _MultipartJob:
    """A multipart upload between attempts, in memory only: it holds the temporary S3 credentials
    (never stored) and the parts sent so far; the validator child runs beside it."""
    init: MultipartInit
    upload: Any                       # daemon.upload.s3multipart.S3Upload
    child: "_ChildValidator | None"

    def close(self, *, abort: bool, keep_child: bool = False) -> str | None:
        """Release it; with abort, ask S3 to drop the parts (returns why that failed, if it did)."""
        why = self.upload.abort() if abort else None
        self.upload.close()
        if self.child is not None and not keep_child:
            self.child.close()
        return why


class _ChildValidator:
    """Validation of a large file in a child process (`python -m daemon.checks.validate --json`).

    In one process the validator and the sending thread take turns on the GIL, and validation
    made a large upload 1.4-1.9x slower (docs/benchmarks.md). The child reads the same file from
    the page cache on its own core. The upload cannot complete without it: the body's closing
    boundary is only sent after finish() has the child's verdict, a refusal seen mid-stream
    aborts the POST, and the verdict must cover exactly the size being sent (the file is stat'ed
    again after the POST, as for every upload).
    """

    def __init__(self, path: str, size: int) -> None:
        self.path, self.size = path, size
        self.proc = subprocess.Popen([sys.executable, "-m", "daemon.checks.validate", "--json", path],
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
