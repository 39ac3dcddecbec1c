"""`seqdrop run`: the watch → settle → queue → upload service: wiring, the main loop, health, shutdown.

Rooms: the watcher (daemon/detection/watcher.py) turns events into hints; the tracker
(daemon/detection/tracker.py) decides seen → queued and returns what it queued and ended; the
workers (worker.py) claim and upload; the pause gate (pause.py) holds uploads while the key is
refused; startup.py checks (and if need be rebuilds) the queue before it is opened; health.py
watches every store verb (persistent storage errors: no watchdog ping, exit 1); audit.py writes
the audit journal's record of each version that ended, after the store's commit.

Threads: the watcher's observer (hints into a queue), the main loop (hints, settle checks,
rescans, health, sd_notify; it rings the workers' doorbell after the tracker's commits),
`upload.workers` workers, and while uploads are paused a short-lived prober (a probe may wait for
the network as long as the read timeout; the main loop must not). Signal handlers only set `stop`;
the main loop does the work. Shutdown order (written down, because it matters):
  1. stop claiming; in-flight POSTs abort at their next block; rows go back to `queued`
  2. stop the watcher
  3. join the workers (bounded: the process exits within 10 s of SIGTERM)
     and stop the live-progress publisher (its file is removed)
  4. tell systemd STOPPING=1; stop the status page and metrics, flush the webhook and e-mail side by
     side (observers.py; bounded)
  5. close the store (the lock file goes with it)
"""

from __future__ import annotations

import datetime as dt
import os
import queue
import threading
import time
from typing import Any

from daemon import __version__
from daemon.config import Settings, load_api_key
from daemon.detection.roots import MISSING_ALERT_S, WatchRoots
from daemon.detection.tracker import BATCH, Observed, Tracker
from daemon.detection.watcher import Matcher, Watcher, network_mount_type, scan
from daemon.errors import ConfigError
from daemon.operations.logs import register_secret
from daemon.operations.progress import META_KEY as PROGRESS_META
from daemon.operations.progress import Board, Publisher, progress_path
from daemon.queue.base import Store
from daemon.queue.journal import Journal, journal_path
from daemon.service.audit import AuditTrail
from daemon.service.health import StoreHealth, WatchedStore
from daemon.service.observers import Observers
from daemon.service.pause import PauseGate
from daemon.service.run_notice import RunNotices
from daemon.service.startup import Rebuilt, open_configured_queue
from daemon.service.worker import Doorbell, Worker
from daemon.upload.build import make_client, make_pipeline
from daemon.upload.client import OneCodexClient
from daemon.upload.pipeline import Pipeline
from daemon.upload.throttle import TokenBucket

HOUSEKEEPING_S = 5.0
WORKER_JOIN_S = 7.0      # how long shutdown waits for in-flight work (a hung confirm, a slow answer)
STOP_BUDGET_S = 9.0      # SIGTERM to exit: systemd and issue 3 allow 10 s
WAKE = ""                # a hint that is no path: wakes the main loop (see request_stop)
HAND_BACK_MAX_S = 60.0   # a row a worker could not hand back is due again after this (or max_backoff_s)
# The tests' way to shorten the 10 minutes a watch folder may be missing before anyone is told:
# the daemon runs as a subprocess there, and the 10 minutes are no setting a lab needs to change.
MISSING_ALERT_ENV = "SEQDROP_MISSING_ALERT_S"
EXIT_OK, EXIT_STORE_FAILED = 0, 1   # 1: systemd restarts us (Restart=on-failure), and start-up checks the queue


