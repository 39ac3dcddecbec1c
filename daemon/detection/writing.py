"""Which files a local writer still holds open: inotify's close events, for the tracker.

design.md, "Finished-file detection": on a local filesystem, where inotify reports closes, a file
written since its last close is not finished whatever its settle time. A sequencer (or a copy)
that pauses longer than ``settle_seconds`` at a record boundary must not have half a file uploaded.

The watcher feeds every inotify file event of a matching path to ``WritingSet.event``; the tracker
asks ``WritingSet.holds(path)`` before it calls a settled file finished. A path is marked by
IN_MODIFY (bytes written) and forgotten by IN_CLOSE_WRITE (the last close of a descriptor opened
for writing), or when a different file takes or leaves the path (created, moved in or out,
deleted). A writer that dies without closing is closed by the kernel at exit: IN_CLOSE_WRITE
still comes.

What this cannot know, so settle time and markers decide as before:
- files found by a scan (no event since the daemon started): a daemon restarted while a writer
  holds a file sees it only as still for settle_seconds;
- polled roots (network shares deliver no inotify events for other machines' writes);
- events the kernel dropped (queue overflow): every mark is forgotten (``clear``);
- a second descriptor closed after writing while the first writer still holds the file (inotify
  does not say which descriptor closed): the mark is forgotten early.
Memory: one path per file written and not yet closed, at most ``MAX_PATHS`` (the oldest marks are
dropped beyond that: those files fall back to settle time).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from watchdog.observers.inotify_c import InotifyConstants

from daemon.paths import is_within

_C = InotifyConstants
MAX_PATHS = 100_000
# A different file now (or no longer) at the path: whatever was known about the old one is moot.
_OTHER_FILE = _C.IN_CREATE | _C.IN_MOVED_FROM | _C.IN_MOVED_TO | _C.IN_DELETE


class WritingSet:
    """Paths written since their last close. Thread-safe: fed by the inotify reader thread, asked by
    the tracker's thread."""

    def __init__(self, max_paths: int = MAX_PATHS) -> None:
        self._paths: OrderedDict[str, None] = OrderedDict()
        self._max = max_paths
        self._lock = threading.Lock()

    def event(self, path: str, mask: int) -> None:
        """One inotify event (its mask) on a file at path."""
        with self._lock:
            if mask & (_C.IN_CLOSE_WRITE | _OTHER_FILE):
                self._paths.pop(path, None)
            if mask & _C.IN_MODIFY and not mask & _C.IN_CLOSE_WRITE:
                self._paths[path] = None
                self._paths.move_to_end(path)
                while len(self._paths) > self._max:
                    self._paths.popitem(last=False)

    def holds(self, path: str) -> bool:
        """Has a writer written to path since its last close (as far as events tell)?"""
        with self._lock:
            return path in self._paths

    def forget_under(self, root: str) -> None:
        """A root is no longer watched with inotify (gone, restarted, switched to polling)."""
        with self._lock:
            for path in [p for p in self._paths if is_within(p, root)]:
                del self._paths[path]

    def clear(self) -> None:
        """Events were lost (queue overflow, a dead reader thread): no close can be relied on."""
        with self._lock:
            self._paths.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._paths)
