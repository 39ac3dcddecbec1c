"""The [status_page] table: the read-only web page that shows runs, files and throughput.

Loopback by default. Any other address needs basic auth, whose password comes from
``password_file`` or the systemd credential ``status-page-password``; the credential exists only
at run time, so that rule is checked when the page is built (daemon.operations.statuspage).
With ``tls_cert_file`` and ``tls_key_file`` the page is served over HTTPS.
"""

from __future__ import annotations

from dataclasses import dataclass

from daemon.config.addresses import parse_listen
from daemon.config.reader import Section


@dataclass(frozen=True)
class StatusPageSettings:
    enabled: bool = False
    listen: str = "127.0.0.1:9809"
    username: str = "seqdrop"
    password_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None


def parse_status_page(s: Section) -> StatusPageSettings:
    listen = s.get("listen", StatusPageSettings.listen, str, fix='listen = "127.0.0.1:9809"')
    try:
        parse_listen(listen)
    except ValueError as e:
        raise s.error("listen", str(e), fix='HOST:PORT, e.g. "127.0.0.1:9809", or "0.0.0.0:9809" for '
                                            "every network (then with a password)") from None
    username = s.get("username", StatusPageSettings.username, str, fix='username = "seqdrop"')
    if not username or ":" in username or not username.isprintable():
        raise s.error("username", f"{username!r} cannot be a basic-auth user name",
                      fix='a name without ":" or control characters, e.g. username = "seqdrop"')
    files = {}
    for key in ("password_file", "tls_cert_file", "tls_key_file"):
        value = s.get(key, None, str, fix=f'{key} = "/etc/seqdrop/status-page-{key.split("_")[-2]}"')
        files[key] = s.path(value) if value else None
    if (files["tls_cert_file"] is None) != (files["tls_key_file"] is None):
        missing = "tls_key_file" if files["tls_key_file"] is None else "tls_cert_file"
        raise s.error(missing, "is needed too: HTTPS takes a certificate and its private key",
                      fix="set both tls_cert_file and tls_key_file (PEM files), or neither for plain HTTP")
    return StatusPageSettings(enabled=s.get("enabled", False, bool, fix="enabled = true"), listen=listen,
                              username=username, **files)
