"""Opening an instrument's file for reading: the one way seqdrop opens a file it uploads.

- read-only, and without touching its access time where the kernel allows (O_NOATIME needs the
  file's owner or CAP_FOWNER; otherwise a plain read-only open);
- never blocking: a FIFO swapped in for the file after it settled would block a plain open() until
  some process writes to it, and a worker would hang for good (O_NONBLOCK, then fstat);
- never through a symbolic link in the last component (O_NOFOLLOW): a file replaced by a link is not
  the file that settled, and the link may lead outside the watch folder;
- close-on-exec: the validator child must not inherit it.
"""

from __future__ import annotations

import errno
import os
import stat

from daemon.errors import FileChanged

_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC


def open_source(path: str | bytes) -> int:
    """A blocking read-only descriptor of the regular file at path. Raises FileChanged if it is gone or
    is no longer a regular file; PermissionError if this user may not read it."""
    try:
        try:
            fd = os.open(path, _FLAGS | getattr(os, "O_NOATIME", 0))
        except PermissionError:            # O_NOATIME refused (not our file): open without it
            fd = os.open(path, _FLAGS)
    except FileNotFoundError:
        raise FileChanged("deleted before it was uploaded") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise FileChanged("replaced by a symbolic link before it was uploaded") from None
        if e.errno in (errno.ENXIO, errno.ENODEV):   # a socket, a device without a driver
            raise FileChanged("replaced by something that is not a regular file (a socket, a device)") from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FileChanged("replaced by something that is not a regular file (a FIFO, a socket, a device)")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd
