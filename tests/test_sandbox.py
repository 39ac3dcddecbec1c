"""The sandbox: a strict One Codex API + S3 browser-POST emulator, exercised over real loopback HTTP."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import requests
from harness import wait_for

from daemon.sandbox import Fault, Sandbox, main, parse_fault
from daemon.sandbox.multipart import BodyIncomplete, BodyReader, read_form

KEY = "sandbox-key"
DATA = b"@r1\nACGTACGTNN\n+\nIIIIIIIIII\n@r2\nTTTT\n+\nIIII\n"
BOUNDARY = "seqdropTestBoundary0123456789"


@pytest.fixture
def sb(tmp_path):
    with Sandbox(data_dir=tmp_path / "sandbox", api_keys=(KEY,)) as sandbox:
        yield sandbox


def init(sb, filename="reads.fq", size=len(DATA), key=KEY, **extra):
    body = {"filename": filename, "size": size, "upload_type": "standard", **extra}
    return requests.post(f"{sb.api_url}/api/v1/samples/init_upload", json=body, auth=(key, ""), timeout=5)


def ticket(sb, **kw) -> dict:
    response = init(sb, **kw)
    assert response.status_code == 200, response.text
    return response.json()


def post_file(t, data=DATA, filename="reads.fq", fields=None, **kw):
    fields = t["additional_fields"] if fields is None else fields
    return requests.post(t["upload_url"], data=fields, files={"file": (filename, data)}, timeout=5, **kw)


def confirm(sb, sample_id, key=KEY, **kw):
    return requests.post(f"{sb.api_url}/api/v1/samples/confirm_upload",
                         json={"sample_id": sample_id, "upload_type": "standard"}, auth=(key, ""), **kw)


def raw_multipart(parts) -> tuple[bytes, dict]:
    """A multipart body in exactly the given part order: (name, bytes, filename or None)."""
    out = b""
    for name, value, filename in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n"
    out += f"--{BOUNDARY}--\r\n".encode()
    return out, {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


def fields_parts(t):
    return [(name, str(value).encode(), None) for name, value in t["additional_fields"].items()]


def s3_error(response) -> tuple[str, str]:
    root = ET.fromstring(response.content)
    assert root.tag == "Error"
    return root.findtext("Code"), root.findtext("Message")


def sample(sb, sample_id) -> dict:
    return next(s for s in sb.samples() if s["sample_id"] == sample_id)


# -- the happy path -------------------------------------------------------------------------------

def test_init_post_confirm_stores_identical_object_with_md5_etag(sb):
    """init → S3 POST → confirm: 201 PostResponse whose ETag is the MD5; the stored bytes are identical."""
    t = ticket(sb)
    assert re.fullmatch(r"[0-9a-f]{16}", t["sample_id"]) and t["upload_url"] == sb.s3_url
    fields = t["additional_fields"]
    assert list(fields) == ["AWSAccessKeyId", "acl", "key", "policy", "signature", "success_action_status",
                            "x-amz-server-side-encryption"]
    assert re.fullmatch(rf"user_[0-9a-f]{{16}}/file_{t['sample_id']}/\$\{{filename\}}", fields["key"])
    policy = json.loads(base64.b64decode(fields["policy"]))
    assert policy["expiration"].endswith("Z") and ["content-length-range", 0, len(DATA)] in policy["conditions"]

    posted = post_file(t)
    md5 = hashlib.md5(DATA).hexdigest()
    assert posted.status_code == 201 and posted.headers["ETag"] == f'"{md5}"'
    root = ET.fromstring(posted.content)
    assert root.tag == "PostResponse" and root.findtext("ETag") == f'"{md5}"'
    assert root.findtext("Key") == fields["key"].replace("${filename}", "reads.fq")
    assert sample(sb, t["sample_id"])["state"] == "uploaded"

    confirmed = confirm(sb, t["sample_id"])
    assert confirmed.status_code == 200 and "Date" in confirmed.headers
    assert confirmed.json() == {"message": "Upload confirmed.", "sample": {"$ref": f"/api/v1/samples/{t['sample_id']}"},
                                "success": True}
    s = sample(sb, t["sample_id"])
    assert (s["state"], s["md5"], s["confirm_count"]) == ("confirmed", md5, 1)
    assert Path(s["object_path"]).read_bytes() == DATA


def test_second_post_to_same_key_overwrites(sb):
    """A second POST for the same key replaces the object, like S3."""
    t = ticket(sb, size=100)
    assert post_file(t, b"first").status_code == 201
    assert post_file(t, b"second!").status_code == 201
    s = sample(sb, t["sample_id"])
    assert Path(s["object_path"]).read_bytes() == b"second!" and s["md5"] == hashlib.md5(b"second!").hexdigest()


def test_store_objects_false_only_hashes(tmp_path):
    """store_objects=False records the MD5 but keeps no object."""
    with Sandbox(data_dir=tmp_path / "s", store_objects=False) as sb:
        t = ticket(sb)
        assert post_file(t).status_code == 201
        s = sample(sb, t["sample_id"])
        assert s["md5"] == hashlib.md5(DATA).hexdigest() and s["object_path"] is None
        assert not any(p.is_file() for p in (tmp_path / "s").rglob("*"))


def test_own_data_dir_is_removed_on_stop():
    """Without data_dir the sandbox uses its own temporary folder and removes it on stop."""
    with Sandbox() as sb:
        data_dir = sb.data_dir
        assert post_file(ticket(sb)).status_code == 201
    assert not data_dir.exists()


# -- the API's checks -----------------------------------------------------------------------------

@pytest.mark.parametrize("body", [
    {"filename": "../etc/passwd", "size": 10, "upload_type": "standard"},
    {"filename": "noextension", "size": 10, "upload_type": "standard"},
    {"filename": "reads.fq", "size": 0, "upload_type": "standard"},
    {"filename": "reads.fq", "size": 20 * 1000**3 + 1, "upload_type": "standard"},
    {"filename": "reads.fq", "size": "10", "upload_type": "standard"},
    {"filename": "reads.fq", "size": 10},
])
def test_init_upload_refuses_invalid_requests(sb, body):
    """init_upload answers 400 JSON {message, status} for a bad filename, size or upload_type."""
    response = requests.post(f"{sb.api_url}/api/v1/samples/init_upload", json=body, auth=(KEY, ""))
    assert response.status_code == 400 and response.json()["status"] == 400 and response.json()["message"]


def test_init_upload_accepts_the_largest_sample(sb):
    """20 GB (decimal) is the largest size init_upload accepts; names with spaces and brackets pass."""
    assert init(sb, filename="run 1 [lane-2](x).fastq.gz", size=20 * 1000**3).status_code == 200


def test_auth_refusals_and_key_rotation(sb):
    """Missing, wrong or revoked keys get 401 JSON; a restored key works again."""
    url = f"{sb.api_url}/api/v1/samples?per_page=1"
    assert requests.get(url).status_code == 401
    wrong = requests.get(url, auth=("nope", ""))
    assert wrong.status_code == 401 and wrong.json()["status"] == 401
    assert requests.get(url, auth=(KEY, "password")).status_code == 401
    assert requests.get(url, auth=(KEY, "")).status_code == 200
    sb.set_api_keys([])
    assert init(sb).status_code == 401
    sb.set_api_keys([KEY])
    assert init(sb).status_code == 200


def test_api_key_is_redacted_in_request_log(sb):
    """requests() records the Authorization header without the key."""
    init(sb)
    entry = sb.requests()[-1]
    assert entry["target"] == "init_upload" and entry["status"] == 200
    assert entry["headers"]["Authorization"] == "Basic <redacted>"
    assert KEY not in json.dumps(sb.requests())


def test_confirm_is_idempotent_and_checks_state(sb):
    """confirm needs an uploaded object, 404s unknown samples, and answers 200 again when repeated."""
    t = ticket(sb)
    assert confirm(sb, t["sample_id"]).status_code == 400
    assert confirm(sb, "0123456789abcdef").status_code == 404
    post_file(t)
    assert confirm(sb, t["sample_id"]).status_code == 200
    assert confirm(sb, t["sample_id"]).status_code == 200
    assert sample(sb, t["sample_id"])["confirm_count"] == 2


def test_cancel_upload(sb):
    """cancel marks a sample cancelled; a cancelled sample cannot be confirmed; a confirmed one cannot be cancelled."""
    t = ticket(sb)
    post_file(t)
    cancel = requests.post(f"{sb.api_url}/api/v1/samples/cancel_upload", json={"sample_id": t["sample_id"]},
                           auth=(KEY, ""))
    assert cancel.status_code == 200 and cancel.json() == {"success": True}
    assert sample(sb, t["sample_id"])["state"] == "cancelled"
    assert confirm(sb, t["sample_id"]).status_code == 400
    t2 = ticket(sb)
    post_file(t2)
    confirm(sb, t2["sample_id"])
    again = requests.post(f"{sb.api_url}/api/v1/samples/cancel_upload", json={"sample_id": t2["sample_id"]},
                          auth=(KEY, ""))
    assert again.status_code == 400 and sample(sb, t2["sample_id"])["state"] == "confirmed"


def test_samples_lists_confirmed_samples_up_to_per_page(sb):
    """GET /api/v1/samples?per_page=N lists at most N confirmed samples."""
    for _ in range(2):
        t = ticket(sb)
        post_file(t)
        confirm(sb, t["sample_id"])
    ticket(sb)  # initialized only: not listed
    listed = requests.get(f"{sb.api_url}/api/v1/samples?per_page=1", auth=(KEY, ""))
    assert listed.status_code == 200 and len(listed.json()) == 1
    assert len(requests.get(f"{sb.api_url}/api/v1/samples", auth=(KEY, "")).json()) == 2


def test_unknown_path_is_404_json_with_date(sb):
    """An unknown API path answers 404 JSON with a Date header."""
    response = requests.get(f"{sb.api_url}/api/v2/whatever", auth=(KEY, ""))
    assert response.status_code == 404 and response.json()["status"] == 404 and "Date" in response.headers


# -- S3's checks ----------------------------------------------------------------------------------

def test_expired_policy_is_access_denied(sb):
    """A POST after the policy's expiration gets 403 AccessDenied "Policy expired" and stores nothing."""
    sb.policy_lifetime_s = -1.0
    t = ticket(sb)
    response = post_file(t)
    assert response.status_code == 403
    assert s3_error(response) == ("AccessDenied", "Invalid according to Policy: Policy expired.")
    assert sample(sb, t["sample_id"])["state"] == "initialized"


