"""Samples of several files over the multipart threshold (issue 11): each read's lane files sent as one
S3 multipart object, a pair as the official client sends it (one init with paired_end_filename, the R2
to paired_end_file_id first, then the R1, one callback), against the sandbox's API and moto's S3.

The threshold is lowered and the part size is moto's minimum (5 MiB), so reads of 7 MiB in two lanes go
in two parts, the first spanning both lanes. SamplePipeline below sends every sample of several files
to MultipartRoute.send_sample directly (the sample route's own dispatch is tested in test_sample_route).
R2 lanes are made the mates of the R1 lanes (mate_of): the pair check runs on this route too.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
import structlog
from harness import API_KEY, PipelineDriver, crash_after_step, fastq_bytes
from test_multipart import Moto

from daemon.errors import FileChanged, Permanent, PolicyExpired, Transient
from daemon.queue.base import STEP_MP_R2_COMPLETE, Identity
from daemon.queue.sqlite import SqliteStore
from daemon.sandbox import Sandbox
from daemon.upload import retrying
from daemon.upload.client import OneCodexClient
from daemon.upload.pipeline import Pipeline
from daemon.upload.s3multipart import Members, MiB, RangeReader, S3Connector, S3Upload

THRESHOLD = 1 * MiB
PART = 5 * MiB
LANE = int(3.5 * MiB)
R1_NAME, R2_NAME = "Liver_S3_R1_001.fastq", "Liver_S3_R2_001.fastq"


@pytest.fixture(autouse=True)
def no_waits():
    retrying.set_waits(False)
    yield
    retrying.set_waits(True)


@pytest.fixture
def moto():
    m = Moto()
    m.start()
    yield m
    requests.post(f"{m.endpoint}/moto-api/reset", timeout=10)   # moto's memory is per process
    m.stop()


@pytest.fixture
def sb(moto):
    with Sandbox(api_keys=(API_KEY,), multipart_s3_endpoint=moto.endpoint,
                 multipart_bucket=f"seqdrop-mp-{secrets.token_hex(4)}") as sandbox:
        yield sandbox


class Crash(BaseException):
    """Stands for kill -9: nothing in the pipeline catches it."""


class SamplePipeline(Pipeline):
    """main's Pipeline plus the one dispatch the sample route makes: a lead of several files goes to
    the multipart route (its reads are all over the lowered threshold)."""

    def _process(self, row: Any, log: Any, progress: Any) -> str:
        sample = self.steps.store.sample_of(row.id)
        if sample is not None and len(sample.files) > 1:
            return self.multipart.send_sample(row, sample, log, progress)
        return super()._process(row, log, progress)


class RecordingConnector(S3Connector):
    """Clients that note each S3 call they make (operation, key), in order, across clients."""

    def __init__(self, calls: list[tuple[str, str]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.calls = calls

    def client(self, credentials: Any) -> Any:
        c = super().client(credentials)

        def note(params: dict, model: Any, **_: Any) -> None:
            self.calls.append((model.name, params.get("Key", "")))
        c.meta.events.register("before-parameter-build.s3", note)
        return c


class Harness(PipelineDriver):
    def __init__(self, sb: Sandbox, moto: Moto, tmp: Path, **overrides: Any) -> None:
        self.sb, self.moto, self.tmp = sb, moto, tmp
        self.bucket = sb.multipart_s3.bucket
        self.store = SqliteStore(str(tmp / "queue.sqlite3"))
        self.client = OneCodexClient(sb.api_url, API_KEY, connect_timeout_s=2, read_timeout_s=10)
        self.s3_calls: list[tuple[str, str]] = []
        connector = RecordingConnector(self.s3_calls, endpoint_url=moto.endpoint, region="us-east-1")
        self.pipeline = SamplePipeline(**{
            "store": self.store, "client": self.client, "log": structlog.get_logger(), "block_size": 64 * 1024,
            "multipart_threshold_bytes": THRESHOLD, "part_size_bytes": PART, "s3_connector": connector,
            **overrides})

    def close(self) -> None:
        self.pipeline.close()
        self.store.close()

    def sample(self, files: dict[str, bytes], *, paired: bool = True) -> int:
        """Write the files, record them as one sample (R1 lanes first, in lane order); the lead's id."""
        members = []
        for name, data in files.items():
            path = self.file(name, data)
            file_id = self.store.add_seen(str(path), Identity.of(os.stat(path)))
            role = "R2" if "_R2_" in name else "R1" if paired else "single"
            members.append((file_id, role, int(name.split("_L00")[1][0])))
        members.sort(key=lambda m: (m[1] == "R2", m[2]))
        assert self.store.add_sample(key=f"{self.tmp}:Liver_S3", folder=str(self.tmp / "watch"), name="Liver_S3",
                                     run=None, paired=paired, files=members) is not None
        return members[0][0]

    def samples(self) -> dict[str, dict]:
        return {s["sample_id"]: s for s in self.sb.samples()}

    def callbacks(self) -> list[dict]:
        return [r for r in self.requests_to("multipart_callback") if r["status"] == 200]

    def reads_in_order(self) -> list[str]:
        """Which read each UploadPart/CompleteMultipartUpload went to, in order (R1 or R2 by key)."""
        return ["R2" if "_paired_end/" in key else "R1" for op, key in self.s3_calls
                if op in ("UploadPart", "CompleteMultipartUpload")]


