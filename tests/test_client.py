"""daemon.upload.client: the answers of the API and of S3 (the sandbox over loopback) become the
exceptions of daemon.errors, carrying facts (a Transient's reason, AlreadyDone) instead of words."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from harness import fastq_bytes

from daemon.errors import AlreadyDone, AuthError, Permanent, PolicyExpired, Transient
from daemon.sandbox import Fault, Sandbox
from daemon.upload.client import InitResult, OneCodexClient
from daemon.upload.formdata import FormDataBody

KEY = "sk_test_client_0123456789"


@pytest.fixture
def sb():
    with Sandbox(api_keys=(KEY,)) as sandbox:
        yield sandbox


@pytest.fixture
def client(sb):
    return OneCodexClient(sb.api_url, KEY, connect_timeout_s=2, read_timeout_s=5)


def _post(client: OneCodexClient, path: Path) -> InitResult:
    init = client.init_upload(path.name, path.stat().st_size)
    client.post_to_s3(init, FormDataBody(init.fields, path=str(path), filename=path.name,
                                         size=path.stat().st_size))
    return init


@pytest.fixture
def reads(tmp_path) -> Path:
    path = tmp_path / "reads.fastq"
    path.write_bytes(fastq_bytes(20_000))
    return path


# -- Transient.reason ----------------------------------------------------------------------------

@pytest.mark.parametrize("fault,reason,retry_after_s", [
    (Fault("init_upload", "status", status=429, retry_after_s=7), "http_429", 7.0),
    (Fault("init_upload", "status", status=503, message="maintenance"), "http_503", None),
    (Fault("init_upload", "status", status=504), "http_504", None),
    (Fault("init_upload", "drop"), "connection", None),
], ids=["429", "503", "504", "dropped"])
def test_api_failures_carry_their_reason(sb, client, fault, reason, retry_after_s):
    """A 429, a 5xx or a dropped connection from the API is Transient with the reason the metrics count."""
    sb.add_fault(fault)
    with pytest.raises(Transient) as caught:
        client.init_upload("reads.fastq", 1000)
    assert caught.value.reason == reason
    assert caught.value.retry_after_s == retry_after_s


def test_connection_refused_is_transient_with_reason_connection():
    """Nothing listening on the API's port: Transient, reason 'connection'."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]       # closed again when the block ends: connecting is refused
    client = OneCodexClient(f"http://127.0.0.1:{port}", KEY, connect_timeout_s=2, read_timeout_s=2)
    with pytest.raises(Transient, match="Connection refused") as caught:
        client.probe()
    assert caught.value.reason == "connection"


def test_an_answer_slower_than_the_read_timeout_is_transient_with_reason_timeout(sb):
    """The API holds its answer past the read timeout: Transient, reason 'timeout'."""
    sb.add_fault(Fault("init_upload", "delay", delay_s=1.0))
    client = OneCodexClient(sb.api_url, KEY, connect_timeout_s=2, read_timeout_s=0.2)
    with pytest.raises(Transient) as caught:
        client.init_upload("reads.fastq", 1000)
    assert caught.value.reason == "timeout"


@pytest.mark.parametrize("fault,reason", [
    (Fault("s3", "status", status=503, code="SlowDown", message="Please reduce your request rate."), "slowdown"),
    (Fault("s3", "status", status=500, code="InternalError"), "http_500"),
    (Fault("s3", "status", status=502), "http_502"),
    (Fault("s3", "status", status=400, code="RequestTimeout"), "timeout"),
], ids=["SlowDown", "InternalError", "502", "RequestTimeout"])
def test_s3_post_failures_carry_their_reason(sb, client, reads, fault, reason):
    """S3's SlowDown, 5xx and RequestTimeout answers to the POST are Transient with their reason."""
    init = client.init_upload(reads.name, reads.stat().st_size)
    sb.add_fault(fault)
    body = FormDataBody(init.fields, path=str(reads), filename=reads.name, size=reads.stat().st_size)
    with pytest.raises(Transient) as caught:
        client.post_to_s3(init, body)
    assert caught.value.reason == reason


def test_s3_policy_expired_is_not_transient(sb, client, reads):
    """S3's 'Policy expired' is PolicyExpired (init again), not a retry of the same POST."""
    init = client.init_upload(reads.name, reads.stat().st_size)
    sb.add_fault(Fault("s3", "status", status=403, code="AccessDenied", message="Policy expired."))
    body = FormDataBody(init.fields, path=str(reads), filename=reads.name, size=reads.stat().st_size)
    with pytest.raises(PolicyExpired):
        client.post_to_s3(init, body)


# -- AlreadyDone ---------------------------------------------------------------------------------

def test_repeated_confirm_refused_with_already_is_already_done(sb, client, reads):
    """A confirm the server refuses because the sample is already confirmed raises AlreadyDone, which
    keeps the refusal's text and the server's own words."""
    init = _post(client, reads)
    client.confirm_upload(init.sample_id)
    sb.add_fault(Fault("confirm_upload", "status", status=400, message="Sample already confirmed"))
    with pytest.raises(AlreadyDone) as caught:
        client.confirm_upload(init.sample_id)
    assert caught.value.answer == "Sample already confirmed"
    assert str(caught.value) == "/api/v1/samples/confirm_upload: HTTP 400: Sample already confirmed"


@pytest.mark.parametrize("fault,kind", [
    (Fault("confirm_upload", "status", status=400, message="upload not found"), Permanent),
    (Fault("confirm_upload", "status", status=503, message="already busy, try later"), Transient),
    (Fault("confirm_upload", "status", status=401, message="already revoked key"), AuthError),
], ids=["other-400", "503-with-already", "401-with-already"])
def test_confirm_refusals_that_are_not_already_done_keep_their_class(sb, client, reads, fault, kind):
    """Only a refusal for good that says 'already' is AlreadyDone: other refusals, and a 503 or 401 whose
    message happens to say 'already', keep their class (retry, pause)."""
    init = _post(client, reads)
    sb.add_fault(fault)
    with pytest.raises(kind) as caught:
        client.confirm_upload(init.sample_id)
    assert not isinstance(caught.value, AlreadyDone)


def test_cancel_refused_as_already_successful_is_already_done(sb, client, reads):
    """A cancel answered 'Upload already successful' (as the official client reads it) is AlreadyDone."""
    init = _post(client, reads)
    sb.add_fault(Fault("cancel_upload", "status", status=400, message="Upload already successful"))
    with pytest.raises(AlreadyDone) as caught:
        client.cancel_upload(init.sample_id)
    assert caught.value.answer == "Upload already successful"


def test_cancel_of_a_confirmed_sample_refused_otherwise_is_only_permanent(sb, client, reads):
    """The sandbox refuses to cancel a confirmed standard sample with '... already confirmed and cannot be
    cancelled': not 'already successful', so it is a plain Permanent (the caller's cancel failed)."""
    init = _post(client, reads)
    client.confirm_upload(init.sample_id)
    with pytest.raises(Permanent, match="already confirmed") as caught:
        client.cancel_upload(init.sample_id)
    assert not isinstance(caught.value, AlreadyDone)
