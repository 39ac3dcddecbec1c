"""The multipart route (files over upload.multipart_threshold_bytes): init_multipart_upload → S3 multipart
upload → callback, against the sandbox's API and moto's S3 server, over loopback.

The threshold is lowered (5 GiB files do not fit a test); the part size is the official client's
rule (10 MiB parts for these files), so a 12-25 MiB file is sent in 2-3 parts, as moto requires
(every part but the last at least 5 MiB).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
import threading
from pathlib import Path

import boto3
import botocore.exceptions
import pytest
import requests
import structlog
from harness import (
    API_KEY,
    Daemon,
    PipelineDriver,
    all_in,
    fastq_bytes,
    wait_for,
    write_config,
)
from moto.server import ThreadedMotoServer

from daemon.errors import Aborted, FileChanged, Permanent, PolicyExpired, Transient
from daemon.queue.sqlite import SqliteStore
from daemon.sandbox import Fault, Sandbox
from daemon.upload import retrying
from daemon.upload.client import OneCodexClient
from daemon.upload.pipeline import Pipeline
from daemon.upload.s3multipart import (
    MiB,
    RangeReader,
    S3Connector,
    S3Upload,
    choose_part_size,
    multipart_etag,
    translate,
)

THRESHOLD = 1 * MiB
DEADLINE_S = 60.0


@pytest.fixture(autouse=True)
def no_waits():
    retrying.set_waits(False)
    yield
    retrying.set_waits(True)


class Moto:
    """moto's S3 server on a loopback port, and a boto3 client to look into it."""

    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.server: ThreadedMotoServer | None = None
        self.s3 = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                               aws_access_key_id="test", aws_secret_access_key="test")

    def start(self) -> None:
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def object(self, bucket: str, key: str) -> bytes:
        return self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()

    def keys(self, bucket: str) -> list[str]:
        return [o["Key"] for o in self.s3.list_objects_v2(Bucket=bucket).get("Contents", [])]

    def open_uploads(self, bucket: str) -> list[dict]:
        try:
            return self.s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        except self.s3.exceptions.NoSuchBucket:    # the sandbox makes it at the first init
            return []