def test_tampered_policy_is_signature_mismatch(sb):
    """A policy changed by the client no longer matches its signature: 403 SignatureDoesNotMatch."""
    t = ticket(sb)
    document = json.loads(base64.b64decode(t["additional_fields"]["policy"]))
    document["conditions"][-1] = ["content-length-range", 0, 10**12]
    fields = dict(t["additional_fields"], policy=base64.b64encode(json.dumps(document).encode()).decode())
    response = post_file(t, fields=fields)
    assert response.status_code == 403 and s3_error(response)[0] == "SignatureDoesNotMatch"


def test_condition_failures(sb):
    """A field that breaks a condition, or that no condition covers, is 403 AccessDenied; too big a file is EntityTooLarge."""
    t = ticket(sb)
    wrong_acl = post_file(t, fields=dict(t["additional_fields"], acl="public-read"))
    assert wrong_acl.status_code == 403
    assert s3_error(wrong_acl) == ("AccessDenied", 'Invalid according to Policy: Policy Condition failed: '
                                                   '{"acl": "private"}')
    wrong_key = post_file(t, fields=dict(t["additional_fields"], key="user_0000000000000000/file_x/${filename}"))
    assert s3_error(wrong_key)[1].startswith('Invalid according to Policy: Policy Condition failed: ["starts-with"')
    extra = post_file(t, fields=dict(t["additional_fields"], **{"Content-Type": "text/plain"}))
    assert s3_error(extra) == ("AccessDenied", "Invalid according to Policy: Extra input fields: content-type")
    too_big = post_file(t, data=DATA + b"X")
    assert too_big.status_code == 400 and s3_error(too_big)[0] == "EntityTooLarge"
    assert sample(sb, t["sample_id"])["state"] == "initialized"


