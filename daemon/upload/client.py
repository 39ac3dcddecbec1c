"""The One Codex API and the standard upload's S3 POST: init_upload → S3 POST → confirm_upload,
and the API half of the multipart route (init_multipart_upload, its callback; the S3 half is
daemon/upload/s3multipart.py).

Every exchange with the API, and the standard route's S3 POST, is made here; daemon/upload/answers.py
judges the answers (the exceptions of daemon.errors), so callers never look at status codes. The API key is sent
only to base_url (per request, never on a session, so no redirect or second
host can receive it); the S3 POST carries no Authorization header at all.
TLS verification is always on.

The boundary for what servers say (design.md, "Rules"): every exchange runs under an overall
deadline and its answer is read up to a bound (daemon/upload/bounds.py); every piece of server
text that becomes an exception message passes redact.server_text (secrets scrubbed, control
characters escaped); a sample_id must look like one before anything keeps it.
"""

from __future__ import annotations

import http.client
import time
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit
from xml.etree import ElementTree

import requests
import urllib3
from requests.adapters import HTTPAdapter

from daemon import __version__, redact
from daemon.config import check_url
from daemon.errors import (
    AuthError,
    Permanent,
    PolicyExpired,
    Transient,
    UploadError,
    status_reason,
)
from daemon.upload.answers import (
    TRANSIENT_S3_CODES,
    TRANSIENT_STATUS,
    UNUSABLE_INIT_RETRY_S,
    Answer,
    checked_sample_id,
    confirmed_before,
    judge,
    network_error,
    s3_error,
    succeeded_before,
)
from daemon.upload.bounds import (
    API_ANSWER_LIMIT_BYTES,
    PACED_POOL_CLASSES,
    S3_ANSWER_LIMIT_BYTES,
    Budget,
    paced,
    read_bounded,
)
from daemon.upload.formdata import FormDataBody
from daemon.upload.records import InitResult, MultipartInit, PostResult
from daemon.upload.retrying import parse_retry_after
from daemon.upload.seal import FormSeal

# GET /api/v1/samples/{id}: the published schema's UserFacingDataStatus (and, when a server sends no
# status, its legacy `visibility`). Every status but awaiting data and deleted says One Codex has the
# upload (the sample was confirmed); a status not listed here is not guessed at.
RECEIVED_STATUSES, RECEIVED_VISIBILITIES = {"importing", "validating", "failed_validation", "available"}, \
    {"importing", "private", "shared", "public"}
class _NoAuth(requests.auth.AuthBase):
    """Make sure nothing (not even ~/.netrc) adds credentials to the S3 request."""

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers.pop("Authorization", None)
        return r