class Link:
    """A TCP relay on loopback in front of moto that can be cut, like a network outage: cut() drops every
    open connection (a request being sent fails half-way) and refuses new ones until restore()."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.up = True
        self.conns: set[socket.socket] = set()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.up:
                client.close()
                continue
            server = socket.create_connection(self.target)
            with self.lock:
                self.conns |= {client, server}
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        self.up = False
        with self.lock:
            conns, self.conns = self.conns, set()
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def restore(self) -> None:
        self.up = True

    def close(self) -> None:
        self.cut()
        self.listener.close()


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


class Harness(PipelineDriver):
    """The pipeline in this process, its queue in tmp_path, against the sandbox and moto."""

    def __init__(self, sb: Sandbox, moto: Moto, tmp: Path) -> None:
        self.sb, self.moto, self.tmp = sb, moto, tmp
        self.bucket = sb.multipart_s3.bucket
        self.store = SqliteStore(str(tmp / "queue.sqlite3"))
        self.client = OneCodexClient(sb.api_url, API_KEY, connect_timeout_s=2, read_timeout_s=10)
        self.events: list[tuple[str, dict]] = []      # what the pipelines told their observers
        self.pipeline = self.make_pipeline()

    def make_pipeline(self, **overrides: object) -> Pipeline:
        """A pipeline on this queue and API (a new one is a new process: no uploads in its memory)."""
        kwargs: dict[str, object] = {"store": self.store, "client": self.client, "log": structlog.get_logger(),
                                     "block_size": 64 * 1024, "multipart_threshold_bytes": THRESHOLD,
                                     "s3_endpoint_url": self.moto.endpoint,
                                     "emit": lambda event, **fields: self.events.append((event, fields))}
        return Pipeline(**(kwargs | overrides))  # type: ignore[arg-type]

    def retry_reasons(self) -> list[str]:
        return [fields["reason"] for event, fields in self.events if event == "retry"]

    def callbacks(self) -> list[dict]:
        return [r for r in self.requests_to("multipart_callback") if r["status"] == 200]

    def samples(self) -> dict[str, str]:
        return {s["sample_id"]: s["state"] for s in self.sb.samples()}


@pytest.fixture
def h(sb, moto, tmp_path):
    harness = Harness(sb, moto, tmp_path)
    yield harness
    harness.pipeline.close()
    harness.store.close()


def bad_middle(size: int) -> bytes:
    """FASTQ of `size` bytes whose record in the middle has a space in its sequence."""
    data = bytearray(fastq_bytes(size, seed=5))
    mid = data.index(b"\n+\n", size // 2) - 3
    data[mid] = ord(" ")
    return bytes(data)


# -- the route end to end ------------------------------------------------------------------------

def test_daemon_sends_a_file_over_the_threshold_as_one_multipart_object(tmp_path, watch_dir, moto, sb):
    """`seqdrop run`: a file over the lowered threshold is one object in moto, byte-identical, one callback,
    one sample done; a file under it still takes the standard POST."""
    big, small = watch_dir / "big.fastq", watch_dir / "small.fastq"
    big.write_bytes(fastq_bytes(22 * MiB, seed=1))
    small.write_bytes(fastq_bytes(300_000, seed=2))
    cfg = write_config(tmp_path, watch=[watch_dir], api_url=sb.api_url,
                       upload_extra=f'multipart_threshold_bytes = {THRESHOLD}\n'
                                    f'multipart_s3_endpoint = "{moto.endpoint}"\n')
    with Daemon(cfg) as d:
        files = d.wait_files(all_in("done", ["big.fastq", "small.fastq"]), DEADLINE_S, "both done")
        assert d.terminate() == 0
    rows = {Path(f["path"]).name: f for f in files}
    samples = {s["sample_id"]: s for s in sb.samples()}
    assert [s["state"] for s in samples.values()] == ["confirmed", "confirmed"]
    mp = samples[rows["big.fastq"]["sample_id"]]
    assert mp["route"] == "multipart" and mp["filename"] == "big.fastq" and mp["size"] == big.stat().st_size
    assert moto.keys(sb.multipart_s3.bucket) == [mp["key"]]
    assert moto.object(sb.multipart_s3.bucket, mp["key"]) == big.read_bytes()
    assert mp["etag"].endswith("-3")                      # 22 MiB in 10 MiB parts
    assert samples[rows["small.fastq"]["sample_id"]]["route"] == "standard"
    targets = [r["target"] for r in sb.requests()]
    assert targets.count("multipart_callback") == 1 and targets.count("init_multipart_upload") == 1
    assert targets.count("init_upload") == 1 and targets.count("s3") == 1     # small.fastq only
    assert not moto.open_uploads(sb.multipart_s3.bucket)


def test_in_process_upload_records_the_file_md5_and_reads_in_small_blocks(h, monkeypatch):
    """The queue records the whole file's MD5 (not the multipart ETag); no read holds more than 1 MiB."""
    largest: list[int] = []
    real = RangeReader.read

    def spy(self, n=-1):
        data = real(self, n)
        largest.append(len(data))
        return data

    monkeypatch.setattr(RangeReader, "read", spy)
    data = fastq_bytes(12 * MiB, seed=3)
    file_id = h.queue(h.file("reads.fastq", data))
    assert h.drive(file_id) == "done"
    row = h.store.get(file_id)
    assert row.md5 == hashlib.md5(data).hexdigest() and row.step == "mp_complete" and row.init is None
    assert max(largest) <= MiB
    [sample] = h.sb.samples()
    assert h.moto.object(h.bucket, sample["key"]) == data


# -- never call back what is not the bytes validated -----------------------------------------------

def test_etag_mismatch_at_complete_never_calls_back(h, monkeypatch):
    """CompleteMultipartUpload's ETag differs from md5(part MD5s)-N: no callback, that sample cancelled;
    the next attempt sends the file as a new sample and calls back once."""
    real, seen = S3Upload.complete, []

    def lying(self):
        etag = real(self)
        seen.append(etag)
        return "0" * 32 + "-2" if len(seen) == 1 else etag

    monkeypatch.setattr(S3Upload, "complete", lying)
    file_id = h.queue(h.file("reads.fastq", fastq_bytes(15 * MiB, seed=4)))
    assert h.drive(file_id, rounds=1) == "queued"
    row = h.store.get(file_id)
    assert "ETag" in row.error and row.step == "" and row.sample_id is None
    assert not h.requests_to("multipart_callback")
    assert list(h.samples().values()) == ["cancelled"]
    assert h.drive(file_id) == "done"
    assert sorted(h.samples().values()) == ["cancelled", "confirmed"] and len(h.callbacks()) == 1
    assert h.samples()[h.store.get(file_id).sample_id] == "confirmed"