@pytest.fixture
def h(sb, moto, tmp_path):
    harness = Harness(sb, moto, tmp_path)
    yield harness
    harness.close()


def mate_of(r1: bytes) -> bytes:
    """The R2 of an R1 (harness's four-line records): the same read names, each with a trailing /2 (the
    pair check drops it), the sequences complemented, so that R2's bytes differ from R1's."""
    lines = r1.split(b"\n")
    for i in range(0, len(lines) - 1, 4):
        lines[i] += b"/2"
        lines[i + 1] = lines[i + 1].translate(COMPLEMENT)
    return b"\n".join(lines)


COMPLEMENT = bytes.maketrans(b"ACGT", b"TGCA")


def two_lane_pair(*, gz: bool = False, spoil: Callable[[int, bytes], bytes] | None = None) -> dict[str, bytes]:
    """R1 and R2 in two lanes each, mates unless spoil(lane, R2 lane text) makes them not. gz: each lane a
    gzip file (stored blocks, about as large as the text, so a read still spans two parts)."""
    files = {}
    for lane in (1, 2):
        r1 = fastq_bytes(LANE, seed=10 + lane)
        r2 = mate_of(r1) if spoil is None else spoil(lane, mate_of(r1))
        for read, data in ((1, r1), (2, r2)):
            name = f"Liver_S3_L00{lane}_R{read}_001.fastq"
            files[name + ".gz" if gz else name] = gzip.compress(data, compresslevel=0, mtime=0) if gz else data
    return files


def joined(files: dict[str, bytes], read: str) -> bytes:
    return b"".join(data for name, data in sorted(files.items()) if f"_{read}_" in name)


# -- the route end to end ------------------------------------------------------------------------

