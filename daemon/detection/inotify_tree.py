"""The inotify watches of one watch folder: one per folder, down to ``[watch] max_depth``.

Part of the watcher's room (with watcher.py, the only modules that import watchdog). Why not
watchdog's recursive mode: it walks a tree with ``os.walk``, which recurses in Python 3.11, in
several places (adding watches, a folder created or moved in, a queue overflow), and it cannot be
told to stop at a depth. A 1,500-deep chain of folders raised RecursionError at start-up (a
systemd restart loop), and the same tree moved in while running killed its thread (issue 10,
defect 5). So each folder gets a plain watch of its own, added by an iterative walk that stops
at the depth limit; watchdog's ``InotifyFD`` (the kernel interface and its reader thread) calls
``on_event`` for every event of those watches.

Rules kept:
- A folder is watched before it is listed: what appears in it later is an event, what was there
  before is in the listing, so nothing falls between the two.
- Hidden folders are not watched (their files never count); one renamed to a visible name is a
  moved-to event on its parent, and watched then.
- A folder moved away loses its watches at once (they would follow it outside the tree and
  report under stale paths); where it lands inside the tree it is walked and watched again.
- Memory: one path per watched folder, none per file.
- Nothing raised while handling an event reaches watchdog's reader thread.
"""

from __future__ import annotations

import errno
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from watchdog.observers.inotify_c import (
    CallbackId,
    InotifyConstants,
    InotifyEvent,
    InotifyFD,
)

from daemon.detection.files import DepthLimit, sub_folders
from daemon.paths import is_within

_C = InotifyConstants
# Deliberately not subscribed: opened and closed-without-writing, so that our own uploads (which
# read the files) cause no events at all (see watcher.py).
MASK = (_C.IN_CREATE | _C.IN_MODIFY | _C.IN_ATTRIB | _C.IN_CLOSE_WRITE | _C.IN_MOVED_FROM | _C.IN_MOVED_TO
        | _C.IN_DELETE | _C.IN_DELETE_SELF | _C.IN_MOVE_SELF
        | _C.IN_DONT_FOLLOW | _C.IN_ONLYDIR | _C.IN_EXCL_UNLINK)
_FILE_EVENTS = (_C.IN_CREATE | _C.IN_MODIFY | _C.IN_ATTRIB | _C.IN_CLOSE_WRITE | _C.IN_MOVED_FROM
                | _C.IN_MOVED_TO | _C.IN_DELETE)
# Folders moved away whose arrival (the moved-to half, same cookie) may still come: the two halves
# of a rename inside the tree arrive together; a move out of the tree never pairs, hence the bound.
PENDING_MOVES = 256

OnFile = Callable[[str, int], None]                 # a file created/written/closed/moved/deleted, the event mask
OnFolder = Callable[[str, int, str], None]          # folder that appeared, its depth, where it was ("")


