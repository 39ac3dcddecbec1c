"""The upload engine end to end: pipeline + client + store against the strict sandbox over loopback."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import json
import os
import shutil
import ssl
import subprocess
import threading
import time
from pathlib import Path

import boto3
import pytest
import structlog
from harness import PipelineDriver
from moto.server import ThreadedMotoServer

from daemon.errors import AuthError, Transient
from daemon.operations import logs
from daemon.queue.sqlite import SqliteStore
from daemon.sandbox import Fault, Sandbox
from daemon.upload import pipeline as pipeline_module
from daemon.upload import retrying
from daemon.upload.client import InitResult, OneCodexClient, PostResult
from daemon.upload.formdata import FormDataBody
from daemon.upload.pipeline import Pipeline
from daemon.upload.throttle import TokenBucket

KEY = "sk_test_0123456789abcdef"


def fastq_bytes(n: int = 200, length: int = 80, name: str = "r") -> bytes:
    out = io.StringIO()
    for i in range(n):
        seq = ("ACGT" * (length // 4 + 1))[i % 4: i % 4 + length]
        out.write(f"@{name}{i}\n{seq}\n+\n{'I' * length}\n")
    return out.getvalue().encode()


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
    def __init__(self, sb: Sandbox, tmp: Path, read_timeout_s: float = 5.0) -> None:
        self.sb, self.tmp = sb, tmp
        self.store = SqliteStore(str(tmp / "queue.sqlite3"))
        self.client = OneCodexClient(sb.api_url, KEY, connect_timeout_s=2, read_timeout_s=read_timeout_s)
        self.events: list[tuple[str, dict]] = []      # what the pipeline told its observers (metrics, webhook)
        self.pipeline = Pipeline(store=self.store, client=self.client, log=structlog.get_logger(),
                                 block_size=64 * 1024, emit=lambda event, **fields: self.events.append((event, fields)))

    def emitted(self, event: str) -> list[dict]:
        return [fields for name, fields in self.events if name == event]

    def upload(self, name: str, data: bytes) -> tuple[str, int]:
        file_id = self.queue(self.file(name, data))
        return self.drive(file_id), file_id

    def confirmed(self) -> list[dict]:
        return [s for s in self.sb.samples() if s["state"] == "confirmed"]



@pytest.fixture
def h(sb, tmp_path):
    harness = Harness(sb, tmp_path)
    yield harness
    harness.store.close()


@pytest.mark.parametrize("name,data", [
    ("reads.fastq", fastq_bytes()),
    ("reads.fastq.gz", gzip.compress(fastq_bytes(name="g"))),
    ("contigs.fasta", b">c1 contig\nACGTACGTAC\nGGTTAA\n>c2\nNNNNACGT\n"),
])
def test_upload_confirms_one_sample_with_identical_bytes(h, name, data):
    """FASTQ, FASTQ.gz and FASTA each end as one confirmed sample holding exactly the file's bytes."""
    state, file_id = h.upload(name, data)
    assert state == "done"
    row = h.store.get(file_id)
    [sample] = h.confirmed()
    assert row.sample_id == sample["sample_id"] and row.md5 == hashlib.md5(data).hexdigest()
    assert Path(sample["object_path"]).read_bytes() == data
    assert sample["filename"] == name


@pytest.mark.parametrize("fault", [
    Fault("init_upload", "status", status=500, times=2),
    Fault("init_upload", "status", status=429, retry_after_s=0.01, times=2),
    Fault("s3", "status", status=502, times=2),
    Fault("s3", "status", status=503, code="SlowDown", times=2),
    Fault("s3", "status", status=500, code="InternalError", times=1),
    Fault("confirm_upload", "status", status=503, times=3),
    Fault("confirm_upload", "status", status=504, times=1),
    Fault("s3", "drop", times=2),
    Fault("init_upload", "drop", times=1),
    Fault("confirm_upload", "drop", after_body=True, times=1),
    Fault("s3", "drop", after_body=True, times=1),
], ids=lambda f: f"{f.target}-{f.kind}-{f.status}")
def test_transient_faults_end_in_exactly_one_confirmed_sample(h, fault):
    """5xx, 429, SlowDown and dropped connections are retried until one sample is confirmed."""
    h.sb.add_fault(fault)
    state, file_id = h.upload("reads.fastq", fastq_bytes())
    assert state == "done"
    assert len(h.confirmed()) == 1
    assert h.store.get(file_id).sample_id == h.confirmed()[0]["sample_id"]


