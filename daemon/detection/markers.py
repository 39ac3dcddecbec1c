"""Run-completion markers: a run folder's files wait until the run folder says it is complete.

Instruments write their FASTQ files over minutes or hours and only then drop a small marker
file. A file that is merely stable (see the tracker's ``settle_s``) may still belong to a run
that is being copied; with a marker rule the tracker also waits for the marker.

Presets (per watch path, ``[watch] markers = "illumina"`` or similar in the config):

- ``illumina``: ``CopyComplete.txt``, written by the instrument control software once the whole
  run folder has been copied to the output location. ``RTAComplete.txt`` alone is *not* enough:
  on NovaSeq (and other RTA3 instruments) it is written when base calling ends, before the copy
  to the network output folder is finished, so files can still be incomplete when it appears.
- ``bclconvert``: ``Logs/FastqComplete.txt`` in the BCL Convert output folder, written when all
  FASTQ files have been written.
- ``nanopore``: ``final_summary_*.txt`` (e.g. ``final_summary_FAQ12345_abcdef12.txt``) in the
  flow cell run folder, written by MinKNOW when the run ends.
- ``glob:<pattern>``: a custom glob, relative to each candidate folder (``glob:done/*.ok``).

Which folder is the run folder? The file's own folder and each ancestor up to and including the
watch root are candidates: the file may go once any of them holds a matching marker. This covers
every layout without knowing it (Illumina's ``Data/Intensities/BaseCalls``, BCL Convert's
``<project>/`` sub-folders, MinKNOW's ``fastq_pass/barcode01``).

This module only reads (``os.path.isfile`` and ``glob``); it never writes anything.
"""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Callable

from daemon.paths import is_within

PRESETS: dict[str, tuple[str, ...]] = {
    "illumina": ("CopyComplete.txt",),
    "bclconvert": ("Logs/FastqComplete.txt",),
    "nanopore": ("final_summary_*.txt",),
}

_LABELS = {"illumina": "Illumina", "bclconvert": "BCL Convert", "nanopore": "Nanopore MinKNOW"}

# Sub-folders that betray a run folder: the folder holding one of them is the run folder.
_RUN_SUBDIRS = frozenset({
    "Data", "InterOp", "Logs", "Reports",                      # Illumina, BCL Convert
    "fastq_pass", "fastq_fail", "fastq_skip", "pod5_pass",     # MinKNOW
    "pod5_fail", "pod5_skip", "bam_pass", "bam_fail", "pod5",
})
_RUN_FILES = ("RunInfo.xml", "RunParameters.xml", "runParameters.xml")

# A flood of files (a MinKNOW run writes thousands) asks about the same folders again and
# again; a short-lived answer per folder saves the repeated directory listings.
CACHE_TTL_S = 2.0
_CACHE_MAX = 4096


class MarkerRule:
    """The marker rule of one watch root: which marker files release a run folder's files."""

    def __init__(self, root: str, patterns: tuple[str, ...], *, label: str | None = None,
                 clock: Callable[[], float] = time.monotonic, ttl_s: float = CACHE_TTL_S) -> None:
        self.root = os.path.abspath(root)
        self.patterns = patterns
        self.label = label
        self._clock = clock
        self._ttl_s = ttl_s
        self._cache: dict[str, tuple[float, bool]] = {}

    @classmethod
    def parse(cls, spec: str | None, root: str, **kwargs) -> MarkerRule:
        """``None``/``"none"`` → no marker; a preset name; or ``"glob:<pattern>"``."""
        text = (spec or "none").strip()
        if text.lower() == "none":
            return cls(root, (), **kwargs)
        if text.lower().startswith("glob:"):
            pattern = text[len("glob:"):].strip()
            if not pattern or os.path.isabs(pattern) or ".." in pattern.split("/"):
                raise ValueError(
                    f"marker {spec!r}: the glob must be a relative pattern such as "
                    "'glob:done/*.ok', matched inside each candidate run folder")
            return cls(root, (pattern,), **kwargs)
        if text.lower() in PRESETS:
            name = text.lower()
            return cls(root, PRESETS[name], label=_LABELS[name], **kwargs)
        names = ", ".join(sorted(PRESETS))
        raise ValueError(
            f"unknown run marker {spec!r}: use one of {names}, 'none', "
            "or a custom glob written as 'glob:<pattern>' (e.g. 'glob:CopyComplete.txt')")

    def waiting_for(self, path: str) -> str | None:
        """None if the file may go; otherwise a sentence for ``status`` saying what it waits for."""
        if not self.patterns:
            return None
        folders = self._candidates(os.path.abspath(path))
        if any(self._has_marker(folder) for folder in folders):
            return None
        where = self._run_folder_guess(os.path.abspath(path), folders)
        markers = " or ".join(self.patterns)
        label = f" ({self.label})" if self.label else ""
        return f"waiting for run marker {markers} in {where}{label}"

    def run_folder(self, path: str) -> str | None:
        """The nearest folder (the file's own, up to the root) holding this rule's marker, or None."""
        if not self.patterns:
            return None
        return next((f for f in self._candidates(os.path.abspath(path)) if self._has_marker(f)), None)

    def marker_in(self, folder: str) -> bool:
        """Does this folder itself hold the rule's marker?"""
        return bool(self.patterns) and self._has_marker(os.path.abspath(folder))

    def candidates(self, path: str) -> list[str]:
        """The folders that may be path's run folder: its own and its ancestors up to the root."""
        return self._candidates(os.path.abspath(path))

    # -- internals -----------------------------------------------------------------------------

    def _candidates(self, path: str) -> list[str]:
        """The file's folder and its ancestors up to the root (nearest first)."""
        folder = os.path.dirname(path)
        if not is_within(folder, self.root):
            return [folder]  # not under this root (one-shot uploads): only its own folder
        folders = [folder]
        while folder != self.root:
            parent = os.path.dirname(folder)
            if parent == folder:
                break
            folder = parent
            folders.append(folder)
        return folders

    def _has_marker(self, folder: str) -> bool:
        now = self._clock()
        hit = self._cache.get(folder)
        if hit is not None and hit[0] > now:
            return hit[1]
        found = any(_marker_in(folder, pattern) for pattern in self.patterns)
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[folder] = (now + self._ttl_s, found)
        return found

    def _run_folder_guess(self, path: str, folders: list[str]) -> str:
        """The folder that would normally hold the marker, for the message only."""
        child = path
        for folder in folders:  # nearest first
            if os.path.basename(child) in _RUN_SUBDIRS and child != path:
                return folder
            if any(os.path.isfile(os.path.join(folder, name)) for name in _RUN_FILES):
                return folder
            if folder != self.root and (os.path.isdir(os.path.join(folder, "Reports"))
                                        or os.path.isdir(os.path.join(folder, "Logs"))):
                return folder
            child = folder
        # Fallback: the top-level folder under the root that holds the file, or the root.
        if folders[-1] != self.root:
            return folders[0]
        return folders[-2] if len(folders) >= 2 else self.root


def _marker_in(folder: str, pattern: str) -> bool:
    if any(ch in pattern for ch in "*?["):
        matches = glob.iglob(os.path.join(glob.escape(folder), pattern))
        return any(os.path.isfile(m) for m in matches)
    return os.path.isfile(os.path.join(folder, pattern))


