"""The One Codex API emulator: init_upload, confirm_upload, cancel_upload, samples, and the multipart
route (init_multipart_upload and its callback, with the S3 side on an external server such as moto);
plus /_sandbox admin."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
from typing import Any, Callable
from urllib.parse import parse_qs

from .base import BaseHandler
from .errors import ApiError
from .external_s3 import ExternalS3Error
from .faults import Fault, fault_from_dict
from .hostile import ambiguous_message, echo_message, public_sample, tampered_init
from .paired import (
    PairedError,
    multipart_missing_message,
    multipart_pair,
    paired_filename,
    paired_ticket,
)
from .policy import ACCESS_KEY_ID, make_policy

# One Codex's filename rule (its API docs and the official client's upload code).
FILENAME_RE = re.compile(r"^[\w\.]+[\w\-\.\[\]\(\)\{\} ]*\.[\w\.]+$")
# "up to 20GB" (One Codex API docs); read as decimal gigabytes.
MAX_SAMPLE_BYTES = 20 * 1000**3
MAX_JSON_BYTES = 1024 * 1024
# The calls whose JSON body requests() keeps (as "json"): what creates a sample and where it lands.
JSON_RECORDED = ("init_upload", "init_multipart_upload", "confirm_upload", "cancel_upload")
PER_PAGE_MAX = 200

Reply = tuple[int, Any]


class ApiHandler(BaseHandler):
    server_version = "seqdrop-sandbox-api"

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    # -- dispatch ---------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        path, _, query = self.path.partition("?")
        if path == "/_sandbox" or path.startswith("/_sandbox/"):
            self.answered, self._record = None, None  # admin calls are not recorded
            self._admin(path)
            return
        target, action = self._route(path)
        record = self.begin(target)
        record["fault"] = None
        try:
            body = self._read_body()
        except ApiError as exc:
            self._json(exc.status, {"message": exc.message, "status": exc.status}, close=True)
            return
        if target in JSON_RECORDED:   # tests check what was sent against the published schema
            record["json"] = _json_or_none(body)
        fault = None
        if target != "other":
            fault = self.sb._faults.take(target, lambda f: f.kind != "ambiguous_repeat" or self._is_repeat(body))
        record["fault"] = fault.kind if fault else None
        self._answer(fault, action, body, query)

    def _answer(self, fault: Fault | None, action: Callable[..., Reply] | None, body: bytes, query: str) -> None:
        """Answer a request, suffering `fault` (see docs/sandbox.md for what each kind does)."""
        kind = fault.kind if fault is not None else None
        if kind == "status":
            return self._fault_answer(fault)
        if kind == "drop" and not fault.after_body:
            return self.drop()
        if kind == "echo_secret":
            return self._echo_secret(fault)
        if kind == "ambiguous_repeat":
            action = self._ambiguous_refusal(fault)
        if kind == "delay":
            self.wait(fault.delay_s)
        status, payload, headers = self._perform(action, body, query)
        if status == 200 and kind in ("partial_init", "hostile_sample_id"):
            payload = tampered_init(fault, payload)
        if kind == "drop":
            self.drop()  # after_body: the action happened, its answer is lost
        elif kind == "endless":
            self.send_endless(status, "application/json", b'{"message": "')
        else:
            if kind == "trickle":
                self.trickle_s = fault.interval_s
            self._json(status, payload, headers)
        return None

    def _route(self, path: str) -> tuple[str, Callable[..., Reply] | None]:
        routes: dict[str, tuple[str, str, Callable[..., Reply]]] = {
            "/api/v1/samples/init_upload": ("init_upload", "POST", self._init_upload),
            "/api/v1/samples/confirm_upload": ("confirm_upload", "POST", self._confirm_upload),
            "/api/v1/samples/cancel_upload": ("cancel_upload", "POST", self._cancel_upload),
            "/api/v1/samples/init_multipart_upload": ("init_multipart_upload", "POST", self._init_multipart_upload),
            "/api/v1/samples": ("samples", "GET", self._list_samples),
        }
        path = path.rstrip("/") or "/"
        if path in routes:
            target, method, action = routes[path]
            return target, action if method == self.command else self._method_not_allowed
        match = re.fullmatch(r"/api/v1/samples/([0-9a-f]{16})/multipart_callback", path)
        if match:
            sample_id = match.group(1)
            return "multipart_callback", (
                (lambda owner, body, query: self._multipart_callback(owner, sample_id, body))
                if self.command == "POST" else self._method_not_allowed)
        match = re.fullmatch(r"/api/v1/samples/([0-9a-f]{16})", path)
        if match and self.command == "GET":
            return "samples", lambda owner, body, query: self._get_sample(owner, match.group(1))
        return self.sb.landing.route(path, self.command, self.sb._samples.all) or ("other", None)

    def _perform(self, action: Callable[..., Reply] | None, body: bytes, query: str) -> tuple[int, Any, list]:
        if action is None:
            return 404, {"message": "Not found.", "status": 404}, []
        try:
            owner = self._authenticate()
            status, payload = action(owner, body, query)
        except ApiError as exc:
            headers = [("WWW-Authenticate", 'Basic realm="One Codex API"')] if exc.status == 401 else []
            return exc.status, {"message": exc.message, "status": exc.status}, headers
        return status, payload, []

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise ApiError(411, "A Content-Length header is required.")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise ApiError(400, "Invalid Content-Length header.") from None
        if length > MAX_JSON_BYTES:
            raise ApiError(413, "Request body too large.")
        return self.rfile.read(length) if length > 0 else b""

    def _authenticate(self) -> str:
        """The caller's user id, from HTTP basic auth with the API key as user name."""
        header = self.headers.get("Authorization", "")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic" or not encoded:
            raise ApiError(401, "Authentication credentials were not provided: use HTTP basic auth "
                                "with the API key as the user name and an empty password.")
        try:
            user, _, password = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise ApiError(401, "Malformed basic auth credentials.") from None
        if password or not any(hmac.compare_digest(user.encode(), key.encode()) for key in self.sb._api_keys):
            raise ApiError(401, "Invalid API key.")
        return "user_" + hmac.new(self.sb._secret, user.encode(), hashlib.sha256).hexdigest()[:16]

    # -- the API ----------------------------------------------------------------------------------

    def _init_upload(self, owner: str, body: bytes, query: str) -> Reply:
        data = _json_object(body)
        filename, size = data.get("filename"), data.get("size")
        if not isinstance(filename, str) or not FILENAME_RE.fullmatch(filename):
            raise ApiError(400, f"Invalid filename {filename!r}: it must match {FILENAME_RE.pattern}")
        if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= MAX_SAMPLE_BYTES:
            raise ApiError(400, f"Invalid size {size!r}: it must be an integer from 1 to {MAX_SAMPLE_BYTES} bytes.")
        if data.get("upload_type") != "standard":
            raise ApiError(400, f"Invalid upload_type {data.get('upload_type')!r}: only 'standard' is supported.")
        landing = self.sb.landing.check_init(data)
        paired = self._paired_end_filename(data)
        sample = self.sb._samples.create(owner=owner, filename=filename, size=size)
        self.sb._samples.set_fields(sample["sample_id"], **landing)
        prefix = f"{owner}/file_{sample['sample_id']}/"
        signed = make_policy(self.sb._secret, key_prefix=prefix, max_size=size,
                             lifetime_s=self.sb.policy_lifetime_s)
        fields = {
            "AWSAccessKeyId": ACCESS_KEY_ID,
            "acl": "private",
            "key": prefix + "${filename}",
            "policy": signed.policy_b64,
            "signature": signed.signature,
            "success_action_status": "201",
            "x-amz-server-side-encryption": "AES256",
        }
        answer = {"additional_fields": fields, "sample_id": sample["sample_id"], "upload_url": self.sb.s3_url}
        if paired is not None:
            answer.update(self._paired_end_ticket(owner, sample["sample_id"], paired))
        for form in (answer.get("additional_fields"), answer.get("paired_end_additional_fields")):
            if form:
                self.sb._granted.append((form["policy"], form["signature"]))
        return 200, answer

    def _paired_end_filename(self, data: dict) -> str | None:
        try:
            return paired_filename(data)
        except PairedError as exc:
            raise ApiError(400, str(exc)) from None

    def _paired_end_ticket(self, owner: str, sample_id: str, paired_end_filename: str) -> dict:
        """The R2's upload URL and fields (docs/sandbox.md, "Paired-end")."""
        self.sb._samples.set_fields(sample_id, paired_end_filename=paired_end_filename)
        return paired_ticket(self.sb._secret, owner=owner, sample_id=sample_id, s3_url=self.sb.s3_url,
                             lifetime_s=self.sb.policy_lifetime_s)

    def _confirm_upload(self, owner: str, body: bytes, query: str) -> Reply:
        data = _json_object(body)
        sample_id = _sample_id(data)
        if "upload_type" in data and data["upload_type"] != "standard":
            raise ApiError(400, f"Invalid upload_type {data['upload_type']!r}: only 'standard' is supported.")
        status, message = self.sb._samples.confirm(sample_id, owner)
        if status != 200:
            raise ApiError(status, message)
        return 200, {"message": message, "sample": {"$ref": f"/api/v1/samples/{sample_id}"}, "success": True}

    def _cancel_upload(self, owner: str, body: bytes, query: str) -> Reply:
        sample_id = _sample_id(_json_object(body))
        status, message = self.sb._samples.cancel(sample_id, owner)
        if status != 200:
            raise ApiError(status, message)
        return 200, {"success": True}

    def _init_multipart_upload(self, owner: str, body: bytes, query: str) -> Reply:
        """Like the official client's route (onecodex/lib/upload.py): a sample, a bucket and key on the
        external S3, temporary credentials (moto does not check them), a callback path on this API."""
        data = _json_object(body)
        filename = data.get("filename")
        if not isinstance(filename, str) or not FILENAME_RE.fullmatch(filename):
            raise ApiError(400, f"Invalid filename {filename!r}: it must match {FILENAME_RE.pattern}")
        for name in ("sample_id", "external_sample_id"):
            if data.get(name) is not None:
                raise ApiError(400, f"{name} must be null: the sandbox has no pre-uploaded samples.")
        s3 = self.sb.multipart_s3
        if s3 is None:
            raise ApiError(400, "The sandbox has no S3 for multipart uploads: start it with "
                                "--multipart-s3-endpoint URL (e.g. a moto_server on loopback).")
        try:
            s3.ensure_bucket()
        except ExternalS3Error as exc:
            raise ApiError(503, f"The multipart S3 is unavailable: {exc}") from None
        landing = self.sb.landing.check_init(data)
        paired = self._paired_end_filename(data)
        sample = self.sb._samples.create(owner=owner, filename=filename, size=None, route="multipart")
        sample_id = sample["sample_id"]
        pair = multipart_pair(owner, sample_id, paired)
        self.sb._samples.set_fields(sample_id, **landing, **pair)
        key = f"{owner}/multipart_{sample_id}/{filename}"
        access_key_id = "ASIASANDBOX" + secrets.token_hex(5).upper()
        secret = secrets.token_urlsafe(30)
        self.sb._samples.set_fields(sample_id, key=key, s3_path=f"s3://{s3.bucket}/{key}",
                                    upload_aws_access_key_id=access_key_id, upload_aws_secret_access_key=secret)
        return 200, {"sample_id": sample_id, "s3_bucket": s3.bucket, "file_id": key,
                     "paired_end_file_id": pair.get("paired_key"),
                     "upload_aws_access_key_id": access_key_id, "upload_aws_secret_access_key": secret,
                     "callback_url": f"/api/v1/samples/{sample_id}/multipart_callback"}

    def _multipart_callback(self, owner: str, sample_id: str, body: bytes) -> Reply:
        data = _json_object(body)
        sample = self.sb._samples.get(sample_id)
        if sample is None or sample["owner"] != owner or sample.get("route") != "multipart":
            raise ApiError(404, f"Sample {sample_id} not found.")
        if data.get("s3_path") != sample.get("s3_path"):
            raise ApiError(400, f"s3_path {data.get('s3_path')!r} is not this sample's ({sample.get('s3_path')}).")
        if not isinstance(data.get("filename"), str) or not data["filename"]:
            raise ApiError(400, "filename is required.")
        try:
            found = self.sb.multipart_s3.head(sample["key"])
            pair = self.sb.multipart_s3.head(sample["paired_key"]) if sample.get("paired_key") else None
        except ExternalS3Error as exc:
            raise ApiError(503, f"The multipart S3 is unavailable: {exc}") from None
        if found is None or (sample.get("paired_key") and pair is None):
            raise ApiError(400, multipart_missing_message(sample, r1=found is not None, r2=pair is not None))
        size, etag = found
        status, message = self.sb._samples.called_back(sample_id, owner, s3_path=sample["s3_path"], size=size,
                                                       etag=etag, pair=pair)
        if status != 200:
            raise ApiError(status, message)
        return 200, {"message": message, "sample_id": sample_id}

    def _list_samples(self, owner: str, body: bytes, query: str) -> Reply:
        params = parse_qs(query)
        try:
            per_page = int(params.get("per_page", ["50"])[0])
            page = int(params.get("page", ["1"])[0])
        except ValueError:
            raise ApiError(400, "per_page and page must be integers.") from None
        if not 1 <= per_page <= PER_PAGE_MAX or page < 1:
            raise ApiError(400, f"per_page must be from 1 to {PER_PAGE_MAX} and page at least 1.")
        mine = [s for s in self.sb._samples.all() if s["owner"] == owner and s["state"] == "confirmed"]
        chosen = mine[(page - 1) * per_page: page * per_page]
        return 200, [public_sample(s, self.sb.import_delay_s) for s in chosen]

    def _get_sample(self, owner: str, sample_id: str) -> Reply:
        """One sample in any state, as One Codex answers it (what a client asks when an answer
        about a possibly confirmed sample was ambiguous)."""
        sample = self.sb._samples.get(sample_id)
        if sample is None or sample["owner"] != owner:
            raise ApiError(404, f"Sample {sample_id} not found.")
        return 200, public_sample(sample, self.sb.import_delay_s)

    # -- hostile answers ---------------------------------------------------------------------------

    def _is_repeat(self, body: bytes) -> bool:
        """Is this a confirm of a sample that is already confirmed?"""
        try:
            sample_id = json.loads(body or b"null").get("sample_id")
        except (ValueError, AttributeError):
            return False
        sample = self.sb._samples.get(sample_id) if isinstance(sample_id, str) else None
        return sample is not None and sample["state"] == "confirmed"

    def _ambiguous_refusal(self, fault: Fault) -> Callable[..., Reply]:
        """A confirm of a confirmed sample refused with a 400 that never says "already"."""
        def refuse(owner: str, body: bytes, query: str) -> Reply:
            raise ApiError(400, ambiguous_message(fault, _sample_id(_json_object(body))))
        return refuse

    def _echo_secret(self, fault: Fault) -> None:
        """A refusal whose message repeats the API key the client sent, and its basic-auth form."""
        message = echo_message(fault, self.headers.get("Authorization", ""))
        headers = [("WWW-Authenticate", 'Basic realm="One Codex API"')] if fault.status == 401 else []
        self._json(fault.status, {"message": message, "status": fault.status}, headers)

    def _method_not_allowed(self, owner: str, body: bytes, query: str) -> Reply:
        raise ApiError(405, f"Method {self.command} not allowed.")

    # -- answers ----------------------------------------------------------------------------------

    def _json(self, status: int, payload: Any, headers: list | tuple = (), *, close: bool = False) -> None:
        self.send_body(status, json.dumps(payload).encode(), "application/json", headers, close=close)

    def _fault_answer(self, fault: Fault) -> None:
        headers = []
        if fault.retry_after_s is not None:
            headers.append(("Retry-After", _retry_after(fault.retry_after_s)))
        message = fault.message or f"Injected fault: HTTP {fault.status}."
        self._json(fault.status, {"message": message, "status": fault.status}, headers)

    # -- admin ------------------------------------------------------------------------------------

    def _admin(self, path: str) -> None:
        """The /_sandbox endpoints (not recorded in requests(), not subject to faults, no auth)."""
        try:
            body = self._read_body()
            status, payload = self._admin_action(path.rstrip("/"), body)
        except ApiError as exc:
            status, payload = exc.status, {"message": exc.message, "status": exc.status}
        except ValueError as exc:
            status, payload = 400, {"message": str(exc), "status": 400}
        self._json(status, payload)

    def _admin_action(self, path: str, body: bytes) -> Reply:
        sb, method = self.sb, self.command
        if path == "/_sandbox/faults" and method == "POST":
            fault = fault_from_dict(_json_any(body))
            sb.add_fault(fault)
            return 201, fault.to_dict()
        if path == "/_sandbox/faults" and method == "GET":
            return 200, [f.to_dict() for f in sb._faults.active()]
        if path == "/_sandbox/faults" and method == "DELETE":
            return 200, {"cleared": sb.clear_faults()}
        if path == "/_sandbox/projects" or path.startswith("/_sandbox/projects/"):
            return self._projects_admin(path, method, body)
        if path == "/_sandbox/samples" and method == "GET":
            return 200, sb.samples()
        if path == "/_sandbox/requests" and method == "GET":
            return 200, sb.requests()
        if path == "/_sandbox/config" and method == "POST":
            data = _json_object(body)
            unknown = sorted(set(data) - {"policy_lifetime_s", "api_keys", "import_delay_s"})
            if unknown:
                raise ApiError(400, f"unknown config field(s): {', '.join(unknown)}")
            if "import_delay_s" in data:
                delay = data["import_delay_s"]
                if not isinstance(delay, (int, float)) or isinstance(delay, bool) or delay < 0:
                    raise ApiError(400, "import_delay_s must be a non-negative number of seconds")
                sb.import_delay_s = float(delay)
            if "policy_lifetime_s" in data:
                lifetime = data["policy_lifetime_s"]
                if not isinstance(lifetime, (int, float)) or isinstance(lifetime, bool):
                    raise ApiError(400, "policy_lifetime_s must be a number of seconds")
                sb.policy_lifetime_s = float(lifetime)
            if "api_keys" in data:
                sb.set_api_keys(data["api_keys"])
            return 200, sb._config_view()
        if path == "/_sandbox/config" and method == "GET":
            return 200, sb._config_view()
        raise ApiError(404, "Unknown sandbox admin endpoint.")


    def _projects_admin(self, path: str, method: str, body: bytes) -> Reply:
        """GET / PUT (replace all) / POST (add one) /_sandbox/projects; DELETE /_sandbox/projects/<id>."""
        landing = self.sb.landing
        if path == "/_sandbox/projects":
            if method == "GET":
                return 200, landing.projects()
            if method == "PUT":
                return 200, landing.set_projects(_json_any(body))
            if method == "POST":
                return 201, landing.add_project(_json_any(body))
        elif method == "DELETE":
            project_id = path.rsplit("/", 1)[1]
            return (200, {"deleted": project_id}) if landing.remove_project(project_id) else (
                404, {"message": f"no project {project_id}", "status": 404})
        raise ApiError(405, f"{method} {path} is not a sandbox admin call.")


def _json_any(body: bytes) -> Any:
    try:
        return json.loads(body or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "The request body is not valid JSON.") from None


def _json_object(body: bytes) -> dict:
    data = _json_any(body)
    if not isinstance(data, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    return data


def _sample_id(data: dict) -> str:
    sample_id = data.get("sample_id")
    if not isinstance(sample_id, str) or not sample_id:
        raise ApiError(400, "sample_id is required.")
    return sample_id


def _retry_after(seconds: float) -> str:
    # Retry-After takes whole seconds (RFC 9110 10.2.3); round a fraction up.
    whole = int(seconds)
    return str(whole if whole == seconds else whole + 1)


def _json_or_none(body: bytes) -> Any:
    """A request body as JSON for requests(), or None if it is not JSON."""
    try:
        return json.loads(body)
    except ValueError:
        return None