class _PacedAdapter(HTTPAdapter):
    """requests' adapter whose connections obey the request's Budget (daemon/upload/bounds.py),
    directly or through a proxy from the environment."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(PACED_POOL_CLASSES)

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **kwargs)
        if not proxy.lower().startswith("socks"):      # SOCKS proxies bring connection classes of their own
            manager.pool_classes_by_scheme = dict(PACED_POOL_CLASSES)
        return manager


class OneCodexClient:
    def __init__(self, base_url: str, api_key: str, *, connect_timeout_s: float = 10.0,
                 read_timeout_s: float = 60.0, call_deadline_s: float = 60.0, stall_timeout_s: float = 60.0,
                 session: requests.Session | None = None,
                 on_answer: Callable[[str, int], None] | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.form_seal = FormSeal()   # the S3 forms an upload keeps in the queue, sealed with the key (seal.py)
        self.set_api_key(api_key)
        self.timeout = (connect_timeout_s, read_timeout_s)
        # call_deadline_s: each API call end to end, and S3's answer once the body is sent;
        # stall_timeout_s: the longest S3 may take no byte of the body (design.md, "Rules").
        self.call_deadline_s, self.stall_timeout_s = call_deadline_s, stall_timeout_s
        self.session = session or requests.Session()
        # Large socket writes for multi-GB bodies (urllib3 defaults to 16 KiB blocks).
        adapter = _PacedAdapter(pool_connections=4, pool_maxsize=32, max_retries=0)
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
        self.session.headers["User-Agent"] = f"seqdrop/{__version__}"
        self.session.headers["Accept-Encoding"] = "identity"   # answers are small; nothing to inflate
        self.last_server_date: float | None = None
        # Told of every answer of the API (its path and HTTP status; never of S3's): the pause gate
        # learns from real requests that the key works again.
        self.on_answer = on_answer

    def uses_key(self, api_key: str) -> bool:
        return self._auth[0] == api_key

    def set_api_key(self, api_key: str) -> None:
        """A new key (re-read by a paused daemon) for the next request. Registered with daemon.redact
        first, so no form of it can come back through a server's words."""
        redact.register(api_key)
        self._auth = (api_key, "")
        self.form_seal.use_key(api_key)

    def _send(self, what: str, method: str, url: str, *, budget: Budget, limit_bytes: int,
              **kwargs: Any) -> Answer:
        """One HTTP exchange under `budget`, its answer read up to limit_bytes; every way the network
        can fail becomes Transient. Redirects are never followed (a 3xx is the caller's to judge) and
        TLS verification is never off."""
        connect_s, read_s = self.timeout
        with paced(budget):
            try:
                resp = self.session.request(method, url, allow_redirects=False, verify=True, stream=True,
                                            timeout=(min(connect_s, budget.deadline_s), read_s), **kwargs)
                try:
                    body = read_bounded(resp.raw, resp.headers, limit_bytes, what=what)
                finally:
                    resp.close()
            except (requests.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException,
                    OSError) as e:
                raise network_error(what, url, e, budget) from None
        return Answer(resp.status_code, resp.headers, body, resp.reason or "")

    # -- API calls (authenticated, base_url only) ---------------------------------------------
    def _call(self, method: str, path: str, **kwargs: Any) -> Answer:
        """One API call under the call deadline; the answer whatever its status."""
        answer = self._send(path, method, self.base_url + path, auth=self._auth,
                            budget=Budget(self.call_deadline_s), limit_bytes=API_ANSWER_LIMIT_BYTES, **kwargs)
        self._note_date(answer)
        if self.on_answer is not None:
            self.on_answer(path, answer.status)
        return answer

    def _api(self, method: str, path: str, *, json_answer: bool = True,
             already: Callable[[UploadError, str], bool] | None = None, **kwargs: Any) -> Any:
        """One API call: its JSON answer, or the exception of daemon.errors its refusal means.
        already(error, server's message): whether that refusal says a repeat found its work done
        (then AlreadyDone, with the same text)."""
        return judge(path, self._call(method, path, **kwargs), json_answer=json_answer, already=already)

    def _note_date(self, answer: Answer) -> None:
        if date := answer.headers.get("Date"):
            try:
                self.last_server_date = parsedate_to_datetime(date).timestamp()
            except (TypeError, ValueError):
                pass

    def init_upload(self, filename: str, size: int, *, paired_end_filename: str | None = None,
                    extra: dict[str, Any] | None = None) -> InitResult:
        """A new sample and the S3 POST form (the R2's too for a paired_end_filename); extra: project, tags,
        metadata. An unusable answer is Transient, not asked again at once; its sample is cancelled."""
        paired = {"paired_end_filename": paired_end_filename} if paired_end_filename is not None else {}
        body = self._api("POST", "/api/v1/samples/init_upload", json={
            **(extra or {}), "filename": filename, "size": size, "upload_type": "standard", **paired})
        answer = body if isinstance(body, dict) else {}
        sample_id = checked_sample_id(answer.get("sample_id"), "init_upload")
        forms = [("upload_url", "additional_fields"),
                 ("paired_end_upload_url", "paired_end_additional_fields")][:1 + len(paired)]
        missing = [n for u, f in forms for n, ok in ((u, isinstance(answer.get(u), str) and answer.get(u)),
                                                      (f, isinstance(answer.get(f), dict))) if not ok]
        if missing:
            if sample_id:     # a sample nothing will ever be uploaded to: do not leave it pending
                self._cancel_quietly(sample_id)
            raise Transient(f"init_upload: the answer lacks {' and '.join(missing)}"
                            f"{'; its sample was cancelled' if sample_id else ''}; will ask again later",
                            reason="bad_answer", retry_after_s=UNUSABLE_INIT_RETRY_S, immediate=False)
        if not sample_id:
            raise Transient("init_upload: the answer names no sample_id; will ask again later",
                            reason="bad_answer", retry_after_s=UNUSABLE_INIT_RETRY_S, immediate=False)
        for url, _ in forms:
            if reason := check_url(answer[url], what=url, carries="the file"):
                self._cancel_quietly(sample_id)   # nothing will ever be uploaded to this sample
                raise Permanent(f"init_upload returned an unsafe {redact.server_text(reason)}; "
                                f"refusing to send the file there")
        return InitResult.from_answer(sample_id, answer, paired=bool(paired))

    def confirm_upload(self, sample_id: str) -> dict[str, Any]:
        """Raises AlreadyDone if One Codex refuses it because the sample is already confirmed."""
        return self._api("POST", "/api/v1/samples/confirm_upload", already=confirmed_before,
                         json={"sample_id": sample_id, "upload_type": "standard"})

    def cancel_upload(self, sample_id: str) -> None:
        """Raises AlreadyDone if One Codex refuses it because the sample's upload already succeeded."""
        self._api("POST", "/api/v1/samples/cancel_upload", already=succeeded_before, json={"sample_id": sample_id})

    def sample_state(self, sample_id: str) -> str:
        """What One Codex says of a sample (GET /api/v1/samples/{id}): "confirmed" (it has the upload:
        importing, validating, available...), "pending" (awaiting data) or "gone" (deleted, unknown).
        Transient when the answer says none of these; AuthError/Permanent as for any call."""
        if not redact.looks_like_sample_id(sample_id):
            raise Permanent("asked about a sample_id that is not a One Codex sample id")
        path = f"/api/v1/samples/{sample_id}"
        answer = self._call("GET", path)
        if answer.status == 404:
            return "gone"
        body = judge(path, answer, json_answer=True, already=None)
        doc = body if isinstance(body, dict) else {}
        status, visibility = doc.get("status"), doc.get("visibility")
        if status in RECEIVED_STATUSES or (status is None and visibility in RECEIVED_VISIBILITIES):
            return "confirmed"
        if status == "awaiting_data" or (status is None and visibility == "awaiting data"):
            return "pending"
        if status == "deleted":
            return "gone"
        raise Transient(f"{path}: the answer's status {redact.server_text(str(status), limit=40)!r} is not one "
                        f"seqdrop knows; will ask again later", reason="bad_answer")

    # -- the multipart route (NOT verified against the real One Codex: modelled on the official
    #    client, onecodex/lib/upload.py, and run only against the sandbox and moto) ---------------
    def init_multipart_upload(self, filename: str, *, paired_end_filename: str | None = None,
                              extra: dict[str, Any] | None = None) -> MultipartInit:
        """A new sample, an S3 bucket and key for it (and for a paired_end_filename's R2, its
        paired_end_file_id), and temporary credentials to upload there; extra: the landing fields."""
        path = "/api/v1/samples/init_multipart_upload"
        # sample_id/external_sample_id null: a new sample (the official client sends them so).
        paired = {} if paired_end_filename is None else {"paired_end_filename": paired_end_filename}
        body = self._api("POST", path, json={**(extra or {}), "filename": filename, "sample_id": None,
                                             "external_sample_id": None, **paired})
        answer = body if isinstance(body, dict) else {}
        sample_id = checked_sample_id(answer.get("sample_id"), "init_multipart_upload")
        missing = MultipartInit.missing(answer, paired=bool(paired))
        if missing or not sample_id:
            # This route is unverified: an answer of another shape is a fact to report, not to retry
            # (each retry would create another sample). Cancel the sample it may have created.
            if sample_id:
                self._cancel_quietly(sample_id)
            raise Permanent(f"init_multipart_upload's answer lacks {', '.join(missing or ['sample_id'])}: One "
                            f"Codex's multipart route may have changed (seqdrop's is not verified against it); "
                            f"please report this")
        callback = self._same_host_path(answer["callback_url"])
        if callback is None:
            self._cancel_quietly(sample_id)
            raise Permanent(f"init_multipart_upload returned a callback_url off {self.base_url} "
                            f"({redact.server_text(answer['callback_url'], limit=120)!r}); "
                            f"refusing to send the API key there")
        return MultipartInit.from_answer(sample_id, answer, callback_url=callback, filename=filename,
                                         paired_end_filename=paired_end_filename)

    def multipart_callback(self, init: MultipartInit) -> dict[str, Any]:
        """Tell One Codex the object is in S3; a 2xx means the sample is created. The answer (JSON, or {}
        when it is not JSON, as the official client reads it) may name the sample_id. Raises
        AlreadyDone if One Codex refuses a repeat because the sample already exists."""
        answer = self._api("POST", init.callback_url, json_answer=False, already=confirmed_before,
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

    def projects(self, params: Mapping[str, str]) -> Any:
        """GET /api/v1/projects with `params` (`where`, `per_page`, `page`): the projects the key can see,
        as One Codex lists them (daemon/landing/projects.py reads the answer)."""
        return self._api("GET", "/api/v1/projects", params=dict(params))

    def probe(self) -> None:
        """One cheap authenticated request: raises AuthError/Transient/Permanent, returns if the key
        works (any 2xx: an answer that is not JSON still says the key was accepted)."""
        self._api("GET", "/api/v1/samples", json_answer=False, params={"per_page": 1})

    # -- S3 POST (no credentials) ----------------------------------------------------------------
    def post_to_s3(self, init: InitResult, body: FormDataBody) -> PostResult:
        """Send the form; S3's answer within the call deadline once the body is sent, each wait for S3
        to take a byte of it at most stall_timeout_s. The ETag ("" when S3 sent none) is for the
        caller to compare with the MD5 of the bytes sent."""
        started = time.monotonic()
        headers = {"Content-Type": body.content_type, "Content-Length": str(len(body))}
        budget = Budget(self.call_deadline_s, stall_s=self.stall_timeout_s, from_answer=True)
        answer = self._send("S3 upload", "POST", init.upload_url, data=body, headers=headers, auth=_NoAuth(),
                            budget=budget, limit_bytes=S3_ANSWER_LIMIT_BYTES)
        status = answer.status
        if 200 <= status < 300:
            etag = answer.headers.get("ETag", "")
            if not etag:
                try:
                    etag = ElementTree.fromstring(answer.body).findtext("ETag") or ""
                except ElementTree.ParseError:
                    etag = ""
            return PostResult(etag=redact.server_text(etag.strip().strip('"').lower(), limit=80),
                              md5=body.md5.hexdigest(), seconds=time.monotonic() - started,
                              bytes_sent=body.file_bytes_sent)
        named = dict(init.fields)
        secrets = tuple(v for k, v in named.items() if k.lower() in ("policy", "signature", "x-amz-signature"))
        code, message = s3_error(answer, secrets)
        text = f"S3 answered HTTP {status} {code or ''}: {message}".replace("  ", " ").strip()
        if code == "AccessDenied" and "expired" in message.lower():
            raise PolicyExpired(text)
        if code in TRANSIENT_S3_CODES or status in TRANSIENT_STATUS or status >= 500:
            raise Transient(text, reason=status_reason(status, code),
                            retry_after_s=parse_retry_after(answer.headers.get("Retry-After")))
        raise Permanent(text)
