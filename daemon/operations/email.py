"""E-mail notifications over SMTP (STARTTLS or TLS, with authentication), from a background thread.

The same events as the webhook (webhook.KINDS) and the same guarantees: ``event()`` only appends to a
bounded in-memory queue and returns, so a slow or dead mail server never holds up an upload; one
thread sends the mails in order, retrying transient failures with exponential backoff and jitter
for up to ``retry_max_s`` per mail; when the queue is full the oldest mail is dropped with a warning.

Secrets: the SMTP password is sent only after TLS is up with a verified certificate, and never logged;
fields named like a key, token, secret or password are removed from every event, and the text of
each mail passes through logs.redact (which masks the API key) before it is sent.

A mail is plain text: what happened, the file or sample, the reason, and what to do about it.
"""

from __future__ import annotations

import collections
import datetime as dt
import os
import random
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

import structlog

from daemon import __version__
from daemon.config import is_loopback_host
from daemon.config.notify import EMAIL_DEFAULT_PORTS as DEFAULT_PORTS
from daemon.config.notify import EMAIL_SECURITY as SECURITY
from daemon.config.notify import NotifySettings
from daemon.errors import ConfigError
from daemon.operations import logs
from daemon.operations.webhook import KINDS, duration_text, strip_secrets

# SECURITY and DEFAULT_PORTS (what email_security may be, and the port each implies) are defined
# with the [notify] keys, in daemon/config/notify.py.
#: The systemd credential holding the SMTP password (LoadCredential=smtp-password:/etc/seqdrop/smtp-password).
CREDENTIAL_NAME = "smtp-password"


