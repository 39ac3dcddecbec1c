"""Webhook delivery to a real HTTP server on loopback: formats, retries, back-pressure, secrets."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import structlog

from daemon import __version__
from daemon.operations.webhook import (
    KINDS,
    WebhookNotifier,
    duration_text,
    slack_text,
    strip_secrets,
)

EVENTS = {
    "file_failed": {"path": "/srv/run1/a.fastq.gz", "error": "HTTP 413: file too large",
                    "sample_id": "abc123"},
    "file_rejected": {"path": "/srv/run1/b.fastq", "error": "truncated FASTQ record at line 4001"},
    "uploads_paused": {"error": "the API key was refused (401)"},
    "uploads_resumed": {},
    "daily_summary": {"counts": {"done": 12, "failed": 1, "rejected": 0, "queued": 3}},
    "queue_rebuilt": {"path": "/var/lib/seqdrop/queue.sqlite3", "damage": "empty", "restored": 5,
                      "set_aside_as": "/var/lib/seqdrop/queue.sqlite3.damaged-x"},
    "watch_folder_missing": {"path": "/mnt/nas/run-output", "missing_s": 600},
    "sample_partial": {"path": "/srv/run1/c.fastq", "sample_id": "part0123", "whole_sample_id": "whole456",
                       "error": "partial: ...; delete sample part0123 in One Codex"},
    "sample_late": {"path": "/runs/r1/Liver_S3_L005_R1_001.fastq.gz", "sample": "Liver_S3", "run": "r1",
                    "error": "arrived after its sample was uploaded"},
    "run_uploaded": {"run": "240501_M00001", "path": "/srv/run1/240501_M00001", "counts": {"done": 2}, "late": False,
                     "samples": [{"sample": 1, "name": "Liver_S3", "sample_id": "0123456789abcdef",
                                  "project": None, "state": "done", "files": ["/srv/run1/240501_M00001/a_R1.fastq"]}]},
}


class Receiver:
    """A loopback webhook endpoint that answers from a script of status codes, then 200."""

    def __init__(self, port: int = 0, script: list[int] | None = None) -> None:
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        self.script = list(script or [])
        self.cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.cond:
                    status = receiver.script.pop(0) if receiver.script else 200
                    if status == 200:
                        receiver.bodies.append(json.loads(body))
                        receiver.headers.append(dict(self.headers))
                    receiver.cond.notify_all()
                self.send_response(status)
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook/T000/SECRETPART"
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def wait_for(self, n: int, timeout_s: float = 10.0) -> list[dict]:
        deadline = time.monotonic() + timeout_s
        with self.cond:
            while len(self.bodies) < n:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    pytest.fail(f"only {len(self.bodies)} of {n} webhook calls arrived")
                self.cond.wait(remaining)
            return list(self.bodies)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_json_format_delivers_every_kind_in_order(receiver):
    """Each event kind arrives as {"event", "host", "time", **fields}, in the order sent."""
    w = WebhookNotifier(receiver.url, fmt="json", host="seq-pc-1")
    w.start()
    for kind, fields in EVENTS.items():
        w.event(kind, **fields)
    bodies = receiver.wait_for(len(EVENTS))
    w.close()
    assert [b["event"] for b in bodies] == list(EVENTS)
    for body, (kind, fields) in zip(bodies, EVENTS.items()):
        assert body["host"] == "seq-pc-1"
        assert body["time"].endswith("+00:00")
        assert body["version"] == __version__
        assert {k: v for k, v in body.items() if k not in ("event", "host", "time", "version")} == fields
    assert all(h["Content-Type"] == "application/json" for h in receiver.headers)
    assert all("Authorization" not in h for h in receiver.headers)
    assert w.delivered == len(EVENTS) and w.dropped == 0


def test_slack_format_is_one_readable_line_per_event(receiver):
    """Slack format sends only {"text": one line} naming the host, the file and the error."""
    w = WebhookNotifier(receiver.url, fmt="slack", host="seq-pc-1")
    w.start()
    for kind, fields in EVENTS.items():
        w.event(kind, **fields)
    bodies = receiver.wait_for(len(EVENTS))
    w.close()
    assert all(set(b) == {"text"} and "\n" not in b["text"] for b in bodies)
    texts = [b["text"] for b in bodies]
    assert "upload failed for /srv/run1/a.fastq.gz — HTTP 413" in texts[0]
    assert "sample_id=abc123" in texts[0]
    assert "file rejected /srv/run1/b.fastq — truncated FASTQ" in texts[1]
    assert "uploads paused — the API key was refused (401)" in texts[2]
    assert "uploads resumed" in texts[3]
    assert "daily summary: 12 done, 1 failed, 0 rejected, 3 queued" in texts[4]
    assert "the queue /var/lib/seqdrop/queue.sqlite3 was damaged" in texts[5]
    assert "kept as /var/lib/seqdrop/queue.sqlite3.damaged-x" in texts[5] and "check the disk" in texts[5]
    assert "the watch folder /mnt/nas/run-output has been missing for 10 min" in texts[6]
    assert ("sample part0123 held only the start of /srv/run1/c.fastq, uploaded again whole as sample whole456; "
            "delete the partial one in One Codex") in texts[7]
    assert "mount the share or create the folder" in texts[6] and "missing_s" not in texts[6]
    assert all(f"seqdrop {__version__}@seq-pc-1" in t for t in texts)


def test_server_down_then_up_is_delivered_after_retries():
    """Connection refused, then 503 and 429, then success: the event arrives once, in the end."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}/hook"
    with structlog.testing.capture_logs() as logs:
        w = WebhookNotifier(url, fmt="json", backoff_s=0.01, backoff_max_s=0.05)
        w.start()
        w.event("uploads_paused", error="401")
        deadline = time.monotonic() + 10
        while not any(e["event"] == "webhook.retry_scheduled" for e in logs):
            assert time.monotonic() < deadline, "no retry was scheduled"
            time.sleep(0.01)
        receiver = Receiver(port=port, script=[503, 429])
        try:
            bodies = receiver.wait_for(1)
            w.close()
        finally:
            receiver.close()
    assert [b["event"] for b in bodies] == ["uploads_paused"]
    retries = [e for e in logs if e["event"] == "webhook.retry_scheduled"]
    assert len(retries) >= 3  # refused at least once, then 503, then 429
    assert all(e["log_level"] == "warning" for e in retries)
    assert not any(SECRET_URL_PART in json.dumps(e, default=str) for e in logs)
    assert w.delivered == 1


