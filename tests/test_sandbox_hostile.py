"""The sandbox's hostile behaviours (issue 10), exercised over real loopback HTTP."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import socket
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from harness import wait_for

from daemon.sandbox import Fault, Sandbox, parse_fault

KEY = "hostile-sandbox-key"
BASIC = base64.b64encode(f"{KEY}:".encode()).decode()
DATA = b"@r1\nACGTACGTNN\n+\nIIIIIIIIII\n@r2\nTTTT\n+\nIIII\n"
# ../shared beside the checkout (design.md); a git worktree of it sits one folder deeper.
OPENAPI = next((p for p in (Path(__file__).resolve().parents[n] / "shared" / "reference" / "onecodex-openapi.json"
                            for n in (2, 3)) if p.exists()), Path("../shared/reference/onecodex-openapi.json"))


@pytest.fixture
def sb(tmp_path):
    with Sandbox(data_dir=tmp_path / "sandbox", api_keys=(KEY,)) as sandbox:
        yield sandbox


def init(sb, **kw):
    body = {"filename": "reads.fq", "size": len(DATA), "upload_type": "standard"}
    return requests.post(f"{sb.api_url}/api/v1/samples/init_upload", json=body, auth=(KEY, ""), timeout=5, **kw)


def ticket(sb) -> dict:
    answer = init(sb)
    assert answer.status_code == 200, answer.text
    return answer.json()


def post_file(t, data=DATA, **kw):
    return requests.post(t["upload_url"], data=t["additional_fields"], files={"file": ("reads.fq", data)},
                         timeout=5, **kw)


def confirm(sb, sample_id, **kw):
    return requests.post(f"{sb.api_url}/api/v1/samples/confirm_upload", auth=(KEY, ""), timeout=5,
                         json={"sample_id": sample_id, "upload_type": "standard"}, **kw)


def get_sample(sb, sample_id, key=KEY):
    return requests.get(f"{sb.api_url}/api/v1/samples/{sample_id}", auth=(key, ""), timeout=5)


def confirmed(sb) -> dict:
    t = ticket(sb)
    assert post_file(t).status_code == 201
    assert confirm(sb, t["sample_id"]).status_code == 200
    return t


def sandbox_sample(sb, sample_id) -> dict:
    return next(s for s in sb.samples() if s["sample_id"] == sample_id)


def multipart(fields: dict, data: bytes, boundary: str = "hostileBoundary7e1f") -> tuple[bytes, str]:
    body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
                    for name, value in fields.items())
    body += (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="reads.fq"\r\n\r\n'.encode()
             + data + f"\r\n--{boundary}--\r\n".encode())
    return body, f"multipart/form-data; boundary={boundary}"


def raw_request(url: str, path: str, body: bytes, headers: dict[str, str], *, send: bool = True,
                sndbuf: int | None = None) -> socket.socket:
    """A request written by hand on a plain socket (so the test sees bytes as they come)."""
    where = urlsplit(url)
    sock = socket.socket()
    if sndbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    sock.settimeout(5)
    sock.connect((where.hostname, where.port))
    head = (f"POST {path} HTTP/1.1\r\nHost: {where.netloc}\r\nContent-Length: {len(body)}\r\n"
            + "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n").encode()
    sock.sendall(head)
    if send:
        sock.sendall(body)
    return sock


def api_raw(sb, path: str, payload: dict) -> socket.socket:
    return raw_request(sb.api_url, path, json.dumps(payload).encode(),
                       {"Content-Type": "application/json", "Authorization": f"Basic {BASIC}"})


def arrival_times(sock: socket.socket, count: int) -> tuple[bytes, list[float]]:
    received, times = b"", []
    while len(received) < count:
        chunk = sock.recv(1)
        assert chunk, "the server closed the connection"
        received += chunk
        times.append(time.monotonic())
    return received, times


# -- trickle ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("target", ["init_upload", "confirm_upload", "s3"])
def test_trickle_sends_the_answer_one_byte_at_a_time(sb, target):
    """A trickled answer starts with its status line and comes one byte per interval_s."""
    t = ticket(sb)
    if target != "s3":
        post_file(t)
    sb.add_fault(Fault(target=target, kind="trickle", interval_s=0.15))
    if target == "init_upload":
        sock = api_raw(sb, "/api/v1/samples/init_upload", {"filename": "r.fq", "size": 9, "upload_type": "standard"})
    elif target == "confirm_upload":
        sock = api_raw(sb, "/api/v1/samples/confirm_upload", {"sample_id": t["sample_id"]})
    else:
        body, content_type = multipart(t["additional_fields"], DATA)
        sock = raw_request(t["upload_url"], "/", body, {"Content-Type": content_type})
    with sock:
        received, times = arrival_times(sock, 6)
    assert received == b"HTTP/1"
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert min(gaps) >= 0.1, gaps


@pytest.mark.parametrize("target", ["init_upload", "confirm_upload", "s3"])
def test_trickled_answer_is_complete_and_the_request_performed(sb, target):
    """Trickled fast enough, the answer is an ordinary valid HTTP answer; the action happened."""
    t = ticket(sb)
    if target != "s3":
        post_file(t)
    sb.add_fault(Fault(target=target, kind="trickle", interval_s=0.0005))
    if target == "init_upload":
        answer = init(sb)
        assert answer.status_code == 200 and len(sb.samples()) == 2 and "upload_url" in answer.json()
    elif target == "confirm_upload":
        answer = confirm(sb, t["sample_id"])
        assert answer.status_code == 200 and sandbox_sample(sb, t["sample_id"])["state"] == "confirmed"
    else:
        answer = post_file(t)
        assert answer.status_code == 201 and answer.headers["ETag"] == f'"{hashlib.md5(DATA).hexdigest()}"'
        assert sandbox_sample(sb, t["sample_id"])["state"] == "uploaded"
    assert sb.requests()[-1]["fault"] == "trickle"


def test_trickle_stops_when_the_client_hangs_up(sb):
    """A client that gives up frees the handler: later requests are answered promptly."""
    sb.add_fault(Fault(target="init_upload", kind="trickle", interval_s=0.05, times=None))
    sock = api_raw(sb, "/api/v1/samples/init_upload", {"filename": "r.fq", "size": 9, "upload_type": "standard"})
    arrival_times(sock, 3)
    sock.close()
    sb.clear_faults()
    started = time.monotonic()
    assert init(sb).status_code == 200 and time.monotonic() - started < 2


# -- endless ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("target", ["init_upload", "s3"])
def test_endless_body_never_ends(sb, target):
    """An endless answer has no Content-Length and streams far more than any answer should be."""
    t = ticket(sb)
    sb.add_fault(Fault(target=target, kind="endless"))
    answer = init(sb, stream=True) if target == "init_upload" else post_file(t, stream=True)
    with answer:
        assert answer.status_code in (200, 201) and "Content-Length" not in answer.headers
        received = 0
        for chunk in answer.raw.stream(1 << 20, decode_content=False):
            received += len(chunk)
            if received >= 32 << 20:
                break
    assert received >= 32 << 20
    # The handler noticed the hang-up: the sandbox answers normally again.
    assert init(sb).status_code == 200


# -- secrets echoed back ---------------------------------------------------------------------------

@pytest.mark.parametrize("status, target", [(401, "init_upload"), (400, "confirm_upload"), (400, "samples")])
def test_echo_secret_repeats_the_key_and_its_basic_auth_form(sb, status, target):
    """A 401 or 400 whose JSON message holds the API key and base64(key + ':')."""
    sb.add_fault(Fault(target=target, kind="echo_secret", status=status))
    if target == "init_upload":
        answer = init(sb)
    elif target == "confirm_upload":
        answer = confirm(sb, "0123456789abcdef")
    else:
        answer = requests.get(f"{sb.api_url}/api/v1/samples?per_page=1", auth=(KEY, ""), timeout=5)
    assert answer.status_code == status and answer.json()["status"] == status
    message = answer.json()["message"]
    assert KEY in message and BASIC in message
    assert KEY not in json.dumps(sb.requests())    # the sandbox's own record stays clean


def test_echo_secret_message_template(sb):
    """A custom message may place {key}, {basic} and {scheme} where it likes."""
    sb.add_fault(Fault(target="init_upload", kind="echo_secret", status=400, message="k={key} b={basic}"))
    assert init(sb).json()["message"] == f"k={KEY} b={BASIC}"


def test_s3_echo_secret_repeats_policy_and_signature(sb):
    """S3's SignatureDoesNotMatch repeats the policy (StringToSign) and the signature sent."""
    t = ticket(sb)
    sb.add_fault(Fault(target="s3", kind="echo_secret"))
    answer = post_file(t)
    root = ET.fromstring(answer.content)
    assert answer.status_code == 403 and root.findtext("Code") == "SignatureDoesNotMatch"
    assert root.findtext("StringToSign") == t["additional_fields"]["policy"]
    assert root.findtext("SignatureProvided") == t["additional_fields"]["signature"]
    assert bytes.fromhex(root.findtext("StringToSignBytes")) == t["additional_fields"]["policy"].encode()
    assert sandbox_sample(sb, t["sample_id"])["state"] == "initialized"


