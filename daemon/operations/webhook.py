"""Webhook notifications (Slack-compatible or plain JSON), delivered by a background thread.

``event()`` only appends to a bounded in-memory queue and returns: a slow or dead webhook can never
hold up an upload. The thread delivers events in order, retrying transient failures with
exponential backoff and jitter for up to ``retry_max_s`` per event; when the queue is full the
oldest event is dropped with a warning. Notifications are best effort by design: the queue in
SQLite is the record, and these are only the nudge that tells a person to look at it.

The API key never travels here: this module has its own HTTP session with no credentials, and
any field whose name looks like a secret is removed before an event is queued.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import random
import socket
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import requests
import structlog

from daemon import __version__
from daemon.upload.retrying import parse_retry_after

KINDS = ("file_failed", "file_rejected", "uploads_paused", "uploads_resumed", "daily_summary", "queue_rebuilt",
         "watch_folder_missing", "sample_partial", "sample_late", "run_uploaded")
_ENVELOPE = ("event", "host", "time", "version")   # every payload's own fields; the rest is the event's
FORMATS = ("slack", "json")
SAMPLES_IN_LINE = 20      # a run_uploaded's Slack line names this many samples (the JSON format: all)
_SECRET_WORDS = ("key", "token", "secret", "password", "authorization")


class WebhookNotifier:
    """Queue events and POST them to one webhook URL from a background thread."""

    def __init__(self, url: str, *, fmt: str = "slack", timeout_s: float = 10.0,
                 max_queue: int = 1000, retry_max_s: float = 3600.0, backoff_s: float = 5.0,
                 backoff_max_s: float = 300.0, log: Any = None,
                 session: requests.Session | None = None, host: str | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError("webhook_url must be an http(s) URL")
        if fmt not in FORMATS:
            raise ValueError(f"webhook format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        self._url = url
        # A Slack webhook URL is itself a credential: logs name only its host.
        self._url_host = parts.hostname
        self._fmt, self._timeout_s = fmt, timeout_s
        self._retry_max_s, self._backoff_s, self._backoff_max_s = retry_max_s, backoff_s, backoff_max_s
        self._log = log if log is not None else structlog.get_logger("seqdrop.webhook")
        self._session = session if session is not None else requests.Session()
        self._own_session = session is None
        self._host = host or socket.gethostname()
        self._clock = clock
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        self._max_queue = max_queue
        self._cond = threading.Condition()
        self._closing = False
        self._deadline: float | None = None  # set by close(): deliver what we can until then
        self._thread: threading.Thread | None = None
        self.delivered = 0
        self.dropped = 0

    # -- the producer side (any thread) --------------------------------------------------------

    def event(self, kind: str, **fields: Any) -> None:
        """Queue one notification; returns at once. Unknown kinds are a programming error."""
        if kind not in KINDS:
            raise ValueError(f"unknown webhook event kind {kind!r}; known: {', '.join(KINDS)}")
        payload = {"event": kind, "host": self._host,
                   "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                   "version": __version__, **strip_secrets(fields)}
        with self._cond:
            if self._closing:
                return
            if len(self._queue) >= self._max_queue:
                old = self._queue.popleft()
                self.dropped += 1
                self._log.warning("webhook.queue_full_dropped_oldest", dropped_event=old["event"],
                                  max_queue=self._max_queue)
            self._queue.append(payload)
            self._cond.notify()

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the delivery thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="seqdrop-webhook", daemon=True)
            self._thread.start()

    def close(self, timeout_s: float = 5.0) -> None:
        """Deliver what can be delivered within timeout_s, then stop; events left are dropped."""
        with self._cond:
            self._closing = True
            self._deadline = self._clock() + timeout_s
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s + 1.0)
        with self._cond:
            left = len(self._queue)
            self._queue.clear()
        if left:
            self.dropped += left
            self._log.warning("webhook.closed_with_undelivered_events", count=left)
        if self._own_session:
            self._session.close()

    # -- the delivery thread -------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return  # closing, nothing left
                if self._deadline is not None and self._clock() >= self._deadline:
                    return  # closing and out of time: close() counts what is left
                payload = self._queue.popleft()
            self._deliver(payload)

    def _deliver(self, payload: dict[str, Any]) -> None:
        """Try one event until it is delivered, refused for good, or out of time."""
        body = self._render(payload)
        first_try = self._clock()
        delay_s = self._backoff_s
        attempt = 0
        while True:
            attempt += 1
            outcome, wait_hint_s, detail = self._post(body)
            if outcome == "ok":
                self.delivered += 1
                self._log.debug("webhook.delivered", kind=payload["event"], attempts=attempt)
                return
            if outcome == "permanent":
                self._log.error("webhook.refused", kind=payload["event"], host=self._url_host,
                                detail=detail)
                self.dropped += 1
                return
            wait_s = min(delay_s, self._backoff_max_s) * random.uniform(0.5, 1.0)
            if wait_hint_s is not None:
                wait_s = max(wait_s, min(wait_hint_s, self._backoff_max_s))
            if self._deadline is not None and self._clock() + wait_s > self._deadline:
                self._queue_front(payload)  # closing: leave it for close() to count
                return
            if self._clock() + wait_s - first_try > self._retry_max_s:
                self._log.error("webhook.gave_up", kind=payload["event"], host=self._url_host,
                                attempts=attempt, detail=detail)
                self.dropped += 1
                return
            self._log.warning("webhook.retry_scheduled", kind=payload["event"],
                              host=self._url_host, attempt=attempt, wait_s=round(wait_s, 3),
                              detail=detail)
            if not self._wait(wait_s):
                self._queue_front(payload)  # closing: leave it for close() to count
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

    def _queue_front(self, payload: dict[str, Any]) -> None:
        with self._cond:
            self._queue.appendleft(payload)

    def _post(self, body: bytes) -> tuple[str, float | None, str]:
        """POST once; return ("ok" | "retry" | "permanent", Retry-After seconds, detail)."""
        try:
            response = self._session.post(self._url, data=body, timeout=self._timeout_s,
                                          headers={"Content-Type": "application/json"},
                                          allow_redirects=False)
        except requests.RequestException as exc:
            return "retry", None, type(exc).__name__
        with response:
            status = response.status_code
            if 200 <= status < 300:
                return "ok", None, str(status)
            detail = f"HTTP {status}: {response.text[:200]}"
            if status in (408, 425, 429) or status >= 500:
                return "retry", parse_retry_after(response.headers.get("Retry-After")), detail
            return "permanent", None, detail

    def _render(self, payload: dict[str, Any]) -> bytes:
        if self._fmt == "slack":
            return json.dumps({"text": slack_text(payload)}).encode()
        return json.dumps(payload, default=str).encode()


def strip_secrets(fields: dict[str, Any]) -> dict[str, Any]:
    """Drop, at any depth, every field whose name mentions a key, token, secret or password."""
    clean: dict[str, Any] = {}
    for name, value in fields.items():
        if any(word in str(name).lower() for word in _SECRET_WORDS):
            continue
        clean[name] = strip_secrets(value) if isinstance(value, dict) else value
    return clean


def duration_text(seconds: Any) -> str:
    """"12 min" (or "40 s" under a minute: tests shorten the 10 minutes) for a person to read."""
    s = float(seconds or 0)
    return f"{round(s / 60)} min" if s >= 60 else f"{round(s)} s"


def run_uploaded_text(where: str, folder: Any, extra: dict[str, Any]) -> str:
    """A run's line: its name, its samples by state and, briefly, the samples (popped from extra)."""
    counts = extra.pop("counts", None) or {}
    samples = extra.pop("samples", None) or []
    late = extra.pop("late", False)
    run = extra.pop("run", None) or folder
    told = ", ".join(f"{n} {state}" for state, n in counts.items()) or "no samples"
    names = "; ".join(f"{s.get('name')} {s.get('state')}" + (f" {s['sample_id']}" if s.get("sample_id") else "")
                      for s in samples[:SAMPLES_IN_LINE])
    more = f"; … {len(samples) - SAMPLES_IN_LINE} more" if len(samples) > SAMPLES_IN_LINE else ""
    head = (f":inbox_tray: {where}: run {run} — more samples ended after it was reported as uploaded"
            if late else f":white_check_mark: {where}: run {run} uploaded")
    return f"{head}: {told} ({folder}) — {names}{more}"


