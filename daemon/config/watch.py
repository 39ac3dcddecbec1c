"""The [watch] table: the folders the instruments write into, and which files in them count.

A watch folder is a path, or a table of its own ({path, marker, polling}); settings that belong to
one folder are read in `_folder`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from daemon.config.reader import Section

DEFAULT_INCLUDE = tuple(
    f"*{ext}{comp}"
    for ext in (".fastq", ".fq", ".fasta", ".fa", ".fna")
    for comp in ("", ".gz", ".bz2")
)
MARKER_PRESETS = ("illumina", "bclconvert", "nanopore")


@dataclass(frozen=True)
class WatchFolder:
    path: str                 # absolute
    marker: str | None = None  # None, a preset name, or "glob:<pattern>"
    polling: bool = False


@dataclass(frozen=True)
class WatchSettings:
    folders: tuple[WatchFolder, ...] = ()
    settle_seconds: float = 30.0
    rescan_interval_s: float = 300.0
    poll_interval_s: float = 10.0
    include: tuple[str, ...] = DEFAULT_INCLUDE
    exclude: tuple[str, ...] = ()

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(f.path for f in self.folders)


def parse_watch(s: Section, *, check_folders: bool) -> WatchSettings:
    entries = s.get("paths", [], list, fix='paths = ["/srv/sequencer/output"]')
    folders = tuple(_folder(s, i, entry, check_folders=check_folders) for i, entry in enumerate(entries))
    if len({f.path for f in folders}) != len(folders):
        raise s.error("paths", "the same folder is listed twice", fix="list each folder once")
    include = tuple(s.get("include", list(DEFAULT_INCLUDE), list, fix='include = ["*.fastq.gz"]'))
    exclude = tuple(s.get("exclude", [], list, fix='exclude = ["*_undetermined*"]'))
    for name, patterns in (("include", include), ("exclude", exclude)):
        if not all(isinstance(x, str) and x for x in patterns):
            raise s.error(name, "must be a list of glob patterns (strings)", fix='e.g. ["*.fastq.gz"]')
    return WatchSettings(
        folders=folders,
        settle_seconds=s.number("settle_seconds", WatchSettings.settle_seconds, minimum=0,
                                fix="seconds a file must stay unchanged, e.g. 30"),
        rescan_interval_s=s.number("rescan_interval_s", WatchSettings.rescan_interval_s, minimum=1,
                                   fix="seconds between full rescans, e.g. 300"),
        poll_interval_s=s.number("poll_interval_s", WatchSettings.poll_interval_s, minimum=0.1,
                                 fix="seconds between polls of network shares, e.g. 10"),
        include=include, exclude=exclude,
    )


def _folder(s: Section, index: int, entry: Any, *, check_folders: bool) -> WatchFolder:
    """One item of paths: a folder path, or a table {path, marker, polling}."""
    key = f"paths[{index}]"
    if isinstance(entry, str):
        entry = {"path": entry}
    if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
        raise s.error(key, "must be a folder path or {path = \"...\", marker = \"...\", polling = true}",
                      fix='e.g. paths = ["/srv/out", {path = "/mnt/nas", polling = true}]')
    extra = set(entry) - {"path", "marker", "polling"}
    if extra:
        raise s.error(key, f"unknown key(s) {', '.join(sorted(extra))}",
                      fix="a watch entry takes path, marker and polling")
    marker = _marker(s, key, entry.get("marker"))
    polling = entry.get("polling", False)
    if not isinstance(polling, bool):
        raise s.error(key, "polling must be true or false", fix="polling = true")
    folder = s.path(entry["path"])
    if check_folders:
        _check_folder(s, key, folder)
    return WatchFolder(path=folder, marker=marker, polling=polling)


def _marker(s: Section, key: str, marker: Any) -> str | None:
    """A run marker: None ("" and "none" too), a preset name, or glob:<pattern>."""
    if marker is not None and not isinstance(marker, str):
        raise s.error(key, "marker must be a string",
                      fix='marker = "illumina" | "bclconvert" | "nanopore" | "glob:<pattern>"')
    if marker in (None, "", "none"):
        return None
    if marker in MARKER_PRESETS or (marker.startswith("glob:") and len(marker) > 5):
        return marker
    raise s.error(key, f"unknown run marker {marker!r}",
                  fix=f"one of {', '.join(MARKER_PRESETS)}, or glob:<pattern> (e.g. glob:RunDone.txt)")


def _check_folder(s: Section, key: str, folder: str) -> None:
    """The daemon can watch it: it exists, is a folder, and this user can list it."""
    if not os.path.exists(folder):
        raise s.error(key, f"watch folder {folder} does not exist",
                      fix="create it, mount the share first (the unit orders itself after "
                          "mounts with RequiresMountsFor=), or correct the path")
    if not os.path.isdir(folder):
        raise s.error(key, f"watch path {folder} is not a folder", fix="name the folder the instrument writes into")
    if not os.access(folder, os.R_OK | os.X_OK):
        raise s.error(key, f"watch folder {folder} cannot be read by this user",
                      fix="give the user seqdrop runs as read access (e.g. add it to the "
                          "instrument's group), then start it again")
