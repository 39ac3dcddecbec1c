"""Samples of several files through the pipeline (daemon/upload/sample_route.py): lanes concatenated
while streaming, paired R1+R2 under one sample, the pair check, crash/resume between the two POSTs,
against the strict sandbox over loopback (and, for the S3 step, moto's server)."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest
import structlog
from harness import PipelineDriver, crash_after_step
from moto.server import ThreadedMotoServer

from daemon.assembly.concat import LaneStream
from daemon.assembly.pairs import digest_path
from daemon.checks.child import digest_from_json
from daemon.checks.validate import StreamValidator
from daemon.queue.base import STEP_POSTED_R1, Identity
from daemon.queue.sqlite import SqliteStore
from daemon.sandbox import Fault, Sandbox
from daemon.upload import retrying
from daemon.upload.client import OneCodexClient
from daemon.upload.pipeline import Pipeline
from daemon.upload.records import InitResult

KEY = "sk_test_0123456789abcdef"
LANES = (1, 2, 3, 4)


def lane_fastq(lane: int, read: int, n: int = 50, *, names: str = "run") -> bytes:
    """n records of one lane's R1 or R2: mates share their read names (the comment differs)."""
    out = []
    for i in range(n):
        seq = ("ACGTTGCA" * 10)[(i + read) % 8:][:60]
        out.append(f"@{names}:{lane}:{i} {read}:N:0:1\n{seq}\n+\n{'I' * len(seq)}\n")
    return "".join(out).encode()


class Crash(BaseException):
    """Stands for kill -9: nothing in the pipeline catches it."""


@pytest.fixture(autouse=True)
def no_waits():
    retrying.set_waits(False)
    yield
    retrying.set_waits(True)


@pytest.fixture
def sb():
    with Sandbox(api_keys=(KEY,)) as sandbox:
        yield sandbox


class Harness(PipelineDriver):
    def __init__(self, sb: Sandbox, tmp: Path, **pipeline: Any) -> None:
        self.sb, self.tmp = sb, tmp
        self.store = SqliteStore(str(tmp / "queue.sqlite3"))
        self.client = OneCodexClient(sb.api_url, KEY, connect_timeout_s=2, read_timeout_s=5)
        self.pipeline = Pipeline(store=self.store, client=self.client, log=structlog.get_logger(),
                                 block_size=16 * 1024, **pipeline)

    def sample(self, files: dict[str, bytes], *, paired: bool = True, name: str = "Liver_S3") -> int:
        """Write the files, record them as seen and as one sample (R1 lanes first, lane order); the
        lead's file id."""
        members = []
        for fname, data in files.items():
            path = self.file(fname, data)
            file_id = self.store.add_seen(str(path), Identity.of(os.stat(path)))
            role = "R2" if "_R2" in fname else ("R1" if paired else "single")
            lane = int(fname.split("_L00")[1][0]) if "_L00" in fname else None
            members.append((file_id, role, lane))
        members.sort(key=lambda m: (m[1] == "R2", m[2] or 0))
        assert self.store.add_sample(key=f"{self.tmp}/watch:{name}", folder=str(self.tmp / "watch"), name=name,
                                     run="run1", paired=paired, files=members) is not None
        return members[0][0]

    def posts(self) -> list[str]:
        """The file names S3 received a whole POST of, in order."""
        return [r["filename"] for r in self.requests_to("s3") if r.get("filename")]

    def states(self, lead: int) -> list[str]:
        return [f.state for f in self.store.sample_of(lead).files]


@pytest.fixture
def h(sb, tmp_path):
    harness = Harness(sb, tmp_path)
    yield harness
    harness.store.close()


def four_lanes(compress: bool = False, r2: dict[int, bytes] | None = None) -> dict[str, bytes]:
    files = {}
    for read in (1, 2):
        for lane in LANES:
            data = (r2 or {}).get(lane, lane_fastq(lane, 2)) if read == 2 else lane_fastq(lane, 1)
            files[f"Liver_S3_L00{lane}_R{read}_001.fastq" + (".gz" if compress else "")] = \
                gzip.compress(data, mtime=0) if compress else data
    return files