def test_many_transient_errors_delay_the_file_but_never_fail_it(h):
    """More 503s than one call's retry budget: the row goes back to the queue with the error, not to failed."""
    h.sb.add_fault(Fault("init_upload", "status", status=503, message="maintenance", times=None))
    file_id = h.queue(h.file("reads.fastq", fastq_bytes()))
    assert h.drive(file_id, rounds=2) == "queued"
    row = h.store.get(file_id)
    assert row.state == "queued" and "503" in row.error and "maintenance" in row.error
    assert row.attempts == 2 and row.next_attempt_at > 0
    h.sb.clear_faults()
    assert h.drive(file_id) == "done"


def test_slow_answer_past_the_timeout_is_retried(sb, tmp_path):
    """An answer slower than the read timeout counts as transient; the upload still ends confirmed once."""
    h = Harness(sb, tmp_path, read_timeout_s=0.5)
    sb.add_fault(Fault("confirm_upload", "delay", delay_s=1.5, times=1))
    sb.add_fault(Fault("init_upload", "delay", delay_s=1.5, times=1))
    state, _ = h.upload("reads.fastq", fastq_bytes())
    assert state == "done"
    assert len(h.confirmed()) == 1


def test_expired_policy_gets_a_new_init_and_the_old_sample_is_cancelled(h):
    """S3's 'Policy expired' → init_upload again, cancel the abandoned sample, confirm the new one."""
    h.sb.add_fault(Fault("s3", "status", status=403, code="AccessDenied",
                         message="Invalid according to Policy: Policy expired.", times=1))
    state, file_id = h.upload("reads.fastq", fastq_bytes())
    assert state == "done"
    samples = {s["sample_id"]: s["state"] for s in h.sb.samples()}
    assert sorted(samples.values()) == ["cancelled", "confirmed"]
    assert samples[h.store.get(file_id).sample_id] == "confirmed"
    assert len(h.requests_to("init_upload")) == 2 and len(h.requests_to("cancel_upload")) == 1


def test_stored_policy_that_will_expire_is_renewed_before_posting(h):
    """A crash left an initialized row whose policy is about to expire: re-init, cancel the old one."""
    h.sb.policy_lifetime_s = 2.0
    path = h.file("reads.fastq", fastq_bytes())
    file_id = h.queue(path)
    init = h.client.init_upload("reads.fastq", path.stat().st_size)
    h.store.save_init(file_id, init.sample_id, init.to_json(h.client.form_seal))
    h.sb.policy_lifetime_s = 3600.0
    assert h.drive(file_id) == "done"
    states = {s["sample_id"]: s["state"] for s in h.sb.samples()}
    assert states[init.sample_id] == "cancelled"
    assert states[h.store.get(file_id).sample_id] == "confirmed"
    assert not [r for r in h.requests_to("s3") if r["status"] == 403]


def test_real_policy_expiry_in_the_strict_sandbox_is_recovered(h):
    """With a policy already expired when the POST arrives, the sandbox's own check triggers a new init."""
    h.sb.policy_lifetime_s = -1.0      # every policy is born expired...
    path = h.file("reads.fastq", fastq_bytes())
    file_id = h.queue(path)
    h.store.set_state(file_id, "uploading")
    # ...until the first cancel: then policies are fine again.
    orig_cancel = h.client.cancel_upload

    def cancel_and_fix(sample_id):
        h.sb.policy_lifetime_s = 3600.0
        orig_cancel(sample_id)

    h.client.cancel_upload = cancel_and_fix
    assert h.pipeline.process(h.store.get(file_id)) == "done"
    assert [r["status"] for r in h.requests_to("s3")] == [403, 201]


@pytest.mark.parametrize("fault,needle", [
    (Fault("init_upload", "status", status=400, message="filename is not allowed"), "filename is not allowed"),
    (Fault("init_upload", "status", status=404, message="no such endpoint"), "no such endpoint"),
    (Fault("s3", "status", status=413, code="EntityTooLarge", message="Your proposed upload exceeds"),
     "EntityTooLarge"),
    (Fault("s3", "status", status=400, code="EntityTooLarge", message="too big"), "EntityTooLarge"),
    (Fault("s3", "status", status=403, code="AccessDenied", message="Policy Condition failed"), "AccessDenied"),
    (Fault("confirm_upload", "status", status=400, message="upload not found"), "upload not found"),
], ids=lambda x: getattr(x, "code", None) or getattr(x, "target", str(x)))
def test_permanent_refusals_fail_the_file_with_the_servers_message_and_no_retry_storm(h, fault, needle):
    """400/404/413/EntityTooLarge/other AccessDenied → failed, message kept, the refused call made once."""
    h.sb.add_fault(fault)
    state, file_id = h.upload("reads.fastq", fastq_bytes())
    row = h.store.get(file_id)
    assert state == "failed" and row.state == "failed"
    assert needle in row.error
    assert len(h.requests_to(fault.target)) == 1
    assert not h.confirmed()


