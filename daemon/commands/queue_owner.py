"""Whose are the queue's files: the trap of a queue that root made by running seqdrop once by hand.

The service runs as its own user (seqdrop) in a state folder that user owns (StateDirectory=; systemd
fixes the ownership of the files below it only when the folder itself has the wrong owner). After root
ran `seqdrop run` by hand once, the queue and its -wal, -shm and .lock files are root's, and the
service fails with SQLite's "attempt to write a readonly database": its folder is writable, the files
in it are not. The folder's owner says whom the queue belongs to; a file of the queue that another
user owns, and that this user cannot write, is the trap, and `chown` is the fix.
"""

from __future__ import annotations

import os
import pwd

QUEUE_FILES = ("", "-wal", "-shm", ".lock")     # the database and what SQLite and the daemon put beside it


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def foreign_files(queue_path: str) -> list[tuple[str, str]]:
    """The queue's files that belong to another user than the queue's folder does and that this user
    cannot write, as (path, owner's name). None for root, who writes anything."""
    if os.geteuid() == 0:
        return []
    try:
        folder_uid = os.stat(os.path.dirname(os.path.abspath(queue_path))).st_uid
    except OSError:
        return []
    found = []
    for suffix in QUEUE_FILES:
        path = queue_path + suffix
        try:
            st = os.stat(path)
        except OSError:
            continue
        if st.st_uid != folder_uid and not os.access(path, os.W_OK):
            found.append((path, user_name(st.st_uid)))
    return found


def ownership_problem(queue_path: str) -> tuple[str, str] | None:
    """(what is wrong, the fix) when the queue's files are another user's (see the module docstring)."""
    files = foreign_files(queue_path)
    if not files:
        return None
    folder = os.path.dirname(os.path.abspath(queue_path))
    owner = user_name(os.stat(folder).st_uid)
    named = ", ".join(f"{path} belongs to {who}" for path, who in files)
    problem = (f"the queue's files belong to another user than its folder {folder} ({owner}): {named}; "
               f"seqdrop, running as {user_name(os.geteuid())}, cannot write them")
    fix = f"as root: chown {owner}: {folder}/*   (then start it again; someone ran seqdrop as that user?)"
    return problem, fix