# -- S3 that cannot be verified --------------------------------------------------------------------

@pytest.mark.parametrize("success_status", [None, 200, 204])
def test_no_etag_stores_the_object_but_sends_no_etag(sb, success_status):
    """201 PostResponse without <ETag>, or 200/204 without an ETag header; the object is stored."""
    t = ticket(sb)
    sb.add_fault(Fault(target="s3", kind="no_etag", success_status=success_status))
    answer = post_file(t)
    assert answer.status_code == (success_status or 201) and "ETag" not in answer.headers
    if success_status is None:
        root = ET.fromstring(answer.content)
        assert root.tag == "PostResponse" and root.find("ETag") is None and root.findtext("Key")
    else:
        assert answer.content == b""
    sample = sandbox_sample(sb, t["sample_id"])
    assert sample["state"] == "uploaded" and Path(sample["object_path"]).read_bytes() == DATA


def test_alter_stores_one_changed_byte_and_answers_its_etag(sb):
    """The stored object differs from the sent file in one byte; the ETag is the stored bytes' MD5."""
    t = ticket(sb)
    sb.add_fault(Fault(target="s3", kind="alter", byte_offset=5))
    answer = post_file(t)
    stored = Path(sandbox_sample(sb, t["sample_id"])["object_path"]).read_bytes()
    assert len(stored) == len(DATA) and [i for i in range(len(DATA)) if stored[i] != DATA[i]] == [5]
    assert answer.status_code == 201 and answer.headers["ETag"] == f'"{hashlib.md5(stored).hexdigest()}"'
    assert answer.headers["ETag"] != f'"{hashlib.md5(DATA).hexdigest()}"'
    assert ET.fromstring(answer.content).findtext("ETag") == answer.headers["ETag"]
    assert sandbox_sample(sb, t["sample_id"])["md5"] == hashlib.md5(stored).hexdigest()
    assert sb.requests()[-1]["altered_at"] == 5