@pytest.mark.parametrize("status,words", [(401, "API key rejected"), (402, "account problem"),
                                          (403, "API key not allowed")])
def test_auth_refusal_raises_a_clear_error_and_keeps_the_file_queued(h, status, words):
    """401/402/403 from the API → AuthError naming the problem; the file stays queued, attempts untouched."""
    h.sb.add_fault(Fault("init_upload", "status", status=status, times=1))
    file_id = h.queue(h.file("reads.fastq", fastq_bytes()))
    h.store.set_state(file_id, "uploading")
    with pytest.raises(AuthError, match=words):
        h.pipeline.process(h.store.get(file_id))
    row = h.store.get(file_id)
    assert row.state == "queued" and row.attempts == 0 and words in row.error
    assert len(h.requests_to("init_upload")) == 1


def test_wrong_key_is_rejected_by_the_sandbox(sb, tmp_path):
    """A key the server does not know → AuthError from the real 401, no upload attempted."""
    h = Harness(sb, tmp_path)
    h.pipeline = Pipeline(store=h.store, client=OneCodexClient(sb.api_url, "wrong-key"),
                          log=structlog.get_logger())
    file_id = h.queue(h.file("reads.fastq", fastq_bytes()))
    h.store.set_state(file_id, "uploading")
    with pytest.raises(AuthError, match="API key rejected"):
        h.pipeline.process(h.store.get(file_id))
    assert not h.requests_to("s3")


def test_etag_mismatch_is_never_confirmed(h, monkeypatch):
    """If S3's ETag is not the MD5 of the bytes sent, the sample is not confirmed."""
    real = OneCodexClient.post_to_s3

    def lying(self, init, body, **kw):
        result = real(self, init, body, **kw)
        return PostResult(etag="0" * 32, md5=result.md5, seconds=result.seconds, bytes_sent=result.bytes_sent)

    monkeypatch.setattr(OneCodexClient, "post_to_s3", lying)
    file_id = h.queue(h.file("reads.fastq", fastq_bytes()))
    assert h.drive(file_id, rounds=2) == "queued"
    assert "ETag" in h.store.get(file_id).error
    assert not h.requests_to("confirm_upload") and not h.confirmed()
    assert {f["reason"] for f in h.emitted("retry")} == {"etag_mismatch"}


def test_no_authorization_header_or_key_ever_reaches_s3(h):
    """The S3 POST carries no Authorization header and no trace of the API key."""
    h.sb.add_fault(Fault("s3", "status", status=503, times=1))
    assert h.upload("reads.fastq", fastq_bytes())[0] == "done"
    s3 = h.requests_to("s3")
    assert len(s3) == 2
    for r in s3:
        assert not any(k.lower() == "authorization" for k in r["headers"])
        assert KEY not in json.dumps(r)
    for r in h.requests_to("init_upload"):
        assert any(k.lower() == "authorization" for k in r["headers"])


def test_api_key_never_appears_in_log_output(sb, tmp_path):
    """With retries, an auth failure and a success, the JSON log holds no trace of the key."""
    out = io.StringIO()
    logs.configure("debug", "json", stream=out)
    logs.register_secret(KEY)
    try:
        h = Harness(sb, tmp_path)
        h.pipeline.log = logs.get("seqdrop")
        sb.add_fault(Fault("init_upload", "status", status=503, message=f"echo {KEY}", times=1))
        sb.add_fault(Fault("s3", "drop", times=1))
        assert h.upload("a.fastq", fastq_bytes())[0] == "done"
        sb.add_fault(Fault("init_upload", "status", status=401, message=f"bad key {KEY}", times=1))
        file_id = h.queue(h.file("b.fastq", fastq_bytes(name="b")))
        h.store.set_state(file_id, "uploading")
        with pytest.raises(AuthError):
            h.pipeline.process(h.store.get(file_id))
    finally:
        logs.configure("info", "console")
    text = out.getvalue()
    assert "upload.retry_scheduled" in text and "upload.confirmed" in text
    assert KEY not in text