def test_file_changed_during_the_upload_is_never_called_back(h):
    """The file is rewritten after its first part was sent: not completed, not called back, the multipart
    upload aborted, the sample cancelled, that version vanished."""
    path = h.file("reads.fastq", fastq_bytes(22 * MiB, seed=6))
    file_id = h.queue(path)
    sent = [0]

    def rewrite_after_first_part(n: int) -> None:
        sent[0] += n
        if sent[0] >= 10 * MiB and sent[0] - n < 10 * MiB:
            with open(path, "r+b") as f:
                f.write(b"@changed")

    assert h.drive(file_id, progress=rewrite_after_first_part) == "vanished"
    assert not h.requests_to("multipart_callback")
    assert list(h.samples().values()) == ["cancelled"]
    assert not h.moto.open_uploads(h.bucket) and not h.moto.keys(h.bucket)


@pytest.mark.parametrize("data", [bad_middle(13 * MiB), fastq_bytes(12 * MiB, seed=7)[:-7]],
                         ids=["bad-character-mid-file", "truncated-last-record"])
def test_invalid_file_over_the_threshold_is_rejected_aborted_and_cancelled(h, data):
    """A file the validator refuses: rejected with the reason, multipart upload aborted, sample cancelled,
    S3 holds nothing, the callback is never called."""
    file_id = h.queue(h.file("bad.fastq", data))
    assert h.drive(file_id) == "rejected"
    assert "bad.fastq" in h.store.get(file_id).error
    assert list(h.samples().values()) == ["cancelled"]
    assert not h.requests_to("multipart_callback")
    assert not h.moto.open_uploads(h.bucket) and not h.moto.keys(h.bucket)


# -- faults ----------------------------------------------------------------------------------------

def test_s3_unreachable_for_a_while_delays_the_file_and_resumes_at_the_next_part(h):
    """The link to S3 is cut while part 2 is being sent: retried, the file waits in the queue (never failed),
    then the same upload goes on at part 2 with the same sample and ends in one callback."""
    link = Link(h.moto.port)
    h.pipeline = h.make_pipeline(s3_endpoint_url=link.endpoint)
    data = fastq_bytes(25 * MiB, seed=8)
    file_id = h.queue(h.file("reads.fastq", data))
    sent = [0]

    def cut_during_part_2(n: int) -> None:      # part 1 is in S3 once part 2 is being read
        sent[0] += n
        if sent[0] > 11 * MiB and link.up:
            link.cut()

    try:
        assert h.drive(file_id, rounds=2, progress=cut_during_part_2) == "queued"
        row = h.store.get(file_id)
        assert row.state == "queued" and row.step == "mp_initialized" and "S3" in row.error and row.attempts == 2
        [upload] = h.moto.open_uploads(h.bucket)
        parts = h.moto.s3.list_parts(Bucket=h.bucket, Key=upload["Key"], UploadId=upload["UploadId"])["Parts"]
        assert [p["PartNumber"] for p in parts] == [1]
        link.restore()
        assert h.drive(file_id) == "done"
    finally:
        link.close()
    [sample] = h.sb.samples()
    assert sample["state"] == "confirmed" and len(h.requests_to("init_multipart_upload")) == 1
    assert h.moto.object(h.bucket, sample["key"]) == data and len(h.callbacks()) == 1


def test_file_deleted_while_its_upload_waits_is_vanished_and_the_upload_aborted(h):
    """A file deleted while its multipart upload waits for S3 to return: vanished, the parts already sent
    dropped (AbortMultipartUpload), the sample cancelled, nothing called back."""
    link = Link(h.moto.port)
    h.pipeline = h.make_pipeline(s3_endpoint_url=link.endpoint)
    path = h.file("reads.fastq", fastq_bytes(22 * MiB, seed=17))
    file_id = h.queue(path)
    sent = [0]

    def cut_during_part_2(n: int) -> None:
        sent[0] += n
        if sent[0] > 11 * MiB and link.up:
            link.cut()

    try:
        assert h.drive(file_id, rounds=1, progress=cut_during_part_2) == "queued"
        assert len(h.moto.open_uploads(h.bucket)) == 1
        link.restore()
        path.unlink()
        assert h.drive(file_id) == "vanished"
    finally:
        link.close()
    assert not h.moto.open_uploads(h.bucket) and not h.moto.keys(h.bucket)
    assert list(h.samples().values()) == ["cancelled"] and not h.requests_to("multipart_callback")


