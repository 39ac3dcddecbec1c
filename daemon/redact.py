"""Secrets and server values: the one place that knows every form a secret can take.

seqdrop holds two kinds of secret. Long-lived ones (the API key; a multipart upload's temporary S3
credentials) are `register`ed once and then recognised in any form: as given, in the basic-auth
form `base64(key + ":")` with or without padding, in base64 at any alignment inside a longer blob
(a server that base64-encodes a document holding the key), URL-, JSON- and XML-escaped. Per-upload
ones (an S3 POST policy and its signature) are recognised by shape: the fields that carry them
(`policy`, `signature`, `x-amz-signature`, `x-amz-credential`, S3's `StringToSign` …) and long
base64 blobs. `scrub` replaces each with "[redacted]"; it runs where server text enters seqdrop,
so nothing downstream (logs, the queue, status, notifications, the audit journal) can leak it.

Values from servers are data: `escape_control` shows control characters (newlines, ANSI escapes,
bidi overrides) escaped, so a sample id cannot forge a `status` line or recolour a terminal;
`looks_like_sample_id` says whether a value has the shape of a One Codex sample id.

The registry is module state, the one exception to "no global mutable state" (docs/style): a
secret becomes known in one room (the CLI reading the key, the pipeline receiving credentials)
and must be recognised in every other (the client's error path, logs, the journal, webhooks);
passing a redactor through every constructor would reach every module for one process-wide fact.
It only grows (`reset` is for tests), and a lock guards it.
"""

from __future__ import annotations

import base64
import html
import json
import re
import threading
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, quote_plus

MASK = "[redacted]"
MIN_SECRET_CHARS = 4        # shorter strings are too common to replace everywhere
MIN_BASE64_CORE_CHARS = 8   # an alignment-free base64 fragment shorter than this would hit ordinary words
_B64_SET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/_-")

# Field names whose values are secrets wherever they appear (S3 POST forms, S3 error XML such as
# SignatureDoesNotMatch's StringToSign/SignatureProvided, JSON answers, query strings).
SECRET_FIELDS = (
    "policy", "signature", "x-amz-signature", "x-amz-credential", "x-amz-security-token",
    "stringtosign", "stringtosignbytes", "signatureprovided", "canonicalrequest", "canonicalrequestbytes",
    "upload_aws_secret_access_key", "aws_secret_access_key", "secret_access_key", "secretaccesskey",
    "upload_aws_session_token", "aws_session_token", "session_token", "sessiontoken", "api_key", "apikey",
    "password", "authorization",
)
_NAMES = "|".join(re.escape(name) for name in sorted(SECRET_FIELDS, key=len, reverse=True))
_SHAPES = (
    # "policy": "…" (JSON), 'policy': '…' (a Python repr)
    (re.compile(rf'("(?:{_NAMES})"\s*:\s*")(?:[^"\\]|\\.)*(")', re.IGNORECASE), rf"\g<1>{MASK}\g<2>"),
    (re.compile(rf"('(?:{_NAMES})'\s*:\s*')[^']*(')", re.IGNORECASE), rf"\g<1>{MASK}\g<2>"),
    # <StringToSign>…</StringToSign> (S3 error XML)
    (re.compile(rf"(<({_NAMES})>)[^<]*(</\2>)", re.IGNORECASE), rf"\g<1>{MASK}\g<3>"),
    # name="policy"\r\n\r\n… (an echoed multipart/form-data body)
    (re.compile(rf'(name="(?:{_NAMES})"\r?\n(?:[^\r\n]+\r?\n)*\r?\n)[^\r\n]*', re.IGNORECASE), rf"\g<1>{MASK}"),
    # policy=… (a query string or form)
    (re.compile(rf"(?<![\w-])((?:{_NAMES})=)[^&\s\"'<>]+", re.IGNORECASE), rf"\g<1>{MASK}"),
    # AWS4-HMAC-SHA256 Credential=…, Signature=… and AWS AKID:signature (Authorization headers)
    (re.compile(r"\b(AWS4-HMAC-SHA256)\s+\S+(?:,\s*\S+)*"), rf"\g<1> {MASK}"),
    (re.compile(r"\b(AWS)\s+[A-Z0-9]{16,}:[A-Za-z0-9+/=]+"), rf"\g<1> {MASK}"),
    # base64 of a JSON object (an S3 POST policy, a JWT): starts with base64('{"')
    (re.compile(r"eyJ[A-Za-z0-9+/_-]{16,}={0,2}"), MASK),
)
# A long run of base64 characters that looks random (both cases and a digit, few slashes) is a
# policy, token or signature blob; paths (many slashes) and hex digests (one case) are not touched.
_LONG_B64 = re.compile(r"(?<![A-Za-z0-9+/=])[A-Za-z0-9+/]{64,}={0,2}")
# "Basic <token>" / "Bearer <token>": a credential when the token looks encoded, not a word of prose
# ("Basic authentication failed" stays).
_AUTH_TOKEN = re.compile(r"\b(Basic|Bearer)(\s+)([A-Za-z0-9+/_.~-]{8,}=*)", re.IGNORECASE)

