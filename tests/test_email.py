"""E-mail notifications against a real SMTP server on loopback (aiosmtpd): STARTTLS with a certificate
made for the test (trustme), authentication, retries, back-pressure and secrets."""

from __future__ import annotations

import email
import email.policy
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from harness import wait_for

from daemon import __version__, config
from daemon.errors import ConfigError
from daemon.operations.email import (
    CREDENTIAL_NAME,
    EmailNotifier,
    build_email_notifier,
    compose,
    load_password,
)

USER, PASSWORD = "seqdrop", "correct horse battery staple"
SENDER, RECIPIENTS = "seqdrop@lab.example.org", ["sequencing@lab.example.org", "pi@lab.example.org"]
API_KEY = "0123456789abcdef0123456789abcdef"
REJECTED = {"path": "/srv/sequencer/output/run7/sample_3_R1.fastq",
            "error": "not FASTQ: line 4 has 99 quality scores for 100 bases", "api_key": API_KEY}
PAUSED = {"reason": "One Codex refused the API key (HTTP 401)"}


@dataclass
class Mailbox:
    """What the server saw: each accepted mail, and each AUTH attempt with whether TLS was up."""
    port: int
    messages: list[tuple[str, list[str], email.message.EmailMessage, bool]] = field(default_factory=list)
    logins: list[tuple[str, bool, bool]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:   # aiosmtpd's hook
        parsed = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), parsed, session.ssl is not None))
        return "250 OK"

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        ok = isinstance(data, LoginPassword) and data.login.decode() == USER and data.password.decode() == PASSWORD
        self.logins.append((data.login.decode() if isinstance(data, LoginPassword) else "?", ok,
                                   session.ssl is not None))
        return AuthResult(success=ok, handled=False)   # handled=False: aiosmtpd answers 535 itself


class _BoundController(Controller):
    """aiosmtpd's threaded server on a socket bound beforehand: port 0 without a race, and a port that
    refuses connections until start()."""

    def __init__(self, sock: socket.socket, box: Mailbox, **smtp_kwargs: Any) -> None:
        self._sock = sock
        super().__init__(box, hostname="127.0.0.1", port=sock.getsockname()[1],
                         authenticator=box.authenticate, **smtp_kwargs)

    def _create_server(self) -> Any:
        return self.loop.create_server(self._factory_invoker, sock=self._sock, ssl=self.ssl_context)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def client_tls(ca: trustme.CA) -> ssl.SSLContext:
    """What the notifier trusts: the system's CAs plus the test's."""
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


def _server(ca: trustme.CA, *, tls: bool = True, listen: bool = True) -> tuple[_BoundController, Mailbox]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    box = Mailbox(port=sock.getsockname()[1])
    kwargs: dict[str, Any] = {"auth_required": True, "auth_require_tls": True}
    if tls:
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
        kwargs.update(tls_context=server_ctx, require_starttls=True)
    else:
        kwargs.update(auth_require_tls=False)
    controller = _BoundController(sock, box, **kwargs)
    if listen:
        controller.start()
    return controller, box


@pytest.fixture
def smtp(ca: trustme.CA) -> Iterator[Mailbox]:
    """A mail server on loopback that demands STARTTLS, then AUTH, and keeps what it is sent."""
    controller, box = _server(ca)
    yield box
    controller.stop()


