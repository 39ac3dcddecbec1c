"""S3 browser-POST policies (AWS signature version 2): build, sign, and check them like S3 does.

The policy is a base64 JSON document {"expiration", "conditions"}; the signature is
base64(HMAC-SHA1(secret, policy_base64)). Reference: AWS S3 docs, "Browser-based uploads using POST
(AWS signature version 2)" and "Creating a POST policy".
"""

from __future__ import annotations

import base64
import binascii
import calendar
import hashlib
import hmac
import json
import time
from dataclasses import dataclass

BUCKET = "seqdrop-sandbox-bucket"
ACCESS_KEY_ID = "SANDBOXAKIA000000000"  # 20 characters, like a real access key id
# A single POST object upload is limited to 5 GiB (AWS S3 docs, "Uploading objects").
S3_POST_MAX_BYTES = 5 * 1024**3
# Form fields that need no policy condition (AWS docs, "Creating a POST policy", conditions).
_EXEMPT_FIELDS = ("file", "policy", "signature", "awsaccesskeyid")


class PolicyError(Exception):
    """S3 refuses the POST: carries the HTTP status, the S3 code and message, extra XML elements."""

    def __init__(self, status: int, code: str, message: str, **extra: object) -> None:
        super().__init__(f"{code}: {message}")
        self.status, self.code, self.message, self.extra = status, code, message, extra


@dataclass(frozen=True)
class SignedPolicy:
    """What init_upload hands out."""

    policy_b64: str
    signature: str
    expires_at: float  # epoch seconds