def joined(files: dict[str, bytes], read: str) -> bytes:
    return b"".join(data for name, data in sorted(files.items()) if f"_{read}_" in name)


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gz"])
def test_four_lane_pair_is_one_sample_of_the_lane_concatenations(h, compress):
    """4 lanes x R1/R2 → one confirmed paired sample: the stored R1 and R2 are byte for byte the lane
    concatenations (gzip lanes as one multi-member gzip), uploaded without the lane token; each
    member's MD5 kept; every member done."""
    files = four_lanes(compress)
    events = []
    h.pipeline.steps.emit = lambda event, **fields: events.append((event, fields))
    lead = h.sample(files)
    assert h.drive(lead) == "done"
    [s] = h.sb.samples()
    assert [f["size"] for e, f in events if e == "file_done"] == [sum(map(len, files.values()))]
    ext = ".fastq.gz" if compress else ".fastq"
    assert s["state"] == "confirmed"
    assert (s["filename"], s["paired_end_filename"]) == (f"Liver_S3_R1_001{ext}", f"Liver_S3_R2_001{ext}")
    assert Path(s["object_path"]).read_bytes() == joined(files, "R1")
    assert Path(s["paired_object_path"]).read_bytes() == joined(files, "R2")
    assert len(h.requests_to("confirm_upload")) == 1 and len(h.posts()) == 2
    sample = h.store.sample_of(lead)
    assert h.states(lead) == ["done"] * 8 and {f.sample_id for f in sample.files} == {s["sample_id"]}
    by_name = {os.path.basename(f.path): f.md5 for f in sample.files}
    assert by_name == {name: hashlib.md5(data).hexdigest() for name, data in files.items()}


def test_single_end_lanes_go_as_one_read_without_the_lane_token(h):
    """Single-end, 3 lanes: one POST of the concatenation, named without the lane token, no R2."""
    files = {f"Gut_S1_L00{lane}_R1_001.fastq": lane_fastq(lane, 1) for lane in (1, 2, 3)}
    lead = h.sample(files, paired=False, name="Gut_S1")
    assert h.drive(lead) == "done"
    [s] = h.sb.samples()
    assert s["filename"] == "Gut_S1_R1_001.fastq" and s.get("paired_end_filename") is None
    assert Path(s["object_path"]).read_bytes() == joined(files, "R1")
    assert h.states(lead) == ["done"] * 3


def test_crash_after_r1_posted_resumes_with_r2_only(sb, tmp_path):
    """kill -9 right after 'posted_r1' is persisted: the next start sends only R2 (counted at the
    sandbox), under the same sample, and confirms it once."""
    h = Harness(sb, tmp_path)
    files = four_lanes()
    lead = h.sample(files)
    crash_after_step(h.store, STEP_POSTED_R1, Crash)
    with pytest.raises(Crash):
        h.drive(lead)
    assert h.store.get(lead).step == STEP_POSTED_R1 and h.posts() == ["Liver_S3_R1_001.fastq"]
    h.store.close()

    again = Harness(sb, tmp_path)          # a new process: the same queue, nothing in memory
    again.store.release_stale_claims()
    assert again.store.get(lead).state == "queued" and again.store.get(lead).step == STEP_POSTED_R1
    assert again.drive(lead) == "done"
    assert again.posts() == ["Liver_S3_R1_001.fastq", "Liver_S3_R2_001.fastq"]
    [s] = sb.samples()
    assert s["state"] == "confirmed" and s["upload_count"] == 1 and s["paired_upload_count"] == 1
    assert Path(s["paired_object_path"]).read_bytes() == joined(files, "R2")
    assert len(again.requests_to("init_upload")) == 1 and len(again.requests_to("confirm_upload")) == 1
    again.store.close()


def test_a_stale_policy_at_posted_r1_starts_the_sample_again(tmp_path):
    """Resumed at 'posted_r1' with a policy too short to outlive the R2's upload: that sample is
    cancelled and a new one gets both reads (the R1 S3 holds belongs to the old sample)."""
    with Sandbox(api_keys=(KEY,), policy_lifetime_s=30) as sb:    # under the 60 s margin: stale at once
        h = Harness(sb, tmp_path)
        lead = h.sample(four_lanes())
        crash_after_step(h.store, STEP_POSTED_R1, Crash)
        with pytest.raises(Crash):
            h.drive(lead)
        h.store.close()
        again = Harness(sb, tmp_path)
        again.store.release_stale_claims()
        assert again.drive(lead) == "done"
        assert [s["state"] for s in sb.samples()] == ["cancelled", "confirmed"]
        assert again.posts() == ["Liver_S3_R1_001.fastq", "Liver_S3_R1_001.fastq", "Liver_S3_R2_001.fastq"]
        again.store.close()


