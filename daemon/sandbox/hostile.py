"""What the hostile faults answer (issue 10): pure functions, kept apart from the servers' plumbing.

See docs/sandbox.md ("Hostile faults") for what each kind does and why a client must survive it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time

from .faults import Fault
from .landing import sample_landing
from .multipart import Form
from .paired import public_pair

# What hostile_sample_id appends to the real id by default: a line break and ANSI escapes that,
# printed raw, would forge a "done" line in a terminal and then erase the rest of the line.
HOSTILE_SUFFIX = "\n\x1b[32mdone\x1b[0m     /srv/forged.fastq.gz\x1b[2K"


def echo_message(fault: Fault, authorization: str) -> str:
    """The message of an echo_secret refusal: the API key the client sent (decoded from its
    Authorization header) and the header's base64 basic-auth value, in `fault.message`'s template
    ({key}, {basic}, {scheme}) or the default one."""
    scheme, _, encoded = authorization.partition(" ")
    try:
        key = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")[0]
    except (binascii.Error, UnicodeDecodeError):
        key = ""
    template = fault.message or "Request refused for API key {key} (you sent 'Authorization: {scheme} {basic}')."
    return template.replace("{key}", key).replace("{basic}", encoded.strip()).replace("{scheme}", scheme)


def ambiguous_message(fault: Fault, sample_id: str) -> str:
    """The 400 that refuses a repeated confirm without the word a client might look for ("already")."""
    return fault.message or f"Sample {sample_id} cannot be confirmed: it is not awaiting an upload."


def public_sample(sample: dict, import_delay_s: float) -> dict:
    """A sample as the published schema describes it (onecodex-openapi.json, components.schemas.samples:
    required `$uri`, `created_at`, `metadata`, `owner`, `primary_classification`, `status`,
    `visibility`). `status` is the UserFacingDataStatus enum (awaiting_data, importing, validating,
    failed_validation, available, deleted); `visibility` its legacy v1 twin."""
    sample_id = sample["sample_id"]
    status, visibility, error = sample_status(sample, import_delay_s)
    return {
        "$uri": f"/api/v1/samples/{sample_id}", "created_at": sample["created_at"],
        "updated_at": sample.get("updated_at"), "filename": sample["filename"], "size": sample["size"],
        "metadata": {"$ref": f"/api/v1/metadata/{hashlib.sha256(sample_id.encode()).hexdigest()[:16]}"},
        "owner": {"$ref": f"/api/v1/users/{sample['owner'].removeprefix('user_')}"},
        "primary_classification": None, **sample_landing(sample), "error_msg": error,
        "status": status, "visibility": visibility, **public_pair(sample),
    }


def sample_status(sample: dict, import_delay_s: float) -> tuple[str, str, str | None]:
    """(status, visibility, error_msg): not yet confirmed → awaiting data; confirmed → importing
    for import_delay_s, then available; cancelled → deleted (the sandbox's choice: the real
    service's answer for a cancelled upload is not documented)."""
    state = sample["state"]
    if state == "confirmed":
        confirmed_at = sample.get("confirmed_at") or 0.0
        if time.time() - confirmed_at < import_delay_s:
            return "importing", "importing", None
        return "available", "private", None
    if state == "cancelled":
        return "deleted", "private", "Upload cancelled."
    return "awaiting_data", "awaiting data", None


def tampered_init(fault: Fault, payload: dict) -> dict:
    """An init answer with fields left out (partial_init) or a hostile sample_id."""
    payload = dict(payload)
    if fault.kind == "partial_init":
        for name in fault.omit if fault.omit is not None else ("upload_url", "additional_fields"):
            payload.pop(name, None)
    else:
        payload["sample_id"] = fault.value if fault.value is not None else (
            payload["sample_id"] + HOSTILE_SUFFIX)
    return payload


def signature_echo(form: Form) -> dict[str, str]:
    """What S3's SignatureDoesNotMatch error repeats back: the access key id, the policy as
    StringToSign (and its bytes in hex), the signature the client sent."""
    values = {name.lower(): value for name, value in form.fields}
    policy = values.get("policy", "")
    return {"AWSAccessKeyId": values.get("awsaccesskeyid", ""), "StringToSign": policy,
            "SignatureProvided": values.get("signature", values.get("x-amz-signature", "")),
            "StringToSignBytes": " ".join(f"{byte:02x}" for byte in policy.encode())}
