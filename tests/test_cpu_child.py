"""The validator child runs seqdrop's own validator whatever the working directory holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.checks.child import ChildValidator


def test_child_ignores_a_daemon_package_in_the_working_directory(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """`python -m` puts the working directory first on sys.path: a folder named `daemon` where
    `seqdrop upload` is run must not replace the validator (the child runs with -P)."""
    impostor = tmp_path / "cwd" / "daemon"
    impostor.mkdir(parents=True)
    (impostor / "__init__.py").write_text("raise SystemExit(3)\n")
    reads = tmp_path / "reads.fastq"
    reads.write_bytes(b"@r1\nACGT\n+\nIIII\n" * 1000)
    monkeypatch.chdir(impostor.parent)
    child = ChildValidator(str(reads), reads.stat().st_size)
    try:
        child.finish()          # raises Transient ("the validator process failed") if the impostor ran
    finally:
        child.close()
    assert child.proc.returncode == 0
