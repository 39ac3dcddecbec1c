"""The [api] table: where One Codex is, where the key file is, how long to wait for it."""

from __future__ import annotations

from dataclasses import dataclass

from daemon.config.addresses import check_url
from daemon.config.reader import Section


@dataclass(frozen=True)
class ApiSettings:
    base_url: str = "https://app.onecodex.com"
    api_key_file: str | None = None
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0
    call_deadline_s: float = 60.0      # each API call end to end, and S3's answer once the body is sent
    probe_interval_s: float = 120.0


def parse_api(s: Section) -> ApiSettings:
    base_url = s.get("base_url", ApiSettings.base_url, str, fix='e.g. base_url = "https://app.onecodex.com"')
    base_url = base_url.rstrip("/")
    if reason := check_url(base_url, what="base_url"):
        raise s.error("base_url", reason,
                      fix="use https://, or http:// only with 127.0.0.1/localhost (the sandbox)")
    key_file = s.get("api_key_file", None, str, fix='api_key_file = "/etc/seqdrop/api-key"')
    api = ApiSettings(
        base_url=base_url,
        api_key_file=s.path(key_file) if key_file else None,
        connect_timeout_s=s.number("connect_timeout_s", ApiSettings.connect_timeout_s, minimum=0.1,
                                   fix="seconds, e.g. 10"),
        read_timeout_s=s.number("read_timeout_s", ApiSettings.read_timeout_s, minimum=0.1,
                                fix="seconds, e.g. 60"),
        call_deadline_s=s.number("call_deadline_s", ApiSettings.call_deadline_s, minimum=1,
                                 fix="seconds, e.g. 60: the longest one API call (or S3's answer) may take"),
        probe_interval_s=s.number("probe_interval_s", ApiSettings.probe_interval_s, minimum=1,
                                  fix="seconds, at most 300 (design: probe at least every 5 minutes)"),
    )
    if api.probe_interval_s > 300:   # design.md: a paused daemon probes at least every 5 minutes
        raise s.error("probe_interval_s", "must be at most 300 seconds",
                      fix="a paused daemon probes the key at least every 5 minutes")
    return api
