"""Watch folders for FASTA/FASTQ files: inotify (or polling) hints for the tracker.

With inotify_tree.py, the only module that imports watchdog (which files count and the scan are
in files.py, network mounts in mounts.py). What it promises the tracker:

- Events are *hints*, never facts: ``on_hint(path)`` says "look at this path again"; the tracker
  stats it and decides (new, growing, finished, gone). A hint may come twice, late, or for a file
  that no longer exists. The scan (``scan()``) is the guarantee; hints only make things quick.
- Hints are given only for paths the ``Matcher`` accepts, outside hidden folders.
- Per file, the watcher keeps only the paths a local writer holds open (``writing(path)``, close
  events, detection/writing.py); otherwise one inotify watch, and one path, per folder.
- No folder shape stops it: folders deeper than ``[watch] max_depth`` below a root are neither
  watched nor scanned (one warning names each), and no walk recurses (issue 10, defect 5).

Events that produce hints: created, modified, attrib (``touch`` changes mtime), closed after
writing, moved (the destination, and the source so the tracker sees it vanish), deleted.
Deliberately *not* subscribed: opened and closed-without-writing, so that our own uploads
(which read the files) cause no events at all (watchdog >= 2.3 reports opens; see
https://github.com/gorakhargosh/watchdog/issues/949). The watches are ours, one per folder
(inotify_tree.WatchTree), on watchdog's InotifyFD: one reader thread serves every root. A folder
created or moved in is scanned and every matching file under it is hinted, because inotify says nothing about files that were
already inside a folder renamed into place (a run folder copied elsewhere, then moved in).

Polling (per root) is for network shares: SMB/NFS mounts deliver no inotify events for changes
made by other machines. It is our own stat-based poll rather than watchdog's PollingObserver:
that one keeps a snapshot of every file and folder of the tree in memory (two during a diff) and
stats all of them each interval - an Illumina run folder alone holds tens of thousands of
BCL/CBCL files. Ours walks the tree with ``scan()`` (constant memory, only matching names are
stat'ed) and hints files whose ctime/mtime is at or after a watermark taken from the share's own
clock (so clock skew between us and the file server does not matter). A rename updates ctime, so
files moved into place are seen too. The first pass (and the first after a root returns) hints
every matching file; later passes re-hint only the few files changed within a few seconds of the
newest change. Deletions are not hinted in polling mode (no per-file state to compare with); the
tracker notices them when it stats the files it knows.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from watchdog.observers.inotify_c import InotifyFD

from daemon.config import DEFAULT_INCLUDE  # noqa: F401  (re-exported: the default patterns)
from daemon.detection.files import TEMP_PATTERNS, Matcher, scan  # noqa: F401  (re-exported)
from daemon.detection.inotify_tree import WatchTree
from daemon.detection.mounts import NETWORK_FS_TYPES, network_mount_type  # noqa: F401  (re-exported)
from daemon.detection.writing import WritingSet
from daemon.paths import is_within

INOTIFY_SYSCTL_DROPIN = "systemd/99-seqdrop-inotify.conf"

_log = structlog.get_logger("seqdrop.watcher")


def _identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of the folder at ``path``, or None if it is not there (or not a folder)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None


@dataclass
class _Root:
    """What the watcher knows about one root (no per-file state)."""

    path: str                       # as configured, absolute; hints use this prefix
    real: str = ""                  # symlinks resolved; inotify watches this
    polling: bool = False           # polled rather than watched with inotify (configured or degraded)
    present: bool = False
    identity: tuple[int, int] | None = None
    tree: WatchTree | None = None
    poller: _Poller | None = None


class _Poller(threading.Thread):
    """Polls one root: hints files changed at or after the last pass's watermark (share's clock)."""

    # Slack on the watermark: coarse file system timestamps (FAT/exFAT, some SMB servers: 2 s).
    SLACK_NS = 5_000_000_000

    def __init__(self, watcher: Watcher, root: _Root, interval_s: float) -> None:
        super().__init__(name=f"seqdrop-poll:{root.path}", daemon=True)
        self._watcher = watcher
        self._root = root
        self._interval_s = interval_s
        self.stop_event = threading.Event()

    def run(self) -> None:
        threshold_ns: int | None = None  # None: first pass, hint every matching file
        while not self.stop_event.is_set():
            try:
                threshold_ns = self._one_pass(threshold_ns)
            except Exception as exc:
                self._watcher._log.error("watcher.poll_error", root=self._root.path,
                                         error=repr(exc), exc_info=True)
            self.stop_event.wait(self._interval_s)

    def _one_pass(self, threshold_ns: int | None) -> int | None:
        if _identity(self._root.path) is None:
            return None  # missing: ensure_alive() reports it; everything is new when it returns
        started = time.monotonic_ns()
        newest_ns: int | None = None
        for path, st in scan(self._root.path, self._watcher.matcher, log=self._watcher._log):
            if self.stop_event.is_set():
                return threshold_ns
            # The watermark follows ctime only: mtime can be set to anything (touch -d, cp -p
            # from a machine with a wrong clock), ctime cannot. A file is hinted if either moved.
            newest_ns = st.st_ctime_ns if newest_ns is None else max(newest_ns, st.st_ctime_ns)
            if threshold_ns is None or max(st.st_ctime_ns, st.st_mtime_ns) >= threshold_ns:
                self._watcher._hint(path)
        if newest_ns is None:
            return 0  # no files yet: whatever appears is new
        # Any change after a file was listed in this pass happened after the pass started, i.e.
        # at or after (newest seen - duration of the pass) on the share's own clock.
        return newest_ns - (time.monotonic_ns() - started) - self.SLACK_NS


class Watcher:
    """Watches roots down to ``matcher.depth`` and calls ``on_hint(path)`` for paths worth a fresh look.

    ``start()`` once, ``ensure_alive()`` every few seconds (it restarts what died and follows
    roots that vanish and come back), ``stop()`` at shutdown. ``on_root_state(root, False)``:
    the root is gone (unmounted, deleted); ``on_root_state(root, True)``: it is watched again
    after a gap (returned, a dead watch restarted, switched to polling, or the kernel's event
    queue overflowed) - rescan it, events may have been lost.

    Threads: ``on_hint`` is called from the inotify reader thread (one for all roots) and from
    one poll thread per polled root, possibly at the same time; ``on_root_state`` from the caller
    of ``start()`` and ``ensure_alive()``. ``ensure_alive()`` stats each root: on a hung
    hard-mounted NFS share that stat blocks, as any access would.
    """

    def __init__(self, roots: list[str], *, matcher: Matcher, on_hint: Callable[[str], None],
                 on_root_state: Callable[[str, bool], None] | None = None,
                 polling: dict[str, bool] | bool = False, poll_interval_s: float = 10.0,
                 log: Any = None) -> None:
        self.matcher = matcher
        self.poll_interval_s = poll_interval_s
        self.degraded: dict[str, str] = {}
        self._on_hint = on_hint
        self._on_root_state = on_root_state
        self._log = log or _log
        self._lock = threading.RLock()
        self._inotify: InotifyFD | None = None   # the kernel's inotify instance and its reader thread
        self._started = False
        self._stopped = False
        self._overflowed = False                  # the kernel's inotify queue overflowed
        self._writing = WritingSet()              # files written since their last close (inotify roots)
        self._roots: list[_Root] = []
        for raw in roots:
            path = os.path.abspath(raw)
            wanted = polling if isinstance(polling, bool) else bool(
                polling.get(raw, polling.get(path, False)))
            self._roots.append(_Root(path=path, polling=wanted))

    # -- public --------------------------------------------------------------------------------

    def start(self) -> None:
        """Start watching every root that exists (the others are waited for by ensure_alive)."""
        changes: list[tuple[str, bool]] = []
        with self._lock:
            if self._started:
                return
            self._started = True
            for root in self._roots:
                self._attach(root)
                if not root.present:
                    self._log.warning("watcher.root_missing", root=root.path)
                    changes.append((root.path, False))
        self._report(changes)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop all threads; waits up to ``timeout_s`` each (a hung network stat may not return)."""
        with self._lock:
            self._stopped = True
            inotify, self._inotify = self._inotify, None
            pollers = [r.poller for r in self._roots if r.poller is not None]
            trees = [r.tree for r in self._roots if r.tree is not None]
            for root in self._roots:
                root.poller, root.tree = None, None
        for poller in pollers:
            poller.stop_event.set()
        for tree in trees:
            tree.close()
        if inotify is not None:
            try:
                inotify.stop()
                inotify.join(timeout_s)
            except Exception as exc:
                self._log.warning("watcher.stop_failed", error=repr(exc))
        for poller in pollers:
            if poller is not threading.current_thread():
                poller.join(timeout_s)

    def writing(self, path: str) -> bool:
        """Has a local writer written to path since its last close? (False when events cannot tell.)"""
        return self._writing.holds(path)

    def is_alive(self) -> bool:
        """True if every present root is watched by a live thread (False: ensure_alive has work)."""
        with self._lock:
            if not self._started or self._stopped:
                return False
            return all(self._root_alive(r) for r in self._roots if r.present)

    def ensure_alive(self) -> bool:
        """Restart what died, follow roots that vanished or returned. True if it restarted anything."""
        changes: list[tuple[str, bool]] = []
        with self._lock:
            if not self._started or self._stopped:
                return False
            restarted = self._restart_inotify(changes)
            for root in self._roots:
                restarted = self._follow(root, changes) or restarted
        self._report(changes)
        return restarted

    # -- ensure_alive's parts (with the lock held) -----------------------------------------------

    def _restart_inotify(self, changes: list[tuple[str, bool]]) -> bool:
        """A dead reader thread, or events the kernel dropped: watch every inotify root afresh."""
        died = self._inotify is not None and not self._inotify.is_alive()
        overflowed, self._overflowed = self._overflowed, False
        if not (died or overflowed):
            return False
        if died:
            self._log.error("watcher.observer_died")
            self._drop_inotify()
        for root in self._roots:
            if root.present and not root.polling:
                if overflowed and not died:
                    # Folders created meanwhile went unwatched too: rebuild the watches, then rescan.
                    self._log.warning("watcher.events_lost", root=root.path, reason="inotify queue overflow")
                self._detach(root)
                self._attach(root)
                changes.append((root.path, True))
        return died

    def _follow(self, root: _Root, changes: list[tuple[str, bool]]) -> bool:
        """One root: gone, replaced, out of watches, dead, or back. True if it restarted anything."""
        identity = _identity(root.path)
        restarted = False
        if root.present and identity != root.identity:
            self._detach(root)
            root.present = False
            self._log.warning("watcher.root_missing", root=root.path)
            changes.append((root.path, False))
        elif root.present and root.tree is not None and root.tree.limit_hit:
            self._degrade(root, errno.ENOSPC)
            changes.append((root.path, True))  # sub-folders went unwatched: rescan
            restarted = True
        elif root.present and not self._root_alive(root):
            self._log.warning("watcher.watch_restarted", root=root.path)
            self._detach(root)
            self._attach(root)
            changes.append((root.path, True))
            restarted = True
        if not root.present and identity is not None:
            self._attach(root)
            if root.present:
                self._log.info("watcher.root_returned", root=root.path)
                changes.append((root.path, True))
                restarted = True
        return restarted

    # -- attaching roots -----------------------------------------------------------------------

    def _attach(self, root: _Root) -> None:
        """Start watching one existing root (inotify, or polling if configured or degraded)."""
        root.identity = _identity(root.path)
        if root.identity is None:
            return
        root.real = os.path.realpath(root.path)
        root.present = True
        if not root.polling:
            try:
                tree = WatchTree(self._ensure_inotify(), root.real, limit=self.matcher.depth,
                                 on_file=lambda path, mask: self._on_file(root, path, mask),
                                 on_folder=lambda path, depth, old: self._on_folder(root, path, depth, old),
                                 on_overflow=self._on_overflow, log=self._log)
                root.tree = tree
                tree.start()
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                    self._detach(root)
                    root.present = False  # vanished meanwhile; ensure_alive will see it return
                    return
                self._degrade(root, exc.errno, detail=str(exc))
                return
            if tree.limit_hit:
                self._degrade(root, errno.ENOSPC)
                return
            self._log.info("watcher.watching", root=root.path, mode="inotify", folders=tree.watched())
            return
        root.poller = _Poller(self, root, self.poll_interval_s)
        root.poller.start()
        self._log.info("watcher.watching", root=root.path, mode="polling",
                       interval_s=self.poll_interval_s)

    def _detach(self, root: _Root) -> None:
        self._writing.forget_under(root.path)
        tree, root.tree = root.tree, None
        if tree is not None:
            tree.close()
        poller, root.poller = root.poller, None
        if poller is not None:
            poller.stop_event.set()  # not joined: it may be stuck on a dead share; it is a daemon

    def _degrade(self, root: _Root, err: int | None, *, detail: str = "") -> None:
        """inotify is not available for this root: say why and how to fix it, then poll it."""
        if err == errno.ENOSPC:
            limit = _read_int("/proc/sys/fs/inotify/max_user_watches")
            reason = (f"inotify watch limit reached (fs.inotify.max_user_watches={limit}); "
                      f"polling every {self.poll_interval_s:g} s instead. Fix: install "
                      f"{INOTIFY_SYSCTL_DROPIN} as /etc/sysctl.d/99-seqdrop-inotify.conf "
                      "and run `sysctl --system`, then restart seqdrop")
            self._log.error("watcher.inotify_limit", root=root.path,
                            sysctl="fs.inotify.max_user_watches", limit=limit, fix=INOTIFY_SYSCTL_DROPIN)
        elif err == errno.EMFILE:
            limit = _read_int("/proc/sys/fs/inotify/max_user_instances")
            reason = (f"inotify instance limit reached (fs.inotify.max_user_instances={limit}); "
                      f"polling every {self.poll_interval_s:g} s instead. Fix: raise it with "
                      f"{INOTIFY_SYSCTL_DROPIN} (/etc/sysctl.d/, `sysctl --system`), then restart seqdrop")
            self._log.error("watcher.inotify_limit", root=root.path,
                            sysctl="fs.inotify.max_user_instances", limit=limit, fix=INOTIFY_SYSCTL_DROPIN)
        else:
            reason = f"inotify failed ({detail or err}); polling every {self.poll_interval_s:g} s instead"
            self._log.error("watcher.inotify_failed", root=root.path, error=detail or str(err))
        self._detach(root)
        self.degraded[root.path] = reason
        root.polling = True
        self._attach(root)

    # -- the inotify instance ------------------------------------------------------------------

    def _ensure_inotify(self) -> InotifyFD:
        if self._inotify is None:
            inotify = InotifyFD()   # OSError EMFILE: too many inotify instances
            inotify.start()
            self._inotify = inotify
        return self._inotify

    def _drop_inotify(self) -> None:
        inotify, self._inotify = self._inotify, None
        self._writing.clear()     # closes may have gone unreported
        for root in self._roots:
            root.tree = None      # their watches died with the instance
        if inotify is not None:
            try:
                inotify.stop()
            except Exception as exc:
                self._log.debug("watcher.stop_failed", error=repr(exc))

    def _root_alive(self, root: _Root) -> bool:
        if root.polling:
            return root.poller is not None and root.poller.is_alive()
        inotify = self._inotify
        return root.tree is not None and root.tree.alive and inotify is not None and inotify.is_alive()

    # -- events (from the inotify reader thread) -------------------------------------------------

    def _on_file(self, root: _Root, real_path: str, mask: int) -> None:
        path = self._outer(root, real_path)
        if self._wanted(root, path):
            self._writing.event(path, mask)     # before the hint: the tracker may ask at once
            self._hint(path)

    def _on_folder(self, root: _Root, real_folder: str, depth: int, real_moved_from: str) -> None:
        moved_from = self._outer(root, real_moved_from) if real_moved_from else ""
        self._hint_tree(root, self._outer(root, real_folder), depth, moved_from=moved_from)

    def _on_overflow(self) -> None:
        # The kernel dropped events (IN_Q_OVERFLOW): ensure_alive() rebuilds the watches and asks for
        # a rescan. A flag, not a call: this runs in the reader thread, which must not block on _lock.
        self._writing.clear()     # a close may be among the events dropped
        self._overflowed = True

    def _hint_tree(self, root: _Root, folder: str, depth: int, *, moved_from: str = "") -> None:
        """Hint every matching file under a folder that appeared (created or moved in).

        inotify says nothing about files that were already inside a folder renamed into place, nor
        about files written into a new folder before its watch was added: the scan finds both.
        For a folder moved within the root, the files' old paths are hinted too (they are gone);
        a folder renamed to a hidden name (".trash") hints only the old paths.
        """
        new_ok = is_within(folder, root.path) and not _hidden_below(folder, root.path)
        old_ok = bool(moved_from) and is_within(moved_from, root.path) and not _hidden_below(
            moved_from, root.path)
        if not (new_ok or old_ok):
            return
        for path, _st in scan(folder, self.matcher, log=self._log, depth=depth):
            if new_ok:
                self._hint(path)
            if old_ok:
                self._hint(moved_from + path[len(folder):])

    def _hint(self, path: str) -> None:
        try:
            self._on_hint(path)
        except Exception as exc:
            self._log.error("watcher.handler_error", path=path, error=repr(exc), exc_info=True)

    def _report(self, changes: list[tuple[str, bool]]) -> None:
        if self._on_root_state is None:
            return
        for path, present in changes:
            try:
                self._on_root_state(path, present)
            except Exception as exc:
                self._log.error("watcher.handler_error", root=path, present=present,
                                error=repr(exc), exc_info=True)

    def _wanted(self, root: _Root, path: str) -> bool:
        return (is_within(path, root.path) and not _hidden_below(path, root.path)
                and self.matcher.matches(path))

    @staticmethod
    def _outer(root: _Root, path: str) -> str:
        """Event paths are under the resolved root; hints use the root as configured."""
        if root.real != root.path and is_within(path, root.real):
            return root.path + path[len(root.real):]
        return path


def _hidden_below(path: str, root: str) -> bool:
    """True if any component of ``path`` below ``root`` starts with a dot."""
    rel = path[len(root):].lstrip(os.sep)
    return any(part.startswith(".") for part in rel.split(os.sep) if part)


def _read_int(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None