class EmailNotifier:
    """Queue events and mail them to fixed recipients through one SMTP server."""

    def __init__(self, *, smtp_host: str, sender: str, recipients: Sequence[str],
                 smtp_port: int | None = None, security: str = "starttls", username: str | None = None,
                 password: str | None = None, ssl_context: ssl.SSLContext | None = None,
                 timeout_s: float = 30.0, max_queue: int = 1000, retry_max_s: float = 3600.0,
                 backoff_s: float = 5.0, backoff_max_s: float = 300.0, log: Any = None,
                 hostname: str | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        _check_settings(smtp_host, sender, recipients, security, username, password, max_queue)
        self._smtp_host, self._security = smtp_host, security
        self._smtp_port = smtp_port or DEFAULT_PORTS[security]
        self._sender, self._recipients = sender, list(recipients)
        self._username, self._password = username, password
        # Certificates are always verified; a context is passed in only to trust a private CA.
        self._ssl_context = ssl_context or ssl.create_default_context()
        self._timeout_s, self._max_queue = timeout_s, max_queue
        self._retry_max_s, self._backoff_s, self._backoff_max_s = retry_max_s, backoff_s, backoff_max_s
        self._log = log if log is not None else structlog.get_logger("seqdrop.email")
        self._hostname = hostname or socket.gethostname()
        self._clock = clock
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        self._cond = threading.Condition()
        self._closing = False
        self._deadline: float | None = None    # set by close(): deliver what we can until then
        self._thread: threading.Thread | None = None
        self.delivered = 0
        self.dropped = 0

    # -- the producer side (any thread) --------------------------------------------------------

    def event(self, kind: str, **fields: Any) -> None:
        """Queue one notification; returns at once. Unknown kinds are a programming error."""
        if kind not in KINDS:
            raise ValueError(f"unknown notification kind {kind!r}; known: {', '.join(KINDS)}")
        payload = {"event": kind, "host": self._hostname,
                   "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                   "version": __version__, **strip_secrets(fields)}
        with self._cond:
            if self._closing:
                return
            if len(self._queue) >= self._max_queue:
                old = self._queue.popleft()
                self.dropped += 1
                self._log.warning("email.queue_full_dropped_oldest", dropped_event=old["event"],
                                  max_queue=self._max_queue)
            self._queue.append(payload)
            self._cond.notify()

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the delivery thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="seqdrop-email", daemon=True)
            self._thread.start()

    def close(self, timeout_s: float = 5.0) -> None:
        """Send what can be sent within timeout_s, then stop; mails left are dropped and counted."""
        with self._cond:
            self._closing = True
            self._deadline = self._clock() + timeout_s
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s + 1.0)    # a server hung mid-mail must not hold the exit
        with self._cond:
            left = len(self._queue)
            self._queue.clear()
        if left:
            self.dropped += left
            self._log.warning("email.closed_with_undelivered_events", count=left)

    # -- the delivery thread -------------------------------------------------------------------

    def _run(self) -> None:
        while (payload := self._next()) is not None:
            self._deliver(payload)

    def _next(self) -> dict[str, Any] | None:
        """The next mail to send; None once closing and the queue is empty or the time is up."""
        with self._cond:
            while not self._queue and not self._closing:
                self._cond.wait()
            if not self._queue or (self._deadline is not None and self._clock() >= self._deadline):
                return None
            return self._queue.popleft()

    def _deliver(self, payload: dict[str, Any]) -> None:
        """Send one mail until it is accepted, refused for good, or out of time."""
        message = compose(payload, sender=self._sender, recipients=self._recipients)
        first_try, delay_s, attempt = self._clock(), self._backoff_s, 0
        while True:
            attempt += 1
            outcome, detail, fix = self._send(message)
            if outcome == "ok":
                self.delivered += 1
                self._log.debug("email.delivered", kind=payload["event"], attempts=attempt)
                return
            if outcome == "permanent":
                self.dropped += 1
                self._log.error("email.refused", kind=payload["event"], server=self._smtp_host,
                                detail=detail, fix=fix)
                return
            wait_s = min(delay_s, self._backoff_max_s) * random.uniform(0.5, 1.0)
            if self._clock() + wait_s - first_try > self._retry_max_s:
                self.dropped += 1
                self._log.error("email.gave_up", kind=payload["event"], server=self._smtp_host,
                                attempts=attempt, detail=detail)
                return
            self._log.warning("email.retry_scheduled", kind=payload["event"], server=self._smtp_host,
                              attempt=attempt, wait_s=round(wait_s, 3), detail=detail)
            if not self._wait(wait_s):
                with self._cond:
                    self._queue.appendleft(payload)    # closing: close() counts it
                return
            delay_s *= 2

    def _wait(self, wait_s: float) -> bool:
        """Wait before a retry; False if close()'s deadline would pass first."""
        with self._cond:
            end = self._clock() + wait_s
            while True:
                if self._deadline is not None and end > self._deadline:
                    return False
                remaining = end - self._clock()
                if remaining <= 0:
                    return True
                self._cond.wait(remaining)

    def _send(self, message: EmailMessage) -> tuple[str, str, str | None]:
        """One SMTP session; return ("ok" | "retry" | "permanent", detail, the fix for a person)."""
        try:
            with self._connect() as smtp:
                refused = smtp.send_message(message)
        except (OSError, smtplib.SMTPException) as e:   # refused, reset, timed out, TLS, SMTP replies
            outcome = _outcome(e)
            return outcome, _describe(e), _fix_for(e, self._smtp_host) if outcome == "permanent" else None
        if refused:
            self._log.warning("email.some_recipients_refused", refused=sorted(refused))
        return "ok", "accepted", None

    def _connect(self) -> smtplib.SMTP:
        """An SMTP session, encrypted as configured and logged in; the caller closes it."""
        if self._security == "tls":
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(self._smtp_host, self._smtp_port, timeout=self._timeout_s,
                                                  context=self._ssl_context)
        else:
            smtp = smtplib.SMTP(self._smtp_host, self._smtp_port, timeout=self._timeout_s)
        try:
            smtp.ehlo()
            if self._security == "starttls":
                if not smtp.has_extn("starttls"):
                    raise _NoStartTLS(f"{self._smtp_host} does not offer STARTTLS")
                smtp.starttls(context=self._ssl_context)
                smtp.ehlo()
            if self._username is not None:
                smtp.login(self._username, self._password or "")
        except BaseException:
            smtp.close()
            raise
        return smtp


class _NoStartTLS(smtplib.SMTPException):
    """The server offers no STARTTLS: nothing, above all no password, is sent in clear text."""


