"""Fixtures shared by the daemon's tests: a sandbox One Codex over loopback and a watch folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import API_KEY

from daemon.sandbox import Sandbox


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
