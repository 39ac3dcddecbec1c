"""The parts that are told what happens and never decide anything: metrics, webhook, e-mail, status page.

Each is optional (its table in the config turns it on) and none may hold up an upload: the webhook
and the e-mail notifier queue an event and return, the metrics are counters in memory, the status
page reads the queue over its own read-only connection. They are built before the service runs (a
missing SMTP or status-page password is a ConfigError, exit 2, before anything is uploaded), started
once the queue is open, and closed together within what is left of the shutdown budget.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from daemon import __version__
from daemon.config import Settings, parse_listen
from daemon.operations.email import EmailNotifier, build_email_notifier
from daemon.operations.metrics import Metrics
from daemon.operations.statuspage import StatusPage, build_status_page
from daemon.operations.webhook import KINDS, WebhookNotifier

NOTIFIED_EVENTS = KINDS       # what goes to a person (webhook, e-mail); the rest only counts
CLOSE_JOIN_SLACK_S = 1.0      # a notifier's close() may join its thread this long past its timeout
CLOSE_MAX_S = 2.0             # the longest a notifier may spend delivering what is left at shutdown


class Observers:
    def __init__(self, settings: Settings, *, log: Any) -> None:
        self.settings, self.log = settings, log
        self.metrics: Metrics | None = None
        self.webhook: WebhookNotifier | None = None
        self.email: EmailNotifier | None = build_email_notifier(settings.notify, source=settings.source, log=log)
        self.status_page: StatusPage | None = build_status_page(settings, log=log)

    def start(self) -> None:
        s = self.settings
        if s.metrics.enabled:
            self.metrics = Metrics(version=__version__)
            host, port = parse_listen(s.metrics.listen)
            bound = self.metrics.start_server(host, port)
            self.log.info("metrics.listening", address=f"{host}:{bound}")
        if s.notify.webhook_url:
            self.webhook = WebhookNotifier(s.notify.webhook_url, fmt=s.notify.format, log=self.log)
            self.webhook.start()
        if self.email is not None:
            self.email.start()
            self.log.info("email.enabled", recipients=len(s.notify.email_to), server=s.notify.email_smtp_host)
        if self.status_page is not None:
            self.status_page.start()      # logs status_page.listening with its URL

    def emit(self, event: str, **fields: Any) -> None:
        """Count the event; tell a person (webhook, e-mail) if it is one of theirs."""
        if self.metrics is not None:
            if event == "file_done":
                self.metrics.file_uploaded(fields.get("size", 0), fields.get("seconds", 0.0))
            elif event == "retry":
                self.metrics.retry(fields.get("reason", "other"))
            elif event == "file_failed":
                self.metrics.file_failed()
            elif event == "file_rejected":
                self.metrics.file_rejected()
        if event not in NOTIFIED_EVENTS:
            return
        for notifier in (self.webhook, self.email):
            if notifier is not None:
                notifier.event(event, **fields)

    def publish(self, *, counts: Mapping[str, int], paused: bool, watcher_healthy: bool,
                folders_present: Mapping[str, bool], oldest_waiting: Callable[[], float | None]) -> None:
        """The housekeeping's gauges (oldest_waiting: asked only when there are metrics to set)."""
        if self.metrics is None:
            return
        self.metrics.set_files_by_state(counts)
        self.metrics.set_paused(paused)
        self.metrics.set_watcher_healthy(watcher_healthy)
        self.metrics.set_watch_folders_present(folders_present)
        self.metrics.set_oldest_waiting(oldest_waiting())

    def close(self, budget_end: float) -> None:
        """Stop the page and the metrics, then let both notifiers deliver what they still hold, side by
        side, until budget_end (time.monotonic): one slow mail server must not eat the webhook's time."""
        if self.status_page is not None:
            self.status_page.stop(timeout_s=_left(budget_end, 1.0))
        if self.metrics is not None:
            self.metrics.stop_server(timeout_s=_left(budget_end, 1.0))
        closers = [threading.Thread(target=n.close, name=f"seqdrop-close-{type(n).__name__}", daemon=True,
                                    kwargs={"timeout_s": _left(budget_end - CLOSE_JOIN_SLACK_S, CLOSE_MAX_S)})
                   for n in (self.webhook, self.email) if n is not None]
        for t in closers:
            t.start()
        for t in closers:
            t.join(timeout=_left(budget_end, CLOSE_MAX_S + CLOSE_JOIN_SLACK_S))
        if any(t.is_alive() for t in closers):
            self.log.warning("notify.close_overran", note="events still queued are dropped at exit")


def _left(end: float, at_most_s: float) -> float:
    """The time left until end (time.monotonic), at least 0.1 s and at most at_most_s."""
    return max(0.1, min(at_most_s, end - time.monotonic()))