def test_unsafe_upload_url_is_refused(h, monkeypatch):
    """An init_upload answer pointing the file at plain http on a non-loopback host fails the file,
    says why, and cancels the sample nothing will be uploaded to."""
    real = OneCodexClient._api

    def tampered(self, method, path, **kw):
        body = real(self, method, path, **kw)
        if path.endswith("init_upload"):
            body["upload_url"] = "http://bucket.example.com/"
        return body

    monkeypatch.setattr(OneCodexClient, "_api", tampered)
    state, file_id = h.upload("reads.fastq", fastq_bytes())
    error = h.store.get(file_id).error
    assert state == "failed" and "unsafe" in error and "the file would travel unencrypted" in error, error
    assert not h.requests_to("s3")
    assert [s["state"] for s in h.sb.samples()] == ["cancelled"]


def test_file_changed_during_upload_is_not_confirmed(h, monkeypatch):
    """A file rewritten while its bytes were being sent is not confirmed; that version is vanished."""
    path = h.file("reads.fastq", fastq_bytes())
    file_id = h.queue(path)
    real = OneCodexClient.post_to_s3

    def rewrite_after_post(self, init, body, **kw):
        result = real(self, init, body, **kw)
        path.write_bytes(fastq_bytes(name="new"))
        return result

    monkeypatch.setattr(OneCodexClient, "post_to_s3", rewrite_after_post)
    assert h.drive(file_id) == "vanished"
    assert not h.requests_to("confirm_upload")
    assert [s["state"] for s in h.sb.samples()] == ["cancelled"]


def test_crash_after_post_confirms_the_same_sample(h):
    """A row persisted at step 'posted' is confirmed with its stored sample_id: no new init, no new POST."""
    path = h.file("reads.fastq", fastq_bytes())
    file_id = h.queue(path)
    h.sb.add_fault(Fault("confirm_upload", "drop", after_body=False, times=None))
    assert h.drive(file_id, rounds=1) == "queued"
    row = h.store.get(file_id)
    assert row.step == "posted" and row.sample_id
    h.sb.clear_faults()
    assert h.drive(file_id) == "done"
    assert len(h.requests_to("init_upload")) == 1 and len(h.requests_to("s3")) == 1
    assert h.confirmed()[0]["sample_id"] == row.sample_id


def test_form_data_body_length_is_exact_and_the_file_is_the_last_part(tmp_path):
    """The declared Content-Length equals the bytes produced; fields keep their order; file part last."""
    p = tmp_path / "x.fastq"
    data = fastq_bytes(50)
    p.write_bytes(data)
    body = FormDataBody([("key", "a/${filename}"), ("policy", "cG9s"), ("acl", "private")], path=str(p),
                         filename="x.fastq", size=len(data), block_size=1000)
    produced = b"".join(body)
    assert len(produced) == len(body)
    assert produced.index(b'name="key"') < produced.index(b'name="policy"') < produced.index(b'name="acl"')
    assert produced.index(b'name="acl"') < produced.index(b'name="file"')
    assert produced.count(b'name="file"') == 1 and data in produced
    assert body.md5.hexdigest() == hashlib.md5(data).hexdigest()