@pytest.mark.parametrize("crash_at,posts_before", [("initialized", []),
                                               ("posted", ["Liver_S3_R1_001.fastq", "Liver_S3_R2_001.fastq"])])
def test_crash_at_the_other_steps_resumes_without_a_second_sample(sb, tmp_path, crash_at, posts_before):
    """kill -9 right after 'initialized' (resume: both POSTs to the same sample) or 'posted' (resume:
    confirm only): one sample, one init, each read stored once, confirmed once."""
    h = Harness(sb, tmp_path)
    lead = h.sample(four_lanes())
    save_init, save_posted = h.store.save_init, h.store.save_posted

    def crash_init(*args: Any, **kwargs: Any) -> None:
        save_init(*args, **kwargs)
        if crash_at == "initialized":
            raise Crash()

    def crash_posted(file_id: int, md5: str, *, step: str = "posted") -> None:
        save_posted(file_id, md5, step=step)
        if crash_at == step:
            raise Crash()

    h.store.save_init, h.store.save_posted = crash_init, crash_posted
    with pytest.raises(Crash):
        h.drive(lead)
    assert h.store.get(lead).step == crash_at and h.posts() == posts_before
    h.store.close()
    again = Harness(sb, tmp_path)
    again.store.release_stale_claims()
    assert again.drive(lead) == "done"
    assert again.posts() == ["Liver_S3_R1_001.fastq", "Liver_S3_R2_001.fastq"]
    assert len(again.requests_to("init_upload")) == 1 and len(again.requests_to("confirm_upload")) == 1
    assert [s["state"] for s in sb.samples()] == ["confirmed"]
    again.store.close()


def test_policy_expired_between_the_posts_starts_the_sample_again(h):
    """S3 refuses the R2 for an expired policy: that sample is cancelled, a new one is initialised and
    both reads are sent again; only the new one is confirmed."""
    h.sb.add_fault(Fault("s3", "status", status=403, code="AccessDenied",
                         message="Invalid according to Policy: Policy expired.", after=1))
    lead = h.sample(four_lanes())
    assert h.drive(lead) == "done"
    assert [s["state"] for s in h.sb.samples()] == ["cancelled", "confirmed"]
    assert h.posts() == ["Liver_S3_R1_001.fastq", "Liver_S3_R1_001.fastq", "Liver_S3_R2_001.fastq"]


@pytest.mark.parametrize("child", [False, True], ids=["in_process", "child_validator"])
def test_r2_cut_at_a_record_boundary_is_rejected_with_both_counts(h, child):
    """An R2 lane missing its last record (valid FASTQ on its own): rejected with both counts, nothing
    confirmed, the sample cancelled; in process and through the validator child."""
    if child:
        h.pipeline.samples.child_validation_bytes = 1
    cut = lane_fastq(3, 2)
    cut = cut[:cut.rindex(b"@run:3:")]
    lead = h.sample(four_lanes(r2={3: cut}))
    assert h.drive(lead) == "rejected"
    error = h.store.get(lead).error
    assert "not mates" in error and "200 records" in error and "199" in error, error
    assert not h.requests_to("confirm_upload")
    assert [s["state"] for s in h.sb.samples()] == ["cancelled"]
    assert h.states(lead) == ["rejected"] * 8


def test_renamed_read_names_the_first_differing_record(h):
    """Same counts, one read renamed in R2's lane 1: the message places the first difference."""
    r2 = lane_fastq(1, 2).replace(b"@run:1:7 ", b"@other:1:7 ")
    lead = h.sample(four_lanes(r2={1: r2}))
    assert h.drive(lead) == "rejected"
    error = h.store.get(lead).error
    assert "both have 200 records" in error and "#8" in error and "other:1:7" in error, error


def test_valid_pair_passes_through_the_validator_child(h):
    """The child validator (--pair-digest over the lanes as one stream) lets a true pair through."""
    h.pipeline.samples.child_validation_bytes = 1
    lead = h.sample(four_lanes(compress=True))
    assert h.drive(lead) == "done"
    assert [s["state"] for s in h.sb.samples()] == ["confirmed"]


def test_lane_md5s_come_from_the_validator_child(h):
    """Through the validator child the sending process hashes each read once; every lane file's MD5
    (the audit journal's) is still its own, from the child."""
    h.pipeline.samples.child_validation_bytes = 1
    files = four_lanes()
    lead = h.sample(files)
    assert h.drive(lead) == "done"
    by_name = {os.path.basename(f.path): f.md5 for f in h.store.sample_of(lead).files}
    assert by_name == {name: hashlib.md5(data).hexdigest() for name, data in files.items()}


