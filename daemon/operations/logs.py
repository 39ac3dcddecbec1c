"""structlog configuration: journal entries under systemd, readable lines on a terminal, JSON lines
otherwise (the journal's entries are built in daemon/operations/journald.py).

The only module that configures structlog. Log events are identifiers with
key/values (``log.info("upload.confirmed", path=..., sample_id=...)``). Any value
containing a registered secret (the API key) is masked before it is written.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

from daemon import redact as redact_module
from daemon.operations import journald

MASK = redact_module.MASK


def register_secret(secret: str) -> None:
    """Never let this string, in any form (its basic-auth base64 too), reach a log line (the API key).
    The one registry is daemon.redact's: the client's error path and the logs know the same secrets."""
    redact_module.register(secret)


def redact(text: str) -> str:
    # shapes=False: a log line's paths and names must survive exactly; the secret-shaped fields of
    # server text were scrubbed where that text entered seqdrop (daemon/upload/client.py).
    return redact_module.scrub(text, shapes=False)


def _redact_processor(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    for k, v in event.items():
        if isinstance(v, str):
            event[k] = redact(v)
        elif v is not None and not isinstance(v, (int, float, bool)):
            text = str(v)
            if redact(text) != text:
                event[k] = redact(text)
    return event


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None, *,
              journal_socket: str | None = None) -> None:
    """Set up structlog (and quiet the stdlib loggers of our dependencies).

    fmt "auto": the journal when systemd connected our output to it (JOURNAL_STREAM), readable lines on
    a terminal, JSON lines otherwise. "journal" with no journal listening falls back to JSON lines.
    """
    stream = stream or sys.stdout
    if fmt == "auto":
        fmt = ("journal" if journald.connected_to_journal((stream, sys.stderr)) else
               "console" if stream.isatty() else "json")
    transport = journald.open_transport(journal_socket) if fmt == "journal" else None
    journal_missing = fmt == "journal" and transport is None
    if journal_missing:
        fmt = "json"
    renderer: Any
    if transport is not None:
        renderer = journald.render
    elif fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.dev.set_exc_info if fmt == "console" else structlog.processors.format_exc_info,
        _redact_processor,
        renderer,
    ]
    factory: Any = structlog.WriteLoggerFactory(file=stream)
    if transport is not None:
        logger = journald.JournalLogger(transport, fallback=stream)
        factory = lambda *_args: logger   # noqa: E731  (one logger for every name: one socket)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )
    # urllib3 logs full URLs with query strings at debug; keep it at warning.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    if journal_missing:
        get("seqdrop").warning("log.journal_unavailable", socket=journal_socket or journald.JOURNAL_SOCKET,
                               fix="logs are JSON lines on the output meanwhile; is systemd-journald running? "
                                   "(systemctl status systemd-journald)")


def get(name: str | None = None) -> Any:
    return structlog.get_logger(name) if name else structlog.get_logger()
