"""What one upload's steps hand each other: the S3 POST form an init_upload grants (InitResult), the
multipart upload an init_multipart_upload grants (MultipartInit), what an S3 POST proved (PostResult),
and the file name the API accepts. What may be stored in the queue is each one's to_json; the
temporary S3 credentials never are, and an S3 POST form only sealed (daemon/upload/seal.py).
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from daemon.upload.seal import FormSeal

FILENAME_RE = re.compile(r"^[\w\.]+[\w\-\.\[\]\(\)\{\} ]*\.[\w\.]+$")


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
    # A paired sample's R2 (init_upload with paired_end_filename): its own URL and signed fields.
    paired_end_upload_url: str | None = None
    paired_end_fields: tuple[tuple[str, str], ...] = ()

    @property
    def paired(self) -> bool:
        return self.paired_end_upload_url is not None

    def to_json(self, seal: FormSeal) -> str:
        """What the queue keeps: the sample id and the policy's expiry in clear, the URLs and signed
        fields only sealed (daemon/upload/seal.py: a policy and signature are never stored as such)."""
        form = {"upload_url": self.upload_url, "fields": [list(f) for f in self.fields]}
        if self.paired:
            form.update(paired_end_upload_url=self.paired_end_upload_url,
                        paired_end_fields=[list(f) for f in self.paired_end_fields])
        return json.dumps({"sample_id": self.sample_id, "expires_at": self.expires_at, "paired": self.paired,
                           "sealed": seal.seal(json.dumps(form))})

    @classmethod
    def from_json(cls, text: str, seal: FormSeal) -> InitResult | None:
        """The stored init, or None if its form cannot be opened (sealed under another API key, or
        damaged): a lost form, which the caller treats as after a queue rebuilt from the journal.
        A row written by a version before the seal holds its form in clear; it is still read."""
        try:
            d = json.loads(text)
            form = d if "sealed" not in d else json.loads(seal.open(d["sealed"]) or "null")
            if not isinstance(form, dict):
                return None
            return cls(d["sample_id"], form["upload_url"], tuple((k, v) for k, v in form["fields"]),
                       d.get("expires_at"), form.get("paired_end_upload_url"),
                       tuple((k, v) for k, v in form.get("paired_end_fields") or ()))
        except (ValueError, KeyError, TypeError):
            return None

    @classmethod
    def from_answer(cls, sample_id: str, answer: dict[str, Any], *, paired: bool) -> InitResult:
        """From init_upload's answer (checked by the client): the R1's form, and the R2's when paired."""
        forms = [tuple((str(k), "" if v is None else str(v)) for k, v in answer[f].items())
                 for f in ("additional_fields", "paired_end_additional_fields")[:1 + paired]]
        expiry = min((e for e in map(policy_expiry, forms) if e is not None), default=None)
        if not paired:
            return cls(sample_id, answer["upload_url"], forms[0], expiry)
        return cls(sample_id, answer["upload_url"], forms[0], expiry, answer["paired_end_upload_url"], forms[1])

    def for_r2(self) -> InitResult:
        """The form that sends the R2: the paired-end URL and fields under the same sample."""
        assert self.paired_end_upload_url is not None
        return InitResult(self.sample_id, self.paired_end_upload_url, self.paired_end_fields,
                          policy_expiry(self.paired_end_fields) or self.expires_at)


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
    # A paired sample (init with paired_end_filename): the R2's key, One Codex's "paired_end_file_id",
    # and its name. The callback names only the R1 (`key`, `filename`), as the official client's does.
    paired_end_key: str | None = None
    paired_end_filename: str | None = None

    @property
    def s3_path(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def paired(self) -> bool:
        return self.paired_end_key is not None

    @property
    def has_credentials(self) -> bool:
        return bool(self.access_key_id and self.secret_access_key)

    def to_json(self) -> str:
        doc = {"route": "multipart", "sample_id": self.sample_id, "bucket": self.bucket,
               "key": self.key, "callback_url": self.callback_url, "filename": self.filename}
        if self.paired:
            doc.update(paired_end_key=self.paired_end_key, paired_end_filename=self.paired_end_filename)
        return json.dumps(doc)

    @staticmethod
    def missing(answer: dict[str, Any], *, paired: bool) -> list[str]:
        """What init_multipart_upload's answer lacks (paired: the R2's key, which must not be the R1's)."""
        wanted = ("s3_bucket", "file_id", "upload_aws_access_key_id", "upload_aws_secret_access_key",
                  "callback_url", *(["paired_end_file_id"] if paired else []))
        missing = [k for k in wanted if not isinstance(answer.get(k), str) or not answer.get(k)]
        if paired and not missing and answer["paired_end_file_id"] == answer["file_id"]:
            missing = ["a paired_end_file_id other than file_id"]   # the R2 would overwrite the R1
        return missing

    @classmethod
    def from_answer(cls, sample_id: str, answer: dict[str, Any], *, callback_url: str, filename: str,
                    paired_end_filename: str | None) -> MultipartInit:
        """From init_multipart_upload's answer, once `missing` found nothing missing."""
        token = answer.get("upload_aws_session_token")
        return cls(sample_id=sample_id, bucket=answer["s3_bucket"], key=answer["file_id"], callback_url=callback_url,
                   filename=filename, access_key_id=answer["upload_aws_access_key_id"],
                   secret_access_key=answer["upload_aws_secret_access_key"],
                   session_token=token if isinstance(token, str) and token else None,
                   paired_end_key=answer["paired_end_file_id"] if paired_end_filename is not None else None,
                   paired_end_filename=paired_end_filename)

    @classmethod
    def from_json(cls, text: str) -> MultipartInit:
        d = json.loads(text)
        return cls(d["sample_id"], d["bucket"], d["key"], d["callback_url"], d["filename"],
                   paired_end_key=d.get("paired_end_key"), paired_end_filename=d.get("paired_end_filename"))


@dataclass
class PostResult:
    etag: str
    md5: str
    seconds: float
    bytes_sent: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
