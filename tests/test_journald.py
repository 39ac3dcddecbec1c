"""Logs to the systemd journal: entries received on a fake journal socket (a datagram socket in tmp_path),
parsed as journald parses the native protocol, carry their priority and their fields."""

from __future__ import annotations

import array
import io
import json
import os
import socket
import struct
import subprocess
import threading
from pathlib import Path

import pytest
import structlog
from harness import PYTHON, ROOT, daemon_env, fastq_bytes, wait_for, write_config

from daemon.operations import journald, logs
from daemon.sandbox.faults import Fault


def parse_entry(data: bytes) -> dict[str, str]:
    """One native-protocol datagram: FIELD=value lines, or FIELD\\n + 64-bit little-endian length + bytes
    + \\n for a value that holds a newline (https://systemd.io/JOURNAL_NATIVE_PROTOCOL/)."""
    fields: dict[str, str] = {}
    i = 0
    while i < len(data):
        end = data.index(b"\n", i)
        line = data[i:end]
        if b"=" in line:
            name, value = line.split(b"=", 1)
            i = end + 1
        else:
            name = line
            (size,) = struct.unpack("<Q", data[end + 1:end + 9])
            value = data[end + 9:end + 9 + size]
            assert data[end + 9 + size:end + 10 + size] == b"\n", "a framed value ends with a newline"
            i = end + 10 + size
        assert name.decode() not in fields, f"field {name!r} twice"
        fields[name.decode()] = value.decode()
    return fields


class FakeJournal:
    """A SOCK_DGRAM socket where journald's would be; collects entries (also those sent as a memfd)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.entries: list[dict[str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        fds = array.array("i")
        while not self._stop.is_set():
            try:
                data, ancdata, _flags, _addr = self.sock.recvmsg(1 << 20, socket.CMSG_SPACE(fds.itemsize))
            except TimeoutError:
                continue
            except OSError:
                return
            for level, kind, payload in ancdata:   # an entry too big for a datagram: a sealed memfd
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fd = array.array("i", payload[:fds.itemsize])[0]
                    with os.fdopen(fd, "rb") as f:
                        f.seek(0)    # the sender's offset travels with the descriptor; journald maps it whole
                        data = f.read()
            self.entries.append(parse_entry(data))

    def wait(self, event: str, timeout_s: float = 10.0) -> dict[str, str]:
        return wait_for(lambda: next((e for e in self.entries if e.get("EVENT") == event), None), timeout_s,
                        lambda: f"{event} among {[e.get('EVENT') for e in self.entries]}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def journal(tmp_path):
    fake = FakeJournal(tmp_path / "journal.socket")
    yield fake
    fake.close()


@pytest.fixture(autouse=True)
def _restore_logging():
    yield
    structlog.reset_defaults()


def test_warnings_and_errors_carry_their_priority_and_fields(journal):
    """info is PRIORITY 6, a warning 4, an error 3; the event and each key arrive as journal fields
    (EVENT, PATH, SAMPLE_ID, ATTEMPT) beside a readable MESSAGE and SYSLOG_IDENTIFIER=seqdrop."""
    logs.configure("debug", "journal", stream=io.StringIO(), journal_socket=journal.path)
    log = logs.get("seqdrop")
    log.info("upload.confirmed", path="/srv/out/run 1/S1_R1.fastq.gz", sample_id="28459508592a481c", mb_s=41.5)
    log.warning("upload.retry_scheduled", path="/srv/out/a.fastq", attempt=3, retry_in_s=2.0)
    log.error("uploads.paused", reason="API key rejected (HTTP 401)")
    log.debug("watcher.hint", path="/srv/out/a.fastq")
    confirmed, retry = journal.wait("upload.confirmed"), journal.wait("upload.retry_scheduled")
    paused, hint = journal.wait("uploads.paused"), journal.wait("watcher.hint")
    assert (confirmed["PRIORITY"], retry["PRIORITY"], paused["PRIORITY"], hint["PRIORITY"]) == ("6", "4", "3", "7")
    assert confirmed["PATH"] == "/srv/out/run 1/S1_R1.fastq.gz" and confirmed["SAMPLE_ID"] == "28459508592a481c"
    assert confirmed["MB_S"] == "41.5" and confirmed["SYSLOG_IDENTIFIER"] == "seqdrop"
    assert retry["ATTEMPT"] == "3" and paused["REASON"] == "API key rejected (HTTP 401)"
    assert confirmed["MESSAGE"] == ('upload.confirmed path="/srv/out/run 1/S1_R1.fastq.gz" '
                                    'sample_id=28459508592a481c mb_s=41.5')
    assert "LEVEL" not in paused and "TIMESTAMP" not in paused    # PRIORITY, and the journal's own clock


def test_a_multi_line_value_is_framed_and_a_traceback_kept_whole(journal):
    """A value holding newlines travels with the protocol's binary framing, intact; MESSAGE stays one
    line; an exception's traceback is the EXCEPTION field, its last line ends MESSAGE."""
    logs.configure("info", "journal", stream=io.StringIO(), journal_socket=journal.path)
    log = logs.get("seqdrop")
    log.warning("file.rejected", path="/srv/a.fastq", error="line one\nline two\n\tindented")
    try:
        raise ValueError("the store said no")
    except ValueError:
        log.exception("worker.internal_error", worker="worker-1")
    rejected, crashed = journal.wait("file.rejected"), journal.wait("worker.internal_error")
    assert rejected["ERROR"] == "line one\nline two\n\tindented"
    assert "\n" not in rejected["MESSAGE"] and 'error="line one\\nline two\\n\\tindented"' in rejected["MESSAGE"]
    assert crashed["PRIORITY"] == "3" and crashed["WORKER"] == "worker-1"
    assert crashed["EXCEPTION"].startswith("Traceback") and "raise ValueError" in crashed["EXCEPTION"]
    assert crashed["MESSAGE"].endswith('exception="ValueError: the store said no"')


