"""Finished-file detection: hints and scans in, `seen` → `queued` (or `vanished`) out.

Events are hints, the scan is the guarantee: whatever the source, `observe(path)`
stats the file and compares it with the path's latest row in the store:
  no row / a finished row with another identity → a new version, `seen`
  a `vanished` row and the file is there again    → a new version, `seen` (even with the same
                                                    identity: moved out and back, a share remounted)
  `seen`, identity changed                     → still being written: settle clock restarts
  `seen`, unchanged for settle_s, marker there → offered to the assembler (assembler.py), which
                                                 records its sample once complete: the members
                                                 `queued` (or `rejected`), or says why it waits
  `seen`/`queued` (nothing sent) and gone      → `vanished` (unless its whole watch folder is
                                                 gone, or left behind empty on another device: a
                                                 share unmounted; it is looked at on return)
  `queued` (nothing sent) and replaced         → `vanished`, and the new version is `seen`
  (a member of a sample vanishes its whole sample: the store lands the write on the lead; the
   other members are looked at again, and being still there, become new versions, assembled again)
  a new version whose (device, inode, size,    → `done` under its new path, with the sample id and
  mtime_ns) is a done version's                  MD5 of that version: the same file, moved or
                                                 renamed (a run folder archived), never sent again
A name that is not valid UTF-8 (a Latin-1 name written over SMB) can be neither stored nor
sent: it is recorded under a printable stand-in as `rejected`, with the fix (rename it).
Rows a worker holds are left to the worker, which re-checks identity before and
after sending. Settle checks are kept in a heap of due times; the rows are in the store.

The tracker calls nobody back: what it queued, the ids of the rows it ended (vanished,
rejected) and the late samples it recorded are returned (by `observe_batch`, `run_due` and
`full_scan`) once the store has committed them; the caller wakes the workers, writes the audit
journal and tells of the late samples. What it needs to
know about the watch folders (the root of a path, its run marker, whether it is gone) it asks a
`WatchRoots`.

Settling is timed on a monotonic clock, never the wall clock: an instrument PC's clock can jump
(a dead RTC battery, then NTP, at boot), and a jump forward must not queue a file that changed a
moment ago, nor a jump back hold one for years. So when a `seen` version last changed is kept in
memory (one float per file being written); a row left `seen` by an earlier run settles again
from the restart. (`stable_since` in the store is the wall-clock time, for people.)
"""

from __future__ import annotations

import heapq
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from daemon.detection.assembler import Assembler, Observed
from daemon.detection.roots import WatchRoots
from daemon.detection.watcher import Matcher, scan
from daemon.paths import is_within
from daemon.queue.base import STEP_NONE, TERMINAL, FileRow, Identity, Store

WRITING_NOTE = "still open for writing (a program is writing it); uploaded once it is closed"
BATCH = 256               # files per commit when many are found or settle at once (see Store.batch)
MARKER_RECHECK_S = 5.0


@dataclass
class Scanned(Observed):
    """What a full scan found: how many matching files it looked at, and what it committed."""
    files: int = 0