def test_moto_s3_accepts_our_post(tmp_path):
    """moto's S3 server (a server we did not write) stores exactly our bytes and returns the MD5 ETag."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)   # port 0: no race for it
    server.start()
    port = server.get_host_and_port()[1]
    try:
        endpoint = f"http://127.0.0.1:{port}"
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
        s3.create_bucket(Bucket="seqdrop-test1")
        post = s3.generate_presigned_post(
            "seqdrop-test1", "user_1/file_2/${filename}",
            Fields={"acl": "private", "success_action_status": "201"},
            Conditions=[{"acl": "private"}, {"success_action_status": "201"},
                        ["starts-with", "$key", "user_1/file_2/"]])
        init = InitResult("2", post["url"], tuple(post["fields"].items()))
        data = gzip.compress(fastq_bytes(300))
        p = tmp_path / "reads.fastq.gz"
        p.write_bytes(data)
        client = OneCodexClient("http://127.0.0.1:1", "unused")
        body = FormDataBody(init.fields, path=str(p), filename=p.name, size=len(data), block_size=4096)
        result = client.post_to_s3(init, body)
        assert result.md5 == hashlib.md5(data).hexdigest()
        assert result.etag in ("", result.md5)   # moto's POST answer carries no ETag
        obj = s3.get_object(Bucket="seqdrop-test1", Key="user_1/file_2/reads.fastq.gz")
        assert obj["Body"].read() == data
        assert obj["ETag"].strip('"') == result.md5
    finally:
        server.stop()


def test_truncated_file_is_rejected_mid_stream_and_never_confirmed(h):
    """A file that fails validation while streaming: S3 stores nothing, no confirm, sample cancelled."""
    data = fastq_bytes(400)
    state, file_id = h.upload("cut.fastq", data[: len(data) - 7])
    row = h.store.get(file_id)
    assert state == "rejected" and "cut.fastq" in row.error
    assert not h.requests_to("confirm_upload")
    assert [s["state"] for s in h.sb.samples()] == ["cancelled"]
    assert all(s["object_path"] is None for s in h.sb.samples())


def test_junk_is_rejected_before_anything_is_sent(h):
    """Binary junk and empty files are refused by the first look: no init_upload at all."""
    state, file_id = h.upload("junk.fastq", os.urandom(5000))
    assert state == "rejected" and h.store.get(file_id).error
    state, file_id = h.upload("empty.fastq", b"")
    assert state == "rejected" and "empty" in h.store.get(file_id).error
    assert not h.requests_to("init_upload")


def test_fixed_file_uploads_as_a_new_version(h):
    """After a rejection, a corrected file (a new version row) uploads and is confirmed."""
    data = fastq_bytes(100)
    path = h.file("fix.fastq", data[:-5])
    bad = h.queue(path)
    assert h.drive(bad) == "rejected"
    path.write_bytes(data)
    good = h.queue(path)
    assert h.drive(good) == "done"
    assert len(h.confirmed()) == 1 and h.store.get(bad).state == "rejected"


def test_bandwidth_cap_holds_within_10_percent_on_a_200_mb_upload(tmp_path):
    """upload.max_mbps = 400 moves a 200 MB file through the sandbox at 400 Mbps ± 10%."""
    with Sandbox(api_keys=(KEY,), store_objects=False) as sandbox:
        h = Harness(sandbox, tmp_path)
        bucket = TokenBucket.from_mbps(400)
        h.pipeline = Pipeline(store=h.store, client=h.client, log=structlog.get_logger(), validate=False,
                              block_size=1 << 20, throttle=bucket.consume)
        path = h.file("big.fastq", b"")
        with open(path, "wb") as f:
            block = fastq_bytes(5000, 100)
            while f.tell() < 200_000_000:
                f.write(block)
        size = path.stat().st_size
        file_id = h.queue(path)
        h.store.set_state(file_id, "uploading")
        started = time.monotonic()
        assert h.pipeline.process(h.store.get(file_id)) == "done"
        mbps = size * 8 / 1e6 / (time.monotonic() - started)
        h.store.close()
    print(f"bandwidth cap 400 Mbps: measured {mbps:.1f} Mbps over {size / 1e6:.0f} MB")
    assert 360 <= mbps <= 440, f"measured {mbps:.0f} Mbps against a 400 Mbps cap"


def test_repeat_confirm_refused_as_already_confirmed_counts_as_done(h):
    """A server answering a repeated confirm with 400 'already confirmed' (AlreadyDone from the client)
    leaves the file done with its sample, not failed: logged as such, told to the observers as done."""
    h.sb.add_fault(Fault("confirm_upload", "drop", after_body=True, times=1))
    h.sb.add_fault(Fault("confirm_upload", "status", status=400, message="Sample already confirmed", times=1))
    with structlog.testing.capture_logs() as logged:
        state, file_id = h.upload("reads.fastq", fastq_bytes())
    row = h.store.get(file_id)
    assert state == "done" and row.state == "done" and row.error is None
    assert row.sample_id == h.confirmed()[0]["sample_id"] and len(h.sb.samples()) == 1
    [already] = [e for e in logged if e["event"] == "upload.already_confirmed"]
    assert already["sample_id"] == row.sample_id and "Sample already confirmed" in already["answer"]
    assert [f["sample_id"] for f in h.emitted("file_done")] == [row.sample_id] and not h.emitted("file_failed")
    assert len(h.requests_to("confirm_upload")) == 2 and not h.requests_to("cancel_upload")


def test_retries_are_counted_by_the_reason_each_error_carries(h):
    """A 429 at init, S3's SlowDown and a dropped confirm reach the observers (the retries metric) as
    http_429, slowdown and connection; the file still ends done."""
    h.sb.add_fault(Fault("init_upload", "status", status=429, times=1))
    h.sb.add_fault(Fault("s3", "status", status=503, code="SlowDown", times=1))
    h.sb.add_fault(Fault("confirm_upload", "drop", times=1))
    state, _ = h.upload("reads.fastq", fastq_bytes())
    assert state == "done"
    assert [f["reason"] for f in h.emitted("retry")] == ["http_429", "slowdown", "connection"]


def test_a_transient_error_that_outlasts_the_call_budget_is_counted_once_more_with_its_reason(h):
    """When the retries of one call run out, the row is put back with the error; the observers hear the
    same reason once more (the retry of the file)."""
    h.sb.add_fault(Fault("init_upload", "status", status=503, times=None))
    file_id = h.queue(h.file("reads.fastq", fastq_bytes()))
    assert h.drive(file_id, rounds=1) == "queued"
    reasons = [f["reason"] for f in h.emitted("retry")]
    assert reasons == ["http_503"] * len(h.requests_to("init_upload")) and len(reasons) >= 2


@pytest.fixture
def child_validation(monkeypatch):
    """Send every file through the large-file path: validation in a child process."""
    monkeypatch.setattr(pipeline_module, "CHILD_VALIDATION_BYTES", 1)


def test_child_process_validation_confirms_a_valid_file(h, child_validation):
    """A large file's validation runs in a child process and a valid file is confirmed."""
    data = gzip.compress(fastq_bytes(2000))
    state, file_id = h.upload("big.fastq.gz", data)
    assert state == "done"
    assert Path(h.confirmed()[0]["object_path"]).read_bytes() == data


