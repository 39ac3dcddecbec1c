"""`seqdrop upload FILE|DIR...`: the daemon's pipeline, run once over named files and folders.

A private temporary queue (not the daemon's) holds the files, so every step is
the daemon's own code path: validation, init → POST → confirm, retries, the
policy-expiry dance. A progress bar on a terminal; periodic `upload.progress` log
events otherwise. Exit 0 only if every file was confirmed (now, or before: see below).

The daemon's queue (the config's queue.path, opened read-only) is consulted first: a file version it
already confirmed (the same path, size and mtime, or the same device, inode, size and mtime at
another path) is skipped with its sample id, and so is one the daemon is uploading now; `--force`
sends them anyway. A folder stands for its matching files, found as the daemon's scan finds them
(the config's patterns, recursively, hidden and temporary names left out).

The files become samples as the daemon assembles them (daemon/detection/assembler.py, design.md
"Samples"): R1+R2 pairs and lanes by name, per folder and with the config's [samples] settings, but
without waiting — every file given is finished, so an R1 given without its R2 goes single-end at once
(with the warning). Index reads are skipped (not a failure). `--no-pairing` sends each file alone.
Each sample is uploaded through the pipeline by its lead file; its other files' lines follow it.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import tempfile
import threading
import time
from typing import Any

from tqdm import tqdm

from daemon.config import Settings
from daemon.detection.assembler import IGNORED_FLAG, Assembler
from daemon.detection.roots import WatchRoots
from daemon.detection.watcher import Matcher, scan
from daemon.errors import AuthError, ConfigError
from daemon.operations import logs
from daemon.queue.base import FileRow, Identity
from daemon.queue.sqlite import SqliteStore
from daemon.upload.build import make_client, make_pipeline
from daemon.upload.client import OneCodexClient
from daemon.upload.pipeline import Pipeline
from daemon.upload.throttle import TokenBucket

PROGRESS_LOG_S = 5.0
EXIT_INTERRUPTED = 1     # design.md: `upload` exits 0 only if every file was confirmed, 1 otherwise (also Ctrl-C)
IN_PROGRESS = ("seen", "queued", "uploading")
# The pipeline's log events whose words the outcome line of each file says already (_report).
REPORTED_EVENTS = frozenset({"file.rejected", "file.failed"})


class _Progress:
    """tqdm on a terminal, a structured log line every few seconds elsewhere."""

    def __init__(self, path: str, size: int, log: Any) -> None:
        self.path, self.size, self.log = path, size, log
        self.done = 0
        self.started = self.last_log = time.monotonic()
        self.bar = None
        if sys.stderr.isatty():
            self.bar = tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024,
                            desc=os.path.basename(path)[:40], file=sys.stderr, leave=True)

    def __call__(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        if now - self.last_log >= PROGRESS_LOG_S:
            self.last_log = now
            rate = self.done / max(now - self.started, 1e-6)
            self.log.info("upload.progress", path=self.path, bytes=self.done, total=self.size,
                          mb_s=round(rate / 1e6, 1),
                          eta_s=round((self.size - self.done) / rate, 0) if rate else None)

    def close(self, *, confirmed: bool = True) -> None:
        """A bar stays on screen for a confirmed file; for any other it is wiped: all bytes sent is no
        success when the file was then rejected, and its outcome line says what happened."""
        if self.bar is not None:
            self.bar.leave = confirmed
            self.bar.close()


class _OutcomesSaidOnce:
    """The pipeline's log for a one-shot upload, less the events whose message the outcome line of the
    file prints anyway (a refusal said twice reads as two problems)."""

    def __init__(self, log: Any) -> None:
        self._log = log

    def bind(self, **values: Any) -> "_OutcomesSaidOnce":
        return _OutcomesSaidOnce(self._log.bind(**values))

    def error(self, event: str, **values: Any) -> None:
        if event not in REPORTED_EVENTS:
            self._log.error(event, **values)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log, name)


def upload_files(settings: Settings, api_key: str, files: list[str], *, max_wait_s: float = 900.0,
                 force: bool = False, client: OneCodexClient | None = None, out: Any = None,
                 pairing: bool = True) -> int:
    """Upload files (and the matching files of folders) now, through the daemon's pipeline and a private
    queue; 0 only if every one was confirmed (now, or before by the daemon), 1 otherwise (a file refused,
    given up on or still in the daemon's hands, a rejected key, Ctrl-C)."""
    out = out or sys.stdout
    log = logs.get("seqdrop")
    candidates, all_usable = _candidates(files, settings, out)
    candidates, all_confirmed_before = _not_yet_uploaded(settings, candidates, force=force, out=out)
    if not candidates:
        return 0 if all_usable and all_confirmed_before else 1
    client = client or make_client(settings, api_key)
    throttle = TokenBucket.from_mbps(settings.upload.max_mbps).consume if settings.upload.max_mbps else None
    with tempfile.TemporaryDirectory(prefix="seqdrop-upload-") as tmp:
        store = SqliteStore(os.path.join(tmp, "queue.sqlite3"))
        pipeline = make_pipeline(settings, store=store, client=client, log=_OutcomesSaidOnce(log),
                                 stop=threading.Event(), throttle=throttle)
        try:
            roots = WatchRoots.of(settings.watch, settings.samples)
            assembler = Assembler(store=store, roots=lambda: roots, log=log, immediate=True,
                                  pairing=None if pairing else "off")
            code = _upload(store, pipeline, assembler, candidates, max_wait_s=max_wait_s, log=log, out=out)
        finally:
            pipeline.close()
            store.close()
    return code if all_usable and all_confirmed_before else 1


def _upload(store: SqliteStore, pipeline: Pipeline, assembler: Assembler,
            candidates: list[tuple[str, str, os.stat_result]], *, max_wait_s: float, log: Any, out: Any) -> int:
    names = _queue_files(store, assembler, candidates)
    try:
        _send_all(store, pipeline, names, max_wait_s=max_wait_s, log=log, out=out)
    except AuthError as e:
        print(f"seqdrop: {e}\n  fix: check the key (ONE_CODEX_API_KEY, api.api_key_file) with "
              f"`seqdrop check`", file=out)
        return 1
    except KeyboardInterrupt:
        _report_interrupted(store, pipeline, names, out)
        print("seqdrop: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0 if _report(store, names, out) else 1


def _candidates(args: list[str], settings: Settings, out: Any) -> tuple[list[tuple[str, str, os.stat_result]], bool]:
    """(the name as given or found, absolute path, stat) of each file to send: each named file this user
    can read, and each matching file of each named folder; each file once. Also whether every named
    thing gave something to send (the others are named with the reason)."""
    matcher = Matcher(settings.watch.include, settings.watch.exclude)
    found: dict[str, tuple[str, str, os.stat_result]] = {}
    all_usable = True
    for arg in args:
        full = os.path.abspath(arg)
        if os.path.isdir(full):
            files = sorted(scan(full, matcher, log=logs.get("seqdrop")))
            if not files:
                print(f"{arg}: no file in it matches the config's patterns ([watch] include, exclude)", file=out)
                all_usable = False
            for path, _st in files:
                if (st := _readable_file(path, path, out)) is not None:
                    found.setdefault(os.path.realpath(path), (path, path, st))
            continue
        st = _readable_file(arg, full, out)
        if st is None:
            all_usable = False
            continue
        found.setdefault(os.path.realpath(full), (arg, full, st))
    return list(found.values()), all_usable


def _not_yet_uploaded(settings: Settings, candidates: list[tuple[str, str, os.stat_result]], *, force: bool,
                      out: Any) -> tuple[list[tuple[str, str, os.stat_result]], bool]:
    """The candidates the daemon's queue does not hold as confirmed or in progress (all with --force), and
    whether every one left out was confirmed. No queue at queue.path: nothing to consult."""
    path = settings.queue.path
    if force or not candidates or not os.path.exists(path):
        return candidates, True
    try:
        daemon_queue = SqliteStore(path, readonly=True)
    except sqlite3.Error as e:
        raise ConfigError(f"cannot read the daemon's queue {path} ({e}) to skip the files it already uploaded",
                          file=settings.source, key="queue.path",
                          fix="run seqdrop upload as the seqdrop user or root, or add --force to upload "
                              "without looking (files already uploaded then become second samples)") from None
    try:
        done = daemon_queue.confirmed_matches([(full, Identity.of(st)) for _, full, st in candidates])
        busy = {full: daemon_queue.latest_for_path(full) for _, full, _st in candidates if full not in done}
    finally:
        daemon_queue.close()
    left, all_confirmed = [], True
    for name, full, st in candidates:
        row = busy.get(full)
        if full in done:
            print(f"{name}: already uploaded as sample {done[full].sample_id} (file {done[full].id} in the "
                  f"daemon's queue); skipped — --force uploads it again", file=out)
        elif row is not None and row.state in IN_PROGRESS and row.identity == Identity.of(st):
            all_confirmed = False
            print(f"{name}: the daemon is uploading it ({row.state}, file {row.id} in its queue); skipped — "
                  f"`seqdrop show {row.id}` follows it, --force uploads it here too", file=out)
        else:
            left.append((name, full, st))
    return left, all_confirmed


def _queue_files(store: SqliteStore, assembler: Assembler,
                 candidates: list[tuple[str, str, os.stat_result]]) -> dict[int, str]:
    """Record each file in the private queue and assemble them into samples (queued, or rejected with
    the reason). Returns {file id: the name as given}."""
    names: dict[int, str] = {}
    for name, full, st in candidates:
        names[store.add_seen(full, Identity.of(st))] = name
    assembler.assemble_given([row for file_id in names if (row := store.get(file_id)) is not None])
    return names


def _readable_file(path: str, full: str, out: Any) -> os.stat_result | None:
    """The file's stat if it is a regular file this user can open; else None, with the reason printed."""
    try:
        st = os.stat(full)
    except OSError as e:
        print(f"{path}: cannot read it ({e.strerror})", file=out)
        return None
    if not os.path.isfile(full):
        print(f"{path}: not a regular file", file=out)
        return None
    try:   # the daemon's words for this (`seqdrop retry --failed`) do not apply to a one-shot upload
        open(full, "rb").close()
    except OSError as e:
        print(f"{path}: cannot read it ({e.strerror}); make it readable by this user, or run "
              f"seqdrop upload as a user who can read it", file=out)
        return None
    return st


def _send_all(store: SqliteStore, pipeline: Pipeline, names: dict[int, str], *, max_wait_s: float,
              log: Any, out: Any) -> None:
    """Run the pipeline over the queue until no file is left in it, waiting out each retry; a file
    still retrying max_wait_s after the start fails."""
    deadline = {i: time.monotonic() + max_wait_s for i in names}
    while True:
        row = store.claim_next("oneshot")
        if row is not None:
            _send(store, pipeline, row, names[row.id], log=log, out=out)
        elif not _wait_for_retries(store, names, deadline, max_wait_s=max_wait_s):
            return


def _send(store: SqliteStore, pipeline: Pipeline, row: FileRow, name: str, *, log: Any, out: Any) -> None:
    """One attempt at one file, with its progress bar."""
    progress = _Progress(row.path, row.size, log)
    state = "queued"
    try:
        state = pipeline.process(row, progress=progress)
    finally:
        progress.close(confirmed=state == "done")
    if state == "queued":
        current = store.get(row.id)
        print(f"{name}: retrying later: {current.error if current else ''}", file=out)


def _wait_for_retries(store: SqliteStore, names: dict[int, str], deadline: dict[int, float], *,
                      max_wait_s: float) -> bool:
    """Nothing to claim now: fail the files past their deadline, or wait (at most 5 s) for the next
    retry. False when no file is left waiting."""
    pending = [r for r in store.files(states=("queued",)) if r.id in names]
    if not pending:
        return False
    expired = [r for r in pending if time.monotonic() > deadline[r.id]]
    for r in expired:
        store.set_state(r.id, "failed", error=f"gave up after {max_wait_s:.0f} s of "
                        f"retries; last error: {r.error}")
    if not expired:
        wake = min(r.next_attempt_at for r in pending)
        time.sleep(min(max(0.0, wake - time.time()), 5.0))
    return True


def _report_interrupted(store: SqliteStore, pipeline: Pipeline, names: dict[int, str], out: Any) -> None:
    """Ctrl-C: a sample begun for a file that will not be confirmed now is cancelled, not left
    dangling in the account (a second Ctrl-C stops even that)."""
    received: dict[int, bool] = {}     # lead id → One Codex had it: a sample is abandoned once, by its lead
    for file_id, path in names.items():
        row = store.get(file_id)
        lead = file_id
        if row is not None and row.follower and (sample := store.sample_of(file_id)) is not None:
            lead = sample.lead
        if row is not None and row.state == "done":
            print(f"{path}: confirmed as sample {row.sample_id}", file=out)
            continue
        if lead not in received:
            received[lead] = pipeline.abandon(lead)
        if received[lead]:
            print(f"{path}: interrupted, but One Codex had already received it "
                  f"(sample {row.sample_id})", file=out)
        else:
            print(f"{path}: interrupted; not uploaded", file=out)


def _report(store: SqliteStore, names: dict[int, str], out: Any) -> bool:
    """One line per queued file: its sample, or how it ended. True if every one was confirmed."""
    all_confirmed = True
    for file_id, path in names.items():
        row = store.get(file_id)
        assert row is not None
        if IGNORED_FLAG in (row.flags or "").split(","):
            print(f"{path}: skipped: {row.error}", file=out)     # an index read: skipped by rule, no failure
        elif row.state == "done":
            print(f"{path}: confirmed as sample {row.sample_id}"
                  + (f" ({row.error})" if row.error else ""), file=out)
        else:
            all_confirmed = False
            print(f"{path}: {row.state}: {row.error}", file=out)
    return all_confirmed
