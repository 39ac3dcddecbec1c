"""The parts built on their own, wired into `seqdrop run` (issue 14): e-mail beside the webhook, the
watch_folder_missing and queue_rebuilt notifications in both webhook formats and by mail, the metrics
the housekeeping sets, and the version in the log and every notification. Each through the real
daemon against the sandbox, with a real SMTP server on loopback (STARTTLS, AUTH) and a webhook
receiver on loopback."""

from __future__ import annotations

import email
import email.policy
import json
import os
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import trustme
from harness import (
    API_KEY,
    Daemon,
    all_in,
    by_name,
    fastq_bytes,
    wait_for,
    write_config,
)
from test_email import PASSWORD, USER, Mailbox, _server

from daemon import __version__
from daemon.queue.base import Identity
from daemon.queue.sqlite import SqliteStore
from daemon.sandbox import Sandbox
from daemon.service.service import MISSING_ALERT_ENV

DEADLINE_S = 60.0
RECIPIENT = "sequencing@lab.example.org"
# These tests' files are named like R1s whose R2 never comes: with pairing on they would wait
# group_wait_seconds (120 s) before going single-end; one file, one sample here (pairs: test_assembler.py).
PAIRING_OFF = '\n[samples]\npairing = "off"\n'


# -- a mail server and a webhook on loopback ---------------------------------------------------

@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def smtp(ca: trustme.CA) -> Iterator[Mailbox]:
    """aiosmtpd on loopback demanding STARTTLS, then AUTH (as in test_email)."""
    controller, box = _server(ca)
    yield box
    controller.stop()


@pytest.fixture
def mail_env(tmp_path: Path, ca: trustme.CA) -> dict[str, str]:
    """The daemon trusts the test's CA (OpenSSL reads SSL_CERT_FILE for the default context): the
    certificate is verified for real, as it would be against a lab's mail server."""
    pem = tmp_path / "test-ca.pem"
    ca.cert_pem.write_to_path(str(pem))
    return {"SSL_CERT_FILE": str(pem)}


def email_config(tmp_path: Path, box: Mailbox) -> str:
    password = tmp_path / "smtp-password"
    password.write_text(PASSWORD + "\n")
    password.chmod(0o600)
    return (f'email_to = ["{RECIPIENT}"]\nemail_from = "seqdrop@lab.example.org"\n'
            f'email_smtp_host = "127.0.0.1"\nemail_smtp_port = {box.port}\nemail_security = "starttls"\n'
            f'email_username = "{USER}"\nemail_password_file = "{password}"\n')