class WatchTree:
    """Watches one folder tree (``root``: its real path) on a shared ``InotifyFD``.

    ``start()`` watches the tree (an OSError for the root itself reaches the caller);
    ``close()`` removes every watch. ``alive`` turns False when the root's own watch is gone
    (the folder deleted or its file system unmounted); ``limit_hit`` True when a sub-folder could
    not be watched for want of inotify watches (the caller then polls the root instead).
    """

    def __init__(self, inotify: InotifyFD, root: str, *, limit: DepthLimit, on_file: OnFile, on_folder: OnFolder,
                 on_overflow: Callable[[], None], log: Any) -> None:
        self.root = root
        self.limit = limit
        self.limit_hit = False
        self._inotify = inotify
        self._on_file, self._on_folder, self._on_overflow = on_file, on_folder, on_overflow
        self._log = log
        self._id = CallbackId(id(self))
        self._lock = threading.RLock()
        self._path_of: dict[int, str] = {}      # watch descriptor -> folder
        self._depth_of: dict[int, int] = {}     # watch descriptor -> depth below the root
        self._wd_of: dict[str, int] = {}        # folder -> watch descriptor
        self._moves: OrderedDict[int, str] = OrderedDict()   # cookie -> folder moved away
        self._root_wd: int | None = None
        self._closed = False

    # -- lifetime ------------------------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            self._root_wd = self._add(self.root, 0)
            self._add_tree(self.root, 0)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            wds = list(self._path_of)
            self._path_of.clear()
            self._depth_of.clear()
            self._wd_of.clear()
        self._remove(wds)

    @property
    def alive(self) -> bool:
        with self._lock:
            return not self._closed and self._root_wd in self._path_of

    def watched(self) -> int:
        """How many folders are watched (for tests and logs)."""
        with self._lock:
            return len(self._path_of)

    # -- watchdog's WatchCallback --------------------------------------------------------------
    def on_event(self, event: InotifyEvent) -> None:
        try:
            self._handle(event)
        except Exception as exc:   # the reader thread serves every tree: it must never die here
            self._log.error("watcher.handler_error", root=self.root, fs_event=repr(event), error=repr(exc),
                            exc_info=True)

    def on_watch_deleted(self, wd: int) -> None:
        """The kernel dropped a watch: its folder was deleted (or its file system unmounted)."""
        with self._lock:
            self._forget_wd(wd)

    def on_queue_overflow(self) -> None:
        try:
            self._on_overflow()
        except Exception as exc:
            self._log.error("watcher.handler_error", root=self.root, error=repr(exc), exc_info=True)

    # -- events --------------------------------------------------------------------------------
    def _handle(self, event: InotifyEvent) -> None:
        with self._lock:
            if self._closed or not event.name:
                return       # IN_DELETE_SELF/IN_MOVE_SELF: on_watch_deleted, or the caller's identity check
            folder, depth = self._path_of.get(event.wd), self._depth_of.get(event.wd)
        if folder is None or depth is None:
            return           # an event queued before its folder moved away
        path = os.path.join(folder, os.fsdecode(event.name))
        if not event.is_directory:
            if event.mask & _FILE_EVENTS:
                self._on_file(path, event.mask)
            return
        if event.is_moved_from:
            with self._lock:
                self._forget_tree(path)
                self._moves[event.cookie] = path
                while len(self._moves) > PENDING_MOVES:
                    self._moves.popitem(last=False)
        elif event.is_create or event.is_moved_to:
            with self._lock:
                moved_from = self._moves.pop(event.cookie, "") if event.is_moved_to else ""
                if not event.name.startswith(b".") and not self._closed:   # closed meanwhile: no new watches
                    self._add_tree(path, depth + 1)
            self._on_folder(path, depth + 1, moved_from)

    # -- watches (called with the lock held) -----------------------------------------------------
    def _add_tree(self, top: str, depth: int) -> None:
        """Watch top and every visible folder below it that the depth limit allows, top first."""
        if not self.limit.allows(depth):
            self.limit.too_deep(top, self._log)
            return
        for folder, level in sub_folders(top, self.limit, depth=depth, log=self._log):
            if folder not in self._wd_of:
                self._add(folder, level)
            if self.limit_hit:
                return       # no watches left: the caller switches this root to polling

    def _add(self, folder: str, depth: int) -> int | None:
        """One watch; None if the folder cannot be watched (an OSError for the root is raised)."""
        try:
            wd = self._inotify.add_callback(os.fsencode(folder), MASK, self, self._id)
        except OSError as exc:
            if folder == self.root:
                raise
            if exc.errno == errno.ENOSPC:
                self.limit_hit = True
            elif exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                self._log.warning("watcher.watch_failed", path=folder, error=str(exc))
            return None
        if wd == -1:
            # watchdog's inotify_c swallows EACCES and registers descriptor -1: undo that.
            self._remove([wd])
            if folder == self.root:
                raise PermissionError(errno.EACCES, "cannot watch this folder (permission denied)", folder)
            return None
        stale = self._path_of.get(wd)
        if stale is not None and self._wd_of.get(stale) == wd:
            del self._wd_of[stale]      # the same folder reached under a new path
        self._path_of[wd], self._depth_of[wd], self._wd_of[folder] = folder, depth, wd
        return wd

    def _forget_tree(self, top: str) -> None:
        """Stop watching top and everything below it (it moved away)."""
        wds = [wd for wd, path in self._path_of.items() if is_within(path, top)]
        for wd in wds:
            self._forget_wd(wd)
        self._remove(wds)

    def _forget_wd(self, wd: int) -> None:
        path = self._path_of.pop(wd, None)
        self._depth_of.pop(wd, None)
        if path is not None and self._wd_of.get(path) == wd:
            del self._wd_of[path]

    def _remove(self, wds: list[int]) -> None:
        if not wds:
            return
        try:
            self._inotify.remove_callbacks([(wd, self._id) for wd in wds])
        except OSError as exc:     # the folder is gone already: nothing to remove
            self._log.debug("watcher.unwatch_failed", root=self.root, error=repr(exc))
