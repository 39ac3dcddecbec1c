"""What can go wrong, sorted by what the caller does next.

The client translates HTTP into these; the validator raises ContentRejected; the
worker never looks at status codes, only at the class of the exception.
"""

from __future__ import annotations


class SeqdropError(Exception):
    """Base class: every error seqdrop raises on purpose. Its str() is for people."""


class ConfigError(SeqdropError):
    """The configuration is wrong: exit 2, name the file, the key and the fix."""

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None,
                 fix: str | None = None) -> None:
        self.file, self.key, self.fix = file, key, fix
        parts = []
        if file:
            parts.append(f"{file}:")
        if key:
            parts.append(f"[{key}]")
        parts.append(message)
        text = self.problem = " ".join(parts)    # problem: the text without its fix
        if fix:
            text += f" — fix: {fix}"
        super().__init__(text)


class UploadError(SeqdropError):
    """Base of the errors an upload step can end in."""


class Transient(UploadError):
    """Try again later (connection error, timeout, 429, 5xx, S3 SlowDown...)."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PolicyExpired(UploadError):
    """The upload's S3 authorisation is void: the POST policy expired (or will before the upload ends),
    or S3 refused a multipart upload's temporary credentials. Init again; cancel the old sample."""


class AuthError(UploadError):
    """The API refused the key or the account (401/402/403): pause every upload."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Permanent(UploadError):
    """The server refused this file for good (400, 404, 413, EntityTooLarge...): fail it."""


class ContentRejected(SeqdropError):
    """seqdrop's own checks refuse the file (empty, too large, not FASTA/FASTQ, truncated)."""


class FileChanged(SeqdropError):
    """The file was deleted or changed since it was seen: that version has vanished."""


class Aborted(SeqdropError):
    """Shutdown was requested while a transfer was in flight."""
