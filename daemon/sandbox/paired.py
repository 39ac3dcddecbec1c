"""Paired-end uploads in the sandbox (issue 11): the R2's ticket, its S3 object, the confirm rule.

The published init_upload (onecodex-openapi.json, SampleInitUploadSchema) takes a
`paired_end_filename` but no size for it, and answers `paired_end_upload_url` and
`paired_end_additional_fields` (SampleInitUploadResponse). So the R2's policy can only bound its
size by what one S3 POST may carry (5 GiB). The R2 goes under its own key prefix,
`<owner>/file_<sample id>_paired_end/`, which neither policy's `starts-with` lets the other read use.

A paired sample is "uploaded" (confirmable) only once both objects are stored; each was checked
against its own policy by the S3 emulator before it was stored.

The multipart route (SampleInitMultipartUploadResponse) answers `paired_end_file_id`: the R2's key
on the external S3, `<owner>/multipart_<sample id>_paired_end/<paired_end_filename>`. Its callback
names only the R1 (as the official client's does) and succeeds only once both objects are there.
"""

from __future__ import annotations

import re

from .policy import ACCESS_KEY_ID, S3_POST_MAX_BYTES, make_policy

PAIRED_KEY_RE = re.compile(r"^user_[0-9a-f]{16}/file_([0-9a-f]{16})_paired_end/")
# The filename rule of the published schema, also for paired_end_filename.
_FILENAME_RE = re.compile(r"^[\w\.]+[\w\-\.\[\]\(\)\{\} ]*\.[\w\.]+$")


class PairedError(ValueError):
    """A paired_end_filename the API refuses (400)."""


def paired_filename(data: dict) -> str | None:
    """The request's paired_end_filename (None when absent or null), or PairedError."""
    name = data.get("paired_end_filename")
    if name is None:
        return None
    if not isinstance(name, str) or not _FILENAME_RE.fullmatch(name):
        raise PairedError(f"Invalid paired_end_filename {name!r}: it must match {_FILENAME_RE.pattern}")
    if name == data.get("filename"):
        raise PairedError("paired_end_filename must differ from filename.")
    return name


def paired_ticket(secret: bytes, *, owner: str, sample_id: str, s3_url: str, lifetime_s: float) -> dict:
    """The answer fields that send the R2: its URL and its own signed form fields."""
    prefix = f"{owner}/file_{sample_id}_paired_end/"
    signed = make_policy(secret, key_prefix=prefix, max_size=S3_POST_MAX_BYTES, lifetime_s=lifetime_s)
    fields = {
        "AWSAccessKeyId": ACCESS_KEY_ID,
        "acl": "private",
        "key": prefix + "${filename}",
        "policy": signed.policy_b64,
        "signature": signed.signature,
        "success_action_status": "201",
        "x-amz-server-side-encryption": "AES256",
    }
    return {"paired_end_upload_url": s3_url, "paired_end_additional_fields": fields}


def missing_objects(sample: dict) -> list[str]:
    """Which of a sample's objects S3 has not stored yet ("R1", "R2")."""
    missing = [] if sample.get("md5") is not None else ["R1"]
    if sample.get("paired_end_filename") is not None and sample.get("paired_md5") is None:
        missing.append("R2")
    return missing


def not_received_message(sample: dict) -> str:
    """Why a sample cannot be confirmed yet, naming the reads still missing."""
    sample_id = sample["sample_id"]
    if sample.get("paired_end_filename") is None:
        return (f"The upload of sample {sample_id} has not been received: "
                "POST the file to upload_url before confirming.")
    where = {"R1": f"R1 ({sample['filename']}) to upload_url",
             "R2": f"R2 ({sample['paired_end_filename']}) to paired_end_upload_url"}
    todo = " and ".join(where[read] for read in missing_objects(sample))
    return f"The paired upload of sample {sample_id} is incomplete: POST {todo} before confirming."


def public_pair(sample: dict) -> dict:
    """What GET /api/v1/samples/{id} adds for a paired sample (a sandbox extension: the published
    sample schema has no pair fields)."""
    if sample.get("paired_end_filename") is None:
        return {}
    return {"paired_end_filename": sample["paired_end_filename"], "paired_end_size": sample.get("paired_size")}


def multipart_pair(owner: str, sample_id: str, paired_end_filename: str | None) -> dict:
    """The sample fields of a paired init_multipart_upload (none for a single-end one)."""
    if paired_end_filename is None:
        return {}
    return {"paired_end_filename": paired_end_filename,
            "paired_key": f"{owner}/multipart_{sample_id}_paired_end/{paired_end_filename}"}


def multipart_missing_message(sample: dict, *, r1: bool, r2: bool) -> str:
    """Why a multipart callback is refused: the objects not in S3 yet."""
    if sample.get("paired_key") is None:
        return f"No file at {sample['s3_path']}: upload it before calling back."
    where = {"R1": f"R1 ({sample['filename']}) to file_id", "R2": f"R2 ({sample['paired_end_filename']}) to "
             f"paired_end_file_id"}
    todo = " and ".join(where[read] for read, there in (("R1", r1), ("R2", r2)) if not there)
    return f"The paired upload of sample {sample['sample_id']} is incomplete: upload {todo} before calling back."