SECRET_URL_PART = "SECRETPART"


def test_permanent_refusal_drops_the_event_and_goes_on(receiver):
    """A 404 (a deleted Slack webhook) is logged as an error without retrying; later events still go."""
    receiver.script = [404]
    with structlog.testing.capture_logs() as logs:
        w = WebhookNotifier(receiver.url, fmt="slack", backoff_s=0.01)
        w.start()
        w.event("uploads_resumed")
        w.event("file_failed", path="/x.fq", error="HTTP 400")
        bodies = receiver.wait_for(1)
        w.close()
    assert "upload failed for /x.fq" in bodies[0]["text"]
    refused = [e for e in logs if e["event"] == "webhook.refused"]
    assert len(refused) == 1 and refused[0]["host"] == "127.0.0.1"
    assert SECRET_URL_PART not in json.dumps(logs, default=str)
    assert w.dropped == 1


def test_gives_up_after_retry_max_s():
    """An event still undeliverable after retry_max_s is dropped with an error."""
    url = f"http://127.0.0.1:{_free_port()}/hook"
    with structlog.testing.capture_logs() as logs:
        w = WebhookNotifier(url, fmt="json", backoff_s=0.01, backoff_max_s=0.02, retry_max_s=0.1)
        w.start()
        w.event("uploads_resumed")
        deadline = time.monotonic() + 10
        while w.dropped == 0:
            assert time.monotonic() < deadline, "never gave up"
            time.sleep(0.01)
        w.close()
    assert any(e["event"] == "webhook.gave_up" and e["log_level"] == "error" for e in logs)


def test_event_never_blocks_on_a_dead_server_with_a_full_queue():
    """A server that accepts but never answers, and a full queue: event() still returns at once,
    dropping the oldest with a warning."""
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(100)  # accepts connections in the kernel, never reads a byte
    url = f"http://127.0.0.1:{blackhole.getsockname()[1]}/hook"
    try:
        with structlog.testing.capture_logs() as logs:
            w = WebhookNotifier(url, fmt="json", max_queue=5, timeout_s=30)
            w.start()
            start = time.monotonic()
            for i in range(200):
                w.event("file_failed", path=f"/srv/{i}.fq", error="x")
            elapsed = time.monotonic() - start
            close_start = time.monotonic()
            w.close(timeout_s=0.2)
            close_elapsed = time.monotonic() - close_start
    finally:
        blackhole.close()
    assert elapsed < 0.5
    assert close_elapsed < 2.0
    drops = [e for e in logs if e["event"] == "webhook.queue_full_dropped_oldest"]
    assert len(drops) >= 194 and all(e["log_level"] == "warning" for e in drops)


def test_secret_looking_fields_are_stripped_before_sending(receiver):
    """Fields named like keys, tokens, secrets, passwords or authorization never leave, at any depth."""
    w = WebhookNotifier(receiver.url, fmt="json")
    w.start()
    w.event("uploads_paused", error="401", api_key="k-123", Authorization="Basic x",
            token="t", client_secret="s", password="p",
            counts={"done": 1, "session_token": "t2"}, path="/keep/me.fq")
    body = receiver.wait_for(1)[0]
    w.close()
    assert body["error"] == "401" and body["path"] == "/keep/me.fq"
    assert body["counts"] == {"done": 1}
    text = json.dumps(body)
    for leaked in ("k-123", "Basic x", "client_secret", "password", "t2"):
        assert leaked not in text


def test_unknown_kind_and_bad_settings_are_refused():
    """A typo in an event kind, a format or a URL scheme raises ValueError at once."""
    w = WebhookNotifier("https://hooks.example.org/x", fmt="slack")
    with pytest.raises(ValueError):
        w.event("file_faild")
    with pytest.raises(ValueError):
        WebhookNotifier("https://hooks.example.org/x", fmt="xml")
    with pytest.raises(ValueError):
        WebhookNotifier("ftp://hooks.example.org/x")
    assert set(KINDS) == set(EVENTS)


def test_helpers():
    """strip_secrets keeps ordinary fields; slack_text handles an empty summary."""
    assert strip_secrets({"path": "/a", "monkey": 1}) == {"path": "/a"}  # "monkey" contains "key"
    line = slack_text({"event": "daily_summary", "host": "h", "time": "t", "counts": {}})
    assert line == f":bar_chart: seqdrop {__version__}@h: daily summary: nothing to report"
    assert (duration_text(600), duration_text(59.6), duration_text(None)) == ("10 min", "60 s", "0 s")
