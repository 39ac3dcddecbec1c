"""Injected faults: what they are, how they are matched to requests, how they are written.

A Fault applies to requests of one target (or "any"). Each fault counts the requests it could match
since it was added: it skips the first `after` of them, then applies to the next `times` (None: until
cleared). When several faults could apply, the one added first wins. A fault that only makes sense
for some requests (`ambiguous_repeat`: a confirm of an already confirmed sample) does not count the
others.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields

TARGETS = ("init_upload", "s3", "confirm_upload", "cancel_upload", "samples", "init_multipart_upload",
           "multipart_callback", "projects", "any")
# The hostile kinds (issue 10) come after the outage kinds; docs/sandbox.md describes each.
KINDS = ("status", "drop", "delay", "trickle", "endless", "echo_secret", "no_etag", "alter", "stall",
         "ambiguous_repeat", "partial_init", "hostile_sample_id")
# Kinds that make sense for some targets only ("any" is refused for them).
KIND_TARGETS = {
    "no_etag": ("s3",), "alter": ("s3",), "stall": ("s3",),
    "ambiguous_repeat": ("confirm_upload",),
    "partial_init": ("init_upload",),
    "hostile_sample_id": ("init_upload", "init_multipart_upload"),
}
# what partial_init may leave out (the paired_end_ ones: of a paired sample's answer)
INIT_FIELDS = ("upload_url", "additional_fields", "paired_end_upload_url", "paired_end_additional_fields")
SUCCESS_STATUSES = (200, 201, 204)                  # S3's success_action_status values

# S3 error codes by status when a status fault names none (the codes S3 really uses for them).
S3_CODE_BY_STATUS = {
    400: "InvalidRequest",
    403: "AccessDenied",
    404: "NoSuchBucket",
    405: "MethodNotAllowed",
    411: "MissingContentLength",
    413: "EntityTooLarge",
    429: "SlowDown",
    500: "InternalError",
    501: "NotImplemented",
    503: "SlowDown",
}


@dataclass
class Fault:
    """One injected misbehaviour (see the module docstring and docs/sandbox.md)."""

    target: str
    kind: str
    status: int | None = None          # "status"/"echo_secret": the HTTP status; None = 503 (echo_secret:
                                       # 401 on the API, 403 on S3)
    code: str | None = None            # S3 only: <Code>; default from S3_CODE_BY_STATUS
    message: str | None = None         # API "message" / S3 <Message>
    retry_after_s: float | None = None  # adds a Retry-After header (status faults)
    delay_s: float = 0.0               # "delay": wait this long, then answer normally; "stall": how long
                                       # S3 stops reading (0 = until the sandbox stops)
    after_body: bool = False           # "drop": perform the request, then lose the answer
    times: int | None = 1              # how many matching requests; None = until cleared
    after: int = 0                     # skip this many matching requests first
    interval_s: float = 1.0            # "trickle": seconds between two bytes of the answer
    success_status: int | None = None  # "no_etag"/"alter": S3's success status; None = what the form asks
    byte_offset: int = 0               # "alter": the byte of the file changed; "stall": body bytes read first
    omit: list[str] | None = None      # "partial_init": answer fields left out; None = upload_url and
                                       # additional_fields
    value: str | None = None           # "hostile_sample_id": the sample_id sent; None = the real one
                                       # followed by a newline and ANSI escapes

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"fault target must be one of {', '.join(TARGETS)}, not {self.target!r}")
        if self.kind not in KINDS:
            raise ValueError(f"fault kind must be one of {', '.join(KINDS)}, not {self.kind!r}")
        allowed = KIND_TARGETS.get(self.kind)
        if allowed is not None and self.target not in allowed:
            raise ValueError(f"a {self.kind} fault applies to {' or '.join(allowed)}, not {self.target!r}")
        if self.status is None:
            self.status = (403 if self.target == "s3" else 401) if self.kind == "echo_secret" else 503
        if not isinstance(self.status, int) or not 400 <= self.status <= 599:
            raise ValueError(f"fault status must be an HTTP error status (400-599), not {self.status!r}")
        if self.times is not None and (not isinstance(self.times, int) or self.times < 1):
            raise ValueError(f"fault times must be a positive integer or None, not {self.times!r}")
        if not isinstance(self.after, int) or self.after < 0:
            raise ValueError(f"fault after must be a non-negative integer, not {self.after!r}")
        if self.delay_s < 0 or (self.retry_after_s is not None and self.retry_after_s < 0):
            raise ValueError("fault delay_s and retry_after_s must not be negative")
        self._check_hostile_fields()

    def _check_hostile_fields(self) -> None:
        if not isinstance(self.interval_s, (int, float)) or not 0 < self.interval_s <= 3600:
            raise ValueError(f"fault interval_s must be a number of seconds in (0, 3600], not {self.interval_s!r}")
        if self.success_status is not None and self.success_status not in SUCCESS_STATUSES:
            raise ValueError(f"fault success_status must be one of {SUCCESS_STATUSES}, not {self.success_status!r}")
        if not isinstance(self.byte_offset, int) or self.byte_offset < 0:
            raise ValueError(f"fault byte_offset must be a non-negative integer, not {self.byte_offset!r}")
        if isinstance(self.omit, str):
            self.omit = [name for name in self.omit.split(",") if name]
        if self.omit is not None and (not isinstance(self.omit, list) or not set(self.omit) <= set(INIT_FIELDS)):
            raise ValueError(f"fault omit must list fields among {', '.join(INIT_FIELDS)}, not {self.omit!r}")
        if self.value is not None and not isinstance(self.value, str):
            raise ValueError(f"fault value must be a string, not {self.value!r}")

    def s3_code(self) -> str:
        """The S3 <Code> this fault answers with."""
        return self.code or S3_CODE_BY_STATUS.get(self.status, "InternalError" if self.status >= 500
                                                  else "InvalidRequest")

    def to_dict(self) -> dict:
        """JSON-ready fields."""
        return asdict(self)


class FaultBook:
    """The active faults, shared by both servers' handler threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[list] = []  # [fault, matching requests seen, times applied]

    def add(self, fault: Fault) -> None:
        """Activate a fault; it counts matching requests from now on."""
        with self._lock:
            self._entries.append([fault, 0, 0])

    def clear(self) -> int:
        """Remove every fault; return how many were active."""
        with self._lock:
            count = len(self._entries)
            self._entries.clear()
            return count

    def active(self) -> list[Fault]:
        """The faults that can still apply, in the order they were added."""
        with self._lock:
            return [entry[0] for entry in self._entries]

    def take(self, target: str, applies: Callable[[Fault], bool] | None = None) -> Fault | None:
        """Count one request to `target`; return the fault it must suffer, if any. A fault for which
        `applies` is False neither counts nor applies to this request."""
        chosen = None
        with self._lock:
            for entry in self._entries:
                fault = entry[0]
                if fault.target not in (target, "any") or (applies is not None and not applies(fault)):
                    continue
                entry[1] += 1
                if chosen is None and entry[1] > fault.after:
                    chosen = fault
                    entry[2] += 1
            self._entries = [e for e in self._entries
                             if e[0].times is None or e[2] < e[0].times]
        return chosen


