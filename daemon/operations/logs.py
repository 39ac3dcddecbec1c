"""structlog configuration: JSON lines for journald, readable lines on a terminal.

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


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Set up structlog (and quiet the stdlib loggers of our dependencies)."""
    stream = stream or sys.stdout
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info if fmt == "json" else structlog.dev.set_exc_info,
        _redact_processor,
        renderer,
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.WriteLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    # urllib3 logs full URLs with query strings at debug; keep it at warning.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("urllib3").setLevel(logging.WARNING)


def get(name: str | None = None) -> Any:
    return structlog.get_logger(name) if name else structlog.get_logger()
