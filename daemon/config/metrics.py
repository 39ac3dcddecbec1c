"""The [metrics] table: whether the Prometheus endpoint is served, and on which loopback address."""

from __future__ import annotations

from dataclasses import dataclass

from daemon.config.addresses import is_loopback_host, parse_listen
from daemon.config.reader import Section


@dataclass(frozen=True)
class MetricsSettings:
    enabled: bool = False
    listen: str = "127.0.0.1:9808"


def parse_metrics(s: Section) -> MetricsSettings:
    metrics = MetricsSettings(
        enabled=s.get("enabled", False, bool, fix="enabled = true"),
        listen=s.get("listen", MetricsSettings.listen, str, fix='listen = "127.0.0.1:9808"'),
    )
    try:
        host, _port = parse_listen(metrics.listen)
    except ValueError:
        host = ""
    if not is_loopback_host(host):
        raise s.error("listen", f"listen {metrics.listen!r} must be a loopback HOST:PORT",
                      fix='e.g. "127.0.0.1:9808" (put a reverse proxy in front to expose it)')
    return metrics