def iso_utc(epoch_s: float) -> str:
    """ISO 8601 in UTC with milliseconds and a Z, as S3 policies write it."""
    whole = int(epoch_s)
    millis = int((epoch_s - whole) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"


def parse_iso_utc(text: str) -> float:
    """Inverse of iso_utc (milliseconds optional)."""
    if not isinstance(text, str) or not text.endswith("Z"):
        raise ValueError("expiration must be ISO 8601 UTC ending in Z")
    main, _, frac = text[:-1].partition(".")
    parsed = time.strptime(main, "%Y-%m-%dT%H:%M:%S")
    return calendar.timegm(parsed) + (float("0." + frac) if frac else 0.0)


def sign(secret: bytes, policy_b64: str) -> str:
    """AWS signature v2 of a browser-POST policy."""
    digest = hmac.new(secret, policy_b64.encode("ascii"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def make_policy(secret: bytes, *, key_prefix: str, max_size: int, lifetime_s: float,
                now_s: float | None = None) -> SignedPolicy:
    """A signed policy for one sample's upload under `key_prefix`, at most `max_size` bytes."""
    expires_at = (time.time() if now_s is None else now_s) + lifetime_s
    document = {
        "expiration": iso_utc(expires_at),
        "conditions": [
            {"bucket": BUCKET},
            ["starts-with", "$key", key_prefix],
            {"acl": "private"},
            {"success_action_status": "201"},
            {"x-amz-server-side-encryption": "AES256"},
            ["content-length-range", 0, max_size],
        ],
    }
    policy_b64 = base64.b64encode(json.dumps(document).encode("utf-8")).decode("ascii")
    return SignedPolicy(policy_b64, sign(secret, policy_b64), expires_at)


def check_post(secret: bytes, form: dict[str, str], *, file_size: int, now_s: float | None = None) -> None:
    """Raise PolicyError unless the POST's form fields and file size pass S3's checks.

    `form` maps lower-cased field names to values (S3 matches form field names case-insensitively).
    """
    if file_size > S3_POST_MAX_BYTES:
        raise PolicyError(400, "EntityTooLarge", "Your proposed upload exceeds the maximum allowed size",
                          ProposedSize=file_size, MaxSizeAllowed=S3_POST_MAX_BYTES)
    if "key" not in form:
        raise _missing_field("key")
    if "awsaccesskeyid" not in form:
        # An anonymous POST: the bucket is private.
        raise PolicyError(403, "AccessDenied", "Access Denied")
    for name in ("policy", "signature"):
        if name not in form:
            raise _missing_field(name)
    if form["awsaccesskeyid"] != ACCESS_KEY_ID:
        raise PolicyError(403, "InvalidAccessKeyId",
                          "The AWS Access Key Id you provided does not exist in our records.",
                          AWSAccessKeyId=form["awsaccesskeyid"])
    if not hmac.compare_digest(sign(secret, form["policy"]).encode(), form["signature"].encode()):
        raise PolicyError(403, "SignatureDoesNotMatch",
                          "The request signature we calculated does not match the signature you "
                          "provided. Check your key and signing method.")
    document = _decode(form["policy"])
    try:
        expires_at = parse_iso_utc(document.get("expiration"))
    except ValueError:
        raise PolicyError(400, "InvalidPolicyDocument",
                          "Invalid Policy: Invalid 'expiration' value.") from None
    if expires_at <= (time.time() if now_s is None else now_s):
        raise PolicyError(403, "AccessDenied", "Invalid according to Policy: Policy expired.")
    covered = _check_conditions(document.get("conditions"), form, file_size)
    for name in form:
        if name not in _EXEMPT_FIELDS and not name.startswith("x-ignore-") and name not in covered:
            raise PolicyError(403, "AccessDenied", f"Invalid according to Policy: Extra input fields: {name}")


def _missing_field(name: str) -> PolicyError:
    return PolicyError(400, "InvalidArgument",
                       f"Bucket POST must contain a field named '{name}'.  "
                       "If it is specified, please check the order of the fields.",
                       ArgumentName=name)


def _decode(policy_b64: str) -> dict:
    try:
        document = json.loads(base64.b64decode(policy_b64, validate=True))
    except (binascii.Error, ValueError):
        raise PolicyError(400, "InvalidPolicyDocument", "Invalid Policy: Invalid JSON.") from None
    if not isinstance(document, dict):
        raise PolicyError(400, "InvalidPolicyDocument", "Invalid Policy: Invalid JSON.")
    return document


def _check_conditions(conditions: object, form: dict[str, str], file_size: int) -> set[str]:
    """Check every condition; return the lower-cased field names they cover."""
    if not isinstance(conditions, list):
        raise PolicyError(400, "InvalidPolicyDocument", "Invalid Policy: Policy missing conditions.")
    covered: set[str] = set()
    for condition in conditions:
        text = json.dumps(condition)
        if isinstance(condition, dict) and len(condition) == 1:
            ((name, expected),) = condition.items()
            op, field = "eq", name.lower()
        elif isinstance(condition, list) and len(condition) == 3 and condition[0] == "content-length-range":
            low, high = condition[1], condition[2]
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high)):
                raise PolicyError(400, "InvalidPolicyDocument", f"Invalid Policy: Invalid Condition: {text}")
            if file_size > high:
                raise PolicyError(400, "EntityTooLarge", "Your proposed upload exceeds the maximum allowed size",
                                  ProposedSize=file_size, MaxSizeAllowed=high)
            if file_size < low:
                raise PolicyError(400, "EntityTooSmall", "Your proposed upload is smaller than the minimum "
                                  "allowed size", ProposedSize=file_size, MinSizeAllowed=low)
            continue
        elif (isinstance(condition, list) and len(condition) == 3 and condition[0] in ("eq", "starts-with")
              and isinstance(condition[1], str) and condition[1].startswith("$")):
            op, field, expected = condition[0], condition[1][1:].lower(), condition[2]
        else:
            raise PolicyError(400, "InvalidPolicyDocument", f"Invalid Policy: Invalid Condition: {text}")
        covered.add(field)
        if field == "bucket":
            actual: str | None = BUCKET  # the bucket comes from the URL, not from a form field
        else:
            actual = form.get(field)
        if actual is None:
            raise PolicyError(403, "AccessDenied", f"Invalid according to Policy: Policy Condition failed: {text}")
        ok = actual == str(expected) if op == "eq" else actual.startswith(str(expected))
        if not ok:
            raise PolicyError(403, "AccessDenied", f"Invalid according to Policy: Policy Condition failed: {text}")
    return covered
