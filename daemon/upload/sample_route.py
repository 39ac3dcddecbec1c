"""A sample of several files on the standard route (design.md, "Samples"): its lane files read as
one stream per read (daemon/assembly/concat.py, never a copy on disk), and for a paired sample two
POSTs under one sample_id, then one confirm_upload. A sample of one file never comes here: it takes
the file's route in daemon/upload/pipeline.py, unchanged.

The steps, on the lead member's row (the queue mirrors them onto the other members):
  ''             nothing sent
  'initialized'  sample_id and the POST form(s) stored: POST R1 (then R2); a stale or expired policy
                 means cancel and init again
  'posted_r1'    (paired) S3 holds R1, its ETag checked: only R2 is sent. R1's read names are read again
                 locally (never sent) for the pair check, whose digest of R1 died with the process
  'posted'       every read is in S3, checked, and the pair check passed: confirm, never re-init
The pair check (design.md, "Pair check") rides the validator's pass over each read (a text hook
in process, `--pair-digest` in the child); R2 is POSTed last and a mismatch cancels the sample:
nothing of a half or mismatched pair is ever confirmed. Each member's MD5 is kept for the audit
journal; the lead's row holds its own file's MD5 (for a one-lane read, the read's).
A sample whose largest read is over the multipart threshold goes to the multipart route's
send_sample (R2 first, then R1, one callback: daemon/upload/multipart_route.py) where this seqdrop
has it; where it does not, the sample fails with a sentence saying so, nothing sent.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from daemon.assembly.concat import LaneStream
from daemon.assembly.names import parse
from daemon.assembly.pairs import NameDigest, PairDigest, compare
from daemon.checks.child import ChildValidator, lane_label, open_member
from daemon.checks.validate import StreamValidator, sniff
from daemon.errors import (
    ContentRejected,
    FileChanged,
    Permanent,
    Transient,
)
from daemon.queue.base import (
    STEP_INITIALIZED,
    STEP_MP_COMPLETE,
    STEP_MP_INIT,
    STEP_MP_R2_COMPLETE,
    STEP_NONE,
    STEP_POSTED,
    STEP_POSTED_R1,
    FileRow,
    SampleRow,
)
from daemon.upload.formdata import FormDataBody
from daemon.upload.multipart_sample import digest_again
from daemon.upload.records import InitResult, sanitize_filename
from daemon.upload.steps import Steps, unreadable

MAX_SAMPLE_BYTES = 20 * 1000**3      # One Codex's limit for one sample, all its reads (design.md: 20 GB)
MAX_POST_BYTES = 5 * 1024**3         # S3's limit for one POST: per read
SNIFF_BYTES = 64 * 1024
CHILD_VALIDATION_BYTES = 64 << 20    # from this size on a read is validated in a child process
MULTIPART_STEPS = (STEP_MP_INIT, STEP_MP_R2_COMPLETE, STEP_MP_COMPLETE)

Plan = Callable[[SampleRow | None, FileRow], tuple[dict[str, Any], dict[str, Any] | None]]
Confirm = Callable[..., str]


@dataclass(frozen=True)
class Read:
    """One read of a sample as it is uploaded: its lane files in lane order, under one name."""
    role: str                         # "R1" (or "single") / "R2"
    members: tuple[FileRow, ...]
    name: str                         # the uploaded name: the first lane's, lane token removed, sanitised

    @property
    def paths(self) -> list[str]:
        return [m.path for m in self.members]

    @property
    def size(self) -> int:
        return sum(m.size for m in self.members)

    @property
    def label(self) -> str:
        return lane_label(self.paths)


def reads_of(sample: SampleRow) -> list[Read]:
    """R1 (or the single-end read), then R2 if the sample is paired."""
    reads = []
    for role, members in (("R1", sample.r1), ("R2", sample.r2)):
        if members:
            name = parse(os.path.basename(members[0].path)).upload_name
            reads.append(Read(role, members, sanitize_filename(name)))
    return reads


@dataclass
class Sent:
    """What one read's POST proved: its members' MD5s (in order) and, if asked, its read-name digest."""
    md5s: tuple[str, ...]
    digest: PairDigest | None


class SampleRoute:
    """Shared by a Pipeline's worker threads: nothing here is per sample."""

    def __init__(self, steps: Steps, *, validate: bool, block_size: int, multipart_threshold_bytes: int,
                 policy_fits: Callable[[InitResult, int], bool], confirm: Confirm,
                 check_etag: Callable[[Any, InitResult, Any], None], plan: Plan | None = None,
                 multipart: Any = None) -> None:
        self.steps, self.validate, self.block_size = steps, validate, block_size
        self.multipart = multipart      # the MultipartRoute: reads over the threshold (its send_sample)
        self.multipart_threshold_bytes = multipart_threshold_bytes
        self.policy_fits, self.confirm, self.check_etag, self.plan = policy_fits, confirm, check_etag, plan
        self.child_validation_bytes = CHILD_VALIDATION_BYTES

    def process(self, row: FileRow, sample: SampleRow, log: Any, progress: Callable[[int], None] | None) -> str:
        """Take a claimed lead row of a sample of several files as far as it can go."""
        log = log.bind(sample=sample.id, paired=sample.paired)
        reads = reads_of(sample)
        if row.step == STEP_POSTED and row.sample_id:
            return self.confirm(row, row.sample_id, row.md5, log, size=sample.size)
        # The route: a started upload keeps its own; otherwise the size of its largest read decides.
        if row.step in MULTIPART_STEPS or (row.step == STEP_NONE and
                                           max(r.size for r in reads) > self.multipart_threshold_bytes):
            return self._multipart(row, sample, reads, log, progress)
        self._admit(sample, reads)
        for read in reads:
            if read.size > MAX_POST_BYTES:
                raise Permanent(f"{read.label} is {read.size / 2**30:.1f} GiB, over S3's 5 GiB limit for one "
                                f"POST, and its upload was begun as one; `seqdrop retry --failed` starts it "
                                f"again through the multipart route.")
        return self._standard(row, sample, reads, log, progress)

    def _multipart(self, row: FileRow, sample: SampleRow, reads: list[Read], log: Any,
                   progress: Callable[[int], None] | None) -> str:
        """Reads over the multipart threshold: the multipart route's samples (MultipartRoute.send_sample,
        R2 first, then R1, one callback), where this seqdrop has them."""
        if row.step != STEP_MP_COMPLETE:     # S3 holds it all: only the callback is left
            self._admit(sample, reads)
        return self.multipart.send_sample(row, sample, log, progress, landing=lambda: self.landing(sample, row, log))

    # -- before anything is sent -----------------------------------------------------------------
    def _admit(self, sample: SampleRow, reads: list[Read]) -> None:
        """Every member still the version queued; the 20 GB limit of a sample; lanes that can be
        joined; each member's first bytes."""
        for member in sample.files:
            self.steps.check_identity(member)
            if member.size == 0:
                raise ContentRejected(f"{os.path.basename(member.path)} is empty (0 bytes); a sample's "
                                      f"files must all hold reads.")
        if sample.size > MAX_SAMPLE_BYTES:
            raise ContentRejected(f"sample {sample.name} is {sample.size / 1e9:.1f} GB, over One Codex's 20 GB "
                                  f"limit for one sample; split it and drop the parts in separately.")
        for read in reads:
            try:
                LaneStream(read.paths, opener=open_member, whole_md5=False).close()   # joins: ContentRejected
            except PermissionError:
                raise unreadable(read.label) from None
            if self.validate:
                for member in read.members:
                    self._sniff(member)

    def _sniff(self, member: FileRow) -> None:
        try:
            with open_member(member.path) as f:
                head = f.read(SNIFF_BYTES)
        except PermissionError:
            raise unreadable(member.path) from None
        sniff(head, os.path.basename(member.path))

    # -- the standard route ----------------------------------------------------------------------
    def _standard(self, row: FileRow, sample: SampleRow, reads: list[Read], log: Any,
                  progress: Callable[[int], None] | None) -> str:
        steps = self.steps
        begun = row.step in (STEP_INITIALIZED, STEP_POSTED_R1)
        init = InitResult.from_json(row.init, steps.client.form_seal) if begun and row.init else None
        if init is None and begun and row.sample_id:
            # Rebuilt from the audit journal, which never holds the signed POST forms, or forms sealed
            # under an API key this process has not got: cancel, init again.
            log.info("upload.init_form_lost", sample_id=row.sample_id)
            if steps.cancel(row.id, log, sample_id=row.sample_id):
                return steps.done(row, row.sample_id, None, log, size=sample.size,
                                  note="One Codex says this sample's upload already succeeded")
        r2_only = init is not None and row.step == STEP_POSTED_R1
        left = reads[-1].size if r2_only else sum(r.size for r in reads)
        if init is not None and (init.paired != (len(reads) == 2) or not self.policy_fits(init, left)):
            log.info("upload.policy_stale", sample_id=init.sample_id)
            steps.cancel(row.id, log, sample_id=init.sample_id)
            init, r2_only = None, False
        resumed = init if r2_only else None      # only the init whose R1 S3 already holds skips the R1
        init, lead_md5 = steps.through_policy(
            row, init, lambda: self._init(row, sample, reads, log),
            lambda init: self._send_reads(row, init, reads, init is resumed, log, progress), log)
        steps.store.save_posted(row.id, lead_md5)
        return self.confirm(row, init.sample_id, lead_md5, log, size=sample.size)

    def _init(self, row: FileRow, sample: SampleRow, reads: list[Read], log: Any) -> InitResult:
        extra = self.landing(sample, row, log)
        r2 = reads[1].name if len(reads) > 1 else None
        init = self.steps.call("init_upload", lambda: self.steps.client.init_upload(
            reads[0].name, reads[0].size, paired_end_filename=r2, extra=extra), log)
        self.steps.store.save_init(row.id, init.sample_id, init.to_json(self.steps.client.form_seal))
        log.info("upload.initialized", sample_id=init.sample_id, filename=reads[0].name, paired_end_filename=r2)
        return init

    def landing(self, sample: SampleRow | None, row: FileRow, log: Any) -> dict[str, Any]:
        """The landing fields for init_upload (project, tags, metadata), the record kept for status."""
        if self.plan is None:
            return {}
        try:
            extra, record = self.plan(sample, row)
        except Exception as e:  # noqa: BLE001 - data is never held hostage by metadata (design.md)
            log.warning("landing.plan_failed", error=f"{e.__class__.__name__}: {e}")
            return {}
        if sample is not None and record is not None:
            self.steps.store.set_landing(sample.id, record)
        return extra

    def _send_reads(self, row: FileRow, init: InitResult, reads: list[Read], r2_only: bool, log: Any,
                    progress: Callable[[int], None] | None) -> str:
        """POST each read not yet in S3, each persisted before the next; the pair check once both are
        known. Returns the MD5 the lead's row keeps (its own file's)."""
        store, paired = self.steps.store, len(reads) == 2
        check_pair = paired and self.validate
        if r2_only:
            lead_md5 = row.md5 or ""
            r1_digest = self._digest_locally(reads[0], log) if check_pair else None
        else:
            sent = self._post_read(init, reads[0], log, progress, digest=check_pair)
            lead_md5, r1_digest = sent.md5s[0], sent.digest
            store.save_member_md5s({m.id: md5 for m, md5 in zip(reads[0].members[1:], sent.md5s[1:])})
            if paired:
                store.save_posted(row.id, lead_md5, step=STEP_POSTED_R1)
                log.info("upload.posted_r1", sample_id=init.sample_id)
        if paired:
            sent = self._post_read(init.for_r2(), reads[1], log, progress, digest=check_pair)
            store.save_member_md5s({m.id: md5 for m, md5 in zip(reads[1].members, sent.md5s)})
            if check_pair and r1_digest is not None and sent.digest is not None:
                if problem := compare(r1_digest, sent.digest):
                    raise ContentRejected(problem)
                log.info("upload.pair_checked", records=r1_digest.records)
        return lead_md5

    def _post_read(self, init: InitResult, read: Read, log: Any, progress: Callable[[int], None] | None,
                   *, digest: bool) -> Sent:
        """One read's S3 POST under the retry policy, validated (and digested) on its way out, its ETag
        checked, its members checked again afterwards (the bytes sent are those of the versions queued)."""
        lanes = len(read.members) > 1

        def attempt() -> Sent:
            streams: list[LaneStream] = []

            def opener() -> LaneStream:
                stream = LaneStream(read.paths, opener=open_member, whole_md5=False,
                                    member_md5s=lanes and child is None, member_md5s_from=1)
                streams.append(stream)
                for member, size in zip(read.members, stream.sizes):
                    if size != member.size:
                        stream.close()
                        raise FileChanged(f"{os.path.basename(member.path)} changed after it was queued "
                                          f"({size:,} bytes, {member.size:,} queued)")
                return stream

            # Lanes' own MD5s (the audit journal's) come from the child where there is one: it reads
            # every byte anyway, on its own core, so this process hashes a read once, as it does a file.
            # The first lane's is the read's MD5 after that lane's bytes (FormDataBody's md5_at), so
            # nobody hashes those bytes twice.
            child = (ChildValidator(read.paths, read.size, pair_digest=digest, member_md5s=lanes, skip_first_md5=True)
                     if self.validate and read.size >= self.child_validation_bytes else None)
            names = NameDigest(read.label) if digest and child is None else None
            tap = finish = check = None
            if child is not None:
                finish, check = child.finish, child.check
            elif self.validate:
                validator = StreamValidator(read.label, on_text=names.feed if names is not None else None)
                tap, finish = validator.feed, validator.finish
            body = FormDataBody(init.fields, path=read.paths[0], filename=read.name, size=read.size,
                                block_size=self.block_size, tap=tap, finish=finish, check=check,
                                throttle=self.steps.throttle, progress=progress,
                                should_abort=self.steps.stop.is_set, opener=opener,
                                md5_at=read.members[0].size if lanes else None)
            try:
                result = self.steps.client.post_to_s3(init, body)
                found = child.pair_digest if child is not None else names.finish() if names is not None else None
            finally:
                if child is not None:
                    child.close()
            self.check_etag(result, init, log)
            self.steps.rate.add(result.bytes_sent, result.seconds)
            log.info("upload.posted", sample_id=init.sample_id, read=read.role, filename=read.name,
                     seconds=round(result.seconds, 3))
            return Sent(_md5s(body, streams[-1], child) if lanes else (result.md5,), found)

        sent = self.steps.call("s3_post", attempt, log)
        for member in read.members:
            self.steps.check_identity(member)
        return sent

    def _digest_locally(self, read: Read, log: Any) -> PairDigest:
        """R1's read-name digest after a restart at 'posted_r1': R1 read again here (never sent) by the
        validator child, which also checks it is still valid and of the size S3 holds."""
        log.info("upload.pair_digest_again", read=read.role, size=read.size)
        return digest_again(self.steps, read)


def _md5s(body: FormDataBody, stream: LaneStream, child: ChildValidator | None) -> tuple[str, ...]:
    """Each lane file's MD5: the first lane's from the read's own MD5 after its bytes (md5_at), the
    others' the child's (it read them; the bytes sent are the read's, ETag-checked), else the stream's."""
    first = body.md5_at_hex if body.md5_at else hashlib.md5().hexdigest()   # an empty first lane: no block
    if first is None:
        raise Transient("internal: the first lane's MD5 was not taken; sending the read again", reason="internal")
    if child is None:
        return (first, *stream.member_md5s)
    if (found := child.member_md5s) is None:
        raise Transient("the validator process gave no MD5 of the lane files", reason="validator")
    return (first, *found)
