"""How seqdrop judges what the One Codex API and S3 answer: an answer read within its bounds, the
exception each refusal means (daemon.errors), the server's words as seqdrop may keep and show them
(redact.server_text), the "already confirmed/successful" repeats, and network failures named by the
limit that ended them. Split from daemon/upload/client.py, which does the exchanges."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit
from xml.etree import ElementTree

import requests
import urllib3

from daemon import redact
from daemon.errors import AlreadyDone, AuthError, Permanent, Transient, UploadError, status_reason
from daemon.upload.bounds import Budget
from daemon.upload.retrying import parse_retry_after

TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}
TRANSIENT_S3_CODES = {"SlowDown", "InternalError", "RequestTimeout", "ServiceUnavailable",
                      "RequestTimeTooSkewed", "OperationAborted"}
# The client is the one place that reads a server's words (here and S3's "Policy expired" below).
# Confirming again after a lost answer is the design's rule (design.md, "The One Codex standard
# upload"): a server refusing that repeat with "already confirmed/uploaded" says the sample exists.
# A cancel refused with "Upload already successful" says the upload worked (the official client,
# onecodex/lib/upload.py, reads it so); one refused with "already confirmed" alone does not count.
ALREADY_RE = re.compile(r"already(?P<successful> successful)?", re.IGNORECASE)
# An answer that may have created a sample we cannot use (an init answer lacking fields, or with a
# sample_id that is not one) is not asked again at once: each ask could leave one more sample.
UNUSABLE_INIT_RETRY_S = 60.0


@dataclass(frozen=True)
class Answer:
    """A server's answer, read in full within its bounds."""
    status: int
    headers: Any              # requests' case-insensitive mapping
    body: bytes
    reason: str = ""

    def json(self) -> Any:       # ValueError if it is not JSON
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


def api_message(answer: Answer) -> str:
    """The API's words in a refusal, as seqdrop may keep and show them."""
    try:
        body = answer.json()
        if isinstance(body, dict) and body.get("message"):
            return redact.server_text(str(body["message"]), limit=200)
    except ValueError:
        pass
    text = answer.text.strip().replace("\n", " ")
    return redact.server_text(text or answer.reason or "no message", limit=200)


def s3_error(answer: Answer, secrets: tuple[str, ...]) -> tuple[str, str]:
    """S3's <Code> and <Message>, as seqdrop may keep and show them (this upload's policy and
    signature, which S3 echoes in SignatureDoesNotMatch, scrubbed too)."""
    try:
        root = ElementTree.fromstring(answer.body)
        code, message = root.findtext("Code") or "", root.findtext("Message") or ""
    except ElementTree.ParseError:
        code, message = "", answer.text.strip()
    return (redact.server_text(code, limit=60),
            redact.server_text(message, also=secrets, limit=200))


def judge(path: str, answer: Answer, *, json_answer: bool,
           already: Callable[[UploadError, str], bool] | None) -> Any:
    """An API answer's JSON (2xx), or the exception its refusal means."""
    status = answer.status
    if 200 <= status < 300:
        try:
            return answer.json()
        except ValueError:
            if not json_answer:
                return {}
            raise Transient(f"{path}: the server answered {status} with something that is not JSON",
                            reason="bad_answer") from None
    message = api_message(answer)
    error = refusal(path, answer, message)
    if already is not None and not 300 <= status < 400 and already(error, message):
        raise AlreadyDone(str(error), answer=message) from None
    raise error


def refusal(path: str, answer: Answer, message: str) -> UploadError:
    """The exception a non-2xx answer of the API means (AuthError, Transient or Permanent)."""
    status = answer.status
    if status in (401, 402, 403):
        what = {401: "API key rejected", 402: "account problem (payment required)",
                403: "API key not allowed to upload"}[status]
        return AuthError(f"{what}: {message} (HTTP {status})", status=status)
    if status in TRANSIENT_STATUS or status >= 500:
        return Transient(f"{path}: HTTP {status}: {message}", reason=status_reason(status),
                         retry_after_s=parse_retry_after(answer.headers.get("Retry-After")))
    if 300 <= status < 400:
        location = redact.server_text(str(answer.headers.get("Location")), limit=120)
        return Permanent(f"{path}: unexpected redirect (HTTP {status}) to {location!r}; check api.base_url")
    return Permanent(f"{path}: HTTP {status}: {message}")


def checked_sample_id(value: object, what: str) -> str:
    """A server's sample_id if it looks like one; "" if there is none; Transient (not to be asked again
    at once) if it is something else, which is neither kept nor shown."""
    if value is None or value == "":
        return ""
    if not redact.looks_like_sample_id(value):
        raise Transient(f"{what}: the answer's sample_id is not a One Codex sample id (16 hex digits); the "
                        f"answer is refused; will ask again later", reason="bad_sample_id",
                        retry_after_s=UNUSABLE_INIT_RETRY_S, immediate=False)
    return str(value)


def network_error(what: str, url: str, exc: BaseException, budget: Budget) -> Transient:
    """The Transient a failed exchange means, naming the limit that ended it if one did."""
    if budget.fired == "deadline":
        return Transient(f"{what}: no complete answer within the {budget.deadline_s:g} s deadline "
                         f"(api.call_deadline_s)", reason="deadline")
    if budget.fired == "stall":
        return Transient(f"{what}: {host(url)} took no byte of the upload for {budget.stall_s:g} s "
                         f"(upload.stall_timeout_s); abandoned", reason="stall")
    if isinstance(exc, (requests.Timeout, urllib3.exceptions.TimeoutError, TimeoutError)):
        return Transient(f"{what}: no answer within the timeout ({exc.__class__.__name__})", reason="timeout")
    if isinstance(exc, (requests.ConnectionError, OSError, urllib3.exceptions.ProtocolError)):
        return Transient(f"{what}: connection to {host(url)} failed ({short(exc)})", reason="connection")
    return Transient(f"{what}: request failed ({short(exc)})", reason="connection")


def refuses_project(error: UploadError, project_id: str) -> bool:
    """An init refused for good because of the project it names (deleted, access withdrawn): the
    landing planner looks the project up again (daemon/landing/planner.py). One Codex's words for it
    are not published; the sandbox's are "Project /api/v1/projects/<id> does not exist or you do not
    have access to it.", so any plain refusal naming the id or a project counts."""
    text = str(error).lower()
    return type(error) is Permanent and (project_id in text or "project" in text)


def confirmed_before(error: UploadError, message: str) -> bool:
    """A confirm or callback refused for good with "already ..." (see ALREADY_RE)."""
    return type(error) is Permanent and ALREADY_RE.search(message) is not None


def succeeded_before(error: UploadError, message: str) -> bool:
    """A cancel refused, whatever the status, with "already successful" (see ALREADY_RE)."""
    return any(m["successful"] for m in ALREADY_RE.finditer(message))


def host(url: str) -> str:
    return redact.server_text(urlsplit(url).netloc or url, limit=80)


def short(exc: BaseException) -> str:
    text = str(exc)
    # urllib3 messages repeat the pool and the URL; keep the root cause readable.
    if m := re.search(r"(Connection refused|Connection reset by peer|Name or service not known|"
                      r"timed out|Remote end closed connection without response|Broken pipe|"
                      r"certificate verify failed[^)'\"]*|Temporary failure in name resolution)", text):
        return m.group(1)
    return redact.server_text(text, limit=160)