def test_keys_become_valid_field_names_that_cannot_replace_the_journals_own(journal):
    """Journal names are A-Z 0-9 _, never starting with _ or a digit: keys are mapped to such names, and
    a key named like a field the journal gives a meaning to (message, priority) is prefixed SEQDROP_."""
    logs.configure("info", "journal", stream=io.StringIO(), journal_socket=journal.path)
    logs.get().info("odd.keys", message="not the MESSAGE", priority=1, _private="p", **{"2nd": 2, "a.b-c": "x"})
    e = journal.wait("odd.keys")
    assert e["MESSAGE"].startswith("odd.keys ") and e["PRIORITY"] == "6"
    assert e["SEQDROP_MESSAGE"] == "not the MESSAGE" and e["SEQDROP_PRIORITY"] == "1"
    assert e["PRIVATE"] == "p" and e["F_2ND"] == "2" and e["A_B_C"] == "x"
    assert journald.field_name("x" * 100) == "X" * 64


def test_secrets_never_reach_the_journal(journal):
    """A registered secret (the API key) is masked in every field and in MESSAGE."""
    logs.register_secret("key-1234567890")
    logs.configure("info", "journal", stream=io.StringIO(), journal_socket=journal.path)
    logs.get().warning("client.echo", error="server said: bad key key-1234567890")
    e = journal.wait("client.echo")
    assert "key-1234567890" not in json.dumps(e) and logs.MASK in e["ERROR"]


def test_an_entry_bigger_than_a_datagram_still_arrives(journal):
    """A 1 MB value (a pathological traceback) goes as a sealed memfd, as journald accepts it."""
    logs.configure("info", "journal", stream=io.StringIO(), journal_socket=journal.path)
    big = "x" * (1 << 20)
    logs.get().error("big.entry", detail=big)
    assert journal.wait("big.entry")["DETAIL"] == big


def test_without_a_journal_listening_logs_are_json_lines(tmp_path):
    """format = "journal" with no socket there: JSON lines on the output, and a warning saying so."""
    out = io.StringIO()
    logs.configure("info", "journal", stream=out, journal_socket=str(tmp_path / "nothing.socket"))
    logs.get().warning("upload.retry_scheduled", attempt=2)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [e["event"] for e in lines] == ["log.journal_unavailable", "upload.retry_scheduled"]
    assert lines[1]["level"] == "warning" and lines[1]["attempt"] == 2