def test_lost_callback_answer_calls_back_again_for_the_same_sample(h):
    """After CompleteMultipartUpload the step is persisted: a callback whose answer is lost (or that never
    arrived) is sent again for the same sample; no new init, no new upload."""
    h.sb.add_fault(Fault("multipart_callback", "drop", times=None))
    file_id = h.queue(h.file("reads.fastq", fastq_bytes(12 * MiB, seed=9)))
    assert h.drive(file_id, rounds=1) == "queued"
    row = h.store.get(file_id)
    assert row.step == "mp_complete" and row.init and "secret" not in row.init
    h.sb.clear_faults()
    h.sb.add_fault(Fault("multipart_callback", "drop", after_body=True, times=1))
    assert h.drive(file_id) == "done"
    assert list(h.samples().values()) == ["confirmed"] and h.store.get(file_id).sample_id == row.sample_id
    assert len(h.requests_to("init_multipart_upload")) == 1 and len(h.moto.keys(h.bucket)) == 1


def test_repeated_callback_refused_as_already_imported_counts_as_done(h):
    """The callback's answer is lost, and One Codex refuses the repeat with 400 '... already ...' (AlreadyDone
    from the client): the file is done with its sample, nothing cancelled, no new init."""
    h.sb.add_fault(Fault("multipart_callback", "drop", after_body=True, times=1))
    h.sb.add_fault(Fault("multipart_callback", "status", status=400, message="Sample already imported", times=1))
    with structlog.testing.capture_logs() as logged:
        file_id = h.queue(h.file("reads.fastq", fastq_bytes(12 * MiB, seed=18)))
        assert h.drive(file_id) == "done"
    row = h.store.get(file_id)
    assert list(h.samples().values()) == ["confirmed"] and h.samples()[row.sample_id] == "confirmed"
    assert [e["sample_id"] for e in logged if e["event"] == "upload.already_confirmed"] == [row.sample_id]
    assert len(h.requests_to("multipart_callback")) == 2 and not h.requests_to("cancel_upload")
    assert len(h.requests_to("init_multipart_upload")) == 1 and h.retry_reasons() == ["connection"]


def test_repeated_callback_refused_ambiguously_is_settled_by_asking_one_codex(h):
    """The callback's answer is lost and the repeat is refused with a 400 that does not say "already":
    GET /api/v1/samples/{id} says the sample is confirmed, so the file is done, nothing cancelled."""
    h.sb.add_fault(Fault("multipart_callback", "drop", after_body=True, times=1))
    h.sb.add_fault(Fault("multipart_callback", "status", status=400, message="not awaiting an import", times=1))
    file_id = h.queue(h.file("reads.fastq", fastq_bytes(12 * MiB, seed=19)))
    assert h.drive(file_id) == "done"
    row = h.store.get(file_id)
    assert list(h.samples().values()) == ["confirmed"] and h.samples()[row.sample_id] == "confirmed"
    assert [r["path"] for r in h.requests_to("samples")] == [f"/api/v1/samples/{row.sample_id}"]
    assert not h.requests_to("cancel_upload") and len(h.requests_to("init_multipart_upload")) == 1