def test_stall_stops_reading_the_body_then_hangs_up(sb):
    """S3 reads byte_offset bytes, then nothing for delay_s, then closes: the sender is stuck until then."""
    t = ticket(sb)
    sb.add_fault(Fault(target="s3", kind="stall", byte_offset=1000, delay_s=1.0))
    body, content_type = multipart(t["additional_fields"], b"@" * (64 << 20))
    sock = raw_request(t["upload_url"], "/", body, {"Content-Type": content_type}, send=False, sndbuf=16384)
    started = time.monotonic()
    with sock, pytest.raises(OSError):
        sock.settimeout(10)
        sock.sendall(body)
        assert sock.recv(1) == b""           # or the peer's close shows here
        raise ConnectionResetError("closed without an answer")
    assert 0.8 <= time.monotonic() - started < 9
    assert sandbox_sample(sb, t["sample_id"])["state"] == "initialized"
    entry = wait_for(lambda: [r for r in sb.requests() if r["target"] == "s3"])[-1]
    assert entry["fault"] == "stall" and entry["status"] is None


# -- ambiguous answers about a confirmed sample ----------------------------------------------------

def test_ambiguous_repeat_refuses_a_repeated_confirm_without_saying_already(sb):
    """A first confirm passes (and does not count); the repeat is a 400 without 'already'."""
    sb.add_fault(Fault(target="confirm_upload", kind="ambiguous_repeat"))
    t = confirmed(sb)
    repeat = confirm(sb, t["sample_id"])
    assert repeat.status_code == 400 and "already" not in repeat.text.lower()
    assert t["sample_id"] in repeat.json()["message"]
    assert sandbox_sample(sb, t["sample_id"])["state"] == "confirmed"
    assert confirm(sb, t["sample_id"]).status_code == 200      # times=1: used up