@pytest.mark.parametrize("child", [False, True], ids=["in-process", "child"])
@pytest.mark.parametrize("edge", ["at-a-block-edge", "inside-a-block", "with-the-next-lane"])
def test_first_lane_md5_is_the_reads_md5_at_its_end(h, child, edge):
    """The first lane's MD5 is taken from the read's running MD5 after that lane's bytes (nobody hashes
    them twice): right whether the lane ends at a block's edge, inside a block, or inside the block that
    also holds the next lane."""
    files = four_lanes()
    first = len(files["Liver_S3_L001_R1_001.fastq"])
    h.pipeline.samples.block_size = {"at-a-block-edge": first, "inside-a-block": first // 2 + 7,
                                     "with-the-next-lane": first * 3}[edge]
    if child:
        h.pipeline.samples.child_validation_bytes = 1
    lead = h.sample(files)
    assert h.drive(lead) == "done"
    by_name = {os.path.basename(f.path): f.md5 for f in h.store.sample_of(lead).files}
    assert by_name == {name: hashlib.md5(data).hexdigest() for name, data in files.items()}


def test_plain_lane_without_final_newline_is_rejected_naming_it(h):
    """A plain lane (not the last) without its final newline cannot be joined: rejected naming the
    file, before anything is sent."""
    files = four_lanes()
    files["Liver_S3_L002_R1_001.fastq"] = files["Liver_S3_L002_R1_001.fastq"].rstrip(b"\n")
    lead = h.sample(files)
    assert h.drive(lead) == "rejected"
    assert "Liver_S3_L002_R1_001.fastq does not end with a newline" in h.store.get(lead).error
    assert not h.sb.requests()


def test_mixed_compression_is_rejected(h):
    files = four_lanes()
    files["Liver_S3_L004_R2_001.fastq"] = gzip.compress(files["Liver_S3_L004_R2_001.fastq"])
    lead = h.sample(files)
    assert h.drive(lead) == "rejected"
    assert "must share one compression" in h.store.get(lead).error and not h.sb.requests()


def test_member_deleted_mid_upload_vanishes_the_sample(h):
    """An R2 lane deleted after R1 was posted: the sample vanishes, its One Codex sample is cancelled,
    nothing is confirmed."""
    lead = h.sample(four_lanes())
    real = h.store.save_posted

    def delete_r2_lane(file_id: int, md5: str, *, step: str = "posted") -> None:
        real(file_id, md5, step=step)
        if step == STEP_POSTED_R1:
            (h.tmp / "watch" / "Liver_S3_L003_R2_001.fastq").unlink()

    h.store.save_posted = delete_r2_lane
    assert h.drive(lead) == "vanished"
    assert "deleted" in h.store.get(lead).error
    assert h.states(lead) == ["vanished"] * 8
    assert not h.requests_to("confirm_upload") and [s["state"] for s in h.sb.samples()] == ["cancelled"]


def test_member_grown_after_admission_vanishes_before_its_bytes_are_sent(sb, tmp_path):
    """A lane appended to between the checks and the POST: vanished, no POST of that read, nothing
    confirmed (the planner runs between the two, so it does the appending here)."""
    def plan(sample, row):
        with open(tmp_path / "watch" / "Liver_S3_L002_R1_001.fastq", "ab") as f:
            f.write(lane_fastq(9, 1, n=1))
        return {}, None

    h = Harness(sb, tmp_path, plan=plan)
    lead = h.sample(four_lanes())
    assert h.drive(lead) == "vanished"
    assert "Liver_S3_L002_R1_001.fastq changed" in h.store.get(lead).error
    assert h.posts() == [] and [s["state"] for s in sb.samples()] == ["cancelled"]
    h.store.close()


