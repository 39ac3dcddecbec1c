"""Watch folders for FASTA/FASTQ files: inotify (or polling) hints, full scans, pattern matching.

The only module that imports watchdog. What it promises the tracker:

- Events are *hints*, never facts: ``on_hint(path)`` says "look at this path again"; the tracker
  stats it and decides (new, growing, finished, gone). A hint may come twice, late, or for a file
  that no longer exists. The scan (``scan()``) is the guarantee; hints only make things quick.
- Hints are given only for paths the ``Matcher`` accepts, outside hidden folders.
- The watcher keeps no per-file state: memory does not grow with the number of files.

Events that produce hints: created, modified, attrib (``touch`` changes mtime), closed after
writing, moved (the destination, and the source so the tracker sees it vanish), deleted.
Deliberately *not* subscribed: opened and closed-without-writing, so that our own uploads
(which read the files) cause no events at all (watchdog >= 2.3 reports opens; see
https://github.com/gorakhargosh/watchdog/issues/949). A folder created or moved in is scanned
and every matching file under it is hinted, because inotify says nothing about files that were
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
import fnmatch
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import structlog
from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import ObservedWatch
from watchdog.observers.inotify import InotifyObserver

from daemon.config import DEFAULT_INCLUDE  # noqa: F401  (re-exported: the default patterns)
from daemon.paths import is_within

# Names that writers use while a file is incomplete, or for scratch copies. Hidden names
# (leading ".") are refused separately: that covers rsync's ".name.XXXXXX", emacs' ".#name",
# vim's ".name.swp", NFS's ".nfsXXXX" and Samba's ".smbdeleteXXXX".
TEMP_PATTERNS: tuple[str, ...] = (
    "*.tmp", "*.temp", "*.part", "*.partial", "*.filepart",   # curl/wget/browsers, WinSCP
    "*.crdownload", "*.download", "*.!sync", "*.swp", "*.swx",
    "*~", "#*#", "~$*",                                       # editors, Office lock files
)

NETWORK_FS_TYPES = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "afs", "ceph", "glusterfs", "lustre",
    "gpfs", "beegfs", "9p", "virtiofs", "vboxsf", "davfs", "fuse.sshfs", "sshfs", "fuse.rclone",
    "fuse.s3fs", "fuse.gcsfuse", "fuse.glusterfs", "fuse.cephfs", "fuse.davfs2",
    "fuse.vmhgfs-fuse", "fuse.smbnetfs",
})

INOTIFY_SYSCTL_DROPIN = "systemd/99-seqdrop-inotify.conf"

# The events we ask the kernel for (watchdog turns the list into the inotify mask).
_EVENT_FILTER = [
    FileCreatedEvent, FileModifiedEvent, FileAttribEvent, FileClosedEvent, FileMovedEvent,
    FileDeletedEvent, DirCreatedEvent, DirMovedEvent, DirDeletedEvent,
]

_log = structlog.get_logger("seqdrop.watcher")


class Matcher:
    """Which file names are candidates: included, not excluded, not hidden, not temporary.

    Globs (fnmatch syntax) are matched against the file *name*, case-insensitively: instruments
    write lower case, but ``.FASTQ.GZ`` from Windows tools exists in the wild. Exclude wins.
    """

    def __init__(self, include: Iterable[str] = DEFAULT_INCLUDE, exclude: Iterable[str] = ()) -> None:
        self.include = tuple(include)
        self.exclude = tuple(exclude)
        self._include = _compile(self.include)
        self._refuse = _compile(self.exclude + TEMP_PATTERNS)

    def matches(self, path: str) -> bool:
        """True if the file at ``path`` (only its name is looked at) should be watched."""
        name = os.path.basename(path)
        if not name or name.startswith("."):
            return False
        if self._refuse is not None and self._refuse.match(name):
            return False
        return self._include is not None and self._include.match(name) is not None

    def __repr__(self) -> str:
        return f"Matcher(include={self.include!r}, exclude={self.exclude!r})"


def _compile(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    return re.compile("|".join(fnmatch.translate(p) for p in patterns), re.IGNORECASE)


def scan(root: str, matcher: Matcher, *, log: Any = None) -> Iterator[tuple[str, os.stat_result]]:
    """Every matching regular file under ``root``, as (absolute path, lstat result).

    - Hidden folders (leading ".") are not entered: writers stage files there.
    - Symbolic links are not followed, neither to folders nor to files: a link can make a loop,
      or lead outside the share to files that are not the instrument's (and a file reached twice
      through links would be two samples).
    - A folder that cannot be read, or a file that vanishes between listing and stat, is logged
      and skipped; the scan goes on.
    - Memory is constant apart from the stack of folders still to visit; one folder is open at
      a time.
    """
    log = log or _log
    stack = [os.path.abspath(root)]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as entries:
                for entry in _entries(entries, folder, log):
                    if entry.name.startswith("."):
                        continue
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                            continue
                        if not matcher.matches(entry.name):
                            continue
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue  # vanished between listing and stat
                    except OSError as exc:
                        log.warning("watcher.scan_stat_failed", path=entry.path, error=str(exc))
                        continue
                    if stat.S_ISREG(st.st_mode):
                        yield entry.path, st
        except FileNotFoundError:
            log.info("watcher.scan_folder_vanished", path=folder)
        except NotADirectoryError:
            log.info("watcher.scan_not_a_folder", path=folder)
        except PermissionError as exc:
            log.warning("watcher.scan_permission_denied", path=folder, error=str(exc),
                        fix="give the seqdrop user read access to this folder (e.g. add it to the "
                            "instrument's group); its files are picked up at the next rescan")
        except OSError as exc:
            log.warning("watcher.scan_folder_failed", path=folder, error=str(exc))


def _entries(entries: Iterator[os.DirEntry[str]], folder: str, log: Any) -> Iterator[os.DirEntry[str]]:
    """Iterate a scandir listing; an error while reading it ends this folder, not the scan."""
    while True:
        try:
            entry = next(entries)
        except StopIteration:
            return
        except OSError as exc:
            log.warning("watcher.scan_folder_failed", path=folder, error=str(exc))
            return
        yield entry


def network_mount_type(path: str, *, mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """The file system type if ``path`` is on a network (or VM-shared) mount, else None."""
    target = os.path.realpath(path)
    best_point, best_type = "", None
    try:
        with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                fields = line.split()
                try:
                    sep = fields.index("-")
                    point = _unescape_mount(fields[4])
                    fstype = fields[sep + 1]
                except (ValueError, IndexError):
                    continue
                if is_within(target, point) and len(point) >= len(best_point):
                    best_point, best_type = point, fstype
    except OSError:
        return None
    if best_type is None:
        return None
    if best_type in NETWORK_FS_TYPES or best_type.startswith(("nfs", "fuse.sshfs", "fuse.rclone")):
        return best_type
    return None


def _unescape_mount(text: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes (\\040...)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


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
    watch: ObservedWatch | None = None
    poller: _Poller | None = None


class _Handler(FileSystemEventHandler):
    """Receives watchdog's events for one root; nothing raised here reaches watchdog."""

    def __init__(self, watcher: Watcher, root: _Root) -> None:
        self._watcher = watcher
        self._root = root

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            self._watcher._on_event(self._root, event)
        except Exception as exc:  # a handler error must never kill the observer thread
            self._watcher._log.error("watcher.handler_error", root=self._root.path,
                                     fs_event=repr(event), error=repr(exc), exc_info=True)


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
    """Watches roots recursively and calls ``on_hint(path)`` for paths worth a fresh look.

    ``start()`` once, ``ensure_alive()`` every few seconds (it restarts what died and follows
    roots that vanish and come back), ``stop()`` at shutdown. ``on_root_state(root, False)``:
    the root is gone (unmounted, deleted); ``on_root_state(root, True)``: it is watched again
    after a gap (returned, a dead watch restarted, switched to polling, or the kernel's event
    queue overflowed) - rescan it, events may have been lost.

    Threads: ``on_hint`` is called from watchdog's observer thread and from one poll thread per
    polled root, possibly at the same time; ``on_root_state`` from the caller of ``start()`` and
    ``ensure_alive()``. ``ensure_alive()`` stats each root: on a hung hard-mounted NFS share
    that stat blocks, as any access would.
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
        self._observer: InotifyObserver | None = None
        self._started = False
        self._stopped = False
        self._limit_lock = threading.Lock()   # the spy runs in watchdog's inotify thread
        self._limit_hits: set[bytes] = set()  # real root paths whose sub-folder watches hit ENOSPC
        self._overflowed = False               # the kernel's inotify queue overflowed
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
            observer, self._observer = self._observer, None
            pollers = [r.poller for r in self._roots if r.poller is not None]
            for root in self._roots:
                root.poller, root.watch = None, None
        for poller in pollers:
            poller.stop_event.set()
        if observer is not None:
            try:
                observer.stop()
                observer.join(timeout_s)
            except Exception as exc:
                self._log.warning("watcher.stop_failed", error=repr(exc))
        for poller in pollers:
            if poller is not threading.current_thread():
                poller.join(timeout_s)

    def is_alive(self) -> bool:
        """True if every present root is watched by a live thread (False: ensure_alive has work)."""
        with self._lock:
            if not self._started or self._stopped:
                return False
            if any(not r.polling for r in self._roots if r.present) and not self._observer_alive():
                return False
            return all(self._root_alive(r) for r in self._roots if r.present)

    def ensure_alive(self) -> bool:
        """Restart what died, follow roots that vanished or returned. True if it restarted anything."""
        changes: list[tuple[str, bool]] = []
        restarted = False
        with self._lock:
            if not self._started or self._stopped:
                return False
            if self._observer is not None and not self._observer_alive():
                self._log.error("watcher.observer_died")
                self._drop_observer()
                for root in self._roots:
                    if root.present and not root.polling:
                        root.watch = None
                        self._attach(root)
                        changes.append((root.path, True))
                        restarted = True
            with self._limit_lock:
                hits, self._limit_hits = self._limit_hits, set()
            if self._overflowed:
                self._overflowed = False
                for root in self._roots:
                    if root.present and not root.polling:
                        self._log.warning("watcher.events_lost", root=root.path,
                                          reason="inotify queue overflow")
                        changes.append((root.path, True))  # rescan: events were dropped
            for root in self._roots:
                identity = _identity(root.path)
                if root.present and identity != root.identity:
                    self._detach(root)
                    root.present = False
                    self._log.warning("watcher.root_missing", root=root.path)
                    changes.append((root.path, False))
                elif root.present and os.fsencode(root.real) in hits and not root.polling:
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
        self._report(changes)
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
                observer = self._ensure_observer()
                root.watch = observer.schedule(_Handler(self, root), root.real, recursive=True,
                                               event_filter=_EVENT_FILTER)
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                    root.present = False  # vanished meanwhile; ensure_alive will see it return
                    return
                self._degrade(root, exc.errno, detail=str(exc))
                return
            self._log.info("watcher.watching", root=root.path, mode="inotify")
            return
        root.poller = _Poller(self, root, self.poll_interval_s)
        root.poller.start()
        self._log.info("watcher.watching", root=root.path, mode="polling",
                       interval_s=self.poll_interval_s)

    def _detach(self, root: _Root) -> None:
        watch, root.watch = root.watch, None
        if watch is not None and self._observer is not None:
            try:
                self._observer.unschedule(watch)
            except (KeyError, OSError, RuntimeError) as exc:
                self._log.debug("watcher.unschedule_failed", root=root.path, error=repr(exc))
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

    # -- the inotify observer ------------------------------------------------------------------

    def _ensure_observer(self) -> InotifyObserver:
        if self._observer is None:
            observer = InotifyObserver()  # OSError EMFILE: too many inotify instances
            self._spy_on_watch_limit(observer)
            observer.start()
            self._observer = observer
        return self._observer

    def _spy_on_watch_limit(self, observer: InotifyObserver) -> None:
        """Notice ENOSPC on sub-folder watches, which watchdog 7.1 swallows, and queue overflows.

        watchdog raises only when the root's own watch fails (observers/inotify.py,
        ``InotifyWatchGroup._add_callback``); a sub-folder that cannot be watched is silently left
        unwatched - exactly what happens when a big run folder exhausts max_user_watches. We wrap
        the observer's own inotify instance's ``add_callback`` (a private attribute, hence the
        guard) to record the failure; ensure_alive() then switches that root to polling.
        """
        fd = getattr(observer, "_inotify_fd", None)
        add_callback = getattr(fd, "add_callback", None)
        if add_callback is None:
            return

        def add_callback_spy(path: bytes, mask: Any, callback: Any, id_: Any) -> Any:
            try:
                return add_callback(path, mask, callback, id_)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    with self._limit_lock:
                        self._limit_hits.add(getattr(callback, "path", b""))
                raise

        fd.add_callback = add_callback_spy

        handle_event = getattr(fd, "handle_event", None)
        if handle_event is None:
            return

        def handle_event_spy(event: Any) -> None:
            # The kernel dropped events (IN_Q_OVERFLOW): watchdog re-adds its watches and logs
            # a warning, but the lost events are gone; ensure_alive() asks for a rescan.
            if getattr(event, "is_queue_overflow", False):
                self._overflowed = True
            handle_event(event)

        fd.handle_event = handle_event_spy

    def _observer_alive(self) -> bool:
        observer = self._observer
        if observer is None or not observer.is_alive():
            return False
        fd = getattr(observer, "_inotify_fd", None)  # the thread reading the inotify fd
        return fd is None or fd.is_alive()

    def _drop_observer(self) -> None:
        observer, self._observer = self._observer, None
        if observer is not None:
            try:
                observer.stop()
            except Exception as exc:
                self._log.debug("watcher.stop_failed", error=repr(exc))

    def _root_alive(self, root: _Root) -> bool:
        if root.polling:
            return root.poller is not None and root.poller.is_alive()
        if root.watch is None or not self._observer_alive():
            return False
        return any(e.watch == root.watch and e.is_alive() for e in list(self._observer.emitters))

    # -- events --------------------------------------------------------------------------------

    def _on_event(self, root: _Root, event: FileSystemEvent) -> None:
        if event.is_synthetic:
            return  # watchdog's own walk of a moved-in folder; we scan it ourselves below
        src = self._outer(root, event.src_path)
        dest = self._outer(root, event.dest_path) if event.dest_path else ""
        kind = event.event_type
        if event.is_directory:
            if kind == "created":
                self._hint_tree(root, src)
            elif kind == "moved" and dest:
                self._hint_tree(root, dest, moved_from=src)
            return
        if kind == "moved":
            if self._wanted(root, src):
                self._hint(src)
            if dest and self._wanted(root, dest):
                self._hint(dest)
        elif kind in ("created", "modified", "attrib", "closed", "deleted"):
            if self._wanted(root, src):
                self._hint(src)

    def _hint_tree(self, root: _Root, folder: str, *, moved_from: str = "") -> None:
        """Hint every matching file under a folder that appeared (created or moved in).

        For a folder moved within the root, the files' old paths are hinted too (they are gone);
        a folder renamed to a hidden name (".trash") hints only the old paths.
        """
        new_ok = is_within(folder, root.path) and not _hidden_below(folder, root.path)
        old_ok = bool(moved_from) and is_within(moved_from, root.path) and not _hidden_below(
            moved_from, root.path)
        if not (new_ok or old_ok):
            return
        for path, _st in scan(folder, self.matcher, log=self._log):
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
    def _outer(root: _Root, path: bytes | str) -> str:
        """Event paths are under the resolved root; hints use the root as configured."""
        text = os.fsdecode(path)
        if root.real != root.path and is_within(text, root.real):
            return root.path + text[len(root.real):]
        return text


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