def test_child_process_validation_refuses_a_truncated_file(h, child_validation):
    """A truncated large file is rejected with the child's reason; S3 keeps nothing, nothing is confirmed."""
    data = gzip.compress(fastq_bytes(2000))
    state, file_id = h.upload("cut.fastq.gz", data[:-20])
    assert state == "rejected" and "cut.fastq.gz" in h.store.get(file_id).error
    assert not h.requests_to("confirm_upload")
    assert all(s["object_path"] is None for s in h.sb.samples())


def test_file_whose_folder_is_gone_waits_instead_of_vanishing(h):
    """A started upload whose whole watch folder disappeared (a share unmounted) stays queued with its sample."""
    from daemon.detection.roots import WatchRoots
    folder = h.tmp / "watch"
    h.pipeline.steps.roots = WatchRoots([(str(folder), None)])
    (folder / "run").mkdir(parents=True)
    path = folder / "run" / "reads.fastq"
    path.write_bytes(fastq_bytes())
    file_id = h.queue(path)
    init = h.client.init_upload("reads.fastq", path.stat().st_size)
    h.store.save_init(file_id, init.sample_id, init.to_json(h.client.form_seal))
    backup = h.tmp / "backup"
    shutil.move(str(folder), str(backup))
    assert h.drive(file_id, rounds=1) == "queued"
    row = h.store.get(file_id)
    assert row.step == "initialized" and "not there" in row.error
    assert [s["state"] for s in h.sb.samples()] == ["initialized"]
    shutil.move(str(backup), str(folder))
    assert h.drive(file_id) == "done"
    assert h.confirmed()[0]["sample_id"] == init.sample_id


def test_tls_verification_is_on_and_the_key_never_reaches_an_unverified_host(tmp_path):
    """An https API with a certificate we cannot verify: no request goes through, the error says why."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a throwaway certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.headers.get("Authorization", ""))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = OneCodexClient(f"https://127.0.0.1:{server.server_address[1]}", KEY, read_timeout_s=5)
        with pytest.raises(Transient, match="certificate verify failed"):
            client.probe()
    finally:
        server.shutdown()
    assert seen == []


def test_an_initialized_row_without_its_post_form_cancels_that_sample_and_starts_one(h):
    """A queue rebuilt from the journal holds an initialized row's sample id but never its signed POST
    form: that sample is cancelled (never left behind) and a new one is confirmed."""
    path = h.file("reads.fastq", fastq_bytes())
    file_id = h.queue(path)
    lost = h.client.init_upload("reads.fastq", path.stat().st_size)
    h.store.save_init(file_id, lost.sample_id, "")
    assert h.drive(file_id) == "done"
    states = {s["sample_id"]: s["state"] for s in h.sb.samples()}
    assert states[lost.sample_id] == "cancelled"
    assert states[h.store.get(file_id).sample_id] == "confirmed"
    assert len(h.confirmed()) == 1
