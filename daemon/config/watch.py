"""The [watch] table: the folders the instruments write into, and which files in them count.

A watch folder is a path, or a table of its own ({path, marker, polling}); settings that belong to
one folder are read in `_folder`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from daemon.config.reader import Section
from daemon.config.samples import ASSEMBLY_KEYS, FolderSamples, folder_overrides
from daemon.landing.settings import LAYER_KEYS
from daemon.paths import is_within

DEFAULT_INCLUDE = tuple(
    f"*{ext}{comp}"
    for ext in (".fastq", ".fq", ".fasta", ".fa", ".fna")
    for comp in ("", ".gz", ".bz2")
)
WATCH_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")    # a watch folder's name on a shared queue
MARKER_PRESETS = ("illumina", "bclconvert", "nanopore")
# Folders more than this many levels below a watch folder are neither watched nor scanned: no
# instrument writes that deep (Illumina's deepest is ~6), and a tree of any depth must cost a
# warning, not the daemon (issue 10: a 1,500-deep chain crashed start-up).
DEFAULT_MAX_DEPTH = 32
MAX_MAX_DEPTH = 256


@dataclass(frozen=True)
class WatchFolder:
    path: str                 # absolute
    marker: str | None = None  # None, a preset name, or "glob:<pattern>"
    polling: bool = False
    samples: FolderSamples | None = None   # its own pairing, lanes, wait, project, tags, metadata
    id: str | None = None     # its name on a shared queue: the same on every host mounting it (document.py)


@dataclass(frozen=True)
class WatchSettings:
    folders: tuple[WatchFolder, ...] = ()
    settle_seconds: float = 30.0
    rescan_interval_s: float = 300.0
    poll_interval_s: float = 10.0
    include: tuple[str, ...] = DEFAULT_INCLUDE
    exclude: tuple[str, ...] = ()
    max_depth: int = DEFAULT_MAX_DEPTH

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(f.path for f in self.folders)


def parse_watch(s: Section, *, check_folders: bool) -> WatchSettings:
    entries = s.get("paths", [], list, fix='paths = ["/srv/sequencer/output"]')
    folders = tuple(_folder(s, i, entry, check_folders=check_folders) for i, entry in enumerate(entries))
    _check_distinct(s, folders)
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
        include=include, exclude=exclude, max_depth=_max_depth(s),
    )


def _max_depth(s: Section) -> int:
    depth = s.get("max_depth", DEFAULT_MAX_DEPTH, int, fix=f"max_depth = {DEFAULT_MAX_DEPTH}")
    if not 1 <= depth <= MAX_MAX_DEPTH:
        raise s.error("max_depth", f"must be between 1 and {MAX_MAX_DEPTH} (got {depth})",
                      fix=f"the number of folder levels below a watch folder that are watched, e.g. "
                          f"{DEFAULT_MAX_DEPTH}")
    return depth


def _check_distinct(s: Section, folders: tuple[WatchFolder, ...]) -> None:
    """Each folder once, judged by its real path: a folder listed twice, or once through a symbolic
    link, would have its files seen under two paths and uploaded twice (issue 10, defect 9). A
    folder inside another one is allowed (to give a run folder its own marker) only as a path below
    the other entry, for the same reason."""
    real = [os.path.realpath(f.path) for f in folders]
    for j in range(len(folders)):
        for i in range(j):
            if real[i] == real[j]:
                raise s.error("paths", f"the same folder is listed twice: paths[{i}] {folders[i].path} and "
                                       f"paths[{j}] {folders[j].path}{_through(folders[i].path, folders[j].path, real[i])}",
                              fix=f"list each folder once (keep one of the two entries; its real path is {real[i]})")
            for inner, outer in ((i, j), (j, i)):
                if is_within(real[inner], real[outer]) and not is_within(folders[inner].path, folders[outer].path):
                    below = os.path.join(folders[outer].path, os.path.relpath(real[inner], real[outer]))
                    raise s.error("paths", f"paths[{inner}] {folders[inner].path} is inside paths[{outer}] "
                                           f"{folders[outer].path} through a symbolic link (its real path is "
                                           f"{real[inner]}); its files would be seen twice and uploaded twice",
                                  fix=f"list it by its path below the other entry: {below}")


def _through(a: str, b: str, real: str) -> str:
    """How two entries can be one folder: nothing to say for the same path, else the links."""
    if a == b:
        return ""
    links = [p for p in (a, b) if p != real]
    verb = "is a symbolic link" if len(links) == 1 else "are symbolic links"
    return f" ({' and '.join(links)} {verb} to {real}); its files would be uploaded twice"


def _folder(s: Section, index: int, entry: Any, *, check_folders: bool) -> WatchFolder:
    """One item of paths: a folder path, or a table {path, marker, polling}."""
    key = f"paths[{index}]"
    if isinstance(entry, str):
        entry = {"path": entry}
    if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
        raise s.error(key, "must be a folder path or {path = \"...\", marker = \"...\", polling = true}",
                      fix='e.g. paths = ["/srv/out", {path = "/mnt/nas", polling = true}]')
    extra = set(entry) - {"path", "marker", "polling", "id", *ASSEMBLY_KEYS, *LAYER_KEYS}
    if extra:
        raise s.error(key, f"unknown key(s) {', '.join(sorted(extra))}",
                      fix=f"a watch entry takes path, marker, polling, id, {', '.join(ASSEMBLY_KEYS + LAYER_KEYS)}")
    folder_id = entry.get("id")
    if folder_id is not None and not (isinstance(folder_id, str) and WATCH_ID.fullmatch(folder_id)):
        raise s.error(key, f"id must be a short name of letters, digits, '.', '_' or '-' (got {folder_id!r})",
                      fix='e.g. {path = "/mnt/nas/miseq", id = "miseq"}')
    own = set(entry) & {*ASSEMBLY_KEYS, *LAYER_KEYS}
    samples = folder_overrides(entry, file=s.file, key=f"{s.name}.{key}") if own else None
    marker = _marker(s, key, entry.get("marker"))
    polling = entry.get("polling", False)
    if not isinstance(polling, bool):
        raise s.error(key, "polling must be true or false", fix="polling = true")
    folder = s.path(entry["path"])
    if check_folders:
        _check_folder(s, key, folder)
    return WatchFolder(path=folder, marker=marker, polling=polling, samples=samples, id=folder_id)


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
    """The daemon can watch it: it is a folder this user can list. A folder that is not there (yet)
    is no error: the daemon waits for it (a NAS that comes up after the server; design.md), and
    `seqdrop check` reports it."""
    if not os.path.exists(folder):
        return
    if not os.path.isdir(folder):
        raise s.error(key, f"watch path {folder} is not a folder", fix="name the folder the instrument writes into")
    if not os.access(folder, os.R_OK | os.X_OK):
        raise s.error(key, f"watch folder {folder} cannot be read by this user",
                      fix="give the user seqdrop runs as read access (e.g. add it to the "
                          "instrument's group), then start it again")
