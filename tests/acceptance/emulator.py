"""An independent, strict emulator of One Codex's standard upload and S3's browser POST.

Written from ../shared/design.md and the seed (onecodex-standard-upload.txt) only, not from
daemon/sandbox/, so that seqdrop is judged by a server its authors did not write. Where
design.md leaves room it deliberately differs from the sandbox:
- additional_fields come in another order, with extra fields (x-amz-security-token, Content-Type)
  and `success_action_status` as a JSON number (as in the seed);
- the policy has a `starts-with $key` condition and a `content-length-range`; it is signed
  (HMAC-SHA1) and its expiration is checked;
- the ETag is sent in the XML body only, in the header only, or in both (`etag_mode`);
- `GET /api/v1/samples` is not implemented (404) unless `samples_endpoint=True`: design.md lets
  the pause probe be "the next real request";
- the API and S3 are two servers on two ports, so a credential sent to S3 cannot hide.

Every request is recorded; protocol violations (an Authorization header at S3, a field missing or
out of order, the file not last, no Content-Length, a wrong basic-auth password...) are answered
with an error and also collected in `violations`, which tests assert to be empty.

Faults are queued per endpoint ("init", "s3", "confirm", "cancel") with `inject()`, and consumed
one per request: an HTTP status with a JSON/XML error (and Retry-After), a dropped connection
before or after the request was acted upon, or a slow answer.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

FILENAME_RE = re.compile(r"^[\w\.]+[\w\-\.\[\]\(\)\{\} ]*\.[\w\.]+$")
SECRET = b"emulator-s3-secret"
BUCKET = "accept-userdata-bucket"
MAX_SAMPLE_BYTES = 20 * 1000**3
# The order init_upload gives the fields in (not the seed's), with extra fields.
FIELD_ORDER = ["key", "x-amz-security-token", "acl", "Content-Type", "policy", "success_action_status",
               "x-amz-server-side-encryption", "AWSAccessKeyId", "signature"]


@dataclass
class Fault:
    """One injected misbehaviour: status (with message/code/retry_after), or an action."""
    status: int | None = None
    message: str = "injected"
    code: str | None = None              # S3 error code (XML)
    retry_after: str | None = None
    drop: str | None = None              # "before" (not acted upon) or "after" (acted upon, answer lost)
    delay_s: float = 0.0                 # slow answer (then the normal answer, or the status above)
    etag: str | None = None              # S3: store the file, but answer with this (wrong) ETag
    upload_url: str | None = None        # init: answer with this upload_url


@dataclass
class Request:
    endpoint: str                        # init, s3, confirm, cancel, samples, other
    method: str
    path: str
    headers: dict[str, str]
    body: Any                            # parsed JSON for the API; field names for S3
    answered: int | None = None          # status sent, or None if the connection was dropped
    at: float = field(default_factory=time.time)


@dataclass
class Sample:
    sample_id: str
    filename: str
    size: int
    key_prefix: str
    state: str = "initialized"           # initialized, confirmed, cancelled
    confirms: int = 0
    key: str | None = None               # the S3 object key once posted
    etag_sent_ok: bool = False           # the last S3 answer for it carried the object's true MD5


class _Quiet(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass   # a client that hangs up mid-request is part of the game


class Emulator:
    def __init__(self, api_key: str = "accept-key", *, etag_mode: str = "body",
                 samples_endpoint: bool = False, policy_lifetime_s: float = 3600.0) -> None:
        self.api_key = api_key
        self.etag_mode = etag_mode           # body | header | both
        self.samples_endpoint = samples_endpoint
        self.policy_lifetime_s = policy_lifetime_s
        self.lock = threading.Lock()
        self.requests: list[Request] = []
        self.violations: list[str] = []
        self.samples: dict[str, Sample] = {}
        self.objects: dict[str, bytes] = {}
        self.faults: dict[str, list[Fault]] = {}
        self.auth_fail_until = 0.0           # until then every API request answers 401
        self.expired_inits = 0               # this many next init_upload answers carry an expired policy
        self._servers: list[ThreadingHTTPServer] = []

    # -- life ----------------------------------------------------------------------------------
    def __enter__(self) -> "Emulator":
        self.api = self._serve(self._api_handler())
        self.s3 = self._serve(self._s3_handler())
        return self

    def __exit__(self, *exc: object) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()

    def _serve(self, handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
        server = _Quiet(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self._servers.append(server)
        return server

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.api.server_address[1]}"

    @property
    def upload_url(self) -> str:
        return f"http://127.0.0.1:{self.s3.server_address[1]}/{BUCKET}"

    # -- test controls -------------------------------------------------------------------------
    def inject(self, endpoint: str, *faults: Fault) -> None:
        with self.lock:
            self.faults.setdefault(endpoint, []).extend(faults)

    def fail_auth_for(self, seconds: float) -> None:
        self.auth_fail_until = time.time() + seconds

    def _next_fault(self, endpoint: str) -> Fault | None:
        with self.lock:
            queue = self.faults.get(endpoint)
            return queue.pop(0) if queue else None

    # -- what happened ---------------------------------------------------------------------------
    def calls(self, endpoint: str) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.endpoint == endpoint]

    def confirmed(self) -> list[Sample]:
        with self.lock:
            return [s for s in self.samples.values() if s.state == "confirmed"]

    def confirmed_bytes(self) -> list[bytes]:
        """The stored object of every confirmed sample."""
        return [self.objects[s.key] for s in self.confirmed() if s.key in self.objects]

    def cancelled_ids(self) -> list[str]:
        with self.lock:
            return [s.sample_id for s in self.samples.values() if s.state == "cancelled"]

    def _violation(self, text: str) -> None:
        with self.lock:
            self.violations.append(text)

    # -- the policy ----------------------------------------------------------------------------
    def _policy(self, prefix: str, token: str, lifetime_s: float) -> tuple[str, str]:
        expires = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=lifetime_s)
        doc = {"expiration": expires.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
               "conditions": [{"bucket": BUCKET}, ["starts-with", "$key", prefix], {"acl": "private"},
                              {"success_action_status": "201"}, {"x-amz-security-token": token},
                              ["starts-with", "$Content-Type", ""],
                              {"x-amz-server-side-encryption": "AES256"},
                              ["content-length-range", 1, MAX_SAMPLE_BYTES]]}
        policy = base64.b64encode(json.dumps(doc).encode()).decode()
        signature = base64.b64encode(hmac.new(SECRET, policy.encode(), hashlib.sha1).digest()).decode()
        return policy, signature

    # -- handlers ------------------------------------------------------------------------------
    def _api_handler(self) -> type[BaseHTTPRequestHandler]:
        emu = self

        class Api(_Base):
            def do_GET(self) -> None:
                path = urlsplit(self.path).path
                if path == "/api/v1/samples" and emu.samples_endpoint:
                    req = emu._record("samples", self, None)
                    if self._authorized(req):
                        self._json(req, 200, [])
                    return
                req = emu._record("other", self, None)
                self._json(req, 404, {"message": "Not Found", "status": 404})

            def do_POST(self) -> None:
                path = urlsplit(self.path).path
                endpoint = {"/api/v1/samples/init_upload": "init", "/api/v1/samples/confirm_upload": "confirm",
                            "/api/v1/samples/cancel_upload": "cancel"}.get(path, "other")
                raw = self._body()
                if raw is None:
                    return
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw
                req = emu._record(endpoint, self, body)
                if endpoint == "other":
                    self._json(req, 404, {"message": "Not Found", "status": 404})
                    return
                if not self._authorized(req):
                    return
                if self.headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
                    emu._violation(f"{endpoint}: Content-Type {self.headers.get('Content-Type')!r}")
                if not isinstance(body, dict):
                    emu._violation(f"{endpoint}: body is not a JSON object: {raw[:100]!r}")
                    self._json(req, 400, {"message": "Request body must be JSON", "status": 400})
                    return
                fault = emu._next_fault(endpoint)
                if fault and fault.delay_s:
                    time.sleep(fault.delay_s)
                if fault and fault.drop == "before":
                    self._drop(req)
                    return
                if fault and fault.status:
                    self._json(req, fault.status, {"message": fault.message, "status": fault.status},
                               retry_after=fault.retry_after)
                    return
                status, answer = getattr(emu, f"_{endpoint}")(body)
                if fault and fault.upload_url and status == 200:
                    answer["upload_url"] = fault.upload_url
                if fault and fault.drop == "after":
                    self._drop(req)
                    return
                self._json(req, status, answer)

            def _authorized(self, req: Request) -> bool:
                auth = self.headers.get("Authorization", "")
                expected = "Basic " + base64.b64encode(f"{emu.api_key}:".encode()).decode()
                if auth.startswith("Basic "):
                    try:
                        user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
                    except ValueError:
                        user = password = ""
                    if user == emu.api_key and password:
                        emu._violation(f"{req.endpoint}: basic auth with a non-empty password")
                if auth != expected or time.time() < emu.auth_fail_until:
                    self._json(req, 401, {"message": "Authentication failed: invalid API key.", "status": 401},
                               extra={"WWW-Authenticate": 'Basic realm="One Codex"'})
                    return False
                return True

        return Api

    def _s3_handler(self) -> type[BaseHTTPRequestHandler]:
        emu = self

        class S3(_Base):
            def do_POST(self) -> None:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    emu._violation("s3: chunked body")
                    req = emu._record("s3", self, None)
                    self._xml_error(req, 411, "MissingContentLength",
                                    "You must provide the Content-Length HTTP header.")
                    self.close_connection = True
                    return
                raw = self._body()
                if raw is None:
                    return
                req = emu._record("s3", self, None)
                if urlsplit(self.path).path != f"/{BUCKET}":
                    self._xml_error(req, 404, "NoSuchBucket", "The specified bucket does not exist")
                    return
                if "Authorization" in self.headers:
                    emu._violation("s3: an Authorization header was sent")
                    self._xml_error(req, 400, "InvalidArgument", "Unsupported Authorization Type")
                    return
                if emu.api_key.encode() in raw or any(emu.api_key in v for v in self.headers.values()):
                    emu._violation("s3: the API key was sent to S3")
                fault = emu._next_fault("s3")
                if fault and fault.delay_s:
                    time.sleep(fault.delay_s)
                if fault and fault.drop == "before":
                    self._drop(req)
                    return
                if fault and fault.status:
                    self._xml_error(req, fault.status, fault.code or "InternalError", fault.message,
                                    retry_after=fault.retry_after)
                    return
                try:
                    fields, filename, data = _parse_multipart(self.headers.get("Content-Type", ""), raw)
                except ValueError as e:
                    emu._violation(f"s3: {e}")
                    self._xml_error(req, 400, "MalformedPOSTRequest",
                                    f"The body of your POST request is not well-formed multipart/form-data. {e}")
                    return
                req.body = [name for name, _ in fields] + ["file"]
                status, code, message, key = emu._s3_accept(fields, filename, data)
                if status != 201:
                    self._xml_error(req, status, code, message)
                    return
                if fault and fault.drop == "after":
                    self._drop(req)
                    return
                etag = '"' + hashlib.md5(data).hexdigest() + '"'
                with emu.lock:
                    sample = next(s for s in emu.samples.values() if s.key == key)
                    sample.etag_sent_ok = not (fault and fault.etag)
                if fault and fault.etag:
                    etag = fault.etag
                xml = (f"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<PostResponse>"
                       f"<Location>{emu.upload_url}/{key}</Location><Bucket>{BUCKET}</Bucket><Key>{key}</Key>"
                       + (f"<ETag>{etag}</ETag>" if emu.etag_mode in ("body", "both") else "")
                       + "</PostResponse>").encode()
                extra = {"ETag": etag} if emu.etag_mode in ("header", "both") else {}
                self._send(req, 201, xml, "application/xml", extra=extra)

        return S3

    def _record(self, endpoint: str, handler: BaseHTTPRequestHandler, body: Any) -> Request:
        req = Request(endpoint, handler.command, handler.path, dict(handler.headers.items()), body)
        with self.lock:
            self.requests.append(req)
        return req

    # -- the API's verbs -------------------------------------------------------------------------
    def _init(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        filename, size = body.get("filename"), body.get("size")
        if body.get("upload_type") != "standard":
            self._violation(f"init: upload_type {body.get('upload_type')!r}")
        if not isinstance(filename, str) or not FILENAME_RE.match(filename):
            self._violation(f"init: filename {filename!r} does not match One Codex's pattern")
            return 400, {"message": f"Invalid filename: {filename!r}", "status": 400}
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            return 400, {"message": f"Invalid size: {size!r}", "status": 400}
        if size > MAX_SAMPLE_BYTES:
            return 413, {"message": "File too large: samples are limited to 20 GB", "status": 413}
        sample_id = secrets.token_hex(8)
        prefix = f"user_accept/file_{sample_id}/"
        token = "FQoGZXIvYXdzE" + secrets.token_hex(16)
        with self.lock:
            lifetime_s = -60.0 if self.expired_inits > 0 else self.policy_lifetime_s
            self.expired_inits = max(0, self.expired_inits - 1)
        policy, signature = self._policy(prefix, token, lifetime_s)
        with self.lock:
            self.samples[sample_id] = Sample(sample_id, filename, size, prefix)
        # A different order from the seed's, and extra fields: the client must send them as given.
        values = {"key": prefix + "${filename}", "x-amz-security-token": token, "acl": "private",
                  "Content-Type": "application/octet-stream", "policy": policy,
                  "success_action_status": 201, "x-amz-server-side-encryption": "AES256",
                  "AWSAccessKeyId": "AKIAACCEPTANCE000000", "signature": signature}
        fields = {name: values[name] for name in FIELD_ORDER}
        return 200, {"additional_fields": fields, "sample_id": sample_id, "upload_url": self.upload_url}

    def _lookup(self, body: dict[str, Any]) -> tuple[Any, str, tuple[int, dict[str, Any]] | None]:
        """The sample a confirm/cancel names, its id, and the 404 to answer if there is none (hold self.lock)."""
        sample_id = body.get("sample_id")
        sample = self.samples.get(sample_id) if isinstance(sample_id, str) else None
        missing = None if sample is not None else (404, {"message": f"Sample {sample_id!r} not found", "status": 404})
        return sample, sample_id, missing

    def _confirm(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self.lock:
            sample, sample_id, missing = self._lookup(body)
            if missing:
                return missing
            if sample.state == "cancelled":
                self.violations.append(f"confirm: sample {sample_id} was cancelled")
                return 400, {"message": "This upload was cancelled", "status": 400}
            if sample.key is None or sample.key not in self.objects:
                self.violations.append(f"confirm: sample {sample_id} has no uploaded file")
                return 400, {"message": "No file was uploaded for this sample", "status": 400}
            if not sample.etag_sent_ok:
                self.violations.append(f"confirm: sample {sample_id} confirmed after an ETag that was not its MD5")
            sample.state = "confirmed"
            sample.confirms += 1
        return 200, {"message": "Upload confirmed", "sample": {"$ref": f"/api/v1/samples/{sample_id}"},
                     "success": True}

    def _cancel(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self.lock:
            sample, sample_id, missing = self._lookup(body)
            if missing:
                return missing
            if sample.state == "confirmed":
                self.violations.append(f"cancel: sample {sample_id} was already confirmed")
                return 400, {"message": "This sample is already confirmed", "status": 400}
            sample.state = "cancelled"
        return 200, {"message": "Upload cancelled", "success": True}

    # -- S3 -------------------------------------------------------------------------------------
    def _s3_accept(self, fields: list[tuple[str, str]], filename: str, data: bytes) -> tuple[int, str, str, str]:
        named = dict(fields)
        policy = named.get("policy", "")
        signature = hmac.new(SECRET, policy.encode(), hashlib.sha1).digest()
        if named.get("signature") != base64.b64encode(signature).decode():
            self._violation("s3: signature does not match the policy")
            return 403, "SignatureDoesNotMatch", "The request signature we calculated does not match.", ""
        doc = json.loads(base64.b64decode(policy))
        key = named.get("key", "").replace("${filename}", filename)
        with self.lock:
            sample = next((s for s in self.samples.values() if key.startswith(s.key_prefix)), None)
        if sample is None:
            return 403, "AccessDenied", "Invalid according to Policy: no such upload", ""
        # The fields must be exactly those given, in the order given (design.md, step 2).
        if [k for k, _ in fields] != FIELD_ORDER:
            self._violation(f"s3: fields {[k for k, _ in fields]} != {FIELD_ORDER} (order or presence)")
        expires = dt.datetime.fromisoformat(doc["expiration"].replace("Z", "+00:00"))
        if expires <= dt.datetime.now(dt.timezone.utc):
            return 403, "AccessDenied", "Invalid according to Policy: Policy expired.", ""
        for cond in doc["conditions"]:
            if isinstance(cond, dict):
                (name, value), = cond.items()
                if name == "bucket":
                    continue
                if named.get(name) != value:
                    self._violation(f"s3: {name}={named.get(name)!r}, policy wants {value!r}")
                    return 403, "AccessDenied", f"Invalid according to Policy: Policy Condition failed: " \
                                                f"[\"eq\", \"${name}\", \"{value}\"]", ""
            elif cond[0] == "starts-with":
                name = cond[1].lstrip("$")
                actual = key if name == "key" else named.get(name)
                if actual is None or not actual.startswith(cond[2]):
                    self._violation(f"s3: {name}={actual!r} does not start with {cond[2]!r}")
                    return 403, "AccessDenied", f"Invalid according to Policy: Policy Condition failed: " \
                                                f"[\"starts-with\", \"{cond[1]}\", \"{cond[2]}\"]", ""
            elif cond[0] == "content-length-range":
                if not cond[1] <= len(data) <= cond[2]:
                    code = "EntityTooSmall" if len(data) < cond[1] else "EntityTooLarge"
                    return 400, code, "Your proposed upload is outside the policy's content-length-range", ""
        if len(data) != sample.size or filename != sample.filename:
            self._violation(f"s3: sent {filename!r} ({len(data)} bytes), init_upload said "
                            f"{sample.filename!r} ({sample.size} bytes)")
        with self.lock:
            self.objects[key] = data
            sample.key = key
        return 201, "", "", key


class _Base(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def _body(self) -> bytes | None:
        length = self.headers.get("Content-Length")
        if length is None:
            self._raw_error(411, "Content-Length required")
            return None
        n = int(length)
        chunks, got = [], 0
        while got < n:
            chunk = self.rfile.read(min(1 << 20, n - got))
            if not chunk:
                self.close_connection = True
                return None   # the client hung up: nothing is stored
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def _raw_error(self, status: int, text: str) -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def _send(self, req: Request, status: int, body: bytes, content_type: str, *,
              extra: dict[str, str] | None = None, retry_after: str | None = None) -> None:
        req.answered = status
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if retry_after is not None:
            self.send_header("Retry-After", retry_after)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, req: Request, status: int, doc: Any, *, extra: dict[str, str] | None = None,
              retry_after: str | None = None) -> None:
        self._send(req, status, json.dumps(doc).encode(), "application/json", extra=extra, retry_after=retry_after)

    def _xml_error(self, req: Request, status: int, code: str, message: str, *, retry_after: str | None = None) -> None:
        xml = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
               f"<RequestId>{secrets.token_hex(8).upper()}</RequestId></Error>").encode()
        self._send(req, status, xml, "application/xml", retry_after=retry_after)

    def _drop(self, req: Request) -> None:
        """Close the connection without an answer."""
        req.answered = None
        self.close_connection = True
        try:
            self.connection.shutdown(2)
        except OSError:
            pass


def _parse_multipart(content_type: str, raw: bytes) -> tuple[list[tuple[str, str]], str, bytes]:
    """Strict multipart/form-data: (fields in order, file name, file bytes); the file must be last."""
    m = re.match(r'multipart/form-data;\s*boundary="?([^";]+)"?\s*$', content_type)
    if not m:
        raise ValueError(f"Content-Type is {content_type!r}, not multipart/form-data with a boundary")
    delim = b"--" + m.group(1).encode()
    if not raw.startswith(delim + b"\r\n"):
        raise ValueError("the body does not start with the boundary")
    end = b"\r\n" + delim + b"--"
    tail = raw.rfind(end)
    if tail < 0 or raw[tail + len(end):] not in (b"", b"\r\n"):
        raise ValueError("the closing boundary is missing or followed by data")
    parts = raw[len(delim) + 2:tail].split(b"\r\n" + delim + b"\r\n")
    fields: list[tuple[str, str]] = []
    for i, part in enumerate(parts):
        head, sep, content = part.partition(b"\r\n\r\n")
        if not sep:
            raise ValueError(f"part {i} has no header/body separator")
        disp = next((line for line in head.decode("utf-8").split("\r\n")
                     if line.lower().startswith("content-disposition:")), "")
        name = re.search(r'\bname="([^"]*)"', disp)
        if not name or "form-data" not in disp:
            raise ValueError(f"part {i} has no form-data Content-Disposition")
        if name.group(1) == "file":
            if i != len(parts) - 1:
                raise ValueError("the file is not the last part")
            filename = re.search(r'\bfilename="([^"]*)"', disp)
            if not filename:
                raise ValueError("the file part has no filename")
            return fields, filename.group(1), content
        fields.append((name.group(1), content.decode("utf-8")))
    raise ValueError("no file part")

