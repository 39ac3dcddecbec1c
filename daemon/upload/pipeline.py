"""The entry point of an upload and its standard route: one file version through init_upload →
S3 POST (a multipart/form-data body, daemon/upload/formdata.py) → confirm_upload. Files over
multipart_threshold_bytes (5 GiB) take the multipart route instead (daemon/upload/multipart_route.py:
init_multipart_upload → S3 multipart upload → callback); the steps both share are in
daemon/upload/steps.py. A sample of several files (lanes, an R1+R2 pair) takes
daemon/upload/sample_route.py; a sample of one file is uploaded here exactly as a file.

Every step that talks to the network persists its result before the next step
starts, so a crash anywhere resumes from the last persisted step:
  step ''            nothing sent yet (or nothing that can be confirmed)
  step 'initialized' sample_id and the POST form are stored: POST again to the same
                     key (S3 overwrites), or, if the policy has expired (or the form is
                     gone: a queue rebuilt from the journal), init again and cancel the
                     abandoned sample
  step 'posted'      S3 holds exactly the validated bytes (MD5 == ETag): confirm the
                     same sample_id, never start a new sample
(the multipart route's steps are described in its module).
The exception classes of daemon.errors decide what happens to the row; this module
never looks at an HTTP status, nor at the words of an error.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from daemon.checks.child import ChildValidator
from daemon.checks.validate import PROBE_BYTES, StreamValidator, blocks_carry, sniff
from daemon.config import MULTIPART_THRESHOLD_BYTES
from daemon.detection.roots import WatchRoots
from daemon.errors import (
    Aborted,
    AlreadyDone,
    AuthError,
    ContentRejected,
    FileChanged,
    LeaseLost,
    Permanent,
    Transient,
)
from daemon.queue.base import (
    POSTED_STEPS,
    STEP_INITIALIZED,
    STEP_MP_COMPLETE,
    STEP_MP_INIT,
    STEP_NONE,
    STEP_POSTED,
    FileRow,
    Store,
)
from daemon.upload import retrying
from daemon.upload.client import OneCodexClient
from daemon.upload.formdata import FormDataBody
from daemon.upload.multipart_route import MultipartRoute
from daemon.upload.prefix import PrefixCheck
from daemon.upload.records import (
    InitResult,
    MultipartInit,
    PostResult,
    sanitize_filename,
)
from daemon.upload.sample_route import Plan, SampleRoute
from daemon.upload.source import open_source
from daemon.upload.steps import Emit, Steps, no_emit, unreadable

if TYPE_CHECKING:       # for types only: importing s3multipart imports botocore
    from daemon.upload.s3multipart import S3Connector

MAX_SAMPLE_BYTES = 20 * 1000**3      # One Codex's limit for one sample (design.md: 20 GB)
MAX_POST_BYTES = 5 * 1024**3         # S3's limit for one POST upload (5 GiB)
SNIFF_BYTES = 64 * 1024
CHILD_VALIDATION_BYTES = 64 << 20   # from this size on: numpy's checker in this process, or a child process
POLICY_MARGIN_S = 60.0               # re-init when a stored policy outlives the expected upload by less


class Pipeline:
    """Uploads claimed rows, one at a time per calling thread (the workers share one Pipeline)."""

    def __init__(self, *, store: Store, client: OneCodexClient, log: Any, validate: bool = True,
                 block_size: int = 4 << 20, throttle: Callable[[int], None] | None = None,
                 stop: threading.Event | None = None, emit: Emit = no_emit,
                 max_backoff_s: float = 600.0, call_attempts: int = 4, call_max_time_s: float = 90.0,
                 multipart_threshold_bytes: int = MULTIPART_THRESHOLD_BYTES, s3_endpoint_url: str = "",
                 s3_region: str = "", part_size_bytes: int | None = None,
                 s3_connector: S3Connector | None = None, roots: WatchRoots | None = None,
                 allow_missing_etag: bool = False, plan: Plan | None = None) -> None:
        self.log = log
        self.stop = stop or threading.Event()
        self.validate, self.block_size = validate, block_size
        self.allow_missing_etag = allow_missing_etag    # rehearsals against moto only (design.md, "Rules")
        self.max_backoff_s = max_backoff_s
        self.multipart_threshold_bytes = multipart_threshold_bytes
        self.steps = Steps(store=store, client=client, stop=self.stop, emit=emit, throttle=throttle,
                           call_attempts=call_attempts, call_max_time_s=call_max_time_s,
                           roots=roots or WatchRoots())
        self.multipart = MultipartRoute(self.steps, validate=validate, s3_endpoint_url=s3_endpoint_url,
                                        s3_region=s3_region, part_size_bytes=part_size_bytes,
                                        s3_connector=s3_connector)
        self.prefix = PrefixCheck(store, emit=emit)    # an earlier confirmed version that was only a prefix
        # A sample of several files (lanes, a pair); plan: its landing fields (daemon/landing).
        self.samples = SampleRoute(self.steps, validate=validate, block_size=block_size,
                                   multipart_threshold_bytes=multipart_threshold_bytes,
                                   policy_fits=self._policy_fits, confirm=self._confirm,
                                   check_etag=self._check_etag, plan=plan, multipart=self.multipart)

    def close(self) -> None:
        """Forget multipart uploads in flight (no network: shutdown has a budget)."""
        self.multipart.close()

    def abandon(self, file_id: int) -> bool:
        """The caller gives up on this file (Ctrl-C in `seqdrop upload`): abort its multipart upload and
        cancel any sample begun for it. True if One Codex answers that its upload already succeeded."""
        log = self.log.bind(file_id=file_id)
        self.multipart.drop(file_id, log)
        return self.steps.cancel(file_id, log)

    # -- the one entry point -------------------------------------------------------------------
    def process(self, row: FileRow, *, progress: Callable[[int], None] | None = None) -> str:
        """Take a claimed row as far as it can go; return the row's new state."""
        log = self.log.bind(file_id=row.id, path=row.path)
        store = self.steps.store
        try:
            return self._process(row, log, progress)
        except LeaseLost as e:        # a shared queue gave the row to another host: stop, write nothing more
            log.warning("upload.lease_lost", error=str(e))
            return "uploading"
        except ContentRejected as e:
            return self._end(row, "rejected", e, log)
        except FileChanged as e:
            return self._end(row, "vanished", e, log)
        except Permanent as e:
            return self._end(row, "failed", e, log)
        except AuthError as e:
            # Not the file's fault: back in the queue, not counted as an attempt; the caller pauses.
            store.reschedule(row.id, delay_s=0, error=str(e), count_attempt=False)
            raise
        except Aborted:
            store.reschedule(row.id, delay_s=0, error=row.error, count_attempt=False)
            log.info("upload.interrupted")
            return "queued"
        except Transient as e:
            current = store.get(row.id)
            attempts = (current.attempts if current else row.attempts) + 1
            delay = retrying.backoff_s(attempts, initial_s=5.0, max_s=self.max_backoff_s,
                                       retry_after_s=e.retry_after_s)
            store.reschedule(row.id, delay_s=delay, error=f"{e} (will try again in {delay:.0f} s)")
            log.warning("upload.delayed", error=str(e), attempt=attempts, retry_in_s=round(delay, 1))
            self.steps.emit("retry", reason=e.reason)
            return "queued"

    def _end(self, row: FileRow, state: str, e: Exception, log: Any) -> str:
        """A terminal side exit: cancel any sample begun for it, record why, tell the observers. Should
        One Codex answer that the sample's upload succeeded after S3 held the verified bytes, the file
        is done, not failed: a later `retry --failed` would otherwise upload it a second time."""
        self.multipart.drop(row.id, log)
        current = self.steps.store.get(row.id)
        if self.steps.cancel(row.id, log) and current is not None and current.step in POSTED_STEPS:
            return self.steps.done(current, current.sample_id or "", current.md5, log,
                                   note=f"One Codex has this sample; not {state}")
        self.steps.store.set_state(row.id, state, error=str(e), step=STEP_NONE)
        if state == "vanished":
            log.warning("file.vanished", error=str(e))
        else:
            log.error(f"file.{state}", error=str(e))
            self.steps.emit(f"file_{state}", path=row.path, error=str(e))
        return state

    def _process(self, row: FileRow, log: Any, progress: Callable[[int], None] | None) -> str:
        sample = self.steps.store.sample_of(row.id)
        if sample is not None and len(sample.files) > 1:
            return self.samples.process(row, sample, log, progress)
        if row.step == STEP_POSTED and row.sample_id:
            return self._confirm(row, row.sample_id, row.md5, log)
        if row.step == STEP_MP_COMPLETE and row.init:
            return self.multipart.callback(row, MultipartInit.from_json(row.init), row.md5, log)
        multipart = self._admit(row)
        if self._same_as_last_done(row, log):
            return "done"
        if multipart:
            return self.multipart.send(row, log, progress)
        return self._standard(row, log, progress)

    # -- before anything is sent -----------------------------------------------------------------
    def _admit(self, row: FileRow) -> bool:
        """The checks before anything is sent (the version, the limits, the first bytes); returns
        whether the file takes the multipart route."""
        self.steps.check_identity(row)
        size, name = row.size, os.path.basename(row.path)
        if size == 0:
            raise ContentRejected(f"{name} is empty (0 bytes); nothing to upload.")
        if size > MAX_SAMPLE_BYTES:
            raise ContentRejected(f"{name} is {size / 1e9:.1f} GB, over One Codex's "
                                  f"20 GB limit for one sample; split it (e.g. by lane) and drop the parts in.")
        # The route: a started upload keeps its own; otherwise the size decides.
        multipart = row.step == STEP_MP_INIT or (row.step == STEP_NONE and size > self.multipart_threshold_bytes)
        if size > MAX_POST_BYTES and not multipart:
            raise Permanent(f"{name} is {size / 2**30:.1f} GiB, over S3's 5 GiB limit "
                            f"for one POST, and its upload was begun as one; `seqdrop retry --failed` starts it "
                            f"again through the multipart route.")
        if self.validate:
            self._sniff(row)
        return multipart

    def _sniff(self, row: FileRow) -> None:
        try:
            with os.fdopen(open_source(row.path), "rb") as f:
                head = f.read(SNIFF_BYTES)
        except PermissionError:
            raise unreadable(row.path) from None
        sniff(head, os.path.basename(row.path))

    def _same_as_last_done(self, row: FileRow, log: Any) -> bool:
        """A new version whose bytes equal the path's last confirmed version: recorded, not re-sent."""
        store = self.steps.store
        prev = store.last_done_for_path(row.path, before_id=row.id)
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
        self.steps.check_identity(row)
        store.mark_done(row.id, sample_id=prev.sample_id or "", md5=prev.md5,
                        error=f"same bytes as the version already uploaded as sample {prev.sample_id}; "
                              f"not uploaded again")
        log.info("upload.unchanged", sample_id=prev.sample_id)
        return True

    # -- the standard route ----------------------------------------------------------------------
    def _standard(self, row: FileRow, log: Any, progress: Callable[[int], None] | None) -> str:
        steps = self.steps
        begun = row.step == STEP_INITIALIZED
        init = InitResult.from_json(row.init, steps.client.form_seal) if begun and row.init else None
        if init is None and begun and row.sample_id:
            # Rebuilt from the audit journal, which never holds the signed POST form, or a form sealed
            # under an API key this process has not got: cancel that sample (nothing of it was
            # confirmed, unless One Codex says otherwise) and init again.
            log.info("upload.init_form_lost", sample_id=row.sample_id)
            if steps.cancel(row.id, log, sample_id=row.sample_id):
                return steps.done(row, row.sample_id, None, log, note="One Codex says this sample's upload "
                                                                      "already succeeded")
        if init and not self._policy_fits(init, row.size):
            log.info("upload.policy_stale", sample_id=init.sample_id)
            steps.cancel(row.id, log, sample_id=init.sample_id)
            init = None
        init, (md5, seconds) = steps.through_policy(row, init, lambda: self._init(row, log),
                                                    lambda init: self._post(row, init, log, progress), log)
        steps.store.save_posted(row.id, md5)
        return self._confirm(row, init.sample_id, md5, log, seconds=seconds)

    def _init(self, row: FileRow, log: Any) -> InitResult:
        client = self.steps.client
        name = sanitize_filename(os.path.basename(row.path))
        landing = {}
        if self.samples.plan is not None:
            landing = {"extra": self.samples.landing(self.steps.store.sample_of(row.id), row, log)}
        init = self.steps.call("init_upload", lambda: client.init_upload(name, row.size, **landing), log)
        self.steps.store.save_init(row.id, init.sample_id, init.to_json(self.steps.client.form_seal))
        log.info("upload.initialized", sample_id=init.sample_id)
        return init

    def _policy_fits(self, init: InitResult, size: int) -> bool:
        if init.expires_at is None:
            return True
        return init.expires_at - time.time() > POLICY_MARGIN_S + size / self.steps.rate.bps

    def _post(self, row: FileRow, init: InitResult, log: Any,
              progress: Callable[[int], None] | None) -> tuple[str, float]:
        def attempt() -> tuple[str, float]:
            child = self._child(row)
            try:
                result = self.steps.client.post_to_s3(init, self._body(row, init, child, progress))
            finally:
                if child is not None:
                    child.close()
            self._check_etag(result, init, log)
            self.steps.rate.add(result.bytes_sent, result.seconds)
            log.info("upload.posted", sample_id=init.sample_id, seconds=round(result.seconds, 3),
                     mb_s=round(result.bytes_sent / 1e6 / max(result.seconds, 1e-6), 1))
            return result.md5, result.seconds

        md5, seconds = self.steps.call("s3_post", attempt, log)
        self.steps.check_identity(row)   # the bytes sent are the bytes of this version
        return md5, seconds

    def _check_etag(self, result: PostResult, init: InitResult, log: Any) -> None:
        """S3 holds exactly the bytes sent (its ETag is their MD5), else Transient: send again."""
        if not result.etag:
            self._no_etag(init, log)
        elif result.etag != result.md5:
            raise Transient(f"S3's ETag {result.etag!r} differs from the MD5 of the bytes sent "
                            f"({result.md5}): not confirming; sending again", reason="etag_mismatch")

    def _no_etag(self, init: InitResult, log: Any) -> None:
        """S3 said it stored the file but sent no ETag: what it holds cannot be checked against the
        bytes sent, so it is never confirmed (design.md, "Rules"), unless a rehearsal against a server
        that sends none (moto) allows it, loudly, at every upload."""
        if not self.allow_missing_etag:
            # Not repeated at once: a server that sends no ETag will not send one a second later.
            raise Transient("S3 answered without an ETag, so the bytes it stored cannot be checked against "
                            "the MD5 of the bytes sent: not confirming (a rehearsal against an S3 that sends "
                            "none, such as moto, sets [upload] allow_missing_etag = true)",
                            reason="etag_missing", immediate=False)
        log.warning("upload.etag_missing", sample_id=init.sample_id,
                    note="the server sent no ETag; the MD5 could not be checked (upload.allow_missing_etag)")

    def _child(self, row: FileRow) -> ChildValidator | None:
        """A validator process for a large file the numpy checker will not carry (reads of several
        lengths, FASTA, bzip2...): the line-by-line parser holds the GIL, and in this process it would
        slow the sending thread down; the child reads the file a second time on a core of its own.
        None when the body validates the blocks it sends, in this process."""
        if not self.validate or row.size < CHILD_VALIDATION_BYTES:
            return None
        try:
            with os.fdopen(open_source(row.path), "rb") as f:
                head = f.read(PROBE_BYTES)
        except OSError:
            return None     # the body's own read reports it
        return None if blocks_carry(head) else ChildValidator(row.path, row.size)

    def _body(self, row: FileRow, init: InitResult, child: ChildValidator | None,
              progress: Callable[[int], None] | None) -> FormDataBody:
        """The POST's form-data body, validated on its way out: by the child process when there is one,
        else by a StreamValidator fed each block in this process, with the numpy checker from
        CHILD_VALIDATION_BYTES on (numpy releases the GIL in its loops, so the sending thread keeps
        going; no second read of the file, no second process: docs/benchmarks.md, "CPU per byte")."""
        name = os.path.basename(row.path)
        tap = finish = check = None
        if child is not None:
            finish, check = child.finish, child.check
        elif self.validate:
            validator = StreamValidator(name=name, vectorised=row.size >= CHILD_VALIDATION_BYTES)
            tap, finish = validator.feed, validator.finish
        body = FormDataBody(init.fields, path=row.path, filename=sanitize_filename(name), size=row.size,
                            block_size=self.block_size, tap=tap, finish=finish, check=check,
                            throttle=self.steps.throttle, progress=progress, should_abort=self.stop.is_set)
        return self.prefix.watch(row, body)

    def _confirm(self, row: FileRow, sample_id: str, md5: str | None, log: Any, *, seconds: float = 0.0,
                 size: int | None = None) -> str:
        client = self.steps.client
        try:
            self.steps.call("confirm_upload", lambda: client.confirm_upload(sample_id), log)
        except AlreadyDone as e:
            # Confirming again after a lost answer is the design's rule; a server that refuses the
            # repeat because the sample is already confirmed is telling us the sample is done.
            log.info("upload.already_confirmed", sample_id=sample_id, answer=str(e))
        except Permanent as e:
            # Refused for good, in words that do not say why: this confirm may repeat one whose answer
            # was lost. One Codex decides (design.md, "Rules"); only a sample it has not got fails.
            if not self.steps.confirmed_at_one_codex(sample_id, log, refusal=e):
                raise
        state = self.steps.done(row, sample_id, md5, log, seconds=seconds, size=size)
        self.prefix.confirmed(row, sample_id, log)
        return state