def test_expired_credentials_get_a_new_init_and_the_old_sample_is_cancelled(h, monkeypatch):
    """S3 refuses the temporary credentials (ExpiredToken) mid-upload: the upload is aborted, its sample
    cancelled, a new init_multipart_upload sends the file again; one sample confirmed."""
    real, calls = S3Upload.send_part, []

    def expire_once(self, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise translate(_client_error("ExpiredToken", 400, "The provided token has expired."), "UploadPart")
        return real(self, **kw)

    monkeypatch.setattr(S3Upload, "send_part", expire_once)
    file_id = h.queue(h.file("reads.fastq", fastq_bytes(15 * MiB, seed=10)))
    assert h.drive(file_id) == "done"
    assert sorted(h.samples().values()) == ["cancelled", "confirmed"]
    assert len(h.requests_to("init_multipart_upload")) == 2 and len(h.callbacks()) == 1
    assert not h.moto.open_uploads(h.bucket) and len(h.moto.keys(h.bucket)) == 1
    assert h.retry_reasons() == ["credentials"]


def test_credentials_refused_again_and_again_fail_the_file_with_a_clear_message(h, monkeypatch):
    """AccessDenied for three sets of fresh credentials in a row: the file fails (no endless new samples),
    every sample is cancelled, nothing is called back."""
    def denied(self, **kw):
        raise translate(_client_error("AccessDenied", 403, "Access Denied"), "UploadPart")

    monkeypatch.setattr(S3Upload, "send_part", denied)
    file_id = h.queue(h.file("reads.fastq", fastq_bytes(12 * MiB, seed=11)))
    assert h.drive(file_id) == "failed"
    error = h.store.get(file_id).error
    assert "AccessDenied" in error and "3 new uploads" in error
    assert list(h.samples().values()) == ["cancelled"] * 3 and not h.requests_to("multipart_callback")


def test_shutdown_mid_upload_stops_sending_and_the_next_process_starts_again(h, tmp_path):
    """A stop during the upload ends it at once (Aborted, row back in the queue); a new pipeline (a new
    process: no credentials) cancels that sample and uploads the file as a new one, called back once."""
    data = fastq_bytes(22 * MiB, seed=12)
    file_id = h.queue(h.file("reads.fastq", data))

    def stop_once_the_upload_is_open(n: int) -> None:
        if h.pipeline.stop.is_set() is False and h.moto.open_uploads(h.bucket):
            h.pipeline.stop.set()

    assert h.drive(file_id, rounds=1, progress=stop_once_the_upload_is_open) == "queued"
    assert h.store.get(file_id).step == "mp_initialized"
    h.pipeline.close()
    h.pipeline = h.make_pipeline()
    assert h.drive(file_id) == "done"
    assert sorted(h.samples().values()) == ["cancelled", "confirmed"] and len(h.callbacks()) == 1
    [key] = h.moto.keys(h.bucket)
    assert h.moto.object(h.bucket, key) == data


def test_daemon_killed_during_the_multipart_upload_ends_with_one_sample(tmp_path, watch_dir, moto, sb):
    """kill -9 of `seqdrop run` after a part reached S3: after the restart, exactly one callback and one
    confirmed sample for the file, the abandoned sample cancelled, the object byte-identical."""
    path = watch_dir / "big.fastq"
    path.write_bytes(fastq_bytes(24 * MiB, seed=13))
    bucket = sb.multipart_s3.bucket
    mp = f'multipart_threshold_bytes = {THRESHOLD}\nmultipart_s3_endpoint = "{moto.endpoint}"\n'
    # 80 Mbps: the first 10 MiB part takes about a second, the file about 2.5 s.
    cfg = write_config(tmp_path, watch=[watch_dir], api_url=sb.api_url, max_mbps=80, upload_extra=mp)

    def a_part_in_s3() -> bool:
        return any(moto.s3.list_parts(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"]).get("Parts")
                   for u in moto.open_uploads(bucket))

    with Daemon(cfg) as d:
        d.wait_ready()
        wait_for(a_part_in_s3, DEADLINE_S, "a part of big.fastq in S3")
        d.kill()
    assert not [s for s in sb.samples() if s["state"] == "confirmed"]
    write_config(tmp_path, watch=[watch_dir], api_url=sb.api_url, upload_extra=mp)
    with Daemon(cfg) as d:
        files = d.wait_files(all_in("done", ["big.fastq"]), DEADLINE_S, "big.fastq done after the restart")
        assert d.terminate() == 0
    states = {s["sample_id"]: s["state"] for s in sb.samples()}
    assert sorted(states.values()) == ["cancelled", "confirmed"]
    assert states[files[0]["sample_id"]] == "confirmed"
    assert len([r for r in sb.requests() if r["target"] == "multipart_callback"]) == 1
    [key] = moto.keys(bucket)
    assert moto.object(bucket, key) == path.read_bytes()


# -- secrets ---------------------------------------------------------------------------------------

def test_s3_credentials_are_never_logged_or_stored_and_the_api_key_never_reaches_s3(h, tmp_path):
    """The temporary credentials appear in no log event and nowhere in the queue files; S3 requests carry
    the temporary access key and no trace of the One Codex API key."""
    sent: list[str] = []
    connector = S3Connector(endpoint_url=h.moto.endpoint)
    connector._session.register(
        "before-send.s3", lambda request, **kw: sent.append(f"{request.url} {dict(request.headers)!r}"))
    h.pipeline = h.make_pipeline(s3_connector=connector)
    h.sb.add_fault(Fault("multipart_callback", "status", status=503, times=1))
    with structlog.testing.capture_logs() as events:
        file_id = h.queue(h.file("reads.fastq", fastq_bytes(12 * MiB, seed=14)))
        assert h.drive(file_id) == "done"
    [sample] = h.sb.samples()
    secret, key_id = sample["upload_aws_secret_access_key"], sample["upload_aws_access_key_id"]
    text = repr(events)
    assert "upload.s3_complete" in text and "upload.retry_scheduled" in text
    assert secret not in text and key_id not in text
    queue_bytes = b"".join(p.read_bytes() for p in tmp_path.glob("queue.sqlite3*"))
    assert secret.encode() not in queue_bytes and key_id.encode() not in queue_bytes
    assert sent and all(API_KEY not in r and secret not in r for r in sent)
    assert all(f"Credential={key_id}/" in r for r in sent)


# -- the pieces ------------------------------------------------------------------------------------

def _client_error(code: str, status: int, message: str = "", headers: dict | None = None):
    return botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": message},
         "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": headers or {}}}, "UploadPart")