class SampleTaker:
    """Stands for the multipart route's send_sample (helper mpair's branch): records what it is given."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, dict]] = []

    def send_sample(self, row, sample, log, progress, *, landing):
        self.calls.append((row.id, sample.id, landing()))
        return "done"


def test_reads_over_the_threshold_go_to_the_multipart_routes_send_sample(sb, tmp_path):
    """Over the threshold: admitted here (a lane that cannot be joined is rejected first), then handed
    to send_sample with the landing fields; nothing sent on the standard route."""
    h = Harness(sb, tmp_path, multipart_threshold_bytes=1000,
                plan=lambda sample, row: ({"tags": [{"name": "big"}]}, None))
    h.pipeline.samples.multipart = taker = SampleTaker()
    lead = h.sample(four_lanes())
    assert h.drive(lead) == "done"
    assert taker.calls == [(lead, h.store.sample_of(lead).id, {"tags": [{"name": "big"}]})]
    assert not sb.requests()
    files = {f"Gut_S1_L00{n}_R1_001.fastq": lane_fastq(n, 1).rstrip(b"\n") for n in (1, 2)}
    bad = h.sample(files, paired=False, name="Gut_S1")
    assert h.drive(bad) == "rejected" and len(taker.calls) == 1
    h.store.close()


def test_landing_plan_is_sent_and_recorded(sb, tmp_path):
    """The planner's fields go into init_upload; its record is kept on the sample."""
    seen = []

    def plan(sample, row):
        seen.append((sample.name if sample else None, row.path))
        return {"tags": [{"name": "run1"}]}, {"project": None, "project_name": None, "tags": ["run1"],
                                              "metadata": {}, "omitted": []}

    h = Harness(sb, tmp_path, plan=plan)
    lead = h.sample(four_lanes())
    assert h.drive(lead) == "done"
    assert seen and seen[0][0] == "Liver_S3"
    assert h.store.sample_of(lead).landing["tags"] == ["run1"]
    assert h.store.sample_of(lead).public()["tags"] == ["run1"]
    h.store.close()


def test_without_validation_a_pair_still_goes_as_one_sample(sb, tmp_path):
    """validate=False (benchmarks): no validator and so no pair check, but the same two POSTs."""
    h = Harness(sb, tmp_path, validate=False)
    files = four_lanes()
    lead = h.sample(files)
    assert h.drive(lead) == "done"
    [s] = sb.samples()
    assert Path(s["paired_object_path"]).read_bytes() == joined(files, "R2")
    h.store.close()


def test_a_file_without_a_sample_is_planned_as_a_one_file_sample(sb, tmp_path):
    """The planner is asked for a lone file too (sample None); its fields reach init_upload."""
    calls = []

    def plan(sample, row):
        calls.append(sample)
        return {"tags": [{"name": "lone"}]}, None

    h = Harness(sb, tmp_path, plan=plan)
    file_id = h.queue(h.file("lone.fastq", lane_fastq(1, 1)))
    assert h.drive(file_id) == "done"
    assert calls == [None]
    init = h.requests_to("init_upload")
    assert len(init) == 1 and [s["state"] for s in sb.samples()] == ["confirmed"]
    [s] = sb.samples()
    assert len(s["tags"]) == 1, s
    h.store.close()


def test_a_one_file_sample_takes_the_file_route(h):
    """A sample of one member is uploaded exactly as a file: its own name, no paired fields."""
    lead = h.sample({"Solo_S9_L001_R1_001.fastq": lane_fastq(1, 1)}, paired=False, name="Solo_S9")
    assert h.drive(lead) == "done"
    [s] = h.sb.samples()
    assert s["filename"] == "Solo_S9_L001_R1_001.fastq" and s.get("paired_end_filename") is None


# -- the S3 step against moto's server (a server we did not write) -------------------------------

class MotoClient(OneCodexClient):
    """The real S3 POST; init/confirm/cancel answered here with moto's presigned POST forms."""

    def __init__(self, endpoint: str) -> None:
        super().__init__("http://127.0.0.1:1", "unused")
        self.s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                               aws_access_key_id="testing", aws_secret_access_key="testing")
        self.s3.create_bucket(Bucket="seqdrop-paired")
        self.calls: list[tuple[str, Any]] = []

    def _form(self, prefix: str) -> tuple[str, tuple[tuple[str, str], ...]]:
        post = self.s3.generate_presigned_post("seqdrop-paired", prefix + "${filename}",
                                               Conditions=[["starts-with", "$key", prefix]])
        return post["url"], tuple(post["fields"].items())

    def init_upload(self, filename, size, *, paired_end_filename=None, extra=None):
        self.calls.append(("init", (filename, paired_end_filename)))
        url, fields = self._form("user_1/file_0123456789abcdef/")
        r2_url, r2_fields = self._form("user_1/file_0123456789abcdef_paired_end/")
        return InitResult("0123456789abcdef", url, fields, None, r2_url, r2_fields)

    def confirm_upload(self, sample_id):
        self.calls.append(("confirm", sample_id))
        return {}

    def cancel_upload(self, sample_id):
        self.calls.append(("cancel", sample_id))


