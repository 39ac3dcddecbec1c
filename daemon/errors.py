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
    """Try again later (connection error, timeout, 429, 5xx, S3 SlowDown...).

    `reason` is what happened, as a short identifier set where the error is raised; it is the
    label of the retries metric, so nobody has to read the message to count it:
      http_NNN        an answer with a transient HTTP status (http_429, http_503...)
      slowdown        S3 asked to slow down (SlowDown, Throttling), whatever the status
      timeout         no answer within the timeout (or S3's RequestTimeout)
      deadline        no complete answer within the overall deadline (api.call_deadline_s)
      stall           S3 took no byte of the upload for upload.stall_timeout_s
      oversized_answer  an answer longer than seqdrop reads (1 MiB from the API, 64 KiB from S3)
      connection      the connection failed or broke
      bad_answer      a 2xx answer without what it must hold
      bad_sample_id   an answer whose sample_id is not a One Codex sample id
      etag_mismatch   S3's ETag is not the MD5 of the bytes sent
      etag_missing    S3 answered without an ETag: the bytes it holds cannot be checked
      policy_expired  the upload's S3 policy expired again and again
      file_read       reading the file failed (EIO on a flaky share)
      folder_missing  the file's folder is gone (a share unmounted?)
      validator       the validator child process failed
      internal        seqdrop's own bookkeeping disagrees; the file starts again

    `immediate` False: do not repeat the call at once (the retry policy leaves it to the file's
    backoff), because each repeat may cost something on the server: an init answer that could not be
    used may have left a sample behind.
    """

    def __init__(self, message: str, *, reason: str = "other", retry_after_s: float | None = None,
                 immediate: bool = True) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after_s = retry_after_s
        self.immediate = immediate


# S3 error codes that say more than their status (SlowDown comes with a 503, RequestTimeout with a 400).
_S3_CODE_REASONS = {"SlowDown": "slowdown", "Throttling": "slowdown", "ThrottlingException": "slowdown",
                    "RequestTimeout": "timeout"}


def status_reason(status: int, s3_code: str = "") -> str:
    """The Transient reason of an HTTP answer (the API's or S3's) that is worth trying again."""
    return _S3_CODE_REASONS.get(s3_code) or f"http_{status}"


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


class AlreadyDone(Permanent):
    """The server refused a repeat because the first one worked: the sample is already confirmed
    (confirm_upload, the multipart callback) or its upload already succeeded (cancel_upload).
    The file is done. str() is the refusal as it would have read; `answer` is the server's words."""

    def __init__(self, message: str, *, answer: str) -> None:
        super().__init__(message)
        self.answer = answer


class ContentRejected(SeqdropError):
    """seqdrop's own checks refuse the file (empty, too large, not FASTA/FASTQ, truncated)."""


class FileChanged(SeqdropError):
    """The file was deleted or changed since it was seen: that version has vanished."""


class Aborted(SeqdropError):
    """Shutdown was requested while a transfer was in flight."""


class LeaseLost(SeqdropError):
    """A shared queue (PostgreSQL) refused a write: the lease on this row expired and another host (or
    a later claim) holds it now, under a newer fencing token. The upload stops without writing or
    confirming anything more; the new owner resumes it from the stored step."""