def _outcome(e: BaseException) -> str:
    """"retry" or "permanent" for a failed SMTP session. RFC 5321: a 4yz reply is transient (greylisting,
    a full queue), a 5yz reply permanent; a network failure is transient; an unverified certificate or a
    server without STARTTLS needs a person."""
    if isinstance(e, (ssl.SSLCertVerificationError, _NoStartTLS, smtplib.SMTPNotSupportedError)):
        return "permanent"
    if isinstance(e, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in e.recipients.values()]
        return "retry" if codes and all(400 <= code < 500 for code in codes) else "permanent"
    if isinstance(e, smtplib.SMTPResponseException):
        return "retry" if 400 <= e.smtp_code < 500 else "permanent"
    return "retry"


def _describe(e: BaseException) -> str:
    if isinstance(e, smtplib.SMTPResponseException):
        error = e.smtp_error
        text = error.decode(errors="replace") if isinstance(error, bytes) else str(error)
        return f"{type(e).__name__}: {e.smtp_code} {text}"[:300]
    return f"{type(e).__name__}: {e}"[:300]


def _fix_for(e: BaseException, host: str) -> str:
    if isinstance(e, smtplib.SMTPAuthenticationError):
        return ("check the user name (notify.email_username) and the password (the smtp-password "
                "credential or notify.email_password_file)")
    if isinstance(e, ssl.SSLCertVerificationError):
        return (f"{host}'s certificate is not trusted: add its CA to the system's store, or name the host "
                "the certificate was issued for")
    if isinstance(e, (_NoStartTLS, smtplib.SMTPNotSupportedError)):
        return (f"if {host} offers TLS on port 465, set email_security = \"tls\"; otherwise use another "
                "server: seqdrop never sends a password or a mail unencrypted across the network")
    return ("check the addresses (notify.email_to, notify.email_from) against the server's words; "
            "the mail server refused this mail for good")


def _check_settings(host: str, sender: str, recipients: Sequence[str], security: str,
                    username: str | None, password: str | None, max_queue: int) -> None:
    if not host:
        raise ValueError("an SMTP server is needed (notify.email_smtp_host)")
    if security not in SECURITY:
        raise ValueError(f"email security must be one of {', '.join(SECURITY)}, not {security!r}")
    if security == "none" and not is_loopback_host(host):
        raise ValueError(f"mail to {host} would cross the network unencrypted; use security "
                         "\"starttls\" or \"tls\" (\"none\" is only for a relay on this machine)")
    if not recipients:
        raise ValueError("no recipients (notify.email_to)")
    for address in [sender, *recipients]:
        if "@" not in address or any(c.isspace() or c in "<>,;" for c in address):
            raise ValueError(f"{address!r} is not a plain e-mail address (user@example.org)")
    if (username is None) != (password is None):
        raise ValueError("an SMTP user name needs a password and a password needs a user name")
    if max_queue < 1:
        raise ValueError("max_queue must be at least 1")


def build_email_notifier(settings: NotifySettings, *, source: str | None = None, log: Any = None,
                         env: Mapping[str, str] | None = None,
                         ssl_context: ssl.SSLContext | None = None) -> EmailNotifier | None:
    """The notifier [notify] describes, not started; None when e-mail is off (no email_to).

    The password (when email_username is set) is read now, from email_password_file or the systemd
    credential smtp-password: a missing one is a ConfigError (exit 2) at start-up, not a mail lost
    later. source is the config file, named in errors.
    """
    if not settings.email_enabled:
        return None
    password = None
    if settings.email_username:
        password = load_password(password_file=settings.email_password_file, env=env, source=source)
    try:
        return EmailNotifier(smtp_host=settings.email_smtp_host or "", sender=settings.email_from or "",
                             recipients=settings.email_to, smtp_port=settings.email_smtp_port,
                             security=settings.email_security, username=settings.email_username,
                             password=password, ssl_context=ssl_context, log=log)
    except ValueError as e:     # config.notify checks these first; this is the last line of defence
        raise ConfigError(str(e), file=source, key="notify",
                          fix="correct the email_* keys (config.example.toml describes each)") from None