def test_paired_lanes_over_the_threshold_are_one_sample_of_two_objects(h):
    """One init naming both reads (lane tokens removed), the R2's parts and completion before any of the
    R1's, one callback; moto holds each read's lane concatenation byte for byte; the queue keeps each
    member's MD5; GET /api/v1/samples/{id} shows the pair."""
    files = two_lane_pair()
    lead = h.sample(files)
    assert h.drive(lead) == "done"
    [s] = h.samples().values()
    assert s["state"] == "confirmed" and s["route"] == "multipart"
    assert (s["filename"], s["paired_end_filename"]) == (R1_NAME, R2_NAME)
    assert h.moto.object(h.bucket, s["key"]) == joined(files, "R1")
    assert h.moto.object(h.bucket, s["paired_key"]) == joined(files, "R2")
    assert (s["size"], s["paired_size"]) == (len(joined(files, "R1")), len(joined(files, "R2")))
    assert s["etag"].endswith("-2")                  # 7 MiB in 5 MiB parts
    order = h.reads_in_order()
    assert order == ["R2"] * 3 + ["R1"] * 3          # two parts and the completion each, R2 first
    assert len(h.requests_to("init_multipart_upload")) == 1 and len(h.callbacks()) == 1
    assert not h.moto.open_uploads(h.bucket)
    members = {Path(f.path).name: f for f in h.store.sample_of(lead).files}
    assert {n: f.md5 for n, f in members.items()} == {n: hashlib.md5(d).hexdigest() for n, d in files.items()}
    assert {f.state for f in members.values()} == {"done"} and {f.sample_id for f in members.values()} == {
        s["sample_id"]}
    shown = requests.get(f"{h.sb.api_url}/api/v1/samples/{s['sample_id']}", auth=(API_KEY, ""), timeout=10).json()
    assert (shown["paired_end_filename"], shown["paired_end_size"]) == (R2_NAME, s["paired_size"])


def test_single_end_lanes_over_the_threshold_are_one_object(h):
    """Lanes of a single-end read: one init without paired_end_filename, one object, one callback."""
    files = {f"Liver_S3_L00{lane}_R1_001.fastq": fastq_bytes(LANE, seed=lane) for lane in (1, 2)}
    lead = h.sample(files, paired=False)
    assert h.drive(lead) == "done"
    [s] = h.samples().values()
    assert s["filename"] == R1_NAME and s.get("paired_end_filename") is None
    assert h.moto.keys(h.bucket) == [s["key"]] and h.moto.object(h.bucket, s["key"]) == joined(files, "R1")
    assert len(h.callbacks()) == 1 and h.reads_in_order() == ["R1"] * 3


# -- resuming --------------------------------------------------------------------------------------

def test_crash_after_r2_completed_cancels_and_starts_again_in_a_new_process(sb, moto, tmp_path):
    """kill -9 right after 'mp_r2_complete' is persisted: the new process has no credentials for the R1
    of that sample, so it cancels it and sends both reads again under a new one, R2 first; one
    callback, for the new sample, whose objects are the lane concatenations."""
    h = Harness(sb, moto, tmp_path)
    files = two_lane_pair()
    lead = h.sample(files)
    crash_after_step(h.store, STEP_MP_R2_COMPLETE, Crash)
    with pytest.raises(Crash):
        h.drive(lead)
    first = h.store.get(lead)
    r2_first_lane = next(data for name, data in sorted(files.items()) if "_R2_" in name)
    assert first.step == STEP_MP_R2_COMPLETE and first.md5 == hashlib.md5(r2_first_lane).hexdigest()
    assert "R1" not in h.reads_in_order() and not h.requests_to("multipart_callback")
    begun = h.samples()[first.sample_id]            # the step stores both keys, never the credentials
    assert begun["key"] in first.init and begun["paired_key"] in first.init
    assert begun["upload_aws_secret_access_key"] not in first.init and begun["upload_aws_access_key_id"] not in \
        first.init
    h.close()

    again = Harness(sb, moto, tmp_path)          # a new process: the same queue, nothing in memory
    again.store.release_stale_claims()
    assert again.drive(lead) == "done"
    states = {sid: s["state"] for sid, s in again.samples().items()}
    assert sorted(states.values()) == ["cancelled", "confirmed"] and states[first.sample_id] == "cancelled"
    done = again.samples()[again.store.get(lead).sample_id]
    assert again.moto.object(again.bucket, done["key"]) == joined(files, "R1")
    assert again.moto.object(again.bucket, done["paired_key"]) == joined(files, "R2")
    assert again.reads_in_order() == ["R2"] * 3 + ["R1"] * 3
    assert len(again.requests_to("init_multipart_upload")) == 2 and len(again.callbacks()) == 1
    again.close()