def test_field_after_file_is_refused(sb):
    """The file must be the last part: a field after it gets 400 InvalidArgument and nothing is stored."""
    t = ticket(sb)
    parts = fields_parts(t)
    body, headers = raw_multipart(parts[:-1] + [("file", DATA, "reads.fq"), parts[-1]])
    response = requests.post(t["upload_url"], data=body, headers=headers)
    code, message = s3_error(response)
    assert response.status_code == 400 and code == "InvalidArgument"
    assert "x-amz-server-side-encryption" in message and "order of the fields" in message
    assert sample(sb, t["sample_id"])["state"] == "initialized"


def test_missing_file_is_refused(sb):
    """A POST without a file part gets 400 InvalidArgument."""
    t = ticket(sb)
    body, headers = raw_multipart(fields_parts(t))
    response = requests.post(t["upload_url"], data=body, headers=headers)
    assert response.status_code == 400 and s3_error(response)[0] == "InvalidArgument"


def test_chunked_body_is_missing_content_length(sb):
    """A chunked body (no Content-Length) gets 411 MissingContentLength."""
    t = ticket(sb)
    body, headers = raw_multipart(fields_parts(t) + [("file", DATA, "reads.fq")])
    response = requests.post(t["upload_url"], data=iter([body[:100], body[100:]]), headers=headers)
    assert response.status_code == 411 and s3_error(response)[0] == "MissingContentLength"