def load_password(*, password_file: str | None = None, env: Mapping[str, str] | None = None,
                  source: str | None = None) -> str:
    """The SMTP password: from password_file if configured, else the systemd credential smtp-password.

    Only the final line break is removed: a password may hold spaces.
    """
    env = os.environ if env is None else env
    if password_file:
        path, key = password_file, "notify.email_password_file"
    elif creds := env.get("CREDENTIALS_DIRECTORY"):
        path, key = os.path.join(creds, CREDENTIAL_NAME), "notify.email_username"
    else:
        raise ConfigError("an SMTP user name is set but no password was found", file=source,
                          key="notify.email_username",
                          fix=f"LoadCredential={CREDENTIAL_NAME}:/etc/seqdrop/smtp-password in a drop-in "
                              "(systemctl edit seqdrop), or email_password_file = \"/path\" in [notify]")
    try:
        password = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
    except FileNotFoundError:
        raise ConfigError(f"the SMTP password file {path} does not exist", file=source, key=key,
                          fix="write the password into it (mode 0600)") from None
    except (PermissionError, IsADirectoryError, UnicodeDecodeError) as e:
        raise ConfigError(f"the SMTP password file {path} cannot be read ({type(e).__name__})", file=source,
                          key=key, fix="make it a text file readable by the user seqdrop runs as") from None
    if not password:
        raise ConfigError(f"the SMTP password file {path} is empty", file=source, key=key,
                          fix="write the SMTP password into it")
    return password


# -- the mail ------------------------------------------------------------------------------------

_HEADLINES = {
    "file_failed": ("Upload failed: {name}", "One Codex or S3 refused the upload of a file for good."),
    "file_rejected": ("File rejected: {name}", "seqdrop rejected a file: it is not uploaded to One Codex."),
    "uploads_paused": ("Uploads paused",
                       "seqdrop has paused all uploads: One Codex refused the API key or the account."),
    "uploads_resumed": ("Uploads resumed", "seqdrop uploads again: One Codex accepts the API key."),
    "daily_summary": ("Daily summary", "What seqdrop's queue holds."),
    "queue_rebuilt": ("Queue rebuilt", "seqdrop found its queue damaged at start-up and rebuilt it from the "
                                       "audit journal."),
    "sample_late": ("Late file: {name}", ("A file arrived after its sample was uploaded: seqdrop uploaded it as "
                                          "a sample of its own, flagged late.")),
    "run_uploaded": ("Run uploaded: {run}", "Every sample of the run {run} has ended: the counts and each sample "
                                            "below."),
    "watch_folder_missing": ("Watch folder missing: {path}",
                             ("A watch folder has been missing for {missing}: files written there are not "
                              "uploaded until it is back.")),
    "sample_partial": ("Partial sample: {name}",
                       ("A sample seqdrop uploaded held only the start of a file: the file grew after it seemed "
                        "finished, and was uploaded again whole.")),
}
_FIXES = {
    "file_failed": "`seqdrop status` shows the server's words for this file. Fix the cause, then "
                   "`seqdrop retry --failed` puts it back in the queue.",
    "file_rejected": "Replace the file with a complete, valid FASTA/FASTQ file: seqdrop uploads the new "
                     "version by itself. If the file was fine, `seqdrop retry --rejected ID` (the ID is "
                     "the first column of `seqdrop status`).",
    "uploads_paused": "Nothing is lost: files wait in the queue and seqdrop resumes by itself once the key "
                      "works. Test the key with `seqdrop check`; put the right one in /etc/seqdrop/api-key, "
                      "then `systemctl restart seqdrop` (docs/operations.md, Troubleshooting).",
    "uploads_resumed": "Nothing to do.",
    "daily_summary": "Nothing to do, unless files are failed or rejected: `seqdrop status` names them.",
    "queue_rebuilt": "Nothing already uploaded is uploaded again. The damaged file is kept (set_aside_as) for "
                     "inspection; check the disk under the state directory (dmesg, SMART) before it fails again.",
    "sample_late": "Check the run: the file may belong with the sample named above (merge them in One Codex if "
                   "so), or it may be a second library of that name. `seqdrop status` shows the late sample.",
    "run_uploaded": "Nothing to do if every sample is done. A failed or rejected sample is named with its "
                    "reason in `seqdrop show sN` (or the file's path); `seqdrop report RUN` prints the run's "
                    "audit record (MD5, sample ids, times) for your records.",
    "watch_folder_missing": "Mount the share (or create the folder) named above; seqdrop waits for it and scans it "
                            "as soon as it appears. If the folder is gone for good, remove it from [watch] paths "
                            "and `systemctl restart seqdrop`.",
    "sample_partial": "Delete the partial sample (Sample above) in One Codex; the whole file is the other sample. "
                      "If the writer pauses this long often, raise [watch] settle_seconds or use a run marker.",
}
_FIELD_LABELS = (("path", "File"), ("sample_id", "Sample"), ("error", "Reason"), ("reason", "Reason"))
# The field named "path" is a file for most events; for these it is something else.
_PATH_LABELS = {"queue_rebuilt": "Queue", "watch_folder_missing": "Folder", "run_uploaded": "Folder"}