def test_s3_failing_during_the_r1_resumes_at_its_next_part_in_the_same_process(h, monkeypatch):
    """S3 refuses the R1's second part through every retry of an attempt: the sample waits at
    'mp_r2_complete' and the next attempt sends only that part on, under the same sample."""
    real, failed = S3Upload.send_part, []

    def flaky(self, **kwargs):
        if "_paired_end/" not in self.key and len(self.etags) == 1 and len(failed) < 10:
            failed.append(1)
            raise Transient("S3 UploadPart 2/2: HTTP 503 SlowDown", reason="http_503")
        return real(self, **kwargs)

    monkeypatch.setattr(S3Upload, "send_part", flaky)
    files = two_lane_pair()
    lead = h.sample(files)
    assert h.drive(lead, rounds=1) == "queued"
    assert h.store.get(lead).step == STEP_MP_R2_COMPLETE
    assert h.drive(lead, rounds=3) == "done"
    assert len(h.requests_to("init_multipart_upload")) == 1 and len(h.callbacks()) == 1
    assert [op for op, _ in h.s3_calls].count("UploadPart") == 4     # no part sent twice
    [s] = h.samples().values()
    assert h.moto.object(h.bucket, s["key"]) == joined(files, "R1")


def test_credentials_refused_during_the_r1_start_a_new_sample_r2_first(h, monkeypatch):
    """S3 refuses the credentials once the R2 is complete: that sample is cancelled (its R2 orphaned) and a
    new one sends both reads again, R2 first, with one callback."""
    real, refused = S3Upload.send_part, []

    def expiring(self, **kwargs):
        if "_paired_end/" not in self.key and not refused:
            refused.append(self.key)
            raise PolicyExpired("S3 UploadPart 1/2: HTTP 403 ExpiredToken")
        return real(self, **kwargs)

    monkeypatch.setattr(S3Upload, "send_part", expiring)
    files = two_lane_pair()
    lead = h.sample(files)
    assert h.drive(lead) == "done"
    assert sorted(s["state"] for s in h.samples().values()) == ["cancelled", "confirmed"]
    assert h.reads_in_order() == ["R2"] * 3 + ["R2"] * 3 + ["R1"] * 3
    done = h.samples()[h.store.get(lead).sample_id]
    assert h.moto.object(h.bucket, done["key"]) == joined(files, "R1") and len(h.callbacks()) == 1
    assert not h.moto.open_uploads(h.bucket)


# -- never call back what is not the bytes queued --------------------------------------------------

@pytest.mark.parametrize("lane,after_mib,how", [("Liver_S3_L002_R2_001.fastq", 5, "rewritten"),
                                                ("Liver_S3_L001_R1_001.fastq", 12, "rewritten"),
                                                ("Liver_S3_L002_R1_001.fastq", 12, "truncated")])
