"""`seqdrop run`: the watch → settle → queue → upload service.

Threads: the watcher's observer (hints into a queue), the main loop (hints, settle
checks, rescans, health, sd_notify), `upload.workers` workers that claim rows from
the store, and while uploads are paused a short-lived prober (a probe may wait for
the network as long as the read timeout; the main loop must not). Signal handlers only set `stop`; the main loop
does the work. Shutdown order (written down, because it matters):
  1. stop claiming; in-flight POSTs abort at their next block; rows go back to `queued`
  2. stop the watcher
  3. join the workers (bounded: the process exits within 10 s of SIGTERM)
  4. tell systemd STOPPING=1; stop metrics and flush notifications (bounded)
  5. close the store (the lock file goes with it)
"""

from __future__ import annotations

import datetime as dt
import os
import queue
import threading
import time
from typing import Any

from daemon.config import Settings, load_api_key
from daemon.detection.markers import MarkerRule
from daemon.detection.tracker import BATCH, Tracker
from daemon.detection.watcher import Matcher, Watcher, network_mount_type, scan
from daemon.errors import AuthError, ConfigError, Permanent
from daemon.operations.logs import register_secret
from daemon.queue.base import Identity, Store
from daemon.queue.sqlite import SqliteStore
from daemon.upload.build import make_client, make_pipeline
from daemon.upload.client import OneCodexClient
from daemon.upload.pipeline import Pipeline

HOUSEKEEPING_S = 5.0
WORKER_JOIN_S = 7.0      # how long shutdown waits for in-flight work (a hung confirm, a slow answer)
STOP_BUDGET_S = 9.0      # SIGTERM to exit: systemd and issue 3 allow 10 s
WAKE = ""                # a hint that is no path: wakes the main loop (see request_stop)
STORE_ERROR_WAIT_S = 2.0 # a worker whose queue write failed (disk full) tries again after this
FIRST_PROBE_S = 15.0     # a paused daemon asks again after 15 s, then 30, 60 ... up to api.probe_interval_s,
                         # so a short outage of the key (a 402 while billing is fixed) costs seconds, not minutes


