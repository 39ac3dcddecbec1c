"""The watch roots as one object: which root holds a path, what its marker rule says, whether it is gone.

The tracker asks these three questions about every path it decides on; the answers depend only on
the configured folders and the file system, so they live here rather than in the service.
Roots may nest (a run folder watched with its own marker inside a watched share): the innermost
root that holds a path decides for it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable

from daemon.detection.markers import MarkerRule
from daemon.paths import is_within


class WatchRoots:
    def __init__(self, folders: Iterable[tuple[str, str | None]] = (), *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """folders: (path, marker spec) per configured watch folder, in the configured order;
        clock: the marker rules' (how long a folder's answer is cached)."""
        pairs = list(folders)
        self.paths: tuple[str, ...] = tuple(path for path, _ in pairs)
        # Innermost first: the longest path that holds a file is the deepest root holding it.
        self._rules = [(path, MarkerRule.parse(marker, path, clock=clock))
                       for path, marker in sorted(pairs, key=lambda p: len(p[0]), reverse=True)]

    def root_of(self, path: str) -> str | None:
        """The innermost watch root holding path, or None if no root does."""
        for root, _ in self._rules:
            if is_within(path, root):
                return root
        return None

    def waiting_for(self, path: str) -> str | None:
        """Why path must wait for its run marker (a sentence for `status`), or None if it may go."""
        for root, rule in self._rules:
            if is_within(path, root):
                return rule.waiting_for(path)
        return None

    def gone(self, path: str) -> bool:
        """Is the watch root holding path missing as a whole (a share unmounted)? A missing file
        under such a root is no deletion: it is looked at again when the root returns."""
        root = self.root_of(path)
        return root is not None and root != path and not os.path.isdir(root)

    def missing(self) -> list[str]:
        """The roots that are not there now (unmounted, deleted, not yet mounted)."""
        return [root for root in self.paths if not os.path.isdir(root)]
