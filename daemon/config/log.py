"""The [log] table: how much the daemon says, and in which form."""

from __future__ import annotations

from dataclasses import dataclass

from daemon.config.reader import Section


@dataclass(frozen=True)
class LogSettings:
    level: str = "info"
    format: str = "auto"           # auto | journal | json | console


def parse_log(s: Section) -> LogSettings:
    level = s.get("level", "info", str, fix='level = "info"').lower()
    if level not in ("debug", "info", "warning", "error"):
        raise s.error("level", f"unknown level {level!r}", fix="one of debug, info, warning, error")
    fmt = s.get("format", "auto", str, fix='format = "auto"')
    if fmt not in ("auto", "journal", "json", "console"):
        raise s.error("format", f"unknown format {fmt!r}",
                      fix="auto (the journal under systemd, console on a terminal, JSON otherwise), "
                          "journal, json or console")
    return LogSettings(level=level, format=fmt)