def test_paired_lanes_reach_moto_byte_for_byte(tmp_path):
    """Both reads' POSTs against moto's S3 (no ETag in its answer: allow_missing_etag, as rehearsals
    do): the objects are the lane concatenations under the lane-free names; one confirm."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)   # port 0: no race for it
    server.start()
    port = server.get_host_and_port()[1]
    try:
        client = MotoClient(f"http://127.0.0.1:{port}")
        h = Harness.__new__(Harness)
        h.sb, h.tmp = None, tmp_path
        h.store = SqliteStore(str(tmp_path / "queue.sqlite3"))
        h.pipeline = Pipeline(store=h.store, client=client, log=structlog.get_logger(), block_size=16 * 1024,
                              allow_missing_etag=True)
        files = four_lanes(compress=True)
        lead = h.sample(files)
        assert h.drive(lead) == "done"
        get = client.s3.get_object
        r1 = get(Bucket="seqdrop-paired", Key="user_1/file_0123456789abcdef/Liver_S3_R1_001.fastq.gz")
        r2 = get(Bucket="seqdrop-paired", Key="user_1/file_0123456789abcdef_paired_end/Liver_S3_R2_001.fastq.gz")
        assert r1["Body"].read() == joined(files, "R1") and r2["Body"].read() == joined(files, "R2")
        assert [c for c, _ in client.calls] == ["init", "confirm"]
        h.store.close()
    finally:
        server.stop()


# -- the pieces: the validator's text hook, the child's --pair-digest, per-lane MD5s ---------------

def test_validator_hands_the_decompressed_text_to_on_text():
    """StreamValidator(on_text=...) sees exactly the decompressed text, in order, however fed."""
    text = lane_fastq(1, 1) + lane_fastq(2, 1)
    raw = gzip.compress(lane_fastq(1, 1)) + gzip.compress(lane_fastq(2, 1))
    seen: list[bytes] = []
    v = StreamValidator("x.fastq.gz", on_text=seen.append)
    for i in range(0, len(raw), 777):
        v.feed(raw[i:i + 777])
    assert v.finish().records == 100 and b"".join(seen) == text


def test_child_validates_lanes_as_one_read_and_returns_the_name_digest(tmp_path):
    """`python -m daemon.checks.child --json --pair-digest LANE...`: one verdict for the joined lanes,
    its digest the same as a whole-file digest of their concatenation; a missing lane is an io_error."""
    lanes = []
    for lane in (1, 2):
        lanes.append(tmp_path / f"A_L00{lane}_R1.fastq.gz")
        lanes[-1].write_bytes(gzip.compress(lane_fastq(lane, 1)))
    whole = tmp_path / "whole.fastq.gz"
    whole.write_bytes(b"".join(p.read_bytes() for p in lanes))
    run = subprocess.run([sys.executable, "-m", "daemon.checks.child", "--json", "--pair-digest", *map(str, lanes)],
                         capture_output=True, text=True, timeout=60, check=False)
    verdict = json.loads(run.stdout)
    assert run.returncode == 0 and verdict["ok"] and verdict["records"] == 100
    assert verdict["raw_bytes"] == whole.stat().st_size
    digest, expected = digest_from_json(verdict["pair_digest"]), digest_path(whole)
    assert (digest.records, digest.digest, digest.first_names) == (expected.records, expected.digest,
                                                                   expected.first_names)
    gone = subprocess.run([sys.executable, "-m", "daemon.checks.child", "--json", str(lanes[0]),
                           str(tmp_path / "missing.fastq.gz")], capture_output=True, text=True, timeout=60, check=False)
    assert gone.returncode == 1 and json.loads(gone.stdout)["io_error"] is True


def test_lane_stream_keeps_one_md5_per_member(tmp_path):
    paths = []
    for lane in (1, 2, 3):
        paths.append(tmp_path / f"L{lane}.fastq")
        paths[-1].write_bytes(lane_fastq(lane, 1))
    with LaneStream([str(p) for p in paths], whole_md5=False, member_md5s=True) as stream:
        while stream.read(1000):
            pass
    assert stream.member_md5s == tuple(hashlib.md5(p.read_bytes()).hexdigest() for p in paths)
    with pytest.raises(ValueError):
        _ = stream.md5
