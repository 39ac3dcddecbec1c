"""Path questions asked in several rooms, answered once."""

from __future__ import annotations

import os


def is_within(path: str, root: str) -> bool:
    """Is path the folder root itself or below it? Compares the strings as given (no symlinks
    resolved, no file system access): callers that need real paths resolve them first."""
    if root == os.sep:
        return path.startswith(os.sep)
    root = root.rstrip(os.sep)
    return path == root or path.startswith(root + os.sep)


def is_really_within(path: str, root: str) -> bool:
    """is_within once symbolic links are resolved on both sides."""
    return is_within(os.path.realpath(path), os.path.realpath(root))