def parse_fault(text: str) -> Fault:
    """Read a fault from JSON (`{"target": ..}`) or the short form `TARGET:KIND[:STATUS][:name=value]...`.

    Examples: `init_upload:status:503:times=3`, `s3:status:503:retry_after_s=2`,
    `confirm_upload:drop:after_body=true`, `s3:delay:delay_s=30:after=1`, `any:status:500:times=none`,
    `confirm_upload:trickle:interval_s=3`, `s3:no_etag:success_status=204`, `init_upload:partial_init:omit=upload_url`.
    """
    text = text.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"fault is not valid JSON: {exc}") from None
        return fault_from_dict(data)
    parts = text.split(":")
    if len(parts) < 2:
        raise ValueError(f"fault {text!r}: expected TARGET:KIND[:STATUS][:name=value]...")
    data: dict = {"target": parts[0], "kind": parts[1]}
    for part in parts[2:]:
        if "=" not in part:
            if not part.isdigit():
                raise ValueError(f"fault {text!r}: {part!r} is neither a status nor name=value")
            data["status"] = int(part)
            continue
        name, _, value = part.partition("=")
        data[name] = _short_value(name, value)
    return fault_from_dict(data)


def fault_from_dict(data: object) -> Fault:
    """Build a Fault from a JSON object, refusing unknown fields."""
    if not isinstance(data, dict):
        raise ValueError("a fault must be a JSON object")
    known = {f.name for f in fields(Fault)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown fault field(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    try:
        return Fault(**data)
    except TypeError as exc:
        raise ValueError(str(exc)) from None


def _short_value(name: str, value: str) -> object:
    if name in ("status", "after", "success_status", "byte_offset"):
        return int(value)
    if name == "times":
        return None if value.lower() in ("none", "inf", "forever") else int(value)
    if name in ("delay_s", "retry_after_s", "interval_s"):
        return float(value)
    if name == "after_body":
        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"after_body must be true or false, not {value!r}")
        return value.lower() in ("true", "1", "yes")
    return value