@pytest.mark.parametrize("exc,kind", [
    (_client_error("SlowDown", 503, "Please reduce your request rate."), Transient),
    (_client_error("InternalError", 500), Transient),
    (_client_error("ServiceUnavailable", 503, headers={"retry-after": "7"}), Transient),
    (_client_error("RequestTimeout", 400), Transient),
    (_client_error("BadDigest", 400), Transient),
    (_client_error("ExpiredToken", 400, "The provided token has expired."), PolicyExpired),
    (_client_error("AccessDenied", 403, "Access Denied"), PolicyExpired),
    (_client_error("InvalidAccessKeyId", 403), PolicyExpired),
    (_client_error("NoSuchUpload", 404), PolicyExpired),
    (_client_error("NoSuchBucket", 404), Permanent),
    (_client_error("EntityTooLarge", 400), Permanent),
    (_client_error("InvalidPart", 400), Permanent),
    (botocore.exceptions.EndpointConnectionError(endpoint_url="https://s3.amazonaws.com"), Transient),
    (botocore.exceptions.ConnectionClosedError(endpoint_url="https://s3.amazonaws.com"), Transient),
    (botocore.exceptions.ReadTimeoutError(endpoint_url="https://s3.amazonaws.com"), Transient),
    (botocore.exceptions.ConnectTimeoutError(endpoint_url="https://s3.amazonaws.com"), Transient),
    (botocore.exceptions.ParamValidationError(report="bad"), Permanent),
], ids=lambda x: x.__name__ if isinstance(x, type) else (
    x.response["Error"]["Code"] if isinstance(x, botocore.exceptions.ClientError) else type(x).__name__))
def test_botocore_errors_are_sorted_by_what_happens_next(exc, kind):
    """Connection errors, 5xx, SlowDown → Transient; refused credentials / a lost upload → PolicyExpired
    (init again); other refusals → Permanent; each message names the operation."""
    out = translate(exc, "UploadPart 2/3")
    assert type(out) is kind and "UploadPart 2/3" in str(out)
    if "retry-after" in str(getattr(exc, "response", "")):
        assert out.retry_after_s == 7.0


@pytest.mark.parametrize("exc,reason", [
    (_client_error("SlowDown", 503, "Please reduce your request rate."), "slowdown"),
    (_client_error("InternalError", 500), "http_500"),
    (_client_error("ServiceUnavailable", 503), "http_503"),
    (_client_error("RequestTimeout", 400), "timeout"),
    (_client_error("BadDigest", 400), "http_400"),
    (botocore.exceptions.EndpointConnectionError(endpoint_url="https://s3.amazonaws.com"), "connection"),
    (botocore.exceptions.ConnectionClosedError(endpoint_url="https://s3.amazonaws.com"), "connection"),
    (botocore.exceptions.ReadTimeoutError(endpoint_url="https://s3.amazonaws.com"), "timeout"),
    (botocore.exceptions.ConnectTimeoutError(endpoint_url="https://s3.amazonaws.com"), "timeout"),
], ids=lambda x: x if isinstance(x, str) else (
    x.response["Error"]["Code"] if isinstance(x, botocore.exceptions.ClientError) else type(x).__name__))