def test_member_changed_mid_upload_vanishes_the_sample(h, lane, after_mib, how):
    """A lane rewritten or cut while its read (the R2, or the R1 once the R2 is complete) is sent: the
    sample is vanished, nothing is called back, the open multipart upload aborted, the sample cancelled."""
    files = two_lane_pair()
    lead = h.sample(files)
    path, sent = h.tmp / "watch" / lane, [0]

    def change(n: int) -> None:
        sent[0] += n
        if sent[0] >= after_mib * MiB > sent[0] - n:
            if how == "truncated":
                os.truncate(path, LANE // 2)
            else:
                with open(path, "r+b") as f:
                    f.write(b"@changed")

    assert h.drive(lead, progress=change) == "vanished"
    assert {f.state for f in h.store.sample_of(lead).files} == {"vanished"}
    assert not h.requests_to("multipart_callback")
    assert [s["state"] for s in h.samples().values()] == ["cancelled"]
    assert not h.moto.open_uploads(h.bucket)


def test_invalid_lane_is_rejected_before_its_read_completes(h):
    """A lane the validator refuses (a space in a sequence): rejected naming its read (the lanes are
    validated as one stream, as on the standard route) and the record, cancelled, no callback."""
    files = two_lane_pair()
    bad = bytearray(files["Liver_S3_L002_R2_001.fastq"])
    bad[bad.index(b"\n+\n", LANE // 2) - 3] = ord(" ")
    files["Liver_S3_L002_R2_001.fastq"] = bytes(bad)
    lead = h.sample(files)
    assert h.drive(lead) == "rejected"
    error = h.store.get(lead).error
    assert error.startswith("Liver_S3_L001_R2_001.fastq (+1 more lane files, read as one): record ")
    assert "contains a space" in error
    assert [s["state"] for s in h.samples().values()] == ["cancelled"]
    assert not h.requests_to("multipart_callback") and not h.moto.open_uploads(h.bucket)
    assert not h.moto.keys(h.bucket)


# -- the pair check (design.md, "Pair check") ------------------------------------------------------

RENAMED_RECORD = 2000     # in the R2's second lane: past the first 1,000 names, placed by checkpoints
CUT_RECORDS = 10


def renamed(lane: int, r2: bytes) -> bytes:
    """One read of the R2's second lane renamed (still valid FASTQ)."""
    if lane != 2:
        return r2
    lines = r2.split(b"\n")
    lines[4 * RENAMED_RECORD] = b"@renamed_read/2"
    return b"\n".join(lines)


def cut(lane: int, r2: bytes) -> bytes:
    """The R2's second lane without its last records, cut at a record boundary (valid on its own)."""
    return r2 if lane != 2 else b"\n".join(r2.split(b"\n")[:-1 - 4 * CUT_RECORDS]) + b"\n"


def other_library(lane: int, r2: bytes) -> bytes:
    """An R2 from another library: as many records, other names."""
    return mate_of(fastq_bytes(LANE, seed=90 + lane))


def r1_records() -> int:
    return sum(fastq_bytes(LANE, seed=10 + lane).count(b"\n") // 4 for lane in (1, 2))


def expected_words(how: str) -> str:
    n = r1_records()
    return {"renamed": f"both have {n:,} records; the first differing record is between #",
            "cut": f"has {n:,} records and Liver_S3_L001_R2_001.fastq",
            "other_library": f"both have {n:,} records; the first differing record is #1 ("}[how]


def assert_rejected_as_not_mates(h: Harness, lead: int, how: str) -> None:
    """Rejected with the standard route's words and the counts; every member rejected; nothing called
    back; the sample cancelled; the R1's object never completed (only the R2's, orphaned)."""
    error = h.store.get(lead).error
    assert error.startswith("R1 and R2 are not mates: ") and expected_words(how) in error
    if how == "cut":
        assert f"(+1 more lane files, read as one) has {r1_records() - CUT_RECORDS:,}; " in error
    assert {f.state for f in h.store.sample_of(lead).files} == {"rejected"}
    assert not h.requests_to("multipart_callback")
    assert {s["state"] for s in h.samples().values()} == {"cancelled"}
    assert not h.moto.open_uploads(h.bucket)
    assert all("_paired_end/" in key for key in h.moto.keys(h.bucket))


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
@pytest.mark.parametrize("how", ["renamed", "cut", "other_library"])
def test_r2_not_the_mate_of_r1_is_rejected_with_counts_before_the_callback(h, how, gz):
    """An R2 with one read renamed, cut at a record boundary, or from another library: the R1's
    validation finds it before the R1's object is completed; rejected with the counts, no callback."""
    lead = h.sample(two_lane_pair(gz=gz, spoil={"renamed": renamed, "cut": cut,
                                                "other_library": other_library}[how]))
    assert h.drive(lead) == "rejected"
    assert_rejected_as_not_mates(h, lead, how)
    assert h.reads_in_order() == ["R2"] * 3 + ["R1"] * 2          # the R1's parts sent, never completed
    assert len(h.requests_to("init_multipart_upload")) == 1      # rejected for good: no second sample


def test_valid_gz_pair_passes_the_check(h):
    """Mates in gzip lanes (the plain pair is the first test): confirmed, each object its lanes joined."""
    files = two_lane_pair(gz=True)
    lead = h.sample(files)
    assert h.drive(lead) == "done"
    [s] = h.samples().values()
    assert s["state"] == "confirmed" and len(h.callbacks()) == 1
    assert (s["filename"], s["paired_end_filename"]) == (R1_NAME + ".gz", R2_NAME + ".gz")
    assert h.moto.object(h.bucket, s["key"]) == joined(files, "R1")
    assert h.moto.object(h.bucket, s["paired_key"]) == joined(files, "R2")


def test_mismatch_is_found_after_a_restart_at_r2_complete(sb, moto, tmp_path):
    """kill -9 right after 'mp_r2_complete' with a renamed read in the R2: the new process sends the R2
    again under a new sample (its digest, never persisted, is computed again in that pass) and
    rejects the pair at the R1; both samples cancelled, nothing called back."""
    h = Harness(sb, moto, tmp_path)
    lead = h.sample(two_lane_pair(spoil=renamed))
    crash_after_step(h.store, STEP_MP_R2_COMPLETE, Crash)
    with pytest.raises(Crash):
        h.drive(lead)
    assert h.store.get(lead).step == STEP_MP_R2_COMPLETE
    h.close()

    again = Harness(sb, moto, tmp_path)          # a new process: the same queue, nothing in memory
    again.store.release_stale_claims()
    try:
        assert again.drive(lead) == "rejected"
        assert_rejected_as_not_mates(again, lead, "renamed")
        assert len(again.samples()) == 2 and again.reads_in_order() == ["R2"] * 3 + ["R1"] * 2
    finally:
        again.close()


@pytest.mark.parametrize("digest_kept", [True, False], ids=["digest_kept", "digest_recomputed"])
def test_mismatch_is_found_when_the_r1_resumes_in_the_same_process(h, monkeypatch, digest_kept):
    """S3 fails the R1's second part through an attempt (the sample waits at 'mp_r2_complete'); the next
    attempt sends only the rest of the R1 and still rejects the pair, with the R2's digest kept in
    memory or, if it is missing, computed again from the R2's files (the R2 is never sent again)."""
    real, failed = S3Upload.send_part, []

    def flaky(self, **kwargs):
        if "_paired_end/" not in self.key and len(self.etags) == 1 and len(failed) < 10:
            failed.append(1)
            raise Transient("S3 UploadPart 2/2: HTTP 503 SlowDown", reason="http_503")
        return real(self, **kwargs)

    monkeypatch.setattr(S3Upload, "send_part", flaky)
    lead = h.sample(two_lane_pair(spoil=renamed))
    assert h.drive(lead, rounds=1) == "queued"
    assert h.store.get(lead).step == STEP_MP_R2_COMPLETE
    if not digest_kept:
        # The fallback no path reaches today: the kept job's R2 without its digest.
        h.pipeline.multipart._jobs[lead].legs[0].digest = None
    assert h.drive(lead, rounds=3) == "rejected"
    assert_rejected_as_not_mates(h, lead, "renamed")
    assert h.reads_in_order().count("R2") == 3 and len(h.requests_to("init_multipart_upload")) == 1


# -- the sandbox's paired multipart route ----------------------------------------------------------

def init_mp(sb: Sandbox, **extra: Any) -> requests.Response:
    return requests.post(f"{sb.api_url}/api/v1/samples/init_multipart_upload", auth=(API_KEY, ""), timeout=10,
                         json={"filename": R1_NAME, "sample_id": None, "external_sample_id": None, **extra})


def put(moto: Moto, t: dict, key: str, data: bytes) -> None:
    boto3.client("s3", endpoint_url=moto.endpoint, region_name="us-east-1",
                 aws_access_key_id=t["upload_aws_access_key_id"],
                 aws_secret_access_key=t["upload_aws_secret_access_key"]).put_object(
        Bucket=t["s3_bucket"], Key=key, Body=data)


def call_back(sb: Sandbox, t: dict, key: str | None = None) -> requests.Response:
    body = {"s3_path": f"s3://{t['s3_bucket']}/{key or t['file_id']}", "filename": R1_NAME,
            "import_as_document": False}
    return requests.post(f"{sb.api_url}{t['callback_url']}", json=body, auth=(API_KEY, ""), timeout=10)


def test_sandbox_paired_init_answers_the_r2_key_and_calls_back_only_with_both(sb, moto):
    """paired_end_file_id is the R2's own key (null for a single-end init); a callback before both objects
    are in S3 is a 400 naming what is missing; one naming the R2's path is refused; with both it confirms,
    and GET shows the pair."""
    single = init_mp(sb).json()
    assert single["paired_end_file_id"] is None
    t = init_mp(sb, paired_end_filename=R2_NAME).json()
    assert t["paired_end_file_id"] == t["file_id"].replace(f"multipart_{t['sample_id']}/",
                                                           f"multipart_{t['sample_id']}_paired_end/") \
        .replace(R1_NAME, R2_NAME)
    r1, r2 = fastq_bytes(2000, seed=1), fastq_bytes(3000, seed=2)
    refused = call_back(sb, t)
    assert refused.status_code == 400 and f"R1 ({R1_NAME}) to file_id and R2 ({R2_NAME})" in refused.json()["message"]
    put(moto, t, t["file_id"], r1)
    refused = call_back(sb, t)
    assert refused.status_code == 400 and "R1 (" not in refused.json()["message"]
    assert f"R2 ({R2_NAME}) to paired_end_file_id" in refused.json()["message"]
    put(moto, t, t["paired_end_file_id"], r2)
    assert call_back(sb, t, key=t["paired_end_file_id"]).status_code == 400
    answer = call_back(sb, t)
    assert answer.status_code == 200 and answer.json()["sample_id"] == t["sample_id"]
    s = next(s for s in sb.samples() if s["sample_id"] == t["sample_id"])
    assert s["state"] == "confirmed" and (s["size"], s["paired_size"]) == (len(r1), len(r2))
    assert s["paired_etag"] == hashlib.md5(r2).hexdigest()
    shown = requests.get(f"{sb.api_url}/api/v1/samples/{t['sample_id']}", auth=(API_KEY, ""), timeout=10).json()
    assert (shown["paired_end_filename"], shown["paired_end_size"]) == (R2_NAME, len(r2))


def test_sandbox_r2_alone_cannot_be_called_back(sb, moto):
    t = init_mp(sb, paired_end_filename=R2_NAME).json()
    put(moto, t, t["paired_end_file_id"], fastq_bytes(1000, seed=3))
    refused = call_back(sb, t)
    assert refused.status_code == 400 and f"R1 ({R1_NAME}) to file_id" in refused.json()["message"]
    assert "R2 (" not in refused.json()["message"]
    assert next(s for s in sb.samples() if s["sample_id"] == t["sample_id"])["state"] == "initialized"


@pytest.mark.parametrize("paired_end_filename", ["bad name?.fastq", R1_NAME, 7])
def test_sandbox_refuses_a_bad_paired_end_filename_and_makes_no_sample(sb, paired_end_filename):
    r = init_mp(sb, paired_end_filename=paired_end_filename)
    assert r.status_code == 400 and "paired_end_filename" in r.json()["message"]
    assert sb.samples() == []


# -- the client's init ---------------------------------------------------------------------------

@pytest.mark.parametrize("answer_key", [None, "same"])
def test_client_refuses_a_paired_init_without_its_own_r2_key_and_cancels_it(monkeypatch, answer_key):
    """A paired init answered without paired_end_file_id (or with the R1's key): Permanent, and the
    sample it made is cancelled (the R2 would have nowhere to go, or overwrite the R1)."""
    client, calls = OneCodexClient("https://api.example.org", "k"), []
    answer = {"sample_id": "0123456789abcdef", "s3_bucket": "b", "file_id": "u/k/r1.fastq",
              "upload_aws_access_key_id": "A", "upload_aws_secret_access_key": "S",
              "callback_url": "/api/v1/samples/0123456789abcdef/multipart_callback",
              "paired_end_file_id": "u/k/r1.fastq" if answer_key == "same" else None}

    def fake_api(method: str, path: str, **kwargs: Any) -> Any:
        calls.append((path, kwargs.get("json")))
        return answer if path.endswith("init_multipart_upload") else {}

    monkeypatch.setattr(client, "_api", fake_api)
    with pytest.raises(Permanent, match="paired_end_file_id"):
        client.init_multipart_upload("r1.fastq", paired_end_filename="r2.fastq", extra={"tags": [{"name": "x"}]})
    assert calls[0][1]["paired_end_filename"] == "r2.fastq" and calls[0][1]["tags"] == [{"name": "x"}]
    assert calls[1] == ("/api/v1/samples/cancel_upload", {"sample_id": "0123456789abcdef"})
    init = OneCodexClient.init_multipart_upload  # the unpaired answer still needs no paired_end_file_id
    answer["paired_end_file_id"] = None
    assert init(client, "r1.fastq").paired_end_key is None


# -- lanes read as one object ----------------------------------------------------------------------

def test_members_read_as_one_object_across_their_boundaries(tmp_path):
    """A range spanning three files reads as their concatenation (each read within one file); each
    member's MD5 is kept; a member shorter than queued is FileChanged naming it, at opening or mid-read."""
    datas = [bytes([65 + i]) * n for i, n in enumerate((3000, 10, 5000))]
    paths = []
    for i, data in enumerate(datas):
        p = tmp_path / f"lane{i}.fastq"
        p.write_bytes(data)
        paths.append(str(p))
    members = Members(paths, [len(d) for d in datas])
    try:
        seen: list[tuple[int, int]] = []
        r = RangeReader(members, 2000, 2000, on_new=lambda off, b: seen.append((off, len(b))))
        got = b"".join(iter(lambda: r.read(1500), b""))
        assert got == b"".join(datas)[2000:4000]
        assert seen == [(2000, 1000), (3000, 10), (3010, 990)]          # never across a boundary
    finally:
        members.close()
    os.truncate(paths[2], 100)
    with pytest.raises(FileChanged, match="lane2.fastq"):
        Members(paths, [len(d) for d in datas])
    shorter = Members(paths, [3000, 10, 100])
    try:
        os.truncate(paths[0], 2500)
        with pytest.raises(FileChanged, match="lane0.fastq became shorter"):
            RangeReader(shorter, 0, 3110, on_new=lambda off, b: None).read(3000)
    finally:
        shorter.close()


def test_upload_of_members_keeps_one_md5_per_member(tmp_path):
    """S3Upload over lanes: each lane's MD5 (send_part's hashing, without S3), every byte hashed once
    for them (no MD5 of the concatenation: S3 checks the parts' MD5s); `md5` is the first lane's."""
    datas = [fastq_bytes(3 * MiB, seed=i) for i in (1, 2)]
    paths = []
    for i, data in enumerate(datas):
        (tmp_path / f"l{i}.fastq").write_bytes(data)
        paths.append(str(tmp_path / f"l{i}.fastq"))

    class FakeS3:
        def upload_part(self, *, Body: Any, **_: Any) -> dict:
            data = b"".join(iter(lambda: Body.read(MiB), b""))
            return {"ETag": f'"{hashlib.md5(data).hexdigest()}"'}

    up = S3Upload(FakeS3(), bucket="b", key="k", path=paths, size=sum(map(len, datas)), part_size=PART,
                  sizes=[len(d) for d in datas])
    up.upload_id = "u"
    try:
        while not up.all_sent:
            up.send_part()
        assert up.part_count == 2 and up.md5 == hashlib.md5(datas[0]).hexdigest()
        assert up.member_md5s == tuple(hashlib.md5(d).hexdigest() for d in datas)
    finally:
        up.close()