def test_authorization_header_to_s3_is_refused(sb):
    """An Authorization header on the S3 POST gets 400 InvalidArgument and is recorded (redacted)."""
    t = ticket(sb)
    response = post_file(t, auth=(KEY, ""))
    assert response.status_code == 400
    assert s3_error(response)[0] == "InvalidArgument" and "Only one auth mechanism" in s3_error(response)[1]
    s3_entry = [r for r in sb.requests() if r["target"] == "s3"][-1]
    assert s3_entry["headers"]["Authorization"] == "Basic <redacted>" and s3_entry["status"] == 400


def test_not_multipart_is_precondition_failed(sb):
    """A POST that is not multipart/form-data gets 412 PreconditionFailed."""
    t = ticket(sb)
    response = requests.post(t["upload_url"], data=t["additional_fields"])
    assert response.status_code == 412 and s3_error(response)[0] == "PreconditionFailed"


def test_short_body_stores_nothing(sb):
    """A body shorter than its Content-Length (client gone) stores nothing and marks nothing."""
    t = ticket(sb)
    body, headers = raw_multipart(fields_parts(t) + [("file", DATA, "reads.fq")])
    port = int(sb.s3_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall((f"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: {headers['Content-Type']}\r\n"
                      f"Content-Length: {len(body) + 1000}\r\n\r\n").encode() + body)
    entry = wait_for(lambda: [r for r in sb.requests() if r["target"] == "s3"])[-1]
    assert entry.get("incomplete") and entry["status"] is None
    assert sample(sb, t["sample_id"])["state"] == "initialized"
    assert not any(p.is_file() for p in sb.data_dir.rglob("*"))


# -- faults ---------------------------------------------------------------------------------------

def test_status_fault_with_retry_after_on_api_and_s3(sb):
    """status faults answer JSON on the API and S3 XML (SlowDown for 503) with Retry-After, then pass."""
    sb.add_fault(Fault(target="init_upload", kind="status", status=429, retry_after_s=7))
    limited = init(sb)
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "7"
    assert limited.json()["status"] == 429
    t = ticket(sb)
    sb.add_fault(Fault(target="s3", kind="status", status=503, retry_after_s=1.5))
    slow = post_file(t)
    assert slow.status_code == 503 and s3_error(slow)[0] == "SlowDown" and slow.headers["Retry-After"] == "2"
    assert post_file(t).status_code == 201


def test_drop_fault_loses_the_answer(sb):
    """drop closes the connection unanswered; for S3 without after_body nothing is stored."""
    sb.add_fault(Fault(target="init_upload", kind="drop"))
    with pytest.raises(requests.ConnectionError):
        init(sb)
    assert sb.samples() == []
    t = ticket(sb)
    sb.add_fault(Fault(target="s3", kind="drop"))
    with pytest.raises(requests.ConnectionError):
        post_file(t)
    assert sample(sb, t["sample_id"])["state"] == "initialized"
    assert post_file(t).status_code == 201


def test_drop_after_body_on_s3_stores_the_object(sb):
    """An S3 drop with after_body=True stores the object, then loses the answer."""
    t = ticket(sb)
    sb.add_fault(Fault(target="s3", kind="drop", after_body=True))
    with pytest.raises(requests.ConnectionError):
        post_file(t)
    assert sample(sb, t["sample_id"])["state"] == "uploaded"


def test_confirm_whose_answer_is_lost_is_still_confirmed(sb):
    """A confirm dropped after_body has confirmed server-side; confirming again answers 200."""
    t = ticket(sb)
    post_file(t)
    sb.add_fault(Fault(target="confirm_upload", kind="drop", after_body=True))
    with pytest.raises(requests.ConnectionError):
        confirm(sb, t["sample_id"])
    assert sample(sb, t["sample_id"])["state"] == "confirmed"
    assert confirm(sb, t["sample_id"]).status_code == 200
    assert sample(sb, t["sample_id"])["confirm_count"] == 2


def test_delay_fault_exceeds_client_timeout(sb):
    """delay holds the answer longer than the client's timeout; the next request is prompt."""
    sb.add_fault(Fault(target="samples", kind="delay", delay_s=3.0))
    with pytest.raises(requests.Timeout):
        requests.get(f"{sb.api_url}/api/v1/samples?per_page=1", auth=(KEY, ""), timeout=0.3)
    assert requests.get(f"{sb.api_url}/api/v1/samples?per_page=1", auth=(KEY, ""), timeout=2).status_code == 200


def test_fault_times_and_after(sb):
    """after skips the first N matching requests, times limits how many suffer; "any" matches every target."""
    sb.add_fault(Fault(target="init_upload", kind="status", status=503, times=2, after=1))
    assert [init(sb).status_code for _ in range(4)] == [200, 503, 503, 200]
    sb.add_fault(Fault(target="any", kind="status", status=500, times=None))
    assert init(sb).status_code == 500 and confirm(sb, "0123456789abcdef").status_code == 500
    assert sb.clear_faults() == 1
    assert init(sb).status_code == 200


def test_fault_validation_and_short_form():
    """Fault refuses unknown targets/kinds; the short form and JSON both parse."""
    with pytest.raises(ValueError):
        Fault(target="nowhere", kind="status")
    with pytest.raises(ValueError):
        parse_fault("s3:explode")
    assert parse_fault("init_upload:status:503:times=3") == Fault("init_upload", "status", status=503, times=3)
    assert parse_fault("confirm_upload:drop:after_body=true:times=none") == Fault(
        "confirm_upload", "drop", after_body=True, times=None)
    assert parse_fault('{"target": "s3", "kind": "delay", "delay_s": 2}') == Fault("s3", "delay", delay_s=2)


# -- admin HTTP interface -------------------------------------------------------------------------

def test_admin_endpoints(sb):
    """/_sandbox lets another process add and clear faults, read samples and requests, and change config."""
    admin = f"{sb.api_url}/_sandbox"
    added = requests.post(f"{admin}/faults", json={"target": "init_upload", "kind": "status", "status": 502})
    assert added.status_code == 201 and added.json()["status"] == 502
    assert requests.post(f"{admin}/faults", json={"target": "x", "kind": "status"}).status_code == 400
    assert init(sb).status_code == 502
    requests.post(f"{admin}/faults", json={"target": "init_upload", "kind": "status", "times": None})
    assert requests.delete(f"{admin}/faults").json() == {"cleared": 1}
    t = ticket(sb)
    assert [s["sample_id"] for s in requests.get(f"{admin}/samples").json()] == [t["sample_id"]]
    assert [r["target"] for r in requests.get(f"{admin}/requests").json()] == ["init_upload", "init_upload"]
    config = requests.post(f"{admin}/config", json={"policy_lifetime_s": 5, "api_keys": ["other"]})
    assert config.status_code == 200 and sb.policy_lifetime_s == 5.0
    assert init(sb).status_code == 401 and init(sb, key="other").status_code == 200
    assert requests.post(f"{admin}/config", json={"bogus": 1}).status_code == 400


# -- the streaming parser -------------------------------------------------------------------------

def test_multipart_reader_handles_delimiter_lookalikes_across_blocks():
    """Tiny blocks and boundary-like bytes in the file still yield the exact file and fields."""
    tricky = b"\r\n--seqdropTestBoundary\r\n-" * 50 + b"\r\n--" + b"end\r"
    body, _ = raw_multipart([("key", b"k/${filename}", None), ("file", tricky, "x.fa")])
    for block_size in (1, 3, 7, 64, 4096):
        received = io.BytesIO()
        form = read_form(BodyReader(io.BytesIO(body), len(body), block_size=block_size), BOUNDARY.encode(),
                         lambda filename: received)
        assert received.getvalue() == tricky and form.fields == [("key", "k/${filename}")]
        assert form.filename == "x.fa" and form.file_size == len(tricky)


def test_multipart_reader_reports_short_body():
    """A body cut short raises BodyIncomplete."""
    body, _ = raw_multipart([("file", DATA, "x.fa")])
    with pytest.raises(BodyIncomplete):
        read_form(BodyReader(io.BytesIO(body[:-10]), len(body)), BOUNDARY.encode(), lambda f: io.BytesIO())


class _StreamedBody:
    """A multipart body of `size` file bytes, generated block by block (constant memory), with a length."""

    def __init__(self, t: dict, size: int) -> None:
        head, _ = raw_multipart(fields_parts(t))
        head = head[: -len(f"--{BOUNDARY}--\r\n")]
        head += f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="big.fq"\r\n\r\n'.encode()
        self._tail = f"\r\n--{BOUNDARY}--\r\n".encode()
        self._head, self._size = head, size
        self._block = os.urandom(1024 * 1024)
        self._sent = -1
        self.md5 = hashlib.md5()
        self._length = len(head) + size + len(self._tail)

    def __len__(self) -> int:
        return self._length

    def read(self, _n: int = -1) -> bytes:
        if self._sent < 0:
            self._sent = 0
            return self._head
        if self._sent >= self._size:
            tail, self._tail = self._tail, b""
            return tail
        block = self._block[: self._size - self._sent]
        self._sent += len(block)
        self.md5.update(block)
        return block


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc for VmRSS")
def test_large_upload_streams_in_constant_memory(sb):
    """A ~300 MB body is received, hashed and stored while this process's RSS grows by less than 64 MB."""
    size = 300 * 1024 * 1024
    t = ticket(sb, filename="big.fq", size=size)
    body = _StreamedBody(t, size)
    baseline, peak, done = _rss_bytes(), [0], threading.Event()

    def sample_rss() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            done.wait(0.02)

    sampler = threading.Thread(target=sample_rss, daemon=True)
    sampler.start()
    try:
        response = requests.post(t["upload_url"], data=body, headers={
            "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}, timeout=60)
    finally:
        done.set()
        sampler.join()
    assert response.status_code == 201, response.text
    assert response.headers["ETag"] == f'"{body.md5.hexdigest()}"'
    s = sample(sb, t["sample_id"])
    assert Path(s["object_path"]).stat().st_size == size
    assert peak[0] - baseline < 64 * 1024 * 1024, f"RSS grew by {(peak[0] - baseline) >> 20} MiB"


# -- command line ---------------------------------------------------------------------------------

def test_cli_refuses_non_loopback_host(capsys):
    """`seqdrop sandbox --host 0.0.0.0` exits 2 with a clear message."""
    assert main(["--host", "0.0.0.0"]) == 2
    assert "loopback" in capsys.readouterr().err
    assert main(["--fault", "s3:explode"]) == 2


def test_cli_serves_until_sigterm(tmp_path):
    """`seqdrop sandbox` prints its URLs and config, serves with its --fault, and exits 0 on SIGTERM."""
    code = ("import sys; from daemon.sandbox import main; "
            "sys.exit(main(['--api-port', '0', '--s3-port', '0', '--fault', 'init_upload:status:503', "
            f"'--data-dir', {str(tmp_path)!r}]))")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=Path(__file__).resolve().parents[1])
    try:
        first = proc.stdout.readline()
        api_url = re.search(r"API on (http://\S+),", first).group(1)
        out = "".join(proc.stdout.readline() for _ in range(9))
        assert f'base_url = "{api_url}"' in out and "ONE_CODEX_API_KEY=sandbox-key" in out
        url = f"{api_url}/api/v1/samples/init_upload"
        body = {"filename": "a.fa", "size": 3, "upload_type": "standard"}
        assert requests.post(url, json=body, auth=("sandbox-key", "")).status_code == 503
        assert requests.post(url, json=body, auth=("sandbox-key", "")).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_stalled_upload_gets_request_timeout(sb):
    """A client that stops sending mid-body gets 400 RequestTimeout after s3_idle_timeout_s; nothing is stored."""
    sb.s3_idle_timeout_s = 0.3
    t = ticket(sb)
    body, headers = raw_multipart(fields_parts(t) + [("file", DATA, "reads.fq")])
    port = int(sb.s3_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall((f"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: {headers['Content-Type']}\r\n"
                      f"Content-Length: {len(body)}\r\n\r\n").encode() + body[:-20])
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400") and b"<Code>RequestTimeout</Code>" in answer
    assert sample(sb, t["sample_id"])["state"] == "initialized"


def test_s3_delay_fault_stores_after_the_wait(sb):
    """An S3 delay holds the answer past the client's timeout; the object is stored when the wait ends."""
    t = ticket(sb)
    sb.add_fault(Fault(target="s3", kind="delay", delay_s=0.6))
    with pytest.raises(requests.Timeout):
        requests.post(t["upload_url"], data=t["additional_fields"], files={"file": ("reads.fq", DATA)},
                      timeout=(5, 0.2))
    wait_for(lambda: sample(sb, t["sample_id"])["state"] == "uploaded")


# -- the multipart route (its S3 is an external server; here moto's) ---------------------------------

@pytest.fixture
def moto_url():
    from moto.server import ThreadedMotoServer
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)   # port 0: no race for it
    server.start()
    port = server.get_host_and_port()[1]
    yield f"http://127.0.0.1:{port}"
    requests.post(f"http://127.0.0.1:{port}/moto-api/reset", timeout=10)
    server.stop()


def init_mp(sb, filename="reads.fq", key=KEY, **extra):
    return requests.post(f"{sb.api_url}/api/v1/samples/init_multipart_upload", auth=(key, ""), timeout=10,
                         json={"filename": filename, "sample_id": None, "external_sample_id": None, **extra})


def test_multipart_init_without_an_s3_says_how_to_get_one(sb):
    """With no --multipart-s3-endpoint, init_multipart_upload is a 400 that names the option; no sample."""
    r = init_mp(sb)
    assert r.status_code == 400 and "--multipart-s3-endpoint" in r.json()["message"]
    assert sb.samples() == []


def test_multipart_init_upload_callback_and_cancel(tmp_path, moto_url):
    """init hands out bucket, key, credentials and a callback path; the callback checks the object is in S3
    and confirms; a repeat is answered the same; cancelling it then says "Upload already successful"."""
    with Sandbox(data_dir=tmp_path / "sb", api_keys=(KEY,), multipart_s3_endpoint=moto_url,
                 multipart_bucket="seqdrop-test-mp") as sb:
        assert init_mp(sb, filename="bad name?.fq").status_code == 400
        assert init_mp(sb, sample_id="abc").status_code == 400
        t = init_mp(sb).json()
        assert {"sample_id", "s3_bucket", "file_id", "upload_aws_access_key_id", "upload_aws_secret_access_key",
                "callback_url"} <= set(t) and t["s3_bucket"] == "seqdrop-test-mp"
        callback = f"{sb.api_url}{t['callback_url']}"
        body = {"s3_path": f"s3://{t['s3_bucket']}/{t['file_id']}", "filename": "reads.fq",
                "import_as_document": False}
        r = requests.post(callback, json=body, auth=(KEY, ""), timeout=10)
        assert r.status_code == 400 and "upload it" in r.json()["message"]
        assert requests.post(callback, json={**body, "s3_path": "s3://x/y"}, auth=(KEY, ""),
                             timeout=10).status_code == 400
        assert requests.post(callback, json=body, auth=("wrong", ""), timeout=10).status_code == 401
        import boto3
        boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1", aws_access_key_id=t["upload_aws_access_key_id"],
                     aws_secret_access_key=t["upload_aws_secret_access_key"]).put_object(
            Bucket=t["s3_bucket"], Key=t["file_id"], Body=DATA)
        for _ in range(2):
            r = requests.post(callback, json=body, auth=(KEY, ""), timeout=10)
            assert r.status_code == 200 and r.json()["sample_id"] == t["sample_id"]
        [sample] = sb.samples()
        assert sample["state"] == "confirmed" and sample["route"] == "multipart" and sample["size"] == len(DATA)
        assert sample["confirm_count"] == 2 and sample["etag"] == hashlib.md5(DATA).hexdigest()
        r = requests.post(f"{sb.api_url}/api/v1/samples/cancel_upload", json={"sample_id": t["sample_id"]},
                          auth=(KEY, ""), timeout=10)
        assert r.status_code == 400 and r.json()["message"] == "Upload already successful"


def test_multipart_targets_take_faults(tmp_path, moto_url):
    """init_multipart_upload and multipart_callback are fault targets like the others."""
    with Sandbox(data_dir=tmp_path / "sb", api_keys=(KEY,), multipart_s3_endpoint=moto_url) as sb:
        sb.add_fault(parse_fault("init_multipart_upload:status:503:times=1"))
        assert init_mp(sb).status_code == 503
        t = init_mp(sb).json()
        sb.add_fault(Fault("multipart_callback", "status", status=502, times=1))
        r = requests.post(f"{sb.api_url}{t['callback_url']}", json={}, auth=(KEY, ""), timeout=10)
        assert r.status_code == 502
        assert [x["target"] for x in sb.requests()] == ["init_multipart_upload"] * 2 + ["multipart_callback"]

