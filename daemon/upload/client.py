"""The One Codex API and the standard upload's S3 POST: init_upload → S3 POST → confirm_upload,
and the API half of the multipart route (init_multipart_upload, its callback; the S3 half is
daemon/upload/s3multipart.py).

The only module that imports requests. It translates HTTP into the exceptions of
daemon.errors, so its callers never look at status codes. The API key is sent
only to base_url (per request, never on a session, so no redirect or second
host can receive it); the S3 POST carries no Authorization header at all.
TLS verification is always on.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit
from xml.etree import ElementTree

import requests
from requests.adapters import HTTPAdapter

from daemon import __version__
from daemon.config import check_url
from daemon.errors import (
    AlreadyDone,
    AuthError,
    Permanent,
    PolicyExpired,
    Transient,
    UploadError,
    status_reason,
)
from daemon.upload.formdata import FormDataBody
from daemon.upload.retrying import parse_retry_after

TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}
TRANSIENT_S3_CODES = {"SlowDown", "InternalError", "RequestTimeout", "ServiceUnavailable",
                      "RequestTimeTooSkewed", "OperationAborted"}
FILENAME_RE = re.compile(r"^[\w\.]+[\w\-\.\[\]\(\)\{\} ]*\.[\w\.]+$")
# The client is the one place that reads a server's words (here and S3's "Policy expired" below).
# Confirming again after a lost answer is the design's rule (design.md, "The One Codex standard
# upload"): a server refusing that repeat with "already confirmed/uploaded" says the sample exists.
# A cancel refused with "Upload already successful" says the upload worked (the official client,
# onecodex/lib/upload.py, reads it so); one refused with "already confirmed" alone does not count.
ALREADY_RE = re.compile(r"already(?P<successful> successful)?", re.IGNORECASE)


def sanitize_filename(name: str) -> str:
    """A name the API accepts: unchanged if it already matches, else a safe lookalike."""
    if FILENAME_RE.match(name):
        return name
    clean = re.sub(r"[^\w\-\.\[\]\(\)\{\} ]", "_", name, flags=re.ASCII)
    clean = re.sub(r"^[^\w\.]+", "", clean, flags=re.ASCII)   # must start with a word char or dot
    if "." not in clean[1:]:
        clean += ".fastq" if clean else "sample.fastq"
    if not FILENAME_RE.match(clean):
        clean = re.sub(r"[^\w\.]", "_", clean, flags=re.ASCII) or "sample.fastq"
    return clean


@dataclass(frozen=True)
class InitResult:
    sample_id: str
    upload_url: str
    fields: tuple[tuple[str, str], ...]
    expires_at: float | None = None      # epoch seconds from the policy, if it could be decoded

    def to_json(self) -> str:
        return json.dumps({"sample_id": self.sample_id, "upload_url": self.upload_url,
                           "fields": [list(f) for f in self.fields], "expires_at": self.expires_at})

    @classmethod
    def from_json(cls, text: str) -> InitResult:
        d = json.loads(text)
        return cls(d["sample_id"], d["upload_url"], tuple((k, v) for k, v in d["fields"]), d.get("expires_at"))


def policy_expiry(fields: tuple[tuple[str, str], ...]) -> float | None:
    """Decode the S3 POST policy's expiration (epoch seconds), None if absent or unreadable."""
    named = dict(fields)
    policy = named.get("policy") or named.get("Policy")
    if not policy:
        return None
    try:
        doc = json.loads(base64.b64decode(policy + "=" * (-len(policy) % 4)))
        return datetime.fromisoformat(doc["expiration"].replace("Z", "+00:00")).timestamp()
    except (ValueError, KeyError, TypeError):
        return None


