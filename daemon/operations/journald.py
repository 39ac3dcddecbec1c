"""Log entries for the systemd journal, sent to its native socket with their priority and fields.

Under systemd a service's stdout is a stream into the journal in which every line becomes one entry
at the unit's default priority (info): JSON lines there make `journalctl -p warning` show nothing and
bury every field inside MESSAGE. The journal's own datagram protocol
(https://systemd.io/JOURNAL_NATIVE_PROTOCOL/) carries PRIORITY and any number of FIELD=value pairs.
The sending itself (a multi-line value's binary framing, the sealed memfd for an entry larger than a
datagram, reconnecting after journald restarts) is logging-journald's `JournaldTransport`: one
pure-Python module, where python-systemd would need libsystemd's headers to build. What an entry
holds is decided here: PRIORITY from the level, a readable MESSAGE, SYSLOG_IDENTIFIER=seqdrop, EVENT,
and each of the event's keys as an upper-case field (path → PATH, sample_id → SAMPLE_ID).
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

from logging_journald import JournaldTransport

JOURNAL_SOCKET = "/run/systemd/journal/socket"
IDENTIFIER = "seqdrop"
# syslog(3)'s numbers, which journalctl -p understands (structlog says "exception" for error + traceback).
PRIORITIES = {"critical": 2, "exception": 3, "error": 3, "warning": 4, "info": 6, "debug": 7}
MAX_NAME_CHARS = 64     # journald drops a field whose name is longer
# Names the journal gives a meaning of its own (systemd.journal-fields(7)), and ours: an event key that
# upper-cases to one of them is sent as SEQDROP_<NAME>, so that `message=` cannot replace MESSAGE.
_JOURNAL_NAMES = frozenset({
    "MESSAGE", "MESSAGE_ID", "PRIORITY", "CODE_FILE", "CODE_LINE", "CODE_FUNC", "ERRNO", "TID",
    "INVOCATION_ID", "USER_INVOCATION_ID", "SYSLOG_FACILITY", "SYSLOG_IDENTIFIER", "SYSLOG_PID",
    "SYSLOG_TIMESTAMP", "SYSLOG_RAW", "DOCUMENTATION", "UNIT", "USER_UNIT", "EVENT",
})
_NOT_FIELDS = frozenset({"event", "level", "timestamp"})   # EVENT and PRIORITY; the journal stamps time
_NOT_NAME_CHARS = re.compile(r"[^A-Z0-9_]")
_BARE = re.compile(r"[^\s\"'=\\]+")          # a value shown without quotes in MESSAGE


def connected_to_journal(streams: Iterable[Any], env: Mapping[str, str] | None = None) -> bool:
    """True when systemd connected one of these streams to the journal: it then sets JOURNAL_STREAM to
    that stream's "device:inode" (systemd.exec(5)); a child whose output was redirected does not match."""
    value = (os.environ if env is None else env).get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    for stream in streams:
        try:
            st = os.fstat(stream.fileno())
        except (AttributeError, OSError, ValueError):    # no file behind it (a test's StringIO), or closed
            continue
        if (st.st_dev, st.st_ino) == (int(device), int(inode)):
            return True
    return False


def open_transport(socket_path: str | None = None) -> JournaldTransport | None:
    """A transport connected to the journal's socket, or None when nothing listens there."""
    try:
        return JournaldTransport(socket_path=socket_path or JOURNAL_SOCKET)
    except OSError:
        return None


def field_name(key: str) -> str:
    """An event key as a journal field name: upper case, only A-Z 0-9 _, not starting with "_" (those
    are journald's trusted fields, refused from clients) nor with a digit, at most 64 characters."""
    name = _NOT_NAME_CHARS.sub("_", key.upper()).lstrip("_")
    if not name or name[0].isdigit():
        name = "F_" + name
    if name in _JOURNAL_NAMES:
        name = "SEQDROP_" + name
    return name[:MAX_NAME_CHARS]


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value, ensure_ascii=False, default=str)


def _shown(key: str, value: Any) -> str:
    """One key=value of MESSAGE, on one line: a traceback shows its last line, other text is quoted
    (newlines escaped) unless it is one plain word."""
    text = _text(value)
    if key == "exception":
        text = text.rstrip().rsplit("\n", 1)[-1]
    return text if _BARE.fullmatch(text) else json.dumps(text, ensure_ascii=False)


def entry(event_dict: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The journal entry of one log event: (FIELD, value) pairs; a value holding a newline is sent
    with the protocol's binary framing by the transport."""
    event = str(event_dict.get("event", ""))
    keys = [k for k in event_dict if k not in _NOT_FIELDS and event_dict[k] is not None]
    message = " ".join([event] + [f"{k}={_shown(k, event_dict[k])}" for k in keys])
    pairs: list[tuple[str, Any]] = [
        ("MESSAGE", message),
        ("PRIORITY", PRIORITIES.get(str(event_dict.get("level", "info")), 6)),
        ("SYSLOG_IDENTIFIER", IDENTIFIER),
        ("EVENT", event),
    ]
    pairs += [(field_name(k), _text(event_dict[k])) for k in keys]
    return pairs


def render(_logger: Any, _name: str, event_dict: dict[str, Any]) -> tuple[tuple[dict[str, Any]], dict[str, Any]]:
    """structlog's last processor: hand the event itself to JournalLogger (the entry is built there,
    where a failed send can still write the event as a JSON line instead)."""
    return (event_dict,), {}


class JournalLogger:
    """The logger structlog writes to: one journal entry per event. An entry that cannot be sent (journald
    gone, an entry refused) is written as a JSON line to the fallback stream instead, never lost."""

    def __init__(self, transport: JournaldTransport, fallback: TextIO) -> None:
        self._transport = transport
        self._fallback = fallback
        self._lock = threading.Lock()   # the transport's reconnect swaps its socket: one sender at a time

    def send(self, event_dict: dict[str, Any]) -> None:
        pairs = entry(event_dict)
        try:
            with self._lock:
                self._transport.send(pairs)
        except OSError as e:
            line = json.dumps({**event_dict, "journal_error": str(e)}, ensure_ascii=False, default=str)
            self._fallback.write(line + "\n")
            self._fallback.flush()

    # structlog calls the method named after the level (and msg/log for the level-less calls)
    msg = log = debug = info = warning = warn = error = critical = fatal = exception = send
