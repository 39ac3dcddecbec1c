"""Network addresses in the config: which URLs may carry a credential, which hosts are loopback.

The daemon asks the same questions at run time (the client of a URL, the metrics endpoint of its
listen address), so they are answered here once.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_listen(text: str) -> tuple[str, int]:
    """Split a HOST:PORT value: "127.0.0.1:9808", "[::1]:9808", "localhost:9808"."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT such as 127.0.0.1:9808, got {text!r}")
    return host.strip("[]"), int(port)


def check_url(url: str, *, what: str, carries: str = "the API key") -> str | None:
    """Return None if url is acceptable (https, or http to loopback), else the reason."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{what} {url!r} is not an http(s) URL"
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        return f"{what} {url!r} uses plain http to a host that is not loopback; {carries} would travel unencrypted"
    return None