# C0 and C1 controls, DEL, line/paragraph separators, and the bidirectional overrides that can
# reorder what a terminal shows ("Trojan Source", CVE-2021-42574).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\x1b": "\\x1b"}
_SAMPLE_ID = re.compile(r"[0-9a-f]{16}")

_lock = threading.Lock()
_registered: set[str] = set()
_literal_forms: set[str] = set()
_core_forms: set[str] = set()
_matcher: _Matcher | None = None   # replaced on register; read without the lock (one reference)


def register(secret: str) -> None:
    """Recognise `secret` in every form from now on (thread-safe; registering twice is harmless)."""
    global _matcher
    if not isinstance(secret, str) or len(secret) < MIN_SECRET_CHARS:
        return
    with _lock:
        if secret in _registered:
            return
        _registered.add(secret)
        _literal_forms.update(forms(secret))
        _core_forms.update(base64_cores(secret))
        _matcher = _Matcher(_literal_forms, _core_forms)


def reset() -> None:
    """Forget every registered secret (for tests)."""
    global _matcher
    with _lock:
        _registered.clear()
        _literal_forms.clear()
        _core_forms.clear()
        _matcher = None


def scrub(text: str, *, also: Iterable[str] = (), shapes: bool = True) -> str:
    """`text` with every form of every registered secret, of each string in `also` (e.g. this
    upload's policy and signature), and (unless `shapes` is False: for names a local file system
    chose, which must survive exactly) every secret-shaped field or blob replaced by MASK."""
    if not text:
        return text
    extra = [s for s in also if isinstance(s, str) and len(s) >= MIN_SECRET_CHARS]
    for matcher in (_matcher, _Matcher.of(extra) if extra else None):
        if matcher is not None:
            text = matcher.sub(text)
    if not shapes:
        return text
    for shape, replacement in _SHAPES:
        text = shape.sub(replacement, text)
    text = _AUTH_TOKEN.sub(_mask_if_token, text)
    return _LONG_B64.sub(_mask_if_random, text)


def scrub_data(value: Any, *, also: Iterable[str] = ()) -> Any:
    """`scrub` applied to every string (keys too) inside JSON-like data; other values unchanged."""
    also = tuple(also)
    if isinstance(value, str):
        return scrub(value, also=also)
    if isinstance(value, dict):
        return {scrub_data(k, also=also): scrub_data(v, also=also) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub_data(v, also=also) for v in value]
    return value


def escape_control(text: str) -> str:
    """`text` with control characters shown as escapes (`\\n`, `\\x1b`, `\\u202e` …): safe to
    put on a terminal or into a log line when it came from a server."""
    return _CONTROL.sub(_escape_one, text)


def server_text(text: str, *, also: Iterable[str] = (), limit: int = 300) -> str:
    """Text a server sent (an error message, an exception's text, a header) as seqdrop may keep and
    show it: every secret form scrubbed, control characters escaped, at most `limit` characters.
    The one door for server words into an exception message (daemon/upload/client.py)."""
    clean = escape_control(scrub(text, also=also))
    return clean if len(clean) <= limit else clean[:limit] + "..."


def looks_like_sample_id(value: object) -> bool:
    """Is `value` a One Codex sample id: exactly 16 lower-case hex digits (the API's
    `^/api/v1/samples/[a-f0-9]{16}$`)?"""
    return isinstance(value, str) and _SAMPLE_ID.fullmatch(value) is not None


