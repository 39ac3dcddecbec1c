"""The watch roots as one object: which root holds a path, what its marker rule says, whether it is gone.

The tracker and the upload pipeline ask these questions about the paths they decide on; the
answers depend only on the configured folders and the file system, so they live here rather than
in the service. Roots may nest (a run folder watched with its own marker inside a watched share):
the innermost root that holds a path decides for it.

A missing root is waited for, never an error (a NAS that comes up after the server; design.md,
"Config file"): `missing()` names them, and `missing_too_long()` tells the service, once per
episode, which ones have been missing for `MISSING_ALERT_S`.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from daemon.config import WatchSettings
from daemon.config.samples import Assembly, SamplesSettings
from daemon.detection.markers import MarkerRule
from daemon.errors import FileChanged, Transient
from daemon.paths import is_within
from daemon.queue.base import SHARED_DEV

MISSING_ALERT_S = 600.0    # a watch folder missing this long is worth a notification (design.md)
SAMPLE_SHEET = "SampleSheet.csv"   # a folder holding one is its run's folder (design.md, "Runs")


class WatchRoots:
    def __init__(self, folders: Iterable[tuple[str, str | None]] = (), *,
                 clock: Callable[[], float] = time.monotonic, alert_after_s: float = MISSING_ALERT_S,
                 assembly: Mapping[str, Assembly] | None = None, default_assembly: Assembly | None = None) -> None:
        """folders: (path, marker spec) per configured watch folder, in the configured order;
        clock: monotonic, for the marker rules' cache and the missing folders' episodes;
        assembly: each watch folder's sample assembly settings (default_assembly for the others)."""
        pairs = list(folders)
        self._assembly = dict(assembly or {})
        self._default_assembly = default_assembly or Assembly()
        self.paths: tuple[str, ...] = tuple(path for path, _ in pairs)
        self.alert_after_s = alert_after_s
        self._clock = clock
        # Innermost first: the longest path that holds a file is the deepest root holding it.
        self._rules = [(path, MarkerRule.parse(marker, path, clock=clock))
                       for path, marker in sorted(pairs, key=lambda p: len(p[0]), reverse=True)]
        self._missing_since: dict[str, float] = {}
        self._alerted: set[str] = set()

    @classmethod
    def of(cls, watch: WatchSettings, samples: SamplesSettings | None = None, **kwargs: Any) -> WatchRoots:
        """The roots of the [watch] paths; with samples, each folder's assembly settings too."""
        assembly = {f.path: samples.assembly_for(f.samples) for f in watch.folders} if samples else None
        return cls(((f.path, f.marker) for f in watch.folders), assembly=assembly,
                   default_assembly=samples.assembly if samples else None, **kwargs)

    def root_of(self, path: str) -> str | None:
        """The innermost watch root holding path, or None if no root does."""
        for root, _ in self._rules:
            if is_within(path, root):
                return root
        return None

    def assembly_for(self, path: str) -> Assembly:
        """How the files of path's folder become samples: its innermost watch root's settings."""
        root = self.root_of(path)
        return self._assembly.get(root, self._default_assembly) if root else self._default_assembly

    def marker_state(self, folder: str) -> bool | None:
        """A folder's run marker as assembly sees it: None if its root has no marker rule, else
        whether the marker is there (for the folder's files)."""
        rule = self._rule_of(os.path.join(folder, "_"))
        if rule is None or not rule.patterns:
            return None
        return rule.run_folder(os.path.join(folder, "_")) is not None

    def run_of(self, path: str) -> str:
        """The name of path's run (design.md, "Runs"): the nearest folder, up to its watch root, that
        holds the run marker or a SampleSheet.csv; else the file's own folder."""
        rule = self._rule_of(path)
        folders = rule.candidates(path) if rule is not None else [os.path.dirname(os.path.abspath(path))]
        for folder in folders:
            if (rule is not None and rule.marker_in(folder)) or os.path.isfile(os.path.join(folder, SAMPLE_SHEET)):
                return os.path.basename(folder) or folder
        return os.path.basename(folders[0]) or folders[0]

    def _rule_of(self, path: str) -> MarkerRule | None:
        for root, rule in self._rules:
            if is_within(path, root):
                return rule
        return None

    def waiting_for(self, path: str) -> str | None:
        """Why path must wait for its run marker (a sentence for `status`), or None if it may go."""
        for root, rule in self._rules:
            if is_within(path, root):
                return rule.waiting_for(path)
        return None

    def gone(self, path: str, dev: int | None = None) -> bool:
        """Is the missing file at path missing because its watch root is (a share unmounted), rather
        than deleted, moved or renamed? It is looked at again when the root returns.

        True when the innermost root holding path is not there. Given the device the file was on,
        also when the root is there but on another device while every folder between it and the
        file is missing: a share unmounted from a mount point that stays behind, empty. A run
        folder renamed or deleted inside a root that is there is no unmounted share."""
        root = self.root_of(path)
        if root is None or root == path:
            return False
        try:
            st = os.stat(root)
        except OSError:
            return True
        if not stat.S_ISDIR(st.st_mode):
            return True
        if dev is None or dev == SHARED_DEV or st.st_dev == dev:   # SHARED_DEV: another host's device numbers
            return False
        folder = os.path.dirname(path)
        while folder != root and is_within(folder, root):
            if os.path.lexists(folder):
                return False
            folder = os.path.dirname(folder)
        return True

    def missing_file(self, path: str, dev: int) -> Transient | FileChanged:
        """What an upload makes of its file gone missing (dev: the device the version was on): wait
        while its share is gone (Transient); otherwise the version has vanished (FileChanged: the
        row ends `vanished` and its sample is cancelled), e.g. its run folder renamed mid-upload,
        whose file under the new name is a new upload (issue 10, defect 10)."""
        if self.gone(path, dev):
            return Transient(f"the watch folder {self.root_of(path)} is not there (share unmounted?); "
                             f"will try again when it returns", reason="folder_missing")
        folder = os.path.dirname(path)
        if not os.path.isdir(folder):
            return FileChanged(f"its folder {folder} was renamed, moved or deleted during the upload; the "
                               f"upload was cancelled (the file under its new name is uploaded on its own)")
        return FileChanged("deleted or renamed before it was uploaded")

    def missing(self) -> list[str]:
        """The roots that are not there now (unmounted, deleted, not yet mounted)."""
        return [root for root in self.paths if not os.path.isdir(root)]

    def missing_too_long(self) -> list[tuple[str, float]]:
        """The roots missing for alert_after_s or more, each once per episode, with how long (s).

        An episode starts at the first call that finds the root missing and ends at the first that
        finds it back; call it every few seconds (the service's housekeeping)."""
        now = self._clock()
        missing = set(self.missing())
        for root in list(self._missing_since):
            if root not in missing:
                del self._missing_since[root]
                self._alerted.discard(root)
        due = []
        for root in self.paths:
            if root not in missing:
                continue
            since = self._missing_since.setdefault(root, now)
            if now - since >= self.alert_after_s and root not in self._alerted:
                self._alerted.add(root)
                due.append((root, now - since))
        return due
