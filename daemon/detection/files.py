"""Which files count, and the walk that finds them: name patterns, the depth limit, the scan.

No watchdog here: the scan is plain ``os.scandir`` with a stack of its own (never recursion: a
1,500-deep chain of folders must cost a warning, not a RecursionError; issue 10, defect 5).
"""

from __future__ import annotations

import fnmatch
import os
import re
import stat
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import structlog

from daemon.config import DEFAULT_INCLUDE, DEFAULT_MAX_DEPTH

# Names that writers use while a file is incomplete, or for scratch copies. Hidden names
# (leading ".") are refused separately: that covers rsync's ".name.XXXXXX", emacs' ".#name",
# vim's ".name.swp", NFS's ".nfsXXXX" and Samba's ".smbdeleteXXXX".
TEMP_PATTERNS: tuple[str, ...] = (
    "*.tmp", "*.temp", "*.part", "*.partial", "*.filepart",   # curl/wget/browsers, WinSCP
    "*.crdownload", "*.download", "*.!sync", "*.swp", "*.swx",
    "*~", "#*#", "~$*",                                       # editors, Office lock files
)

# How many too-deep folders are remembered (each is warned about once); past that, one more
# warning says that further ones go unnamed. Memory must not grow with what a share holds.
MAX_FOLDERS_WARNED = 1000

_log = structlog.get_logger("seqdrop.watcher")


class DepthLimit:
    """How deep below a watch folder seqdrop looks (``[watch] max_depth``).

    The watch folder is depth 0; a folder ``max_depth`` levels below it is still watched and
    scanned (its files count), its sub-folders are not. A folder found too deep is named in one
    warning, once per process (rescans do not repeat it). Thread-safe: the scan, the inotify
    thread and the poll threads share one.
    """

    def __init__(self, max_depth: int = DEFAULT_MAX_DEPTH) -> None:
        self.max_depth = max_depth
        self._warned: set[str] = set()
        self._full = False
        self._lock = threading.Lock()

    def allows(self, depth: int) -> bool:
        return depth <= self.max_depth

    def too_deep(self, folder: str, log: Any = None) -> None:
        """Say once that folder (and everything below it) is skipped, with the fix."""
        with self._lock:
            if folder in self._warned or self._full:
                return
            if len(self._warned) >= MAX_FOLDERS_WARNED:
                self._full = True
                folder_text = f"{folder} (and more; further ones are not named)"
            else:
                self._warned.add(folder)
                folder_text = folder
        (log or _log).warning(
            "watch.too_deep", folder=folder_text, max_depth=self.max_depth,
            fix=f"this folder is more than {self.max_depth} levels below its watch folder, so nothing in it "
                f"is watched or uploaded; move the files higher up, or raise [watch] max_depth if the "
                f"instrument really writes this deep")


class Matcher:
    """Which files are candidates: included, not excluded, not hidden, not temporary, not too deep.

    Globs (fnmatch syntax) are matched against the file *name*, case-insensitively: instruments
    write lower case, but ``.FASTQ.GZ`` from Windows tools exists in the wild. Exclude wins.
    ``depth`` is the limit every walk of a watch folder keeps (the scan, the inotify watches).
    """

    def __init__(self, include: Iterable[str] = DEFAULT_INCLUDE, exclude: Iterable[str] = (), *,
                 max_depth: int = DEFAULT_MAX_DEPTH) -> None:
        self.include = tuple(include)
        self.exclude = tuple(exclude)
        self.depth = DepthLimit(max_depth)
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
        return f"Matcher(include={self.include!r}, exclude={self.exclude!r}, max_depth={self.depth.max_depth})"


def _compile(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    return re.compile("|".join(fnmatch.translate(p) for p in patterns), re.IGNORECASE)


def scan(root: str, matcher: Matcher, *, log: Any = None, depth: int = 0) -> Iterator[tuple[str, os.stat_result]]:
    """Every matching regular file under ``root``, as (absolute path, lstat result).

    - ``depth``: how deep ``root`` itself lies below its watch folder (a folder that appeared
      inside a watched tree); folders deeper than ``matcher.depth`` allows are not entered, and
      named once in a warning.
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
    if not matcher.depth.allows(depth):
        matcher.depth.too_deep(root, log)
        return
    stack = [(os.path.abspath(root), depth)]
    while stack:
        folder, level = stack.pop()
        try:
            with os.scandir(folder) as entries:
                for entry in _entries(entries, folder, log):
                    if entry.name.startswith("."):
                        continue
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            if matcher.depth.allows(level + 1):
                                stack.append((entry.path, level + 1))
                            else:
                                matcher.depth.too_deep(entry.path, log)
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


def sub_folders(root: str, limit: DepthLimit, *, depth: int = 0, log: Any = None,
                unreadable: list[str] | None = None) -> Iterator[tuple[str, int]]:
    """Every visible folder under ``root`` (root first) that ``limit`` allows, with its depth: the
    folders an inotify watch is put on, walked the way ``scan`` walks them (no recursion, no
    symbolic links, no hidden folders). Folders that cannot be listed are added to ``unreadable``.
    The caller may add a folder's watch before the walk lists it (the generator lists a folder
    only when asked for the next one), so nothing created meanwhile falls between the two."""
    stack = [(root, depth)]
    while stack:
        folder, level = stack.pop()
        yield folder, level
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
                        continue
                    if limit.allows(level + 1):
                        stack.append((entry.path, level + 1))
                    else:
                        limit.too_deep(entry.path, log)
        except OSError as exc:
            if unreadable is not None and not isinstance(exc, (FileNotFoundError, NotADirectoryError)):
                unreadable.append(folder)
