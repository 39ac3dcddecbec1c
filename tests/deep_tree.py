"""Deep chains of folders for the depth-limit tests, made and removed without recursion.

Python 3.11's os.makedirs, os.walk and shutil.rmtree all recurse: each raises RecursionError on a
1,500-deep chain (which is the point of the tests), so the chains are built and removed here
one folder at a time, and a test removes its chain itself before pytest cleans tmp_path.
"""

from __future__ import annotations

import os
from pathlib import Path

CHAIN_DEPTH = 1500      # issue 10, defect 5: the depth that crashed start-up


def make_chain(top: Path, depth: int = CHAIN_DEPTH, *, name: str = "d") -> Path:
    """top/d/d/.../d (depth folders below top, top made too); returns the deepest folder."""
    top.mkdir(parents=True, exist_ok=True)
    path = str(top)
    for _ in range(depth):
        path = os.path.join(path, name)
        os.mkdir(path)
    return Path(path)


def remove_chain(top: Path) -> None:
    """Remove top and everything in it, deepest first, without recursion (plain trees only)."""
    if not top.exists():
        return
    order: list[str] = []
    stack = [str(top)]
    while stack:
        folder = stack.pop()
        order.append(folder)
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                else:
                    os.unlink(entry.path)
    for folder in reversed(order):
        os.rmdir(folder)
