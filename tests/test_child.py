"""daemon.checks.child: a file validated by `python -m daemon.checks.validate --json` in a child process,
its verdict read back as the exceptions of daemon.errors."""

from __future__ import annotations

import gzip

import pytest
from harness import fastq_bytes

from daemon.checks.child import ChildValidator
from daemon.errors import ContentRejected, FileChanged


def _child(path, size: int | None = None) -> ChildValidator:
    return ChildValidator(str(path), path.stat().st_size if size is None else size)


def test_a_valid_file_of_the_size_expected_passes(tmp_path):
    """finish() returns for a valid file whose validated size is the size being sent."""
    path = tmp_path / "reads.fastq.gz"
    path.write_bytes(gzip.compress(fastq_bytes(50_000)))
    child = _child(path)
    try:
        child.finish()
        assert child.proc.returncode == 0
    finally:
        child.close()


def test_an_invalid_file_is_rejected_with_the_childs_reason(tmp_path):
    """A truncated file: check() (once the child has ended) and finish() raise ContentRejected naming it."""
    path = tmp_path / "cut.fastq"
    path.write_bytes(fastq_bytes(20_000)[:-7])
    child = _child(path)
    try:
        child.proc.wait(timeout=30)
        with pytest.raises(ContentRejected, match="cut.fastq"):
            child.check()
        with pytest.raises(ContentRejected, match="cut.fastq"):
            child.finish()
    finally:
        child.close()


def test_a_verdict_on_another_size_is_a_changed_file(tmp_path):
    """The child validated a different number of bytes than are being sent: FileChanged, never passed."""
    path = tmp_path / "reads.fastq"
    path.write_bytes(fastq_bytes(20_000))
    child = _child(path, size=path.stat().st_size + 1)
    try:
        with pytest.raises(FileChanged, match="changed while it was being validated"):
            child.finish()
    finally:
        child.close()


def test_a_file_the_child_cannot_read_is_a_changed_file(tmp_path):
    """The file is gone when the child opens it: its io_error verdict is FileChanged (that version vanished)."""
    child = ChildValidator(str(tmp_path / "gone.fastq"), 100)
    try:
        with pytest.raises(FileChanged):
            child.finish()
    finally:
        child.close()


def test_close_ends_a_child_still_running(tmp_path):
    """close() kills a child whose verdict nobody waits for and releases its pipes."""
    path = tmp_path / "reads.fastq"
    path.write_bytes(fastq_bytes(20_000))
    child = _child(path)
    child.close()
    assert child.proc.poll() is not None
    assert child.proc.stdout is not None and child.proc.stdout.closed