class Hook:
    """A webhook receiver on loopback keeping each body it is sent."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                hook.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/hook"


@pytest.fixture
def hook() -> Iterator[Hook]:
    h = Hook()
    yield h
    h.server.shutdown()
    h.server.server_close()


def mails(box: Mailbox, kind: str) -> list[email.message.EmailMessage]:
    return [m for _, _, m, _ in box.messages if m["X-Seqdrop-Event"] == kind]


def events(d: Daemon, name: str) -> list[dict[str, Any]]:
    return [e for e in d.log_events() if e.get("event") == name]


def truncated_fastq(seed: int) -> bytes:
    data = fastq_bytes(20_000, seed=seed)
    return data[: len(data) // 2 + 7]           # cut inside a record: the validator rejects it


# -- 1. e-mail (issue 14, Must show 5) and the version (5) ---------------------------------------

def test_a_mail_arrives_once_for_a_rejected_file_and_once_for_a_pause(
        tmp_path: Path, sandbox: Sandbox, watch_dir: Path, smtp: Mailbox, mail_env: dict[str, str]) -> None:
    """Through `seqdrop run` with email_to set: a truncated FASTQ is rejected and a revoked key pauses
    the uploads; one mail each reaches the SMTP server, over STARTTLS after AUTH, naming the file and
    its reason or the pause, and the fix; the version is in service.ready and in each mail."""
    (watch_dir / "broken_R1.fastq").write_bytes(truncated_fastq(1))
    cfg = write_config(tmp_path, watch=[watch_dir], api_url=sandbox.api_url, workers=1,
                       extra="\n[notify]\n" + email_config(tmp_path, smtp) + PAIRING_OFF)
    with Daemon(cfg, env=mail_env) as d:
        files = d.wait_files(all_in("rejected", ["broken_R1.fastq"]), DEADLINE_S, "broken_R1.fastq rejected")
        reason = by_name(files)["broken_R1.fastq"][-1]["error"]
        wait_for(lambda: mails(smtp, "file_rejected"), 20, lambda: f"the rejection mail\n{d.log_tail()}")
        sandbox.set_api_keys([])                 # the key revoked at One Codex
        (watch_dir / "good_R1.fastq").write_bytes(fastq_bytes(20_000, seed=2))
        wait_for(lambda: mails(smtp, "uploads_paused"), 30, lambda: f"the pause mail\n{d.log_tail()}")
        # The prober keeps asking while paused: a pause is one episode, one mail however long it lasts.
        wait_for(lambda: len(events(d, "uploads.still_paused")) >= 2, 20,
                 lambda: f"two refused probes\n{d.log_tail()}")
        assert d.terminate() == 0
    assert [e["version"] for e in events(d, "service.ready")] == [__version__]
    assert len(mails(smtp, "file_rejected")) == 1 and len(mails(smtp, "uploads_paused")) == 1
    assert len(smtp.messages) == 2
    assert all(tls for _, _, _, tls in smtp.messages) and smtp.logins and all(ok and tls for _, ok, tls in smtp.logins)
    [rejected], [paused] = mails(smtp, "file_rejected"), mails(smtp, "uploads_paused")
    body = rejected.get_content()
    assert str(watch_dir / "broken_R1.fastq") in body and reason in body and "seqdrop retry --rejected" in body
    assert "401" in paused.get_content() and "seqdrop check" in paused.get_content()
    for _, rcpt, message, _ in smtp.messages:
        assert rcpt == [RECIPIENT] and message["X-Seqdrop-Version"] == __version__
        assert f"seqdrop {__version__} on " in message.get_content()
        assert API_KEY not in message.as_string() and PASSWORD not in message.as_string()


# -- 2. watch_folder_missing and queue_rebuilt, both webhook formats and e-mail ------------------

@pytest.mark.parametrize("fmt", ["json", "slack"])
def test_a_missing_folder_and_a_rebuilt_queue_reach_the_webhook_and_the_mail(
        tmp_path: Path, sandbox: Sandbox, watch_dir: Path, smtp: Mailbox, mail_env: dict[str, str],
        hook: Hook, fmt: str) -> None:
    """A queue emptied between two runs is rebuilt (queue_rebuilt) and a watch folder stays missing past
    the alert time (shortened here from 10 minutes); each is told once to the webhook, in its
    format, and by mail, naming the queue file or the folder and what to do."""
    nas = tmp_path / "nas"
    (watch_dir / "a_R1.fastq").write_bytes(fastq_bytes(20_000, seed=3))
    cfg = write_config(tmp_path, watch=[watch_dir], api_url=sandbox.api_url, workers=1, extra=PAIRING_OFF)
    with Daemon(cfg) as d:
        d.wait_files(all_in("done", ["a_R1.fastq"]), DEADLINE_S, "a_R1.fastq done")
        assert d.terminate() == 0
    queue = tmp_path / "state" / "queue.sqlite3"
    os.truncate(queue, 0)
    notify = f'\n[notify]\nwebhook_url = "{hook.url()}"\nformat = "{fmt}"\n' + email_config(tmp_path, smtp)
    cfg = write_config(tmp_path, watch=[watch_dir, nas], api_url=sandbox.api_url, workers=1,
                       extra=notify + PAIRING_OFF)
    with Daemon(cfg, env={**mail_env, MISSING_ALERT_ENV: "1"}) as d:
        wait_for(lambda: mails(smtp, "queue_rebuilt") and mails(smtp, "watch_folder_missing"), 30,
                 lambda: f"both mails; webhook got {hook.bodies}\n{d.log_tail()}")
        wait_for(lambda: len(hook.bodies) >= 2, 10, lambda: f"both webhook calls, got {hook.bodies}")
        assert d.terminate() == 0
    assert len(hook.bodies) == 2 and len(smtp.messages) == 2
    if fmt == "json":
        by_kind = {b["event"]: b for b in hook.bodies}
        assert by_kind["queue_rebuilt"]["path"] == str(queue) and by_kind["queue_rebuilt"]["restored"] == 1
        assert by_kind["watch_folder_missing"]["path"] == str(nas) and by_kind["watch_folder_missing"]["missing_s"] >= 1
        assert all(b["version"] == __version__ for b in hook.bodies)
    else:
        assert all(set(b) == {"text"} and f"seqdrop {__version__}@" in b["text"] for b in hook.bodies)
        [rebuilt] = [b["text"] for b in hook.bodies if "the queue" in b["text"]]
        [missing] = [b["text"] for b in hook.bodies if "the watch folder" in b["text"]]
        assert f"the queue {queue} was damaged" in rebuilt and "check the disk" in rebuilt
        assert f"the watch folder {nas} has been missing" in missing and "create the folder" in missing
    [rebuilt_mail], [missing_mail] = mails(smtp, "queue_rebuilt"), mails(smtp, "watch_folder_missing")
    assert f"Queue:   {queue}" in rebuilt_mail.get_content() and "check the disk" in rebuilt_mail.get_content()
    assert missing_mail["Subject"].endswith(f"Watch folder missing: {nas}")
    assert f"Folder:  {nas}" in missing_mail.get_content() and "Mount the share" in missing_mail.get_content()


# -- 3. the metrics the housekeeping sets ----------------------------------------------------------

def _scrape(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as resp:
        return resp.read().decode()


def _gauge(text: str, series: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return None


def test_the_metrics_name_the_version_the_folders_present_and_the_oldest_waiting_file(
        tmp_path: Path, sandbox: Sandbox, watch_dir: Path) -> None:
    """A running daemon's scrape: seqdrop_build_info carries the version, each watch folder is present
    (1) or missing (0), and a file that is settling is the oldest waiting one, since it was seen."""
    nas = tmp_path / "nas"
    cfg = write_config(tmp_path, watch=[watch_dir, nas], api_url=sandbox.api_url, settle_s=120,
                       extra='\n[metrics]\nenabled = true\nlisten = "127.0.0.1:0"\n')
    with Daemon(cfg) as d:
        d.wait_ready()
        address = events(d, "metrics.listening")[0]["address"]
        before = time.time()
        (watch_dir / "slow_R1.fastq").write_bytes(fastq_bytes(5_000, seed=4))

        def waiting() -> str | None:
            text = _scrape(address)
            return text if (_gauge(text, "seqdrop_oldest_waiting_file_timestamp_seconds") or 0) > 0 else None

        text = wait_for(waiting, 20, lambda: f"the oldest waiting file in the scrape\n{d.log_tail()}")
        assert d.terminate() == 0
    assert _gauge(text, f'seqdrop_build_info{{version="{__version__}"}}') == 1.0
    assert _gauge(text, f'seqdrop_watch_folder_present{{path="{watch_dir}"}}') == 1.0
    assert _gauge(text, f'seqdrop_watch_folder_present{{path="{nas}"}}') == 0.0
    oldest = _gauge(text, "seqdrop_oldest_waiting_file_timestamp_seconds")
    assert oldest is not None and before - 1 <= oldest <= time.time()


def test_the_oldest_waiting_version_is_the_first_seen_of_those_seen_or_queued(tmp_path: Path) -> None:
    """One query: the least created_at among seen and queued rows; done and rejected ones wait no more."""
    now = [1000.0]
    store = SqliteStore(str(tmp_path / "q.sqlite3"), clock=lambda: now[0])
    try:
        assert store.oldest_waiting_since() is None
        ids = []
        for n, at in enumerate((1000.0, 1010.0, 1020.0)):
            now[0] = at
            ids.append(store.add_seen(f"/w/{n}.fastq", Identity(1, n + 1, 10, 1)))
        store.set_state(ids[1], "queued")
        assert store.oldest_waiting_since() == 1000.0
        store.set_state(ids[0], "rejected", error="empty")
        assert store.oldest_waiting_since() == 1010.0
        store.set_state(ids[1], "uploading")
        assert store.oldest_waiting_since() == 1020.0
    finally:
        store.close()


# -- shutdown within the budget with everything on ---------------------------------------------------

def test_sigterm_exits_in_time_with_a_mail_server_that_never_answers(
        tmp_path: Path, sandbox: Sandbox, watch_dir: Path, hook: Hook) -> None:
    """A mail server that accepts the connection and never says a word holds a mail in flight; with the
    webhook, metrics and the status page on too, SIGTERM still ends the daemon within 10 s, exit 0."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)                            # connections complete in the backlog; nothing answers
    try:
        (watch_dir / "broken_R1.fastq").write_bytes(truncated_fastq(5))
        extra = (f'\n[notify]\nwebhook_url = "{hook.url()}"\nformat = "json"\nemail_to = ["{RECIPIENT}"]\n'
                 f'email_from = "seqdrop@lab.example.org"\nemail_smtp_host = "127.0.0.1"\n'
                 f'email_smtp_port = {silent.getsockname()[1]}\nemail_security = "none"\n'
                 f'\n[metrics]\nenabled = true\nlisten = "127.0.0.1:0"\n'
                 f'\n[status_page]\nenabled = true\nlisten = "127.0.0.1:0"\n' + PAIRING_OFF)
        cfg = write_config(tmp_path, watch=[watch_dir], api_url=sandbox.api_url, workers=1, extra=extra)
        with Daemon(cfg) as d:
            d.wait_files(all_in("rejected", ["broken_R1.fastq"]), DEADLINE_S, "broken_R1.fastq rejected")
            wait_for(lambda: any(b["event"] == "file_rejected" for b in hook.bodies), 10, "the webhook call")
            started = time.monotonic()
            assert d.terminate(timeout_s=10.0) == 0
            assert time.monotonic() - started < 10.0
        names = [e.get("event") for e in d.log_events()]
        assert "email.enabled" in names and "status_page.listening" in names and "service.stopped" in names
    finally:
        silent.close()
