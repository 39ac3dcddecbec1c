"""The multipart route: files over multipart_threshold_bytes (5 GiB) go init_multipart_upload → S3
multipart upload with temporary credentials → callback. ("multipart" here is S3's multipart
upload, daemon/upload/s3multipart.py; the standard route's multipart/form-data body is
daemon/upload/formdata.py.)

NOT verified against the real One Codex (see daemon/upload/s3multipart.py). Steps persisted:
  step 'mp_initialized'  sample_id, bucket, key and callback path are stored, never the temporary
                         S3 credentials: within one process a transient error resumes at the next
                         part (the credentials are in this process's memory, in the job registry
                         below); a new process cancels that sample and starts again with a new init
  step 'mp_complete'     CompleteMultipartUpload succeeded and its ETag is md5(part MD5s)-N of the
                         validated bytes: call the callback again, never start a new sample

A sample of several files (send_sample: design.md, "Samples") sends each read's lane files as one
object (parts span the lanes' boundaries; daemon/upload/multipart_sample.py), a paired one as the
official client does: one init with paired_end_filename, the R2 to paired_end_file_id's key first,
then the R1 to file_id's, then one callback naming the R1. Its steps, on the lead member's row:
  'mp_initialized'  as above; within one process the upload goes on at the next part of the read
                    being sent
  'mp_r2_complete'  the R2's object is complete and its ETag checked; within one process only the R1
                    is left to send. A new process has no credentials to send the R1 to this sample
                    (they were only in the old process's memory, and a new init makes a new sample):
                    it cancels the sample, whose R2 is then orphaned in S3, and starts again, R2 first
  'mp_complete'     both objects are complete and checked: call back again, never start a new sample
The pair check (design.md, "Pair check") rides each read's validation: one validator child per read,
over its lanes, with --pair-digest. The R2's digest is kept in memory with its completed object; the
R1's is compared with it before the R1's object is completed, so a mismatch rejects the sample (and
cancels it) before the callback. The R2's digest is not persisted: a new process at 'mp_r2_complete'
sends the R2 again under a new sample (see above), which computes it again in that pass.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from daemon.assembly.pairs import PairDigest
from daemon.checks.child import ChildValidator
from daemon.errors import (
    Aborted,
    AlreadyDone,
    AuthError,
    ContentRejected,
    FileChanged,
    Permanent,
    PolicyExpired,
    Transient,
)
from daemon.queue.base import (
    STEP_MP_COMPLETE,
    STEP_MP_INIT,
    STEP_MP_R2_COMPLETE,
    FileRow,
    SampleRow,
)
from daemon.redact import looks_like_sample_id
from daemon.upload.multipart_sample import (
    Read,
    ReadValidator,
    admit,
    digest_again,
    reads_of,
)
from daemon.upload.records import MultipartInit, sanitize_filename
from daemon.upload.steps import Steps

if TYPE_CHECKING:       # for types only: importing s3multipart imports botocore (see _connector)
    from daemon.upload.s3multipart import S3Connector, S3Upload

MAX_CREDENTIAL_INITS = 3             # fresh credentials refused this often in a row: the file fails
GOING_ON_STEPS = (STEP_MP_INIT, STEP_MP_R2_COMPLETE)   # an upload in flight: its job is in memory, if anywhere


class _EtagMismatch(Transient):
    """CompleteMultipartUpload's ETag is not the one the parts sent make."""


@dataclass
class _MultipartJob:
    """A multipart upload between attempts, in memory only: it holds the temporary S3 credentials
    (never stored) and the parts sent so far; the validator child runs beside it."""
    init: MultipartInit
    upload: S3Upload
    child: ChildValidator | None

    def close(self, *, abort: bool, keep_child: bool = False) -> str | None:
        """Release it; with abort, ask S3 to drop the parts (returns why that failed, if it did)."""
        why = self.upload.abort() if abort else None
        self.upload.close()
        if self.child is not None and not keep_child:
            self.child.close()
        return why


@dataclass
class _Leg:
    """One object of a sample's upload: a read's lane files read as one, to its key."""
    read: Read
    upload: S3Upload
    validator: ReadValidator | None = None       # started when the read's first part is about to go
    digest: PairDigest | None = None             # its read names (pair check), once its object is complete