class Tracker:
    def __init__(self, *, store: Store, settle_s: float, log: Any, roots: WatchRoots | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store, self.settle_s, self.log = store, settle_s, log
        self.roots = roots or WatchRoots()    # no roots: nothing waits for a marker, no root is gone
        self.clock = clock                    # monotonic; due times and next_due() are on this clock
        self._since: dict[str, float] = {}    # path of a `seen` row -> when its identity last changed
        # Settled versions become samples there (it schedules its re-checks through self.schedule).
        self.assembler = Assembler(store=store, roots=lambda: self.roots, log=log, clock=clock,
                                   schedule=self.schedule, assigned=self._assigned)
        self._in_pair_checks = False
        self._due: list[tuple[float, str]] = []
        self._scheduled: dict[str, float] = {}
        self._settling: dict[str, tuple[Identity, float]] = {}   # only names that are not UTF-8
        self._lock = threading.Lock()
        self.writing: Callable[[str], bool] = lambda path: False   # the watcher's close events (service)

    # -- scheduling ----------------------------------------------------------------------------
    def schedule(self, path: str, at: float) -> None:
        with self._lock:
            old = self._scheduled.get(path)
            if old is not None and old <= at:
                return
            self._scheduled[path] = at
            heapq.heappush(self._due, (at, path))

    def next_due(self) -> float | None:
        with self._lock:
            return self._due[0][0] if self._due else None

    def run_due(self) -> Observed:
        """Re-observe every path whose settle time has come; returns what was committed."""
        now = self.clock()
        paths = []
        with self._lock:
            while self._due and self._due[0][0] <= now:
                at, path = heapq.heappop(self._due)
                if self._scheduled.get(path) == at:
                    del self._scheduled[path]
                    paths.append(path)
        found = Observed()
        for start in range(0, len(paths), BATCH):
            found.add(self.observe_batch([(path, None) for path in paths[start:start + BATCH]]))
        return found

    def observe_batch(self, items: list[tuple[str, os.stat_result | None]]) -> Observed:
        """observe() each (path, stat or None), recorded by one commit (Store.batch); returns the paths
        queued and the rows ended, once committed. A path whose step fails, or a batch whose commit
        fails (a full disk), is looked at again later (and nothing of a batch that was not committed
        counts)."""
        found = Observed()
        if not items:
            return found
        retry_at = lambda: self.clock() + max(1.0, self.settle_s)   # noqa: E731
        try:
            with self.store.batch():
                for path, st in items:
                    step = Observed()
                    try:
                        self.observe(path, st, found=step)
                        found.add(step)
                    except Exception as e:   # a bug, a passing store error: look again later, not never
                        self.log.error("tracker.observe_failed", path=path, error=repr(e), exc_info=True)
                        self.schedule(path, retry_at())
        except Exception as e:
            self.log.error("tracker.batch_not_recorded", files=len(items), error=repr(e))
            for path in [path for path, _ in items] + found.queued:
                self.schedule(path, retry_at())
            return Observed()
        self._pair_checks(found)
        return found

    def _pair_checks(self, found: Observed) -> None:
        """After the commit: the `_1/_2` pair checks the batch noted (file reads, kept out of the store's
        lock), then those files offered again with their verdict."""
        if self._in_pair_checks:
            return                       # the outer call runs them
        self._in_pair_checks = True
        try:
            while paths := self.assembler.run_pair_checks():
                found.add(self.observe_batch([(path, None) for path in paths]))
        finally:
            self._in_pair_checks = False

    def full_scan(self, matcher: Matcher, *, stop: threading.Event | None = None) -> Scanned:
        """Reconcile the store with every watch root: observe each matching file (skipping versions
        settled and unchanged since), then the deletions no event reported. A root that is missing
        as a whole (a share unmounted) is neither scanned nor swept: its files are no deletions.
        Stops early, with the sweep undone, once stop is set (shutdown)."""
        found = Scanned()
        for root in self.roots.paths:
            if os.path.isdir(root) and not self._scan_root(root, matcher, found, stop):
                return found
        missing = self.roots.missing()
        gone = [(row.path, None) for row in self.store.rows_in("seen", "queued")
                if not any(is_within(row.path, m) for m in missing) and not os.path.exists(row.path)]
        for start in range(0, len(gone), BATCH):
            found.add(self.observe_batch(gone[start:start + BATCH]))
        return found

    def _scan_root(self, root: str, matcher: Matcher, found: Scanned, stop: threading.Event | None) -> bool:
        """Observe root's files in batches; False if stop was set meanwhile."""
        folder, settled = None, {}
        pending: list[tuple[str, os.stat_result | None]] = []
        for path, st in scan(root, matcher):
            if stop is not None and stop.is_set():
                return False
            found.files += 1
            if os.path.dirname(path) != folder:      # scan yields one folder's files together
                folder = os.path.dirname(path)
                settled = self._settled_in(folder)
            if settled.get(path) == Identity.of(st):
                continue       # uploaded (or refused) and unchanged since: observe would do nothing
            pending.append((path, st))
            if len(pending) >= BATCH:
                found.add(self.observe_batch(pending))
                pending = []
        found.add(self.observe_batch(pending))
        return True

    def _settled_in(self, folder: str) -> dict[str, Identity]:
        try:
            return self.store.settled_in(folder)
        except Exception:   # a folder name that is not UTF-8, a passing SQLite error: look at each file
            return {}

    def resume(self) -> None:
        """At start-up: rows that were `seen` when the daemon stopped settle again from now."""
        for row in self.store.rows_in("seen"):
            self._restart_clock(row.path)

    def _restart_clock(self, path: str) -> None:
        now = self.clock()
        self._since[path] = now
        self.assembler.forget(path)
        self.schedule(path, now + self.settle_s)

    def _assigned(self, path: str) -> None:
        """path's `seen` version was given to a sample (or ended by rule): its settle clock goes."""
        self._since.pop(path, None)

    # -- the decision --------------------------------------------------------------------------
    def observe(self, path: str, st: os.stat_result | None = None, *, found: Observed | None = None) -> bool:
        """Decide on path (stat it unless st is given); True if this moved it to `queued`. What it
        queued (path's sample's members), ended (vanished, rejected) and recorded late goes to `found`."""
        found = found if found is not None else Observed()
        ended = found.ended
        if st is None:
            try:
                st = os.lstat(path)
            except (FileNotFoundError, NotADirectoryError):
                st = None
            except OSError as e:
                self.log.warning("tracker.stat_failed", path=path, error=str(e))
                return False
            # Only regular files, as the scan sees them: a symbolic link (followed, it leads outside the
            # folder or loops), a FIFO (reading it blocks), a socket or a device is no file to upload.
            if st is not None and not stat.S_ISREG(st.st_mode):
                st = None
        stand_in = _stand_in(path)
        if stand_in is not None:
            self._unstorable(path, stand_in, st, ended)
            return False
        row = self.store.latest_for_path(path)
        if st is None:
            if self.roots.gone(path, row.identity.dev if row else None):
                return False
            self._since.pop(path, None)
            self.assembler.forget(path)
            self._gone(row, ended)
            return False
        ident = Identity.of(st)
        if row is None or (row.state in TERMINAL and (row.identity != ident or row.state == "vanished")):
            if self._moved_here(path, ident, ended=ended):
                return False
            self.store.add_seen(path, ident)
            self.log.debug("file.seen", path=path, size=ident.size)
            self._restart_clock(path)
        elif row.state == "seen":
            return self._settle(row, ident, found)
        elif row.state == "queued" and row.identity != ident:
            if row.step == STEP_NONE:
                self._vanish(row, "replaced by a newer version before it was uploaded", ended)
            self.store.add_seen(path, ident)
            self._restart_clock(path)
        elif row.state == "uploading" and row.identity != ident:
            # The worker notices (it stats again after sending) and will not confirm.
            self.store.add_seen(path, ident)
            self._restart_clock(path)
        return False

    def _settle(self, row: FileRow, ident: Identity, found: Observed) -> bool:
        now, ended = self.clock(), found.ended
        since = self._since.get(row.path)
        if row.identity != ident:
            self.store.touch_seen(row.id, ident)
            self._restart_clock(row.path)
            return False
        if since is None:                 # seen by an earlier run: how long it has been still is unknown
            self._restart_clock(row.path)
            return False
        if now - since < self.settle_s:
            self.schedule(row.path, since + self.settle_s)
            return False
        if self.writing(row.path):       # a local writer holds it open: not finished whatever its settle time
            if row.error != WRITING_NOTE:
                self.store.note(row.id, WRITING_NOTE)
            self.schedule(row.path, now + self.settle_s)    # its close is a hint too; this is the safety net
            return False
        if self._moved_here(row.path, ident, ended=ended, row=row):
            return False
        if self._moved_mid_upload(row.path, ident):
            self.schedule(row.path, now + MARKER_RECHECK_S)
            return False
        waiting = self.roots.waiting_for(row.path)
        if waiting:
            if row.error != waiting:
                self.store.note(row.id, waiting)
            self.schedule(row.path, now + MARKER_RECHECK_S)
            return False
        queued = self.assembler.offer(row, since + self.settle_s, found)
        if queued:
            self.log.info("file.queued", path=row.path, size=row.size)
        return queued

    def _moved_here(self, path: str, ident: Identity, *, ended: list[int], row: FileRow | None = None) -> bool:
        """Is this version a done one found under a new path (the same device, inode, size and
        mtime_ns: moved or renamed since it was uploaded)? Then it is recorded here as done, with that
        version's sample id and MD5, and never uploaded again (issue 10, defect 10); its id goes to
        `ended` (the audit journal records it). row: its `seen` row, when the version that was being
        uploaded under its old path was confirmed meanwhile."""
        done = self.store.with_identity(ident, states=("done",))
        if done is None:
            return False
        note = (f"the same file as {done.path}, already uploaded as sample {done.sample_id} (moved or renamed "
                f"since); not uploaded again")
        if row is None:
            ended.append(self.store.add_moved(path, ident, source=done, note=note))
        elif self.store.set_state(row.id, "done", error=note, only_from=("seen",), sample_id=done.sample_id,
                                  md5=done.md5):
            ended.append(row.id)
        else:
            return False
        self._since.pop(path, None)
        self.assembler.forget(path)
        self.log.info("file.moved", path=path, moved_from=done.path, sample_id=done.sample_id)
        return True

    def _moved_mid_upload(self, path: str, ident: Identity) -> bool:
        """Is this file being uploaded under its old path (renamed after a worker took it)? Then it waits:
        if that upload is confirmed, this version is recorded done (_moved_here), never a second sample;
        if it ends otherwise (vanished: the worker found the old path gone), this one is queued."""
        busy = self.store.with_identity(ident, states=("uploading", "queued"))
        return busy is not None and busy.path != path and (busy.state == "uploading" or busy.step != STEP_NONE)

    def _unstorable(self, path: str, stand_in: str, st: os.stat_result | None, ended: list[int]) -> None:
        """A file whose name is not UTF-8: once it has settled, one `rejected` row per version under
        the stand-in name. It cannot have a `seen` row (the stand-in is not a path one can stat), so
        its settle clock is kept here, for the few such files being written."""
        if st is None:
            self._settling.pop(path, None)
            return
        ident, now = Identity.of(st), self.clock()
        known = self._settling.get(path)
        if known is None or known[0] != ident:
            row = self.store.latest_for_path(stand_in)
            if row is not None and row.identity == ident:
                return                                   # this version is already rejected
            self._settling[path] = (ident, now)
            self.schedule(path, now + self.settle_s)
            return
        if now - known[1] < self.settle_s:
            self.schedule(path, known[1] + self.settle_s)
            return
        del self._settling[path]
        reason = (f"the file name {os.path.basename(stand_in)!r} is not valid UTF-8, so seqdrop can neither "
                  f"record nor send it; rename the file (e.g. without accented letters) and it is uploaded "
                  f"under the new name")
        file_id = self.store.add_seen(stand_in, ident)
        self.store.set_state(file_id, "rejected", error=reason)
        ended.append(file_id)
        self.log.warning("file.rejected", path=stand_in, error=reason)

    def _gone(self, row: FileRow | None, ended: list[int]) -> None:
        if row is None:
            return
        if row.state == "seen" or (row.state == "queued" and row.step == STEP_NONE):
            if self._vanish(row, "deleted before it was uploaded", ended):
                self.log.info("file.vanished", path=row.path)

    def _vanish(self, row: FileRow, why: str, ended: list[int]) -> bool:
        """row ends `vanished` (with its sample: the store lands the write on the lead) because `why`;
        a sample's other members are looked at again: still there, they are assembled anew."""
        sample = self.store.sample_of(row.id) if row.sample is not None else None
        others = [f for f in sample.files if f.id != row.id] if sample is not None else []
        if others:
            why = f"{os.path.basename(row.path)}, a file of this sample, was {why}; its other files are assembled again"
        if not self.store.set_state(row.id, "vanished", only_from=(row.state,), error=why):
            return False
        ended += [row.id] + [f.id for f in others]
        for f in others:
            self.schedule(f.path, self.clock())
        return True


def _stand_in(path: str) -> str | None:
    """None for a path that is valid UTF-8; else the same path with its undecodable bytes as \\xNN."""
    try:
        path.encode("utf-8")
        return None
    except UnicodeEncodeError:
        return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