@dataclass(frozen=True)
class MultipartInit:
    """init_multipart_upload's answer. The temporary S3 credentials are kept apart from what the
    queue may store (to_json) and out of repr, so neither the queue nor a log line can hold them."""
    sample_id: str
    bucket: str
    key: str                  # One Codex's "file_id": the object's S3 key
    callback_url: str         # a path on base_url
    filename: str             # the (sanitised) name given to init and to the callback
    access_key_id: str = field(default="", repr=False)
    secret_access_key: str = field(default="", repr=False)
    session_token: str | None = field(default=None, repr=False)

    @property
    def s3_path(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def has_credentials(self) -> bool:
        return bool(self.access_key_id and self.secret_access_key)

    def to_json(self) -> str:
        return json.dumps({"route": "multipart", "sample_id": self.sample_id, "bucket": self.bucket,
                           "key": self.key, "callback_url": self.callback_url, "filename": self.filename})

    @classmethod
    def from_json(cls, text: str) -> MultipartInit:
        d = json.loads(text)
        return cls(d["sample_id"], d["bucket"], d["key"], d["callback_url"], d["filename"])


@dataclass
class PostResult:
    etag: str
    md5: str
    seconds: float
    bytes_sent: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _api_message(resp: requests.Response) -> str:
    try:
        body = resp.json()
        if isinstance(body, dict) and body.get("message"):
            return str(body["message"])
    except ValueError:
        pass
    text = resp.text.strip().replace("\n", " ")
    return text[:200] or resp.reason or "no message"


def _s3_error(resp: requests.Response) -> tuple[str, str]:
    try:
        root = ElementTree.fromstring(resp.content)
        return (root.findtext("Code") or "", root.findtext("Message") or "")
    except ElementTree.ParseError:
        return ("", resp.text.strip()[:200])


class _NoAuth(requests.auth.AuthBase):
    """Make sure nothing (not even ~/.netrc) adds credentials to the S3 request."""

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers.pop("Authorization", None)
        return r


class OneCodexClient:
    def __init__(self, base_url: str, api_key: str, *, connect_timeout_s: float = 10.0,
                 read_timeout_s: float = 60.0, session: requests.Session | None = None,
                 on_answer: Callable[[str, int], None] | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._auth = (api_key, "")
        self.timeout = (connect_timeout_s, read_timeout_s)
        self.session = session or requests.Session()
        # Large socket writes for multi-GB bodies (urllib3 defaults to 16 KiB blocks).
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=32, max_retries=0)
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
        self.session.headers["User-Agent"] = f"seqdrop/{__version__}"
        self.last_server_date: float | None = None
        # Told of every answer of the API (its path and HTTP status; never of S3's): the pause gate
        # learns from real requests that the key works again.
        self.on_answer = on_answer

    def uses_key(self, api_key: str) -> bool:
        return self._auth[0] == api_key

    def set_api_key(self, api_key: str) -> None:
        """A new key (re-read by a paused daemon) for the next request."""
        self._auth = (api_key, "")

    def _send(self, what: str, method: str, url: str, **kwargs: Any) -> requests.Response:
        """One HTTP request; every way the network can fail becomes Transient. Redirects are never
        followed (a 3xx is the caller's to judge) and TLS verification is never off."""
        try:
            return self.session.request(method, url, allow_redirects=False, verify=True, **kwargs)
        except requests.Timeout as e:
            raise Transient(f"{what}: no answer within the timeout ({e.__class__.__name__})",
                            reason="timeout") from None
        except requests.ConnectionError as e:
            raise Transient(f"{what}: connection to {_host(url)} failed ({_short(e)})", reason="connection") from None
        except requests.RequestException as e:
            raise Transient(f"{what}: request failed ({_short(e)})", reason="connection") from None

    # -- API calls (authenticated, base_url only) ---------------------------------------------
    def _api(self, method: str, path: str, *, json_answer: bool = True,
             already: Callable[[UploadError, str], bool] | None = None, **kwargs: Any) -> Any:
        """One API call: its JSON answer, or the exception of daemon.errors its refusal means.
        already(error, server's message): whether that refusal says a repeat found its work done
        (then AlreadyDone, with the same text)."""
        resp = self._send(path, method, self.base_url + path, auth=self._auth, timeout=self.timeout, **kwargs)
        self._note_date(resp)
        status = resp.status_code
        if self.on_answer is not None:
            self.on_answer(path, status)
        if 200 <= status < 300:
            try:
                return resp.json()
            except ValueError:
                if not json_answer:
                    return {}
                raise Transient(f"{path}: the server answered {status} with something that is not JSON",
                                reason="bad_answer") from None
        message = _api_message(resp)
        error = _refusal(path, resp, message)
        if already is not None and not 300 <= status < 400 and already(error, message):
            raise AlreadyDone(str(error), answer=message) from None
        raise error

    def _note_date(self, resp: requests.Response) -> None:
        if date := resp.headers.get("Date"):
            try:
                self.last_server_date = parsedate_to_datetime(date).timestamp()
            except (TypeError, ValueError):
                pass

    def init_upload(self, filename: str, size: int) -> InitResult:
        body = self._api("POST", "/api/v1/samples/init_upload",
                         json={"filename": filename, "size": size, "upload_type": "standard"})
        try:
            fields = body["additional_fields"]
            sample_id, upload_url = str(body["sample_id"]), str(body["upload_url"])
            if not isinstance(fields, dict) or not sample_id:
                raise TypeError
        except (KeyError, TypeError):
            raise Transient("init_upload: the answer lacks additional_fields, sample_id or upload_url",
                            reason="bad_answer") from None
        if reason := check_url(upload_url, what="upload_url", carries="the file"):
            try:   # nothing will ever be uploaded to this sample: do not leave it pending
                self.cancel_upload(sample_id)
            except (Transient, Permanent, AuthError):
                pass
            raise Permanent(f"init_upload returned an unsafe {reason}; refusing to send the file there")
        pairs = tuple((str(k), "" if v is None else str(v)) for k, v in fields.items())
        return InitResult(sample_id, upload_url, pairs, policy_expiry(pairs))

    def confirm_upload(self, sample_id: str) -> dict[str, Any]:
        """Raises AlreadyDone if One Codex refuses it because the sample is already confirmed."""
        return self._api("POST", "/api/v1/samples/confirm_upload", already=_confirmed_before,
                         json={"sample_id": sample_id, "upload_type": "standard"})

    def cancel_upload(self, sample_id: str) -> None:
        """Raises AlreadyDone if One Codex refuses it because the sample's upload already succeeded."""
        self._api("POST", "/api/v1/samples/cancel_upload", already=_succeeded_before, json={"sample_id": sample_id})

    # -- the multipart route (NOT verified against the real One Codex: modelled on the official
    #    client, onecodex/lib/upload.py, and run only against the sandbox and moto) ---------------
    def init_multipart_upload(self, filename: str) -> MultipartInit:
        """A new sample, an S3 bucket and key for it, and temporary credentials to upload there."""
        path = "/api/v1/samples/init_multipart_upload"
        # sample_id/external_sample_id null: a new sample (the official client sends them so).
        body = self._api("POST", path, json={"filename": filename, "sample_id": None, "external_sample_id": None})
        answer = body if isinstance(body, dict) else {}
        wanted = ("sample_id", "s3_bucket", "file_id", "upload_aws_access_key_id",
                  "upload_aws_secret_access_key", "callback_url")
        missing = [k for k in wanted if not isinstance(answer.get(k), str) or not answer.get(k)]
        if missing:
            # This route is unverified: an answer of another shape is a fact to report, not to retry
            # (each retry would create another sample). Cancel the sample it may have created.
            if isinstance(answer.get("sample_id"), str) and answer["sample_id"]:
                self._cancel_quietly(answer["sample_id"])
            raise Permanent(f"init_multipart_upload's answer lacks {', '.join(missing)}: One Codex's multipart "
                            f"route may have changed (seqdrop's is not verified against it); please report this")
        callback = self._same_host_path(answer["callback_url"])
        if callback is None:
            self._cancel_quietly(answer["sample_id"])
            raise Permanent(f"init_multipart_upload returned a callback_url off {self.base_url} "
                            f"({answer['callback_url']!r}); refusing to send the API key there")
        token = answer.get("upload_aws_session_token")
        return MultipartInit(sample_id=answer["sample_id"], bucket=answer["s3_bucket"], key=answer["file_id"],
                             callback_url=callback, filename=filename,
                             access_key_id=answer["upload_aws_access_key_id"],
                             secret_access_key=answer["upload_aws_secret_access_key"],
                             session_token=token if isinstance(token, str) and token else None)

    def multipart_callback(self, init: MultipartInit) -> dict[str, Any]:
        """Tell One Codex the object is in S3; a 2xx means the sample is created. The answer (JSON, or {}
        when it is not JSON, as the official client reads it) may name the sample_id. Raises
        AlreadyDone if One Codex refuses a repeat because the sample already exists."""
        answer = self._api("POST", init.callback_url, json_answer=False, already=_confirmed_before,
                           json={"s3_path": init.s3_path, "filename": init.filename, "import_as_document": False})
        return answer if isinstance(answer, dict) else {}

    def _same_host_path(self, url: str) -> str | None:
        """callback_url as a path on base_url; None if it names another host (the key must not go there)."""
        parts, base = urlsplit(url), urlsplit(self.base_url)
        if not parts.scheme and not parts.netloc and url.startswith("/") and not url.startswith("//"):
            return url
        if (parts.scheme, parts.netloc) == (base.scheme, base.netloc) and parts.path.startswith("/"):
            path = parts.path[len(base.path.rstrip("/")):] if parts.path.startswith(base.path.rstrip("/") + "/") \
                else None
            if path is not None:
                return path + (f"?{parts.query}" if parts.query else "")
        return None

    def _cancel_quietly(self, sample_id: str) -> None:
        try:
            self.cancel_upload(sample_id)
        except (Transient, Permanent, AuthError):
            pass

    def probe(self) -> None:
        """One cheap authenticated request: raises AuthError/Transient/Permanent, returns if the key
        works (any 2xx: an answer that is not JSON still says the key was accepted)."""
        self._api("GET", "/api/v1/samples", json_answer=False, params={"per_page": 1})

    # -- S3 POST (no credentials) ----------------------------------------------------------------
    def post_to_s3(self, init: InitResult, body: FormDataBody, *, timeout_s: tuple[float, float] | None = None
                   ) -> PostResult:
        started = time.monotonic()
        headers = {"Content-Type": body.content_type, "Content-Length": str(len(body))}
        resp = self._send("S3 upload", "POST", init.upload_url, data=body, headers=headers, auth=_NoAuth(),
                          timeout=timeout_s or self.timeout)
        status = resp.status_code
        if 200 <= status < 300:
            etag = resp.headers.get("ETag", "")
            if not etag:
                try:
                    etag = ElementTree.fromstring(resp.content).findtext("ETag") or ""
                except ElementTree.ParseError:
                    etag = ""
            return PostResult(etag=etag.strip().strip('"').lower(), md5=body.md5.hexdigest(),
                              seconds=time.monotonic() - started, bytes_sent=body.file_bytes_sent)
        code, message = _s3_error(resp)
        text = f"S3 answered HTTP {status} {code or ''}: {message}".replace("  ", " ").strip()
        if code == "AccessDenied" and "expired" in message.lower():
            raise PolicyExpired(text)
        if code in TRANSIENT_S3_CODES or status in TRANSIENT_STATUS or status >= 500:
            raise Transient(text, reason=status_reason(status, code),
                            retry_after_s=parse_retry_after(resp.headers.get("Retry-After")))
        raise Permanent(text)


def _refusal(path: str, resp: requests.Response, message: str) -> UploadError:
    """The exception a non-2xx answer of the API means (AuthError, Transient or Permanent)."""
    status = resp.status_code
    if status in (401, 402, 403):
        what = {401: "API key rejected", 402: "account problem (payment required)",
                403: "API key not allowed to upload"}[status]
        return AuthError(f"{what}: {message} (HTTP {status})", status=status)
    if status in TRANSIENT_STATUS or status >= 500:
        return Transient(f"{path}: HTTP {status}: {message}", reason=status_reason(status),
                         retry_after_s=parse_retry_after(resp.headers.get("Retry-After")))
    if 300 <= status < 400:
        return Permanent(f"{path}: unexpected redirect (HTTP {status}) to {resp.headers.get('Location')!r}; "
                         f"check api.base_url")
    return Permanent(f"{path}: HTTP {status}: {message}")


def _confirmed_before(error: UploadError, message: str) -> bool:
    """A confirm or callback refused for good with "already ..." (see ALREADY_RE)."""
    return type(error) is Permanent and ALREADY_RE.search(message) is not None


def _succeeded_before(error: UploadError, message: str) -> bool:
    """A cancel refused, whatever the status, with "already successful" (see ALREADY_RE)."""
    return any(m["successful"] for m in ALREADY_RE.finditer(message))


def _host(url: str) -> str:
    return urlsplit(url).netloc or url


def _short(exc: BaseException) -> str:
    text = str(exc)
    # urllib3 messages repeat the pool and the URL; keep the root cause readable.
    if m := re.search(r"(Connection refused|Connection reset by peer|Name or service not known|"
                      r"timed out|Remote end closed connection without response|Broken pipe|"
                      r"certificate verify failed[^)'\"]*|Temporary failure in name resolution)", text):
        return m.group(1)
    return text[:160]