def test_an_entry_the_journal_refuses_is_written_as_a_json_line(journal):
    """journald gone after start-up (its socket removed): the entry becomes a JSON line, not lost."""
    out = io.StringIO()
    logs.configure("info", "journal", stream=out, journal_socket=journal.path)
    journal.close()
    os.unlink(journal.path)
    logs.get().error("uploads.paused", reason="402")
    line = json.loads(out.getvalue().splitlines()[-1])
    assert line["event"] == "uploads.paused" and line["reason"] == "402" and "journal_error" in line


def test_journal_stream_names_the_stream_systemd_connected(tmp_path):
    """JOURNAL_STREAM "device:inode" matching our output means the journal; another file, a malformed
    value or none means not."""
    with open(tmp_path / "out", "w") as f:
        st = os.fstat(f.fileno())
        assert journald.connected_to_journal([f], {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        assert not journald.connected_to_journal([f], {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})
        assert not journald.connected_to_journal([f], {"JOURNAL_STREAM": "junk"})
        assert not journald.connected_to_journal([f], {})
        assert not journald.connected_to_journal([io.StringIO()], {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})


# The socket path is a module constant (libsystemd's is fixed too); the daemon under test is the real
# `seqdrop run`, started through a one-line wrapper that points the constant at the fake journal.
_RUN_WITH_SOCKET = ("import sys; from daemon.operations import journald; journald.JOURNAL_SOCKET = sys.argv.pop(1); "
                    "from daemon.commands.cli import main; sys.exit(main())")


def test_the_daemon_under_systemd_logs_to_the_journal_with_priorities(tmp_path, watch_dir, sandbox, journal):
    """`seqdrop run` with JOURNAL_STREAM naming its stdout (as systemd sets it) sends its events to the
    journal: a retried S3 answer is a warning (PRIORITY 4), a rejected file an error (PRIORITY 3) with
    its PATH, a confirmed one info (6) with SAMPLE_ID; nothing is written to stdout."""
    config = write_config(tmp_path, watch=[watch_dir], api_url=sandbox.api_url)
    config.write_text(config.read_text().replace('format = "json"', 'format = "auto"'))
    out_path = tmp_path / "stdout"
    with open(out_path, "wb") as out:
        st = os.fstat(out.fileno())
        env = {**daemon_env(), "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        proc = subprocess.Popen([PYTHON, "-c", _RUN_WITH_SOCKET, journal.path, "run", "--config", str(config)],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        journal.wait("service.ready", 20)
        # the bad file first, and the 503 only after it is rejected: its own POST (sent while the validator
        # reads it) would otherwise take the fault, and a cancelled upload schedules no retry
        (watch_dir / "bad.fastq").write_bytes(fastq_bytes(20_000)[:-5])
        rejected = journal.wait("file.rejected", 30)
        sandbox.add_fault(Fault(target="s3", kind="status", status=503, times=1))
        (watch_dir / "good.fastq").write_bytes(fastq_bytes(20_000))
        confirmed = journal.wait("upload.confirmed", 30)
        retried = next((e for e in journal.entries if e["PRIORITY"] == "4" and "503" in e["MESSAGE"]), None)
        assert retried is not None, "\n".join(f"{e['PRIORITY']} {e['MESSAGE'][:300]}" for e in journal.entries)
    finally:
        proc.terminate()
        proc.wait(15)
    assert rejected["PRIORITY"] == "3" and rejected["PATH"] == str(watch_dir / "bad.fastq")
    assert "truncated" in rejected["ERROR"] and rejected["SYSLOG_IDENTIFIER"] == "seqdrop"
    assert confirmed["PRIORITY"] == "6" and len(confirmed["SAMPLE_ID"]) == 16
    assert confirmed["PATH"] == str(watch_dir / "good.fastq")
    assert retried["EVENT"] in ("upload.retry_scheduled", "upload.delayed")
    assert out_path.read_text() == "", out_path.read_text()
    assert proc.returncode == 0