def test_transient_botocore_errors_carry_their_reason(exc, reason):
    """The retries metric's label comes from the error's kind: S3's code when it says more than the
    status (SlowDown, RequestTimeout), else the status; a timeout or a broken connection."""
    out = translate(exc, "UploadPart 1/2")
    assert isinstance(out, Transient) and out.reason == reason


def test_part_size_follows_the_official_clients_rule():
    """The smallest of 10..100 MiB giving fewer than 10,000 parts; One Codex's 20 GB takes 10 MiB parts."""
    assert choose_part_size(6 * 1024**3) == 10 * MiB
    assert choose_part_size(20 * 1000**3) == 10 * MiB
    assert choose_part_size(9999 * 10 * MiB) == 10 * MiB and choose_part_size(10_000 * 10 * MiB) == 20 * MiB
    assert choose_part_size(200 * 1024**3) == 30 * MiB
    with pytest.raises(Permanent):
        choose_part_size(10_000 * 100 * MiB)


def test_multipart_etag_is_the_md5_of_the_part_digests():
    """md5(concat of binary part MD5s)-N, as S3 computes it."""
    parts = [b"a" * 10, b"b" * 7]
    digests = [hashlib.md5(p).digest() for p in parts]
    assert multipart_etag(digests) == hashlib.md5(b"".join(digests)).hexdigest() + "-2"


def test_range_reader_hashes_each_byte_once_across_two_passes(tmp_path):
    """botocore reads a part twice over http (signature, then send): the MD5 and on_new see it once;
    seek/tell/len behave; a file that got shorter is FileChanged; a stop request is Aborted."""
    p = tmp_path / "f"
    p.write_bytes(bytes(range(256)) * 100)
    fd = os.open(p, os.O_RDONLY)
    try:
        seen: list[tuple[int, int]] = []
        r = RangeReader(fd, 1000, 5000, on_new=lambda off, b: seen.append((off, len(b))))
        assert len(r) == 5000
        first = b"".join(iter(lambda: r.read(1500), b""))
        r.seek(0)
        second = r.read()
        assert first == second == p.read_bytes()[1000:6000]
        assert r.md5.hexdigest() == hashlib.md5(first).hexdigest()
        assert sum(n for _, n in seen) == 5000 and seen[0][0] == 1000 and r.tell() == 5000
        short = RangeReader(fd, 25000, 1000, on_new=lambda off, b: None)
        with pytest.raises(FileChanged):
            short.read(1000)
        stopped = RangeReader(fd, 0, 10, on_new=lambda off, b: None, should_abort=lambda: True)
        with pytest.raises(Aborted):
            stopped.read(10)
        assert isinstance(stopped.error, Aborted)
    finally:
        os.close(fd)


def test_callback_url_off_the_api_host_is_refused_and_the_sample_cancelled(h, monkeypatch):
    """An init answer whose callback_url names another host: the file fails, the key is not sent there,
    the sample is cancelled."""
    real = OneCodexClient._api

    def tampered(self, method, path, **kw):
        body = real(self, method, path, **kw)
        if path.endswith("init_multipart_upload"):
            body["callback_url"] = "https://elsewhere.example.com/callback"
        return body

    monkeypatch.setattr(OneCodexClient, "_api", tampered)
    file_id = h.queue(h.file("reads.fastq", fastq_bytes(2 * MiB, seed=15)))
    assert h.drive(file_id) == "failed"
    assert "callback_url" in h.store.get(file_id).error
    assert list(h.samples().values()) == ["cancelled"]


def test_an_init_answer_of_another_shape_fails_the_file_once(h, monkeypatch):
    """An init_multipart_upload answer lacking the expected fields (the route is unverified): failed with
    what is missing, the sample it created cancelled, no retry storm of new samples."""
    real = OneCodexClient._api

    def tampered(self, method, path, **kw):
        body = real(self, method, path, **kw)
        if path.endswith("init_multipart_upload"):
            del body["upload_aws_secret_access_key"]
        return body

    monkeypatch.setattr(OneCodexClient, "_api", tampered)
    file_id = h.queue(h.file("reads.fastq", fastq_bytes(2 * MiB, seed=16)))
    assert h.drive(file_id) == "failed"
    assert "upload_aws_secret_access_key" in h.store.get(file_id).error
    assert list(h.samples().values()) == ["cancelled"] and len(h.requests_to("init_multipart_upload")) == 1
