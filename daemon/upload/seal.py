"""The signed S3 POST form an upload in flight keeps in the queue, sealed with the API key.

design.md's Rules: an S3 policy and signature never appear in anything seqdrop stores. Yet a paired
sample whose R1 is in S3 (step posted_r1) can only send its R2 after a restart with the R2's form, which
init_upload answers once and One Codex never gives again; without it the sample is cancelled and both
reads sent again (issue 11, Must show 2). So the form is kept, but only sealed: encrypted and
authenticated (Fernet: AES-128-CBC + HMAC-SHA256, from the `cryptography` package) under a key derived
(HKDF-SHA256) from the API key, which seqdrop never stores. A queue file alone (a backup, a copy in a
bug report, `sqlite3 .dump`, a PostgreSQL row) holds nothing a reader can post with; whoever holds the
API key could have asked for a form of their own anyway.

A form that cannot be opened (the key was rotated across a restart, the token damaged) is a lost form:
the caller cancels that sample and starts it again, as after a queue rebuilt from the audit journal.
"""

from __future__ import annotations

import base64
from typing import Any

_INFO = b"seqdrop: the signed S3 POST form of an upload in flight, v1"


def _fernet_key(api_key: str) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    raw = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"seqdrop", info=_INFO).derive(api_key.encode())
    return base64.urlsafe_b64encode(raw)


class FormSeal:
    """Seals with the newest API key given; opens with any key this process was given (a key re-read
    after a pause can still open the forms sealed before it)."""

    def __init__(self, api_key: str | None = None) -> None:
        self._fernets: dict[bytes, Any] = {}     # by derived key, oldest first: the last one seals
        if api_key:
            self.use_key(api_key)

    def use_key(self, api_key: str) -> None:
        from cryptography.fernet import Fernet
        key = _fernet_key(api_key)
        self._fernets[key] = self._fernets.pop(key, None) or Fernet(key)

    def seal(self, text: str) -> str:
        if not self._fernets:
            raise ValueError("no API key to seal the S3 form with")
        return next(reversed(self._fernets.values())).encrypt(text.encode()).decode("ascii")

    def open(self, token: str) -> str | None:
        """The sealed text, or None if no key of this process opens it (or it is not a token)."""
        from cryptography.fernet import InvalidToken
        if not isinstance(token, str):
            return None
        for fernet in reversed(self._fernets.values()):
            try:
                return fernet.decrypt(token.encode("ascii")).decode()
            except (InvalidToken, UnicodeError, ValueError, TypeError):
                continue
        return None