def compose(payload: dict[str, Any], *, sender: str, recipients: Sequence[str]) -> EmailMessage:
    """The plain-text mail for one event: what happened, the file or sample, why, and the fix."""
    kind, host = payload["event"], payload["host"]
    subject, opening = _HEADLINES[kind]
    name = os.path.basename(str(payload.get("path", ""))) or "a file"
    words = {"name": name, "path": payload.get("path", ""), "missing": duration_text(payload.get("missing_s")),
             "run": payload.get("run", "")}
    lines = [opening.format(**words), ""]
    if payload.get("late"):
        lines[0] = ("More samples of the run {run} ended after it was reported as uploaded (a late member, or "
                    "a sample retried): these below.").format(**words)
    rest = {k: v for k, v in payload.items() if k not in ("event", "host", "time", "version", "missing_s", "late")}
    samples = rest.pop("samples", None) if kind == "run_uploaded" else None
    for field, label in _FIELD_LABELS:
        if field == "path":
            label = _PATH_LABELS.get(kind, label)
        if rest.get(field) not in (None, ""):
            lines.append(f"{label + ':':<8} {_one_line(str(rest.pop(field)))}")
        rest.pop(field, None)
    counts = rest.pop("counts", None)
    if isinstance(counts, dict):
        lines += [f"{state + ':':<10} {n}" for state, n in counts.items()] or ["The queue is empty."]
    lines += [f"{k}: {_one_line(str(v))}" for k, v in rest.items()]
    lines += _sample_lines(samples or [])
    lines += ["", "What to do: " + _FIXES[kind], "", "-- ",
              f"seqdrop {payload.get('version', __version__)} on {host}, {payload['time']} (event {kind}).",
              "An automatic message: replies are not read."]
    message = EmailMessage()
    message["Subject"] = logs.redact(_one_line(f"[seqdrop {host}] " + subject.format(**words)))[:200]
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Date"] = formatdate(localtime=True)
    message["Message-ID"] = make_msgid(domain=sender.rsplit("@", 1)[1])
    message["Auto-Submitted"] = "auto-generated"     # RFC 3834: no vacation replies to a daemon
    message["X-Seqdrop-Event"] = kind
    message["X-Seqdrop-Version"] = str(payload.get("version", __version__))
    message.set_content(logs.redact("\n".join(lines)) + "\n")
    return message


def _sample_lines(samples: list[dict[str, Any]]) -> list[str]:
    """A run's samples: name, state, sample id, project, then each file."""
    lines = ["", "Samples:"] if samples else []
    for s in samples:
        lines.append(f"- {_one_line(str(s.get('name')))}: {s.get('state')}, sample id {s.get('sample_id') or '-'}, "
                     f"project {s.get('project') or 'none'}")
        lines += [f"    {_one_line(str(path))}" for path in s.get("files") or []]
    return lines


def _one_line(text: str) -> str:
    """Control characters (a newline in a file name) shown escaped: no header injection, one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