def slack_text(payload: dict[str, Any]) -> str:
    """One readable line for a person in a Slack channel."""
    kind = payload["event"]
    where = f"seqdrop {payload.get('version', __version__)}@{payload['host']}"
    extra = {k: v for k, v in payload.items() if k not in _ENVELOPE}
    path, error = extra.pop("path", None), extra.pop("error", None)
    if kind == "file_failed":
        line = f":x: {where}: upload failed for {path}"
    elif kind == "file_rejected":
        line = f":warning: {where}: file rejected {path}"
    elif kind == "uploads_paused":
        line = f":double_vertical_bar: {where}: uploads paused"
    elif kind == "uploads_resumed":
        line = f":arrow_forward: {where}: uploads resumed"
    elif kind == "queue_rebuilt":
        line = (f":rotating_light: {where}: the queue {path} was damaged and has been rebuilt from the audit "
                f"journal ({extra.pop('restored', 0)} uploads kept; the damaged file is kept as "
                f"{extra.pop('set_aside_as', None)}); nothing is uploaded twice: check the disk under it "
                f"(dmesg, SMART)")
    elif kind == "sample_late":
        line = (f":hourglass: {where}: {path} arrived after its sample {extra.pop('sample', None)} was uploaded: "
                f"sent as a sample of its own (flagged late)")
        error = None      # the line says it already
    elif kind == "watch_folder_missing":
        line = (f":file_folder: {where}: the watch folder {path} has been missing for "
                f"{duration_text(extra.pop('missing_s', 0))}; mount the share or create the folder: seqdrop "
                f"scans it when it appears")
    elif kind == "sample_partial":
        line = (f":scissors: {where}: sample {extra.pop('sample_id', None)} held only the start of {path}, "
                f"uploaded again whole as sample {extra.pop('whole_sample_id', None)}; delete the partial one "
                f"in One Codex")
        error = None      # the same words, as a sentence, for status and e-mail
    elif kind == "run_uploaded":
        line = run_uploaded_text(where, path, extra)
    else:  # daily_summary
        counts = extra.pop("counts", None) or {}
        summary = ", ".join(f"{n} {state}" for state, n in counts.items()) or "nothing to report"
        line = f":bar_chart: {where}: daily summary: {summary}"
    if error:
        line += f" — {error}"
    if extra:
        line += " (" + ", ".join(f"{k}={v}" for k, v in extra.items()) + ")"
    return " ".join(line.splitlines())