@dataclass
class _SampleJob:
    """A sample's multipart upload between attempts, in memory only (like _MultipartJob): its legs in
    send order, the R2 (if any) first. A leg whose upload has a completed_etag is done."""
    init: MultipartInit
    legs: list[_Leg]

    def close(self, *, abort: bool, keep_child: bool = False) -> str | None:
        whys = []
        for leg in self.legs:
            whys.append(leg.upload.abort() if abort else None)
            leg.upload.close()
            if leg.validator is not None:
                leg.validator.close()
        return "; ".join(w for w in whys if w) or None


@dataclass
class _Attempt:
    """What one attempt at a row holds: its multipart upload (if begun) and its validator child (if
    started; it outlives an upload whose credentials S3 refused: the bytes are the same)."""
    job: _MultipartJob | _SampleJob | None
    child: ChildValidator | None


class MultipartRoute:
    """The multipart route of one Pipeline, and the registry of its uploads between attempts."""

    def __init__(self, steps: Steps, *, validate: bool = True, s3_endpoint_url: str = "", s3_region: str = "",
                 part_size_bytes: int | None = None, s3_connector: S3Connector | None = None) -> None:
        self.steps, self.validate = steps, validate
        self.s3_endpoint_url, self.s3_region = s3_endpoint_url, s3_region
        self.part_size_bytes = part_size_bytes      # None: the official client's rule (tests go lower)
        self._s3 = s3_connector                     # made on first use (see _connector)
        self._jobs: dict[int, _MultipartJob | _SampleJob] = {}   # multipart uploads between attempts, by file id
        self._jobs_lock = threading.Lock()

    # -- the route ---------------------------------------------------------------------------------
    def send(self, row: FileRow, log: Any, progress: Callable[[int], None] | None) -> str:
        """Upload the file (or go on with its upload), then call back; returns the row's new state."""
        job = self._take(row)
        if job is None and row.step == STEP_MP_INIT and row.sample_id:
            # Begun by an earlier process: its temporary credentials were only in that process's
            # memory. Its sample will never be called back: cancel it, start again.
            log.info("upload.multipart_restarted", sample_id=row.sample_id)
            if self.steps.cancel(row.id, log):
                return self.steps.done(row, row.sample_id, None, log, route="multipart",
                                       note="One Codex says this sample's upload already succeeded")
            self.steps.store.clear_init(row.id)
        attempt = _Attempt(job, job.child if job else None)
        try:
            job, md5, seconds = self._send_with_fresh_credentials(row, attempt, log, progress)
        except BaseException as e:
            self._after_failure(row, attempt, e, log)
            raise
        job.close(abort=False)
        self.steps.store.save_posted(row.id, md5, step=STEP_MP_COMPLETE)
        return self.callback(row, job.init, md5, log, seconds=seconds)

    def callback(self, row: FileRow, init: MultipartInit, md5: str | None, log: Any, *,
                 seconds: float = 0.0) -> str:
        """Tell One Codex the object is in S3 (again, after a lost answer): the file is done."""
        try:
            answer = self.steps.call("multipart_callback", lambda: self.steps.client.multipart_callback(init), log)
        except AlreadyDone as e:
            # As for confirm_upload: a repeat refused with "already ..." means the sample exists.
            log.info("upload.already_confirmed", sample_id=init.sample_id, answer=str(e))
            answer = {}
        except Permanent as e:
            # Refused in other words: this may repeat a callback whose answer was lost. One Codex decides.
            if not self.steps.confirmed_at_one_codex(init.sample_id, log, refusal=e):
                raise
            answer = {}
        named = answer.get("sample_id")
        # A server's value is kept only if it looks like a sample id (design.md, "Rules").
        sample_id = named if looks_like_sample_id(named) else init.sample_id
        return self.steps.done(row, sample_id, md5, log, seconds=seconds, route="multipart")

    def _send_with_fresh_credentials(self, row: FileRow, attempt: _Attempt, log: Any,
                                     progress: Callable[[int], None] | None) -> tuple[_MultipartJob, str, float]:
        """Send every part and complete the upload; a new init when S3 refuses the credentials.
        Returns the completed job, the file's MD5 and the seconds the sending took."""
        name = sanitize_filename(os.path.basename(row.path))
        steps = self.steps

        def new_job() -> _MultipartJob:
            init = steps.call("init_multipart_upload", lambda: steps.client.init_multipart_upload(name), log)
            steps.store.save_init(row.id, init.sample_id, init.to_json(), step=STEP_MP_INIT)
            log.info("upload.initialized", sample_id=init.sample_id, route="multipart")
            if attempt.child is None and self.validate:
                attempt.child = ChildValidator(row.path, row.size)
            return self._new_job(init, row, attempt.child)

        def send(job: Any) -> tuple[_MultipartJob, str, float]:
            md5, seconds = self._send_object(job.upload, job.child, lambda: steps.check_identity(row),
                                             job.init.sample_id, log, progress)
            return job, md5, seconds
        return self._with_fresh_credentials(row, attempt, log, new_job, send)

    def _with_fresh_credentials(self, row: FileRow, attempt: _Attempt, log: Any, new_job: Callable[[], Any],
                                send: Callable[[Any], Any]) -> Any:
        """send(job) with attempt.job (a new_job() when there is none); when S3 refuses the temporary
        credentials, that sample is cancelled and a new one begun, MAX_CREDENTIAL_INITS times at most."""
        steps = self.steps
        last: PolicyExpired | None = None
        for _ in range(MAX_CREDENTIAL_INITS):
            if attempt.job is None:
                attempt.job = new_job()
            try:
                return send(attempt.job)
            except PolicyExpired as e:
                refused, attempt.job, last = attempt.job, None, e
                log.warning("upload.credentials_refused", sample_id=refused.init.sample_id, error=str(e))
                steps.emit("retry", reason="credentials")
                refused.close(abort=True, keep_child=True)
                steps.cancel(row.id, log, sample_id=refused.init.sample_id)
                steps.store.clear_init(row.id)
        raise Permanent(f"S3 refused the temporary credentials of {MAX_CREDENTIAL_INITS} new uploads in a "
                        f"row ({last}); check the clock and multipart_s3_endpoint/region, then "
                        f"`seqdrop retry --failed`")

    def _after_failure(self, row: FileRow, attempt: _Attempt, e: BaseException, log: Any) -> None:
        """Tidy up after an attempt that raised e: keep the upload for the next attempt, or end it."""
        job = attempt.job
        if isinstance(e, _EtagMismatch) and job is not None:
            # S3 completed an object that is not the bytes sent: never call back. Its sample is
            # cancelled and the next attempt starts with a new one.
            log.error("upload.etag_mismatch", sample_id=job.init.sample_id, error=str(e))
            job.close(abort=False)
            self.steps.cancel(row.id, log, sample_id=job.init.sample_id)
            self.steps.store.clear_init(row.id)
        elif job is None:
            if attempt.child is not None:
                attempt.child.close()
        elif isinstance(e, (Transient, AuthError)):
            self._keep(row.id, job)        # the next attempt goes on at the next part
        elif why := job.close(abort=not isinstance(e, Aborted)):
            # Rejected, changed, refused: S3 may drop the parts now. Not on shutdown (no network then).
            log.warning("upload.multipart_abort_failed", sample_id=job.init.sample_id, error=why)

    def _send_object(self, up: S3Upload, child: ChildValidator | ReadValidator | None,
                     check_source: Callable[[], None], sample_id: str, log: Any,
                     progress: Callable[[int], None] | None, **fields: Any) -> tuple[str, float]:
        """The parts of `up` not sent yet, then CompleteMultipartUpload once the bytes are proven valid
        (child) and unchanged (check_source). Returns the object's MD5 and the seconds the sending took."""
        steps = self.steps
        started, sent_before = time.monotonic(), up.hashed

        def new_bytes(n: int) -> None:
            if steps.throttle is not None:
                steps.throttle(n)
            if progress is not None:
                progress(n)

        steps.call("s3_create_multipart", up.create, log)
        while not up.all_sent:
            if child is not None:
                child.check()          # the validator has already refused the file: stop sending
            steps.call("s3_upload_part", lambda: up.send_part(should_abort=steps.stop.is_set, on_new=new_bytes), log)
        check_source()                 # the bytes sent are the bytes of this version...
        if child is not None:
            child.finish()             # ...and they are valid: only then may S3 assemble them
        md5 = up.md5
        etag = steps.call("s3_complete_multipart", up.complete, log)
        if etag != up.expected_etag:
            raise _EtagMismatch(f"S3's ETag {etag!r} for the completed object differs from the one the parts "
                                f"sent make ({up.expected_etag}): not calling back; the sample is cancelled and "
                                f"the file will be sent again as a new sample", reason="etag_mismatch")
        seconds = time.monotonic() - started
        steps.rate.add(up.hashed - sent_before, seconds)
        log.info("upload.s3_complete", sample_id=sample_id, parts=up.part_count, etag=etag, **fields,
                 seconds=round(seconds, 3), mb_s=round((up.hashed - sent_before) / 1e6 / max(seconds, 1e-6), 1))
        return md5, seconds

    # -- a sample of several files (lanes, a pair) ----------------------------------------------------
    def send_sample(self, row: FileRow, sample: SampleRow, log: Any, progress: Callable[[int], None] | None,
                    *, landing: Callable[[], dict[str, Any]] | None = None) -> str:
        """Upload a sample's reads (row: its claimed lead; R2 first, then R1, each its lanes as one
        object), or go on with their upload, then call back once; returns the row's new state.
        landing: the init's landing fields (project, tags, metadata), asked for at each new init."""
        log = log.bind(sample=sample.id, paired=sample.paired)
        if row.step == STEP_MP_COMPLETE and row.init:
            return self.callback(row, MultipartInit.from_json(row.init), row.md5, log)
        r1, r2 = reads_of(sample)
        reads = [r for r in (r2, r1) if r is not None]          # in send order
        job = self._take(row)
        if job is None and row.step in GOING_ON_STEPS and row.sample_id:
            # Begun by an earlier process, whose credentials died with it (see the module docstring).
            log.info("upload.multipart_restarted", sample_id=row.sample_id, step=row.step)
            if self.steps.cancel(row.id, log, sample_id=row.sample_id):
                return self.steps.done(row, row.sample_id, None, log, route="multipart",
                                       note="One Codex says this sample's upload already succeeded")
            self.steps.store.clear_init(row.id)
        attempt = _Attempt(job, None)
        try:
            admit(self.steps, reads, validate=self.validate)
            md5, seconds = self._with_fresh_credentials(
                row, attempt, log, lambda: self._init_sample(row, r1, r2, log, landing),
                lambda job: self._send_legs(row, job, log, progress))
        except BaseException as e:
            self._after_failure(row, attempt, e, log)
            self._end_sample(row, e, log)
            raise
        attempt.job.close(abort=False)
        self.steps.store.save_posted(row.id, md5, step=STEP_MP_COMPLETE)
        return self.callback(row, attempt.job.init, md5, log, seconds=seconds)

    def _init_sample(self, row: FileRow, r1: Read, r2: Read | None, log: Any,
                     landing: Callable[[], dict[str, Any]] | None) -> _SampleJob:
        """A new sample (its R2's key too, if paired) and the uploads of its reads, R2 first."""
        steps, r2_name = self.steps, r2.name if r2 is not None else None
        extra = landing() if landing is not None else None
        init = steps.call("init_multipart_upload", lambda: steps.client.init_multipart_upload(
            r1.name, paired_end_filename=r2_name, extra=extra), log)
        steps.store.save_init(row.id, init.sample_id, init.to_json(), step=STEP_MP_INIT)
        log.info("upload.initialized", sample_id=init.sample_id, route="multipart", filename=r1.name,
                 paired_end_filename=r2_name)
        job = _SampleJob(init, [])
        try:
            if r2 is not None:
                job.legs.append(_Leg(r2, self._new_upload(init, init.paired_end_key or "", r2)))
            job.legs.append(_Leg(r1, self._new_upload(init, init.key, r1)))
        except BaseException:
            job.close(abort=False)
            raise
        return job

    def _send_legs(self, row: FileRow, job: _SampleJob, log: Any,
                   progress: Callable[[int], None] | None) -> tuple[str, float]:
        """Each read not yet complete, in order; the R2's completion is persisted before the R1 is sent.
        Returns the lead's own MD5 (its file's, as for any row) and the seconds the sending took."""
        store, seconds, paired = self.steps.store, 0.0, len(job.legs) == 2
        for leg in job.legs:
            up, members = leg.upload, leg.read.members
            if up.completed_etag is not None:
                continue                       # completed earlier in this process
            if leg.validator is None and self.validate:
                mate = (lambda: self._r2_digest(job, log)) if paired and leg.read.role != "R2" else None
                leg.validator = ReadValidator(leg.read, paired=paired, mate=mate)
            md5, took = self._send_object(up, leg.validator, lambda ms=members: self._check_members(ms),
                                          job.init.sample_id, log, progress, read=leg.read.role, key=up.key)
            seconds += took
            if leg.validator is not None:      # valid (and, an R1, the R2's mate): its child is done
                leg.digest = leg.validator.digest
                leg.validator.close()
                if leg.digest is not None and leg.read.role != "R2":
                    log.info("upload.pair_checked", sample_id=job.init.sample_id, records=leg.digest.records)
            store.save_member_md5s({m.id: h for m, h in zip(members, up.member_md5s) if m.id != row.id})
            if leg.read.role == "R2":
                store.save_posted(row.id, md5, step=STEP_MP_R2_COMPLETE)
                log.info("upload.r2_complete", sample_id=job.init.sample_id)
        return job.legs[-1].upload.member_md5s[0], seconds

    def _r2_digest(self, job: _SampleJob, log: Any) -> PairDigest:
        """The R2's read-name digest for the R1's pair check: kept since the R2's object was completed in
        this process, or (should it be missing) computed again from the R2's files, never sent again."""
        r2 = job.legs[0]
        if r2.digest is None:
            log.info("upload.pair_digest_again", read=r2.read.role, size=r2.read.size)
            r2.digest = digest_again(self.steps, r2.read)
        return r2.digest

    def _check_members(self, members: tuple[FileRow, ...]) -> None:
        for member in members:
            self.steps.check_identity(member)

    def _end_sample(self, row: FileRow, e: BaseException, log: Any) -> None:
        """A sample that ends here (rejected, changed, failed) has its One Codex sample cancelled now,
        whatever its step (the caller's own cancel may not know a half-sent pair's step)."""
        if not isinstance(e, (ContentRejected, FileChanged, Permanent)):
            return                     # it waits in the queue (or the process ends): the next attempt decides
        current = self.steps.store.get(row.id)
        if current is not None and current.sample_id and current.step in GOING_ON_STEPS:
            self.steps.cancel(row.id, log, sample_id=current.sample_id)
            self.steps.store.clear_init(row.id)

    # -- the registry of uploads between attempts ----------------------------------------------------
    def _connector(self) -> S3Connector:
        """The one S3Connector, made on first use: botocore is slow to import and heavy in memory, and
        most daemons never send a file over 5 GiB, so daemon.upload.s3multipart is imported here."""
        from daemon.upload import s3multipart
        with self._jobs_lock:
            if self._s3 is None:
                connect_s, read_s = getattr(self.steps.client, "timeout", (10.0, 60.0))
                self._s3 = s3multipart.S3Connector(endpoint_url=self.s3_endpoint_url, region=self.s3_region,
                                                   connect_timeout_s=connect_s, read_timeout_s=read_s)
            return self._s3

    def _new_upload(self, init: MultipartInit, key: str, read: Read) -> S3Upload:
        """The upload of one read's lane files, read as one object, to `key`."""
        from daemon.upload import s3multipart  # lazy: botocore (see _connector)
        client = self._connector().client(
            s3multipart.S3Credentials(init.access_key_id, init.secret_access_key, init.session_token))
        return s3multipart.S3Upload(client, bucket=init.bucket, key=key, path=read.paths, size=read.size,
                                    sizes=read.sizes,
                                    part_size=self.part_size_bytes or s3multipart.choose_part_size(read.size))

    def _new_job(self, init: MultipartInit, row: FileRow, child: ChildValidator | None) -> _MultipartJob:
        from daemon.upload import s3multipart  # lazy: botocore (see _connector)
        client = self._connector().client(
            s3multipart.S3Credentials(init.access_key_id, init.secret_access_key, init.session_token))
        upload = s3multipart.S3Upload(client, bucket=init.bucket, key=init.key, path=row.path, size=row.size,
                                      part_size=self.part_size_bytes or s3multipart.choose_part_size(row.size))
        return _MultipartJob(init, upload, child)

    def _take(self, row: FileRow) -> Any:
        with self._jobs_lock:
            job = self._jobs.pop(row.id, None)
        if job is not None and (row.step not in GOING_ON_STEPS or row.sample_id != job.init.sample_id):
            job.close(abort=True)      # the row moved on without it (should not happen)
            job = None
        return job

    def _keep(self, file_id: int, job: _MultipartJob | _SampleJob) -> None:
        with self._jobs_lock:
            self._jobs[file_id] = job

    def drop(self, file_id: int, log: Any) -> None:
        """A row that ends (rejected, vanished, failed, abandoned) before its upload went on: abort it."""
        with self._jobs_lock:
            job = self._jobs.pop(file_id, None)
        if job is not None and (why := job.close(abort=True)):
            log.warning("upload.multipart_abort_failed", sample_id=job.init.sample_id, error=why)

    def close(self) -> None:
        """Forget the uploads in flight (no network: shutdown has a budget). Their samples are cancelled
        and started again by the next process; S3 drops the orphaned parts by the bucket's own rules."""
        with self._jobs_lock:
            jobs, self._jobs = list(self._jobs.values()), {}
        for job in jobs:
            job.close(abort=False)