def test_get_sample_answers_the_real_state_through_its_life(sb):
    """GET /api/v1/samples/<id>: awaiting_data until confirmed, importing, available; deleted once
    cancelled; 404 for another key's or an unknown sample."""
    sb.import_delay_s = 0.3
    t = ticket(sb)
    assert get_sample(sb, t["sample_id"]).json()["status"] == "awaiting_data"
    post_file(t)
    assert get_sample(sb, t["sample_id"]).json()["visibility"] == "awaiting data"
    confirm(sb, t["sample_id"])
    assert get_sample(sb, t["sample_id"]).json()["status"] == "importing"
    wait_for(lambda: get_sample(sb, t["sample_id"]).json()["status"] == "available", 5)
    other = ticket(sb)
    requests.post(f"{sb.api_url}/api/v1/samples/cancel_upload", json={"sample_id": other["sample_id"]},
                  auth=(KEY, ""), timeout=5)
    assert get_sample(sb, other["sample_id"]).json()["status"] == "deleted"
    sb.set_api_keys([KEY, "someone-else"])
    assert get_sample(sb, t["sample_id"], key="someone-else").status_code == 404
    assert get_sample(sb, "0123456789abcdef").status_code == 404


@pytest.mark.skipif(not OPENAPI.exists(), reason=f"the published API description is not at {OPENAPI}")
def test_get_sample_matches_the_published_schema(sb):
    """The answer has every field the OpenAPI `samples` schema requires, with its enums and patterns."""
    schema = json.loads(OPENAPI.read_text())["components"]["schemas"]["samples"]
    sample = get_sample(sb, confirmed(sb)["sample_id"]).json()
    assert set(schema["required"]) <= set(sample)
    props = schema["properties"]
    assert sample["status"] in props["status"]["enum"] and sample["visibility"] in props["visibility"]["enum"]
    assert re.fullmatch(props["$uri"]["pattern"], sample["$uri"])
    for name in ("owner", "metadata"):
        assert re.fullmatch(props[name]["properties"]["$ref"]["pattern"], sample[name]["$ref"])


# -- hostile init answers --------------------------------------------------------------------------

@pytest.mark.parametrize("omit, missing", [(None, {"upload_url", "additional_fields"}),
                                           (["upload_url"], {"upload_url"})])
def test_partial_init_carries_a_sample_id_but_misses_fields(sb, omit, missing):
    """The answer lacks the named fields but has a sample_id, and the sample exists (an orphan)."""
    sb.add_fault(Fault(target="init_upload", kind="partial_init", omit=omit))
    answer = init(sb).json()
    assert not missing & set(answer) and re.fullmatch("[0-9a-f]{16}", answer["sample_id"])
    assert {"upload_url", "additional_fields"} - missing <= set(answer)
    assert sandbox_sample(sb, answer["sample_id"])["state"] == "initialized"


def test_hostile_sample_id_carries_a_newline_and_ansi_escapes(sb):
    """By default the sample_id is the real one followed by a newline and terminal escapes."""
    sb.add_fault(Fault(target="init_upload", kind="hostile_sample_id"))
    sample_id = init(sb).json()["sample_id"]
    real = sb.samples()[-1]["sample_id"]
    assert sample_id.startswith(real + "\n") and "\x1b[" in sample_id


