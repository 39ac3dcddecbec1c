"""Fixtures shared by the daemon's tests: a sandbox One Codex over loopback and a watch folder; how
pytest-xdist shares the tests out (scripts/dev test runs them in 3 worker processes)."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import API_KEY

try:
    from xdist.scheduler import LoadScopeScheduling
except ImportError:           # the [test] extra installs pytest-xdist; without it the suite runs in one process
    LoadScopeScheduling = None

from daemon.sandbox import Sandbox

# -- how pytest-xdist shares the tests out (scripts/dev: -n 3 --dist loadgroup) --------------------------
MODULE_FIXTURE = re.compile(r"""fixture\(\s*scope\s*=\s*["'](module|package)["']""")


@functools.cache
def _has_module_fixture(root: Path, module: str) -> bool:
    path = root / module
    return path.suffix == ".py" and path.is_file() and MODULE_FIXTURE.search(path.read_text()) is not None


if LoadScopeScheduling is not None:
    class ModuleFixtureGroups(LoadScopeScheduling):
        """--dist loadgroup, plus: the tests of a module that defines a module-scoped fixture go to one
        worker (spread out, each worker would build it again: test_bundle's bundle takes 20 s). Every
        other test is a unit of its own, handed to whichever worker is free.

        Why not xdist's own loadgroup with xdist_group marks: it passes a test's group on by appending
        "@group" to its node id, which pytest 9.2 no longer lets it change, so the marks are silently
        ignored (pytest-xdist issue 1386). Here the scheduler decides from the node id and the module's
        source alone; an "@group" that an older pytest did pass on is still honoured."""

        def _split_scope(self, nodeid: str) -> str:
            if nodeid.rfind("@") > nodeid.rfind("]"):
                return nodeid.rsplit("@", 1)[1]
            module = nodeid.split("::", 1)[0]
            return module if _has_module_fixture(self.config.rootpath, module) else nodeid


@pytest.hookimpl(optionalhook=True, tryfirst=True)    # before xdist's own (firstresult)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if LoadScopeScheduling is None or config.getvalue("dist") != "loadgroup":
        return None                  # xdist's own scheduler for the other --dist modes
    return ModuleFixtureGroups(config, log)


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    """A strict One Codex + S3 emulator on loopback that accepts harness.API_KEY."""
    with Sandbox(api_keys=(API_KEY,)) as sb:
        yield sb


@pytest.fixture
def watch_dir(tmp_path: Path) -> Path:
    """An empty watch folder (the queue and config live beside it, never inside)."""
    path = tmp_path / "watch"
    path.mkdir()
    return path


# The PostgreSQL server for the shared queue's tests (pg_server: session-wide; pg_url: a fresh database).
from pg_server import pg_server, pg_url  # noqa: F401