class Recorder:
    """A structlog-shaped logger that keeps (level, event, fields)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        return lambda event, **kw: self.events.append((level, event, kw))

    def named(self, event: str) -> list[dict[str, Any]]:
        return [kw for _, e, kw in self.events if e == event]


def _notifier(port: int, tls: ssl.SSLContext | None, **kw: Any) -> EmailNotifier:
    kw.setdefault("username", USER)
    kw.setdefault("password", PASSWORD)
    return EmailNotifier(smtp_host="127.0.0.1", smtp_port=port, sender=SENDER, recipients=RECIPIENTS,
                         ssl_context=tls, hostname="seq-pc-1", timeout_s=10.0, **kw)


def test_a_rejected_file_and_a_pause_each_arrive_once(smtp: Mailbox, client_tls: ssl.SSLContext) -> None:
    """Two events, two mails, over STARTTLS after AUTH, each naming the file or the pause and the fix."""
    notifier = _notifier(smtp.port, client_tls)
    notifier.start()
    notifier.event("file_rejected", **REJECTED)
    notifier.event("uploads_paused", **PAUSED)
    wait_for(lambda: len(smtp.messages) >= 2, 15, "two mails")
    notifier.close()
    assert len(smtp.messages) == 2 and notifier.delivered == 2 and notifier.dropped == 0
    (sender1, to1, rejected, tls1), (sender2, to2, paused, tls2) = smtp.messages
    assert sender1 == sender2 == SENDER and to1 == to2 == RECIPIENTS and tls1 and tls2
    assert smtp.logins == [(USER, True, True), (USER, True, True)]

    assert rejected["Subject"] == "[seqdrop seq-pc-1] File rejected: sample_3_R1.fastq"
    assert rejected["X-Seqdrop-Event"] == "file_rejected" and rejected["Auto-Submitted"] == "auto-generated"
    body = rejected.get_content()
    assert REJECTED["path"] in body and REJECTED["error"] in body
    assert "seqdrop retry --rejected" in body and f"seqdrop {__version__} on seq-pc-1" in body
    assert paused["Subject"] == "[seqdrop seq-pc-1] Uploads paused"
    body = paused.get_content()
    assert PAUSED["reason"] in body and "seqdrop check" in body and "Nothing is lost" in body
    for _, _, message, _ in smtp.messages:
        assert message.get_content_type() == "text/plain"
        assert API_KEY not in message.as_string() and PASSWORD not in message.as_string()


def test_a_wrong_password_is_refused_once_and_logged_with_the_fix(smtp: Mailbox, client_tls: ssl.SSLContext) -> None:
    """AUTH refused (535) is permanent: one session, no mail, an error naming the fix, no password in logs."""
    log = Recorder()
    notifier = _notifier(smtp.port, client_tls, password="wrong", log=log, backoff_s=0.01)
    notifier.start()
    notifier.event("file_rejected", **REJECTED)
    wait_for(lambda: log.named("email.refused"), 15, "the refusal to be logged")
    notifier.close()
    # One session, no retry: smtplib's login() tries each mechanism the server offers (PLAIN, LOGIN).
    assert smtp.messages == [] and smtp.logins == [(USER, False, True)] * 2
    (refused,) = log.named("email.refused")
    assert "password" in refused["fix"] and "535" in refused["detail"]
    assert "wrong" not in repr(log.events) and notifier.dropped == 1


def test_an_untrusted_certificate_gets_no_password_and_no_mail(smtp: Mailbox) -> None:
    """With the system's CAs only, the test server's certificate fails verification: nothing is sent."""
    log = Recorder()
    notifier = _notifier(smtp.port, None, log=log)
    notifier.start()
    notifier.event("uploads_paused", **PAUSED)
    wait_for(lambda: log.named("email.refused"), 15, "the refusal to be logged")
    notifier.close()
    assert smtp.messages == [] and smtp.logins == []
    assert "certificate" in log.named("email.refused")[0]["fix"]


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")   # the server is meant to be unsafe
def test_a_server_without_starttls_gets_no_password(ca: trustme.CA, client_tls: ssl.SSLContext) -> None:
    """A server that offers no STARTTLS (and would take AUTH in clear text) is refused up front."""
    controller, box = _server(ca, tls=False)
    log = Recorder()
    try:
        notifier = _notifier(box.port, client_tls, log=log)
        notifier.start()
        notifier.event("uploads_paused", **PAUSED)
        wait_for(lambda: log.named("email.refused"), 15, "the refusal to be logged")
        notifier.close()
    finally:
        controller.stop()
    assert box.messages == [] and box.logins == []
    assert "STARTTLS" in log.named("email.refused")[0]["detail"]


def test_a_server_that_is_down_is_retried_until_it_answers(ca: trustme.CA, client_tls: ssl.SSLContext) -> None:
    """Connection refused is transient: the mail is retried with backoff and arrives once the server is up."""
    controller, box = _server(ca, listen=False)
    log = Recorder()
    notifier = _notifier(box.port, client_tls, log=log, backoff_s=0.05, backoff_max_s=0.2)
    try:
        notifier.start()
        notifier.event("file_rejected", **REJECTED)
        wait_for(lambda: len(log.named("email.retry_scheduled")) >= 2, 15, "two retries")
        controller.start()
        wait_for(lambda: box.messages, 15, "the mail")
        notifier.close()
    finally:
        controller.stop()
    assert len(box.messages) == 1 and notifier.delivered == 1
    assert all("ConnectionRefusedError" in r["detail"] for r in log.named("email.retry_scheduled"))


def test_events_never_wait_for_a_hung_server_and_close_keeps_its_budget(client_tls: ssl.SSLContext) -> None:
    """A server that accepts and never greets: event() still returns at once, close() within its budget."""
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(8)       # the kernel completes the handshakes; nobody ever answers
    try:
        notifier = _notifier(hung.getsockname()[1], client_tls, log=Recorder())
        notifier.start()
        started = time.monotonic()
        for _ in range(100):
            notifier.event("file_rejected", **REJECTED)
        queued_s = time.monotonic() - started
        started = time.monotonic()
        notifier.close(timeout_s=0.2)
        closed_s = time.monotonic() - started
    finally:
        hung.close()
    assert queued_s < 1.0, queued_s      # 100 events, no network: milliseconds on any machine
    assert closed_s < 3.0, closed_s      # 0.2 s budget + 1 s for the stuck thread, never the 10 s timeout
    assert notifier.delivered == 0 and notifier.dropped >= 99


def test_a_full_queue_drops_the_oldest(smtp: Mailbox, client_tls: ssl.SSLContext) -> None:
    """Over max_queue, the oldest waiting mail goes (with a warning) and the newest are sent."""
    log = Recorder()
    notifier = _notifier(smtp.port, client_tls, max_queue=2, log=log)
    for n in range(3):
        notifier.event("file_failed", path=f"/srv/run/{n}.fastq", error="HTTP 413")
    notifier.start()
    wait_for(lambda: len(smtp.messages) >= 2, 15, "two mails")
    notifier.close()
    assert [m["Subject"].rsplit(" ", 1)[1] for _, _, m, _ in smtp.messages] == ["1.fastq", "2.fastq"]
    assert notifier.dropped == 1 and log.named("email.queue_full_dropped_oldest")


@pytest.mark.parametrize("kwargs, words", [
    ({"recipients": []}, "no recipients"),
    ({"recipients": ["lab@example.org\nBcc: x@evil.example"]}, "not a plain e-mail address"),
    ({"sender": "seqdrop"}, "not a plain e-mail address"),
    ({"password": None}, "needs a password"),
    ({"security": "ssl"}, "must be one of"),
    ({"security": "none", "smtp_host": "smtp.example.org"}, "unencrypted"),
])
def test_settings_that_would_leak_or_misdeliver_are_refused(kwargs: dict[str, Any], words: str) -> None:
    """Each mistake is refused at construction with words that name it."""
    base: dict[str, Any] = {"smtp_host": "127.0.0.1", "sender": SENDER, "recipients": RECIPIENTS,
                            "username": USER, "password": PASSWORD}
    with pytest.raises(ValueError, match=words):
        EmailNotifier(**{**base, **kwargs})


def test_plain_smtp_to_a_relay_on_this_machine_is_allowed() -> None:
    """security "none" is accepted for a loopback relay (a local postfix), without credentials."""
    EmailNotifier(smtp_host="localhost", sender=SENDER, recipients=RECIPIENTS, security="none")


def test_a_file_name_cannot_inject_headers_and_every_field_is_shown() -> None:
    """A newline in a file name stays escaped in the subject; unknown fields and summary counts are listed."""
    message = compose({"event": "file_failed", "host": "seq-pc-1", "time": "2026-01-01T08:00:00+00:00",
                       "path": "/srv/run/evil\nBcc: x@evil.example.fastq", "error": "HTTP 413",
                       "sample_id": "abc123", "attempts": 4}, sender=SENDER, recipients=RECIPIENTS)
    parsed = email.message_from_bytes(message.as_bytes(), policy=email.policy.default)
    assert parsed["Bcc"] is None and "\\n" in parsed["Subject"]
    body = parsed.get_content()
    assert "Sample:  abc123" in body and "attempts: 4" in body and "seqdrop retry --failed" in body
    summary = compose({"event": "daily_summary", "host": "h", "time": "t", "counts": {"done": 12, "failed": 1}},
                      sender=SENDER, recipients=RECIPIENTS).get_content()
    assert "done:      12" in summary and "failed:    1" in summary


def test_a_missing_folder_and_a_rebuilt_queue_name_the_folder_or_the_queue_and_the_fix() -> None:
    """watch_folder_missing names the folder and how long; queue_rebuilt names the queue file and where
    the damaged one is kept; both say what to do, and every mail carries the version it came from."""
    missing = compose({"event": "watch_folder_missing", "host": "h", "time": "t", "version": "1.2.3",
                       "path": "/mnt/nas/run-output", "missing_s": 612}, sender=SENDER, recipients=RECIPIENTS)
    assert missing["Subject"] == "[seqdrop h] Watch folder missing: /mnt/nas/run-output"
    assert missing["X-Seqdrop-Version"] == "1.2.3"
    body = missing.get_content()
    assert "Folder:  /mnt/nas/run-output" in body and "missing for 10 min" in body
    assert "Mount the share" in body and "seqdrop 1.2.3 on h" in body and "missing_s" not in body
    rebuilt = compose({"event": "queue_rebuilt", "host": "h", "time": "t", "path": "/var/lib/seqdrop/q.sqlite3",
                       "damage": "empty", "restored": 5, "set_aside_as": "/var/lib/seqdrop/q.sqlite3.damaged-x"},
                      sender=SENDER, recipients=RECIPIENTS)
    body = rebuilt.get_content()
    assert "Queue:   /var/lib/seqdrop/q.sqlite3" in body and "set_aside_as: /var/lib/seqdrop/q.sqlite3.damaged-x" in body
    assert "check the disk" in body and f"seqdrop {__version__} on h" in body


def test_the_password_comes_from_the_configured_file_or_the_credential(tmp_path: Path) -> None:
    """email_password_file first, then $CREDENTIALS_DIRECTORY/smtp-password; only the line break is cut."""
    own = tmp_path / "smtp-password"
    own.write_text(" two words \n")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / CREDENTIAL_NAME).write_text("from-systemd\n")
    env = {"CREDENTIALS_DIRECTORY": str(creds)}
    assert load_password(password_file=str(own), env=env) == " two words "
    assert load_password(env=env) == "from-systemd"


@pytest.mark.parametrize("setup, words", [
    ("nothing", "no password was found"),
    ("missing", "does not exist"),
    ("empty", "is empty"),
])
def test_a_missing_password_is_a_config_error_with_the_fix(tmp_path: Path, setup: str, words: str) -> None:
    """No credential, a missing file or an empty one: a ConfigError naming the key and the fix."""
    path = tmp_path / "smtp-password"
    if setup == "empty":
        path.write_text("\n")
    with pytest.raises(ConfigError, match=words) as caught:
        load_password(password_file=None if setup == "nothing" else str(path), env={}, source="/etc/seqdrop/config.toml")
    assert caught.value.fix and caught.value.key.startswith("notify.email_")


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(f'"{i}"' for i in items) + "]"


def _settings(tmp_path: Path, notify: str) -> config.Settings:
    watch = tmp_path / "watch"
    watch.mkdir(exist_ok=True)
    path = tmp_path / "config.toml"
    path.write_text(f'[watch]\npaths = ["{watch}"]\n[queue]\npath = "{tmp_path}/q.sqlite3"\n[notify]\n{notify}')
    return config.load(str(path))


def test_the_notifier_built_from_the_config_delivers_over_starttls_with_the_credential(
        tmp_path: Path, smtp: Mailbox, client_tls: ssl.SSLContext) -> None:
    """[notify] email_* keys → build_email_notifier: the password from the smtp-password credential,
    STARTTLS then AUTH, and a rejected file and a pause arrive once each at the configured recipients."""
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / CREDENTIAL_NAME).write_text(PASSWORD + "\n")
    settings = _settings(tmp_path, f'email_to = {_toml_list(RECIPIENTS)}\nemail_from = "{SENDER}"\n'
                                   f'email_smtp_host = "127.0.0.1"\nemail_smtp_port = {smtp.port}\n'
                                   f'email_username = "{USER}"\n')
    notifier = build_email_notifier(settings.notify, source=settings.source, ssl_context=client_tls,
                                    env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert notifier is not None
    notifier.start()
    notifier.event("file_rejected", **REJECTED)
    notifier.event("uploads_paused", **PAUSED)
    wait_for(lambda: len(smtp.messages) >= 2, 15, "two mails")
    notifier.close()
    assert [m[2]["X-Seqdrop-Event"] for m in smtp.messages] == ["file_rejected", "uploads_paused"]
    assert all(to == RECIPIENTS and tls for _, to, _, tls in smtp.messages)
    assert smtp.logins == [(USER, True, True)] * 2


def test_no_recipients_no_notifier_and_a_login_without_password_is_a_config_error(tmp_path: Path) -> None:
    """Without email_to there is no notifier; a user name with neither password file nor credential
    fails at build time (exit 2 at start-up), naming the key and the fix."""
    assert build_email_notifier(_settings(tmp_path, "").notify) is None
    settings = _settings(tmp_path, f'email_to = ["a@x.org"]\nemail_from = "{SENDER}"\n'
                                   'email_smtp_host = "smtp.x.org"\nemail_username = "u"\n')
    with pytest.raises(ConfigError) as caught:
        build_email_notifier(settings.notify, source=settings.source, env={})
    assert caught.value.key == "notify.email_username" and "smtp-password" in (caught.value.fix or "")
    assert caught.value.file == settings.source