class Service:
    def __init__(self, settings: Settings, *, api_key: str, log: Any, store: Store | None = None,
                 client: OneCodexClient | None = None, notifier: Any = None) -> None:
        self.settings, self.log = settings, log
        self.stop = threading.Event()
        self._stop_requested_at: float | None = None
        self.store = store or SqliteStore(settings.queue.path)
        self.client = client or make_client(settings, api_key)
        self.notifier = notifier
        self.metrics: Any = None
        self.webhook: Any = None
        self.throttle: Any = None
        self.hints: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._wake = threading.Condition()
        self._generation = 0
        self.paused_reason: str | None = None
        self._next_probe = 0.0
        self._probe_delay_s = 0.0
        self._trial = False     # set by the prober: one worker may try one file (design: "the next real request")
        self._trial_lock = threading.Lock()
        self._prober: threading.Thread | None = None
        self.workers: list[threading.Thread] = []
        # Innermost folder first: a watch entry nested in another (its own marker) decides for its files.
        self.rules = {f.path: MarkerRule.parse(f.marker, f.path)
                      for f in sorted(settings.watch.folders, key=lambda f: len(f.path), reverse=True)}
        self.matcher = Matcher(include=settings.watch.include, exclude=settings.watch.exclude)
        self.tracker = Tracker(store=self.store, settle_s=settings.watch.settle_seconds, log=log,
                               marker_for=self._marker_for, on_queued=self.wake_workers,
                               root_gone=self._root_gone)
        self.watcher: Watcher | None = None
        self.pipeline: Pipeline | None = None

    # -- wiring helpers ------------------------------------------------------------------------
    def _marker_for(self, path: str) -> str | None:
        for root, rule in self.rules.items():
            if path == root or path.startswith(root.rstrip("/") + "/"):
                return rule.waiting_for(path)
        return None

    def _root_gone(self, path: str) -> bool:
        """Is the watch folder holding path missing as a whole (a share unmounted)?"""
        for root in sorted(self.settings.watch.paths, key=len, reverse=True):   # innermost first
            if path.startswith(root.rstrip("/") + "/"):
                return not os.path.isdir(root)
        return False

    def wake_workers(self) -> None:
        with self._wake:
            self._generation += 1
            self._wake.notify_all()

    def emit(self, event: str, **fields: Any) -> None:
        """Pipeline events → metrics and webhook (neither may ever block an upload)."""
        try:
            if self.metrics is not None:
                if event == "file_done":
                    self.metrics.file_uploaded(fields.get("size", 0), fields.get("seconds", 0.0))
                elif event == "retry":
                    self.metrics.retry(fields.get("reason", "other"))
                elif event == "file_failed":
                    self.metrics.file_failed()
                elif event == "file_rejected":
                    self.metrics.file_rejected()
            if self.webhook is not None and event in ("file_failed", "file_rejected", "uploads_paused",
                                                      "uploads_resumed", "daily_summary"):
                self.webhook.event(event, **fields)
        except Exception as e:  # observers must not break uploads
            self.log.warning("service.emit_failed", event_name=event, error=str(e))

    def _start_optional_parts(self) -> None:
        s = self.settings
        if s.upload.max_mbps:
            from daemon.upload.throttle import TokenBucket
            self.throttle = TokenBucket.from_mbps(s.upload.max_mbps)
        if s.metrics.enabled:
            from daemon.config import parse_listen
            from daemon.operations.metrics import Metrics
            self.metrics = Metrics()
            host, port = parse_listen(s.metrics.listen)
            bound = self.metrics.start_server(host, port)
            self.log.info("metrics.listening", address=f"{host}:{bound}")
        if s.notify.webhook_url:
            from daemon.operations.webhook import WebhookNotifier
            self.webhook = WebhookNotifier(s.notify.webhook_url, fmt=s.notify.format, log=self.log)
            self.webhook.start()

    def _throttle(self, n: int) -> None:
        if self.throttle is not None:
            self.throttle.consume(n, cancel=self.stop)

    # -- run -----------------------------------------------------------------------------------
    def run(self) -> int:
        s = self.settings
        self.store.lock_exclusive()
        released = self.store.release_stale_claims()
        if released:
            self.log.info("queue.claims_released", count=released)
        paused = self.store.get_meta("paused")
        if paused:
            self.paused_reason = paused.get("reason", "paused")
            self.log.warning("uploads.still_paused", reason=self.paused_reason)
        self._start_optional_parts()
        self.pipeline = make_pipeline(s, store=self.store, client=self.client, log=self.log, stop=self.stop,
                                      throttle=self._throttle if self.throttle else None, emit=self.emit)
        for folder in s.watch.folders:
            fstype = network_mount_type(folder.path)
            if fstype and not folder.polling:
                self.log.warning("watch.network_share_without_polling", path=folder.path, fstype=fstype,
                                 fix="network shares deliver no inotify events: set polling = true for "
                                     "this folder in [watch] paths")
        self.watcher = Watcher(list(s.watch.paths), matcher=self.matcher, on_hint=self.hints.put,
                               on_root_state=self._root_state,
                               polling={f.path: f.polling for f in s.watch.folders},
                               poll_interval_s=s.watch.poll_interval_s, log=self.log)
        self.watcher.start()          # events first, then the scan: nothing falls between them
        self.tracker.resume()
        started = time.monotonic()
        files = self._full_scan()
        self.log.info("service.ready", files_seen=files, scan_s=round(time.monotonic() - started, 2),
                      workers=s.upload.workers, folders=list(s.watch.paths))
        for n in range(s.upload.workers):
            self._start_worker(n)
        if self.notifier is not None:
            self.notifier.ready()
            self.notifier.start_watchdog(self.healthy)
        try:
            self._main_loop()
        finally:
            self._shutdown()
        return 0

    def _main_loop(self) -> None:
        s = self.settings
        next_rescan = time.monotonic() + s.watch.rescan_interval_s
        next_housekeeping = 0.0
        next_summary = _next_daily(s.notify.daily_summary_at)
        while not self.stop.is_set():
            try:
                next_rescan, next_housekeeping, next_summary = self._loop_once(
                    next_rescan, next_housekeeping, next_summary)
            except Exception:
                # A bug or a passing SQLite/filesystem error must not stop the watching: log, breathe, go on.
                self.log.exception("service.loop_error")
                self.stop.wait(1.0)

    def _loop_once(self, next_rescan: float, next_housekeeping: float,
                   next_summary: float | None) -> tuple[float, float, float | None]:
        s = self.settings
        due = self.tracker.next_due()
        timeout = 1.0 if due is None else min(1.0, max(0.0, due - time.monotonic()))  # tracker: monotonic
        # Drain every waiting hint (a path hinted many times is looked at once). The drain
        # always ends in queue.Empty, so the batch is handled after the try, not in an else.
        batch: set[str] = set()
        try:
            batch.add(self.hints.get(timeout=timeout))
            while True:
                batch.add(self.hints.get_nowait())
        except queue.Empty:
            pass
        batch.discard(WAKE)
        paths = sorted(batch)
        for start in range(0, len(paths), BATCH):
            if self.stop.is_set():
                break
            self.tracker.observe_batch([(path, None) for path in paths[start:start + BATCH]])
        self.tracker.run_due()
        now = time.monotonic()
        if now >= next_rescan:
            self._full_scan()
            next_rescan = now + s.watch.rescan_interval_s
        if now >= next_housekeeping:
            self._housekeeping()
            next_housekeeping = now + HOUSEKEEPING_S
        if self.paused_reason and time.time() >= self._next_probe and not self._probing():
            self._prober = threading.Thread(target=self._probe, name="seqdrop-prober", daemon=True)
            self._prober.start()
        if next_summary is not None and time.time() >= next_summary:
            self.emit("daily_summary", counts=self.store.counts(),
                      done_last_24h=self.store.done_since(time.time() - 86400))
            next_summary = _next_daily(s.notify.daily_summary_at)
        return next_rescan, next_housekeeping, next_summary

    def _full_scan(self) -> int:
        n = 0
        missing = []
        for root in self.settings.watch.paths:
            if not os.path.isdir(root):
                missing.append(root.rstrip("/") + "/")
                continue
            folder, settled = None, {}
            pending: list[tuple[str, os.stat_result | None]] = []
            for path, st in scan(root, self.matcher):
                if self.stop.is_set():
                    return n
                n += 1
                if os.path.dirname(path) != folder:      # scan yields one folder's files together
                    folder = os.path.dirname(path)
                    settled = self._settled_in(folder)
                if settled.get(path) == Identity.of(st):
                    continue       # uploaded (or refused) and unchanged since: the tracker would do nothing
                pending.append((path, st))
                if len(pending) >= BATCH:
                    self.tracker.observe_batch(pending)
                    pending = []
            self.tracker.observe_batch(pending)
        # Deletions that no event told us about. Not under a root that is gone as a whole: that is
        # a share unmounted (or not yet mounted), not files deleted; they are looked at on its return.
        gone = [(row.path, None) for row in self.store.rows_in("seen", "queued")
                if not row.path.startswith(tuple(missing)) and not os.path.exists(row.path)]
        for start in range(0, len(gone), BATCH):
            self.tracker.observe_batch(gone[start:start + BATCH])
        return n

    def _settled_in(self, folder: str) -> dict:
        try:
            return self.store.settled_in(folder)
        except Exception:   # a folder name that is not UTF-8, a passing SQLite error: look at each file
            return {}

    def _root_state(self, root: str, present: bool) -> None:
        if present:
            self.log.info("watch.root_back", path=root)
            for path, st in scan(root, self.matcher):
                self.hints.put(path)
        else:
            self.log.warning("watch.root_missing", path=root,
                             fix="remount the share or recreate the folder; seqdrop waits and rescans it")

    def _housekeeping(self) -> None:
        if self.watcher is not None and self.watcher.ensure_alive():
            self.log.warning("watch.observer_restarted")
        for n, t in enumerate(self.workers):
            if not t.is_alive() and not self.stop.is_set():
                self.log.error("worker.died", worker=t.name)
                self._start_worker(n)
        if self.metrics is None and (self.notifier is None or not getattr(self.notifier, "enabled", True)):
            return   # nobody to tell: idle costs nothing (counting 100k rows every 5 s is not free)
        counts = self.store.counts()
        if self.metrics is not None:
            self.metrics.set_files_by_state(counts)
            self.metrics.set_paused(self.paused_reason is not None)
            self.metrics.set_watcher_healthy(self.watcher is not None and self.watcher.is_alive())
        if self.notifier is not None:
            self.notifier.status(self.status_line(counts))

    def status_line(self, counts: dict[str, int]) -> str:
        midnight = dt.datetime.combine(dt.date.today(), dt.time()).timestamp()
        text = (f"queued {counts['queued'] + counts['seen']}, uploading {counts['uploading']}, "
                f"done today {self.store.done_since(midnight)}, failed {counts['failed']}, "
                f"rejected {counts['rejected']}")
        if self.paused_reason:
            text = f"PAUSED ({self.paused_reason}); " + text
        return text

    def healthy(self) -> bool:
        watcher_ok = self.watcher is not None and self.watcher.is_alive()
        return watcher_ok and all(t.is_alive() for t in self.workers)

    # -- pause / resume ------------------------------------------------------------------------
    def _pause(self, reason: str) -> None:
        if self.paused_reason is None:
            self.paused_reason = reason
            try:
                self.store.set_meta("paused", {"reason": reason, "since": time.time()})
            except Exception as e:   # the pause holds in memory; status just cannot show it
                self.log.error("uploads.pause_not_recorded", error=repr(e))
            self.log.error("uploads.paused", reason=reason,
                           fix="check the API key (seqdrop check); uploads resume by themselves once it works")
            self.emit("uploads_paused", reason=reason)
            self._probe_delay_s = 0.0
        self._schedule_probe()

    def _schedule_probe(self) -> None:
        """The next probe: FIRST_PROBE_S after the pause, then twice as long each time, capped at
        api.probe_interval_s (design.md: at least every 5 minutes)."""
        cap = self.settings.api.probe_interval_s
        self._probe_delay_s = min(cap, max(FIRST_PROBE_S, self._probe_delay_s * 2))
        self._next_probe = time.time() + self._probe_delay_s

    def _probing(self) -> bool:
        return self._prober is not None and self._prober.is_alive()

    def _probe(self) -> None:
        """One authenticated request (in the prober thread): resume uploads if the key works again."""
        started = time.monotonic()
        self._reload_key()
        try:
            self.client.probe()
        except AuthError as e:
            self.paused_reason = str(e)
            self._schedule_probe()
            self.log.warning("uploads.still_paused", reason=str(e))
            return
        except Permanent as e:
            # This API has no such endpoint (an older server, a proxy, an emulator): design.md's other
            # probe, "the next real request", decides. One worker tries one file; an AuthError there
            # keeps the pause (quietly), a 2xx from the API ends it (_worker).
            self.log.info("uploads.probe_by_request", error=str(e))
            self._schedule_probe()
            with self._trial_lock:
                self._trial = True
            self.wake_workers()
            return
        except Exception as e:
            if getattr(self.client, "last_api_ok", 0.0) < started:  # Transient: ask again soon
                self._next_probe = time.time() + min(30.0, self.settings.api.probe_interval_s)
                self.log.warning("uploads.probe_failed", error=str(e))
                return
            # a 2xx that was not JSON: the key was accepted, which is all the probe asks
        self._resume()

    def _reload_key(self) -> None:
        """Read the key's source again (api_key_file, the systemd credential): a key replaced there
        while uploads are paused is used without a restart. The environment variable cannot change."""
        if not isinstance(self.client, OneCodexClient):
            return
        try:
            key = load_api_key(self.settings)
        except ConfigError as e:
            self.log.warning("uploads.key_unreadable", error=str(e), fix=e.fix)
            return
        if not self.client.uses_key(key):
            register_secret(key)
            self.client.set_api_key(key)
            self.log.info("uploads.key_reloaded")

    def _take_trial(self) -> bool:
        with self._trial_lock:
            trial, self._trial = self._trial, False
            return trial

    def _resume(self) -> None:
        if self.stop.is_set() or self.paused_reason is None:
            return   # shutting down: the store may be closed; the next start probes again
        self.log.info("uploads.resumed", paused_reason=self.paused_reason)
        self.emit("uploads_resumed", reason=self.paused_reason)
        self.paused_reason = None
        self.store.set_meta("paused", None)
        self.wake_workers()

    # -- workers -------------------------------------------------------------------------------
    def _start_worker(self, n: int) -> None:
        t = threading.Thread(target=self._worker, args=(f"worker-{n}",), name=f"seqdrop-worker-{n}", daemon=True)
        if n < len(self.workers):
            self.workers[n] = t
        else:
            self.workers.append(t)
        t.start()

    def _worker(self, name: str) -> None:
        assert self.pipeline is not None
        claim_id = f"{os.getpid()}:{name}"
        # A claimed row that could not be handed back yet (the store failed too, e.g. a full disk):
        # it is handed back before anything else is claimed, so it cannot stay 'uploading' for good.
        held: tuple[int, str] | None = None
        while not self.stop.is_set():
            try:
                if held is not None:
                    self.store.reschedule(held[0], delay_s=min(60.0, self.settings.upload.max_backoff_s),
                                          error=held[1])
                    held = None
                trial = bool(self.paused_reason) and self._take_trial()
                if self.paused_reason and not trial:
                    self.stop.wait(1.0)
                    continue
                generation = self._generation
                row = self.store.claim_next(claim_id)
                if row is None:
                    if trial:   # nothing to try the key with: the prober asks again later
                        continue
                    # Ask the store before taking _wake, never while holding it: the tracker calls
                    # wake_workers() inside a store batch (store lock, then _wake), so the other order
                    # here would deadlock the main loop and this worker for good.
                    wait_s = self._idle_wait()
                    with self._wake:
                        if generation == self._generation:
                            self._wake.wait(timeout=wait_s)
                    continue
            except Exception as e:  # the queue itself failed: wait and try again, never die
                self.log.error("worker.store_error", worker=name, error=repr(e),
                               fix=f"check the disk and permissions of {self.settings.queue.path}")
                self.stop.wait(STORE_ERROR_WAIT_S)
                continue
            started = time.monotonic()
            try:
                self.pipeline.process(row)
                if trial and getattr(self.client, "last_api_ok", 0.0) >= started:
                    self._resume()   # the trial request was accepted: the key works again
            except AuthError as e:
                self._pause(str(e))
            except Exception as e:  # a bug, or the store failing mid-upload: keep the row and the worker
                self.log.exception("worker.internal_error", path=row.path)
                held = (row.id, f"internal error: {e!r}; will try again")

    def _idle_wait(self) -> float:
        due = self.store.next_due_at()
        if due is None:
            return 1.0
        return min(1.0, max(0.05, due - time.time()))

    # -- shutdown ------------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Called from the signal handler: set the flag, and wake the main loop now rather than at its
        next tick (SimpleQueue.put is safe in a signal handler; the Condition's lock is re-entrant)."""
        self._stop_requested_at = time.monotonic()
        self.stop.set()
        self.hints.put(WAKE)
        self.wake_workers()

    def _shutdown(self) -> None:
        self.log.info("service.stopping")
        self.stop.set()
        self.wake_workers()
        if self.notifier is not None:
            self.notifier.stopping()
        if self.watcher is not None:
            self.watcher.stop()
        # Every wait below comes out of one budget, counted from the signal: the process must be
        # gone within 10 s of SIGTERM even with a worker stuck in a read and a webhook that hangs.
        started = self._stop_requested_at or time.monotonic()
        budget_end = started + STOP_BUDGET_S
        deadline = min(started + WORKER_JOIN_S, budget_end)
        for t in self.workers:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in self.workers if t.is_alive()]
        if stuck:
            self.log.warning("service.workers_still_busy", workers=stuck,
                             note="their rows are released at the next start")
        if self.pipeline is not None and not stuck:
            self.pipeline.close()     # multipart uploads waiting for their next attempt: no network
        if self.notifier is not None:
            self.notifier.close()
        if self.metrics is not None:
            self.metrics.stop_server(timeout_s=max(0.1, min(1.0, budget_end - time.monotonic())))
        if self.webhook is not None:
            # close() may join its thread for a second past the timeout given: keep that in the budget.
            self.webhook.close(timeout_s=max(0.1, min(2.0, budget_end - time.monotonic() - 1.0)))
        if not stuck:
            self.store.close()
        self.log.info("service.stopped")


def _next_daily(hhmm: str | None) -> float | None:
    if not hhmm:
        return None
    h, m = (int(x) for x in hhmm.split(":"))
    now = dt.datetime.now()
    at = now.replace(hour=h, minute=m, second=0, microsecond=0)
    if at <= now:
        at += dt.timedelta(days=1)
    return at.timestamp()
