"""The [notify] table: the webhook that tells people about failures, and the daily summary."""

from __future__ import annotations

from dataclasses import dataclass

from daemon.config.addresses import check_url
from daemon.config.reader import Section


@dataclass(frozen=True)
class NotifySettings:
    webhook_url: str | None = None
    format: str = "slack"          # slack | json
    daily_summary_at: str | None = None   # "HH:MM" local time, or None


def parse_notify(s: Section) -> NotifySettings:
    url = s.get("webhook_url", None, str, fix='webhook_url = "https://hooks.slack.com/services/..."') or None
    if url and (reason := check_url(url, what="webhook_url")):
        raise s.error("webhook_url", reason, fix="use an https:// URL")
    fmt = s.get("format", "slack", str, fix='format = "slack"')
    if fmt not in ("slack", "json"):
        raise s.error("format", f"unknown format {fmt!r}", fix='"slack" or "json"')
    daily = s.get("daily_summary_at", None, str, fix='daily_summary_at = "08:00"') or None
    if daily is not None:
        hh, _, mm = daily.partition(":")
        if not (hh.isdigit() and mm.isdigit() and int(hh) < 24 and int(mm) < 60):
            raise s.error("daily_summary_at", f"{daily!r} is not a time of day",
                          fix='write it as "HH:MM", e.g. "08:00"')
    return NotifySettings(webhook_url=url, format=fmt, daily_summary_at=daily)