def test_hostile_sample_id_value_over_http(sb):
    """The hostile value can be chosen through POST /_sandbox/faults."""
    added = requests.post(f"{sb.api_url}/_sandbox/faults", timeout=5,
                          json={"target": "init_upload", "kind": "hostile_sample_id", "value": "\x1b]0;pwned\x07"})
    assert added.status_code == 201
    assert init(sb).json()["sample_id"] == "\x1b]0;pwned\x07"


# -- declaring the faults --------------------------------------------------------------------------

@pytest.mark.parametrize("spec", [
    {"target": "confirm_upload", "kind": "trickle", "interval_s": 3},
    {"target": "any", "kind": "endless"},
    {"target": "init_upload", "kind": "echo_secret", "status": 400},
    {"target": "s3", "kind": "no_etag", "success_status": 204},
    {"target": "s3", "kind": "alter", "byte_offset": 10},
    {"target": "s3", "kind": "stall", "delay_s": 30},
    {"target": "confirm_upload", "kind": "ambiguous_repeat", "times": None},
    {"target": "init_upload", "kind": "partial_init", "omit": ["additional_fields"]},
    {"target": "init_multipart_upload", "kind": "hostile_sample_id"},
])
def test_every_hostile_kind_is_accepted_over_http(sb, spec):
    """POST /_sandbox/faults takes each hostile kind and lists it back."""
    added = requests.post(f"{sb.api_url}/_sandbox/faults", json=spec, timeout=5)
    assert added.status_code == 201, added.text
    [listed] = requests.get(f"{sb.api_url}/_sandbox/faults", timeout=5).json()
    assert {name: listed[name] for name in spec} == spec


@pytest.mark.parametrize("spec, words", [
    ({"target": "any", "kind": "no_etag"}, "applies to s3"),
    ({"target": "init_upload", "kind": "ambiguous_repeat"}, "applies to confirm_upload"),
    ({"target": "s3", "kind": "no_etag", "success_status": 202}, "success_status"),
    ({"target": "init_upload", "kind": "partial_init", "omit": ["sample_id"]}, "omit"),
    ({"target": "s3", "kind": "trickle", "interval_s": 0}, "interval_s"),
])
def test_meaningless_hostile_faults_are_refused(sb, spec, words):
    """A kind on a target it cannot apply to, or a bad field value, is a 400 naming the problem."""
    refused = requests.post(f"{sb.api_url}/_sandbox/faults", json=spec, timeout=5)
    assert refused.status_code == 400 and words in refused.json()["message"]


def test_short_forms_of_hostile_faults():
    """The --fault short form carries the new fields."""
    assert parse_fault("confirm_upload:trickle:interval_s=2.5") == Fault("confirm_upload", "trickle", interval_s=2.5)
    assert parse_fault("s3:no_etag:success_status=204").success_status == 204
    assert parse_fault("s3:alter:byte_offset=7").byte_offset == 7
    assert parse_fault("init_upload:partial_init:omit=upload_url").omit == ["upload_url"]
    assert parse_fault("init_upload:echo_secret").status == 401 and parse_fault("s3:echo_secret").status == 403


def test_import_delay_is_settable_over_http(sb):
    """POST /_sandbox/config takes import_delay_s (non-negative seconds)."""
    admin = f"{sb.api_url}/_sandbox/config"
    assert requests.post(admin, json={"import_delay_s": 2}, timeout=5).json()["import_delay_s"] == 2.0
    assert sb.import_delay_s == 2.0
    assert requests.post(admin, json={"import_delay_s": -1}, timeout=5).status_code == 400


def test_hostile_kinds_leave_no_file_behind(sb):
    """Faults that abandon a body (stall, echo) leave no partial object in the data folder."""
    t = ticket(sb)
    sb.add_fault(Fault(target="s3", kind="echo_secret"))
    post_file(t)
    # The answer may reach the client a moment before the server's thread has removed the part file.
    wait_for(lambda: not [p for p in sb.data_dir.rglob("*") if p.is_file()], 5.0,
             lambda: f"no file left in {sb.data_dir}: {list(sb.data_dir.rglob('*'))}")
    assert os.listdir(sb.data_dir / "incoming") == []
