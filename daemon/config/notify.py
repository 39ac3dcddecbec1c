"""The [notify] table: the webhook and the e-mail that tell people about failures, and the daily summary.

E-mail is on when ``email_to`` lists at least one address; every other ``email_*`` key then
describes the mail server. The password is never in this file: it comes from ``email_password_file``
or, by default, from the systemd credential ``smtp-password`` (read when the notifier is built, by
daemon.operations.email.build_email_notifier).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from daemon.config.addresses import check_url, is_loopback_host
from daemon.config.reader import Section

#: "starttls": plain connection upgraded by STARTTLS (port 587); "tls": TLS from the first byte (465);
#: "none": no encryption, allowed only to a mail relay on this machine (loopback).
EMAIL_SECURITY = ("starttls", "tls", "none")
EMAIL_DEFAULT_PORTS = {"starttls": 587, "tls": 465, "none": 25}
_EMAIL_KEYS = ("email_from", "email_smtp_host", "email_smtp_port", "email_security", "email_username",
               "email_password_file")


@dataclass(frozen=True)
class NotifySettings:
    webhook_url: str | None = None
    format: str = "slack"          # slack | json
    daily_summary_at: str | None = None   # "HH:MM" local time, or None
    email_to: tuple[str, ...] = ()        # empty: no e-mail
    email_from: str | None = None
    email_smtp_host: str | None = None
    email_smtp_port: int | None = None    # None (e-mail off) or the port, defaulted by email_security
    email_security: str = "starttls"      # starttls | tls | none
    email_username: str | None = None
    email_password_file: str | None = None

    @property
    def email_enabled(self) -> bool:
        return bool(self.email_to)


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
    return NotifySettings(webhook_url=url, format=fmt, daily_summary_at=daily, **_parse_email(s))


def _parse_email(s: Section) -> dict[str, object]:
    """The email_* keys, checked; {} (the defaults: no e-mail) when email_to is not set."""
    to = s.get("email_to", [], list, fix='email_to = ["sequencing@lab.example.org"]')
    if not to:
        if stray := [k for k in _EMAIL_KEYS if k in s.data]:
            raise s.error(stray[0], "is set but email_to is not, so no mail would ever be sent",
                          fix='list the recipients: email_to = ["sequencing@lab.example.org"] '
                              f"(or remove {', '.join(stray)})")
        s.used.update(_EMAIL_KEYS)     # named among the known keys when a typo is reported
        return {}
    for i, address in enumerate(to):
        if reason := _address_problem(address) if isinstance(address, str) else "must be a string":
            raise s.error(f"email_to[{i}]", reason,
                          fix='e.g. email_to = ["sequencing@lab.example.org", "pi@lab.example.org"]')
    sender = s.get("email_from", None, str, fix='email_from = "seqdrop@lab.example.org"')
    if not sender:
        raise s.error("email_from", "is needed when email_to is set (the mails' sender)",
                      fix='email_from = "seqdrop@lab.example.org" (an address the mail server accepts)')
    if reason := _address_problem(sender):
        raise s.error("email_from", reason, fix='e.g. email_from = "seqdrop@lab.example.org"')
    host = (s.get("email_smtp_host", None, str, fix='email_smtp_host = "smtp.lab.example.org"') or "").strip("[]")
    if reason := _host_problem(host):
        raise s.error("email_smtp_host", reason,
                      fix='the mail server\'s name, e.g. email_smtp_host = "smtp.lab.example.org" '
                          '(a relay on this machine: "localhost" with email_security = "none")')
    return {"email_to": tuple(to), "email_from": sender, "email_smtp_host": host,
            **_parse_smtp_security(s, host)}


def _parse_smtp_security(s: Section, host: str) -> dict[str, object]:
    security = s.get("email_security", "starttls", str, fix='email_security = "starttls"')
    if security not in EMAIL_SECURITY:
        raise s.error("email_security", f"unknown value {security!r}",
                      fix='"starttls" (port 587), "tls" (port 465), or "none" for a relay on this machine')
    if security == "none" and not is_loopback_host(host):
        raise s.error("email_security", f'"none" would send mail to {host} unencrypted across the network',
                      fix='use "starttls" or "tls"; "none" is only for a relay on this machine '
                          '(email_smtp_host = "localhost")')
    port = s.get("email_smtp_port", EMAIL_DEFAULT_PORTS[security], int,
                 fix=f"email_smtp_port = {EMAIL_DEFAULT_PORTS[security]}")
    if not 1 <= port <= 65535:
        raise s.error("email_smtp_port", f"{port} is not a TCP port",
                      fix=f"1-65535; leave it out for the usual port of {security!r} "
                          f"({EMAIL_DEFAULT_PORTS[security]})")
    username = s.get("email_username", None, str, fix='email_username = "seqdrop"') or None
    password_file = s.get("email_password_file", None, str, fix='email_password_file = "/etc/seqdrop/smtp-password"')
    if password_file and not username:
        raise s.error("email_password_file", "is set but email_username is not: a password needs a user name",
                      fix='email_username = "seqdrop" (or remove email_password_file for a server '
                          "that needs no login)")
    return {"email_smtp_port": port, "email_security": security, "email_username": username,
            "email_password_file": s.path(password_file) if password_file else None}


def _address_problem(address: str) -> str | None:
    """None for a plain address (user@example.org); else what is wrong with it."""
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        return f"{address!r} is not an e-mail address (user@example.org)"
    if any(c.isspace() or c in "<>,;\"()[]\\" or not c.isprintable() for c in address):
        return f"{address!r} is not a plain e-mail address (no names, brackets or separators: user@example.org)"
    return None


def _host_problem(host: str) -> str | None:
    """None for a host name or an IP address; else what is wrong with it."""
    if not host:
        return "is needed when email_to is set"
    if any(c.isspace() or c in "/@" or not c.isprintable() for c in host):
        return f"{host!r} is not a host name"
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return f"{host!r} is not a host name (the port goes in email_smtp_port)"
    return None