# -- the forms of a secret ------------------------------------------------------------------------

def forms(secret: str) -> set[str]:
    """The literal strings under which `secret` can appear (public so tests can enumerate them)."""
    raw = secret.encode()
    found = {secret}
    for blob in (raw + b":", raw):      # basic auth sends base64(key + ":"); a server may drop the ':'
        for encoded in (base64.b64encode(blob).decode(), base64.urlsafe_b64encode(blob).decode()):
            found.update({encoded, encoded.rstrip("=")})
    for form in list(found):  # a copy: the loop adds to found
        quoted = quote(form, safe="")
        found.update({quoted, quote_plus(form), re.sub("%[0-9A-F]{2}", lambda m: m.group(0).lower(), quoted),
                      json.dumps(form)[1:-1], json.dumps(form)[1:-1].replace("/", "\\/"),
                      html.escape(form)})
    return {f for f in found if len(f) >= MIN_SECRET_CHARS}


def base64_cores(secret: str) -> set[str]:
    """For each of base64's three alignments, the characters that encode only the secret's bytes:
    any base64 text holding the secret, whatever precedes or follows it, contains one of these."""
    raw = secret.encode()
    cores = set()
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + raw).decode()
        whole_groups = (offset + len(raw)) // 3
        core = encoded[(0, 2, 3)[offset]:whole_groups * 4]
        if len(core) >= MIN_BASE64_CORE_CHARS:
            cores.update({core, core.replace("+", "-").replace("/", "_")})
    return cores


class _Matcher:
    """Finds the forms of a set of secrets in text with plain substring searches (C speed; no
    regex to compile, so registering the thousandth secret costs what the first did)."""

    def __init__(self, literal: Iterable[str], cores: Iterable[str]) -> None:
        # Longest first: a secret that contains another is masked whole, not around the shorter one.
        self._literal = sorted(literal, key=len, reverse=True)
        self._cores = sorted(cores, key=len, reverse=True)

    @classmethod
    def of(cls, secrets: Iterable[str]) -> _Matcher:
        literal: set[str] = set()
        cores: set[str] = set()
        for secret in secrets:
            literal |= forms(secret)
            cores |= base64_cores(secret)
        return cls(literal, cores)

    def sub(self, text: str) -> str:
        for core in self._cores:
            if core in text:
                text = _mask_blobs(text, core)
        for form in self._literal:
            if form in text:
                text = text.replace(form, MASK)
        return text


def _mask_blobs(text: str, core: str) -> str:
    """Mask the whole base64 blob around each occurrence of `core`: the blob encodes the secret, and
    its edges would otherwise still hold a few of the secret's bits."""
    pieces: list[str] = []
    done = 0                       # text[:done] is already in pieces
    found = text.find(core)
    while found != -1:
        start, end = found, found + len(core)
        while start > done and text[start - 1] in _B64_SET:
            start -= 1
        while end < len(text) and text[end] in _B64_SET:
            end += 1
        padding = 0
        while end < len(text) and text[end] == "=" and padding < 2:
            end, padding = end + 1, padding + 1
        pieces += [text[done:start], MASK]
        done = end
        found = text.find(core, done)
    return "".join(pieces) + text[done:]


def _mask_if_random(match: re.Match[str]) -> str:
    run = match.group(0)
    looks_random = (any(c.isupper() for c in run) and any(c.islower() for c in run)
                    and any(c.isdigit() for c in run) and run.count("/") * 16 <= len(run))
    return MASK if looks_random else run


def _mask_if_token(match: re.Match[str]) -> str:
    token = match.group(3)
    encoded = (token.endswith("=") or any(c.isdigit() or c in "+/_.~-" for c in token)
               or any(c.isupper() for c in token[1:]))
    return f"{match.group(1)}{match.group(2)}{MASK}" if encoded else match.group(0)


def _escape_one(match: re.Match[str]) -> str:
    char = match.group(0)
    if char in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[char]
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


__all__ = ["MASK", "SECRET_FIELDS", "base64_cores", "escape_control", "forms", "looks_like_sample_id",
           "register", "reset", "scrub", "scrub_data", "server_text"]
