"""daemon.upload.source: how seqdrop opens the files it uploads."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from daemon.errors import FileChanged
from daemon.upload.source import open_source


def test_a_regular_file_opens_read_only_and_blocking(tmp_path):
    """A regular file gives a blocking, read-only, close-on-exec descriptor of its bytes."""
    p = tmp_path / "r.fastq"
    p.write_bytes(b"@r\nACGT\n+\nIIII\n")
    fd = open_source(str(p))
    try:
        assert os.get_blocking(fd) and not os.get_inheritable(fd)
        assert os.read(fd, 100) == p.read_bytes()
        with pytest.raises(OSError):
            os.write(fd, b"x")
    finally:
        os.close(fd)


def test_a_fifo_is_refused_at_once_instead_of_blocking(tmp_path):
    """A FIFO in the file's place is FileChanged at once (a plain open() would wait for a writer for ever)."""
    p = tmp_path / "x.fastq"
    os.mkfifo(p)
    result: list[BaseException] = []
    t = threading.Thread(target=lambda: result.append(pytest.raises(FileChanged, open_source, str(p)).value),
                         daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "open_source blocked on a FIFO"
    assert "not a regular file" in str(result[0])


def test_links_sockets_and_missing_files_are_file_changed(tmp_path):
    """A symbolic link (even to a good file), a socket and a missing path are all 'no longer the file'."""
    target = tmp_path / "t.fastq"
    target.write_bytes(b"@r\nA\n+\nI\n")
    (tmp_path / "link.fastq").symlink_to(target)
    with pytest.raises(FileChanged, match="symbolic link"):
        open_source(str(tmp_path / "link.fastq"))
    with pytest.raises(FileChanged, match="deleted"):
        open_source(str(tmp_path / "gone.fastq"))
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(tmp_path / "s.fastq"))
        with pytest.raises(FileChanged):
            open_source(str(tmp_path / "s.fastq"))
    finally:
        sock.close()