class Service:
    def __init__(self, settings: Settings, *, api_key: str, log: Any, store: Store | None = None,
                 rebuilt: Rebuilt | None = None, client: OneCodexClient | None = None,
                 notifier: Any = None) -> None:
        """store: the queue, opened by startup.open_queue (which says what it rebuilt, if anything);
        without one the service opens settings.queue.path that way itself.
        Raises ConfigError (before the queue is opened) for an SMTP or status-page password not found."""
        self.settings, self.log = settings, log
        self.observers = Observers(settings, log=log)
        self.stop = threading.Event()
        self._stop_requested_at: float | None = None
        self.exit_code = EXIT_OK
        if store is None:
            store, rebuilt = open_configured_queue(settings, log=log)
        self.rebuilt = rebuilt
        self.health = StoreHealth()
        self.store: Store = WatchedStore(store, self.health)   # type: ignore[assignment]
        self.audit = AuditTrail(store=self.store, journal=Journal(journal_path(store.path)), log=log,
                                on_failure=self.health.failed,
                                runs=RunNotices(store=self.store, emit=self.emit, log=log,
                                                roots=[f.path for f in settings.watch.folders]))
        self.store.on_sample = self.audit.sample_saved   # type: ignore[attr-defined]
        self.notifier = notifier
        self.throttle: TokenBucket | None = None
        self.hints: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.doorbell = Doorbell()
        self.gate = PauseGate(store=self.store, log=log, probe_interval_s=settings.api.probe_interval_s,
                              emit=self.emit, wake=self.doorbell.ring, stop=self.stop)
        # The gate hears of every API answer: a 2xx during a trial request ends a pause.
        self.client = client or make_client(settings, api_key, on_answer=self.gate.answered)
        if getattr(self.client, "on_answer", None) is None:   # a client handed in (tests) is told too
            self.client.on_answer = self.gate.answered
        self.matcher = Matcher(include=settings.watch.include, exclude=settings.watch.exclude,
                               max_depth=settings.watch.max_depth)
        self.tracker = Tracker(store=self.store, settle_s=settings.watch.settle_seconds, log=log,
                               roots=WatchRoots.of(settings.watch, settings.samples,
                                                   alert_after_s=_missing_alert_s(log)))
        self.watcher: Watcher | None = None
        self.pipeline: Pipeline | None = None
        self.workers: list[threading.Thread] = []
        self.board = Board()                          # live progress of the uploads in flight
        self.progress: Publisher | None = None

    # -- wiring helpers ------------------------------------------------------------------------
    def wake_workers(self) -> None:
        self.doorbell.ring()

    def emit(self, event: str, **fields: Any) -> None:
        """Pipeline, gate and service events → metrics, webhook and e-mail (none may block an upload)."""
        try:
            self.observers.emit(event, **fields)
        except Exception as e:  # observers must not break uploads
            self.log.warning("service.emit_failed", event_name=event, error=str(e))

    def _start_optional_parts(self) -> None:
        if self.settings.upload.max_mbps:
            self.throttle = TokenBucket.from_mbps(self.settings.upload.max_mbps)
        self.observers.start()

    def _throttle(self, n: int) -> None:
        if self.throttle is not None:
            self.throttle.consume(n, cancel=self.stop)

    def _start_progress(self) -> None:
        """Live progress for `seqdrop status` in other processes (daemon/operations/progress.py): the
        file's path into the queue's meta (once), then the publisher thread."""
        path = progress_path(self.store.path)
        self.store.set_meta(PROGRESS_META, path)
        self.progress = Publisher(self.board, path, queue_path=self.store.path, log=self.log)
        self.progress.start()

    def _warn_network_shares(self) -> None:
        for folder in self.settings.watch.folders:
            fstype = network_mount_type(folder.path)
            if fstype and not folder.polling:
                self.log.warning("watch.network_share_without_polling", path=folder.path, fstype=fstype,
                                 fix="network shares deliver no inotify events: set polling = true for "
                                     "this folder in [watch] paths")

    # -- run -----------------------------------------------------------------------------------
    def run(self) -> int:
        s = self.settings
        self.store.lock_exclusive()
        released = self.store.release_stale_claims()
        if released:
            self.log.info("queue.claims_released", count=released)
        self.gate.restore()
        self._start_optional_parts()
        if self.rebuilt is not None:
            self.emit("queue_rebuilt", path=self.store.path, **self.rebuilt.fields())
        self.pipeline = make_pipeline(s, store=self.store, client=self.client, log=self.log, stop=self.stop,
                                      throttle=self._throttle if self.throttle else None, emit=self.emit)
        self.pipeline.steps.watch = self.board.step
        self._start_progress()
        self._warn_network_shares()
        self.watcher = Watcher(list(s.watch.paths), matcher=self.matcher, on_hint=self.hints.put,
                               on_root_state=self._root_state,
                               polling={f.path: f.polling for f in s.watch.folders},
                               poll_interval_s=s.watch.poll_interval_s, log=self.log)
        self.tracker.writing = self.watcher.writing    # close events: a file held open is not finished
        self.watcher.start()          # events first, then the scan: nothing falls between them
        self.tracker.resume()
        started = time.monotonic()
        files = self._full_scan()
        self.log.info("service.ready", version=__version__, files_seen=files,
                      scan_s=round(time.monotonic() - started, 2), workers=s.upload.workers,
                      folders=list(s.watch.paths))
        for n in range(s.upload.workers):
            self._start_worker(n)
        if self.notifier is not None:
            self.notifier.ready()
            self.notifier.start_watchdog(self.healthy)
        try:
            self._main_loop()
        finally:
            self._shutdown()
        return self.exit_code

    def _main_loop(self) -> None:
        s = self.settings
        next_rescan = time.monotonic() + s.watch.rescan_interval_s
        next_housekeeping = 0.0
        next_summary = _next_daily(s.notify.daily_summary_at)
        while not self.stop.is_set():
            if self._store_failed():
                return
            try:
                next_rescan, next_housekeeping, next_summary = self._loop_once(
                    next_rescan, next_housekeeping, next_summary)
            except Exception:
                # A bug or a passing SQLite/filesystem error must not stop the watching: log, breathe, go on.
                self.log.exception("service.loop_error")
                self.stop.wait(1.0)

    def _store_failed(self) -> bool:
        """The store is damaged or has recorded nothing for too long: stop, and exit non-zero so that
        systemd restarts the daemon (whose start-up checks, and if need be rebuilds, the queue)."""
        problem = self.health.problem()
        if problem is None:
            return False
        self.log.error("service.queue_failed", problem=problem, path=self.store.path,
                       fix="check the disk under the queue (dmesg, df); systemd restarts seqdrop, which "
                           "checks the queue and rebuilds it from the audit journal if it is damaged")
        self.exit_code = EXIT_STORE_FAILED
        self.stop.set()
        return True

    def _loop_once(self, next_rescan: float, next_housekeeping: float,
                   next_summary: float | None) -> tuple[float, float, float | None]:
        s = self.settings
        self._observe_hints()
        self._committed(self.tracker.run_due())
        now = time.monotonic()
        if now >= next_rescan:
            self._full_scan()
            next_rescan = now + s.watch.rescan_interval_s
        if now >= next_housekeeping:
            self._housekeeping()
            next_housekeeping = now + HOUSEKEEPING_S
        if self.gate.start_probe():
            threading.Thread(target=self.gate.probe, args=(self._probe_key,), name="seqdrop-prober",
                             daemon=True).start()
        if next_summary is not None and time.time() >= next_summary:
            self.emit("daily_summary", counts=self.store.counts(),
                      done_last_24h=self.store.done_since(time.time() - 86400))
            next_summary = _next_daily(s.notify.daily_summary_at)
        return next_rescan, next_housekeeping, next_summary

    def _observe_hints(self) -> None:
        """Wait for hints until the next settle check is due (≤ 1 s), then observe every waiting hint
        once (a path hinted many times is looked at once), a batch per commit; the workers are woken
        after each commit that queued something."""
        due = self.tracker.next_due()
        timeout = 1.0 if due is None else min(1.0, max(0.0, due - time.monotonic()))  # tracker: monotonic
        # The drain always ends in queue.Empty, so the batch is handled after the try, not in an else.
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
            self._committed(self.tracker.observe_batch([(path, None) for path in paths[start:start + BATCH]]))

    def _full_scan(self) -> int:
        found = self.tracker.full_scan(self.matcher, stop=self.stop)
        self._committed(found)
        return found.files

    def _committed(self, found: Observed) -> None:
        """After the tracker's commit: journal the rows it ended, wake the workers if it queued any,
        tell a person of each late sample (design.md: flagged in status and in a notification)."""
        if found.ended:
            self.audit.ended(found.ended)
        if found.queued:
            self.wake_workers()
        for sample_id in found.late:
            sample = self.store.sample(sample_id)
            if sample is not None and sample.files:
                self.emit("sample_late", path=sample.files[0].path, sample=sample.name, run=sample.run,
                          error=" ".join(sample.warnings) or None)

    def _root_state(self, root: str, present: bool) -> None:
        if present:
            self.log.info("watch.root_back", path=root)
            for path, _st in scan(root, self.matcher):
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
        for root, missing_s in self.tracker.roots.missing_too_long():   # once per episode
            self.log.warning("watch.root_still_missing", path=root, missing_s=round(missing_s),
                             fix="mount the share or create the folder; seqdrop scans it when it appears")
            self.emit("watch_folder_missing", path=root, missing_s=round(missing_s))
        metrics = self.observers.metrics is not None
        if not metrics and (self.notifier is None or not getattr(self.notifier, "enabled", True)):
            return   # nobody to tell: idle costs nothing (counting 100k rows every 5 s is not free)
        counts = self.store.counts()
        if metrics:
            missing = set(self.tracker.roots.missing())
            self.observers.publish(counts=counts, paused=self.gate.reason is not None,
                                   watcher_healthy=self.watcher is not None and self.watcher.is_alive(),
                                   folders_present={p: p not in missing for p in self.tracker.roots.paths},
                                   oldest_waiting=self.store.oldest_waiting_since)
        if self.notifier is not None:
            self.notifier.status(self.status_line(counts))

    def status_line(self, counts: dict[str, int]) -> str:
        midnight = dt.datetime.combine(dt.date.today(), dt.time()).timestamp()
        text = (f"queued {counts['queued'] + counts['seen']}, uploading {counts['uploading']}, "
                f"done today {self.store.done_since(midnight)}, failed {counts['failed']}, "
                f"rejected {counts['rejected']}")
        if reason := self.gate.reason:
            text = f"PAUSED ({reason}); " + text
        if missing := self.tracker.roots.missing():
            text = f"WAITING for missing watch folder(s) {', '.join(missing)}; " + text
        return text

    def healthy(self) -> bool:
        """What the watchdog thread asks before each ping: the observer and the workers alive, and the
        queue's storage working (health.py)."""
        watcher_ok = self.watcher is not None and self.watcher.is_alive()
        return watcher_ok and all(t.is_alive() for t in self.workers) and self.health.healthy()

    # -- the prober's question -------------------------------------------------------------------
    def _probe_key(self) -> None:
        """In the prober thread (PauseGate.probe judges the outcome): one authenticated request,
        with the key read again from its source first."""
        self._reload_key()
        self.client.probe()

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

    # -- workers -------------------------------------------------------------------------------
    def _start_worker(self, n: int) -> None:
        assert self.pipeline is not None
        worker = Worker(f"worker-{n}", store=self.store, pipeline=self.pipeline, gate=self.gate,
                        doorbell=self.doorbell, stop=self.stop, log=self.log, on_ended=self.audit.ended,
                        hand_back_delay_s=min(HAND_BACK_MAX_S, self.settings.upload.max_backoff_s),
                        board=self.board)
        t = threading.Thread(target=worker.run, name=f"seqdrop-worker-{n}", daemon=True)
        if n < len(self.workers):
            self.workers[n] = t
        else:
            self.workers.append(t)
        t.start()

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
        if self.progress is not None:
            self.progress.close()
        if self.pipeline is not None and not stuck:
            self.pipeline.close()     # multipart uploads waiting for their next attempt: no network
        if self.notifier is not None:
            self.notifier.close()
        self.observers.close(budget_end)
        if not stuck:
            try:
                self.store.close()
            except Exception as e:    # a failing disk: the process exits all the same
                self.log.warning("service.store_close_failed", error=repr(e))
        self.log.info("service.stopped", exit_code=self.exit_code)


def _missing_alert_s(log: Any) -> float:
    """How long a watch folder may be missing before anyone is told: MISSING_ALERT_S, unless the
    environment (a test) says otherwise."""
    text = os.environ.get(MISSING_ALERT_ENV)
    if not text:
        return MISSING_ALERT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        log.warning("watch.missing_alert_ignored", variable=MISSING_ALERT_ENV, value=text,
                    fix=f"a number of seconds above 0, or unset it for the default {MISSING_ALERT_S:g} s")
        return MISSING_ALERT_S
    return value


def _next_daily(hhmm: str | None) -> float | None:
    if not hhmm:
        return None
    h, m = (int(x) for x in hhmm.split(":"))
    now = dt.datetime.now()
    at = now.replace(hour=h, minute=m, second=0, microsecond=0)
    if at <= now:
        at += dt.timedelta(days=1)
    return at.timestamp()
