"""The queue's files on disk: the one-daemon lock, private modes, and what a storage error means.

design.md ("Rules"): state files are mode 0600 (the queue holds live S3 POST policies); persistent
storage errors must make the daemon unhealthy so that systemd restarts it, while a full disk that
frees up again must not. `storage_fault` sorts an error by SQLite's result code (sqlite3 errors
carry it since Python 3.11), never by its words: a damaged file never heals by waiting; a failing
or full disk, or a lock held too long, may, so the caller judges those by how long they last.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sqlite3
import stat

from daemon.queue.base import StoreLocked

STORE_DAMAGED, STORE_FAILING = "damaged", "failing"
_DAMAGED_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
_FAILING_CODES = frozenset({sqlite3.SQLITE_IOERR, sqlite3.SQLITE_FULL, sqlite3.SQLITE_CANTOPEN,
                            sqlite3.SQLITE_READONLY, sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED,
                            sqlite3.SQLITE_NOMEM, sqlite3.SQLITE_PROTOCOL, sqlite3.SQLITE_NOLFS,
                            sqlite3.SQLITE_PERM})
_FAILING_ERRNOS = frozenset({errno.EIO, errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.ENXIO})


def storage_fault(exc: BaseException) -> str | None:
    """STORE_DAMAGED, STORE_FAILING, or None for an error that says nothing about the storage
    (a bug: a constraint, a closed connection, misuse of the API)."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is None:
            return None
        primary = code & 0xFF                   # an extended code (SQLITE_IOERR_WRITE) → its family
        if primary in _DAMAGED_CODES:
            return STORE_DAMAGED
        return STORE_FAILING if primary in _FAILING_CODES else None
    if isinstance(exc, OSError) and exc.errno in _FAILING_ERRNOS:
        return STORE_FAILING
    return None


def take_lock(path: str) -> int:
    """Take the one-daemon lock of the queue at `path` (an flock on `<real path>.lock`, held as long
    as the descriptor returned is open). The real path: a second daemon reaching the same queue through
    a symbolic link (to the file or a folder above it) takes the same lock and is refused (issue 10,
    defect 9). Raises StoreLocked if another daemon holds it."""
    fd = os.open(os.path.realpath(path) + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreLocked(f"another seqdrop daemon is using the queue {path}") from None
    make_private(fd)
    return fd


def make_private(fd: int) -> None:
    """State files are 0600, whoever created them (an older seqdrop left the queue 0644)."""
    try:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and st.st_mode & 0o077:
            os.fchmod(fd, 0o600)
    except OSError:
        pass      # not ours to change (root reading a queue another user owns): leave it


def create_private(path: str) -> None:
    """Create the queue file if it is missing, and make it and its side files private, before
    SQLite opens it: SQLite creates -wal and -shm with the database file's mode."""
    for suffix, create in (("", True), ("-wal", False), ("-shm", False)):
        flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | (os.O_CREAT if create else 0)
        try:
            fd = os.open(path + suffix, flags, 0o600)
        except OSError:
            continue      # no such side file, or a path SQLite reports better (a folder)
        try:
            make_private(fd)
        finally:
            os.close(fd)


__all__ = ["STORE_DAMAGED", "STORE_FAILING", "create_private", "make_private", "storage_fault", "take_lock"]
