"""`seqdrop upload FILE|DIR...` as users run it: it consults the daemon's queue (no second sample for a
file the daemon confirmed), takes folders, and says a refusal once."""

from __future__ import annotations

import bz2
import fcntl
import os
import pty
import re
import struct
import subprocess
import termios
from pathlib import Path

from harness import PYTHON, ROOT, Daemon, all_in, confirmed, daemon_env, fastq_bytes, write_config

from daemon.queue.base import Identity
from daemon.queue.sqlite import SqliteStore


def upload(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "daemon", "upload", "--config", str(config), *args], cwd=ROOT,
                          env=daemon_env(), capture_output=True, text=True, timeout=120)


def test_a_backfill_of_what_the_daemon_uploaded_makes_no_second_sample(tmp_path, watch_dir, sandbox):
    """The daemon confirmed a run folder's files; `seqdrop upload` of that folder skips each with its sample
    id (a file moved elsewhere since too, found by device and inode) and exits 0; --force sends them again."""
    run = watch_dir / "run1"
    run.mkdir()
    for name in ("S1_R1.fastq", "S2_R1.fastq", "S3_R1.fastq"):
        (run / name).write_bytes(fastq_bytes(5_000, seed=len(name) + ord(name[1])))
    # R1s whose R2 never comes: single-end after group_wait_seconds (120 s by default; 0 here)
    config = write_config(tmp_path, watch=[watch_dir], api_url=sandbox.api_url,
                          extra="[samples]\ngroup_wait_seconds = 0\n")
    with Daemon(config) as daemon:
        files = daemon.wait_files(all_in("done", ["S1_R1.fastq", "S2_R1.fastq", "S3_R1.fastq"]), 30, "3 done")
        assert daemon.terminate() == 0
    sample_of = {os.path.basename(f["path"]): f["sample_id"] for f in files}
    before = len(confirmed(sandbox))
    elsewhere = tmp_path / "archive"
    elsewhere.mkdir()
    os.rename(run / "S3_R1.fastq", elsewhere / "S3_R1.fastq")      # same device, inode, size, mtime

    r = upload(config, str(run), str(elsewhere / "S3_R1.fastq"))
    assert r.returncode == 0, r.stdout + r.stderr
    for name in ("S1_R1.fastq", "S2_R1.fastq", "S3_R1.fastq"):
        assert f"{name}: already uploaded as sample {sample_of[name]}" in r.stdout, r.stdout
    assert "--force uploads it again" in r.stdout and "confirmed as sample" not in r.stdout
    assert len(confirmed(sandbox)) == before

    forced = upload(config, "--force", str(run / "S1_R1.fastq"))
    assert forced.returncode == 0 and "confirmed as sample" in forced.stdout, forced.stdout + forced.stderr
    assert len(confirmed(sandbox)) == before + 1


def test_a_folder_stands_for_its_matching_files(tmp_path, sandbox):
    """upload DIR sends the files the daemon would take, recursively: the config's patterns, hidden files and
    folders and temporary names left out; a folder with nothing to send is named and the exit is 1."""
    config = write_config(tmp_path, watch=[tmp_path / "w"], api_url=sandbox.api_url)
    (tmp_path / "w").mkdir()
    out = tmp_path / "out"
    (out / "lane2").mkdir(parents=True)
    (out / ".staging").mkdir()
    (out / "A_R1.fastq").write_bytes(fastq_bytes(3_000, seed=1))
    (out / "lane2" / "B_R1.fq.bz2").write_bytes(bz2.compress(fastq_bytes(3_000, seed=2)))
    for skipped in (".A_R1.fastq.swp", ".hidden.fastq", "C_R1.fastq.part", "notes.txt", ".staging/D.fastq"):
        (out / skipped).write_bytes(fastq_bytes(1_000, seed=3))
    empty = tmp_path / "empty"
    empty.mkdir()
    r = upload(config, str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    sent = sorted(line.split(":")[0] for line in r.stdout.splitlines() if "confirmed as sample" in line)
    assert sent == [str(out / "A_R1.fastq"), str(out / "lane2" / "B_R1.fq.bz2")], r.stdout
    assert sorted(s["filename"] for s in confirmed(sandbox)) == ["A_R1.fastq", "B_R1.fq.bz2"]
    r = upload(config, str(empty))
    assert r.returncode == 1 and f"{empty}: no file in it matches the config's patterns" in r.stdout


def test_a_file_the_daemon_is_still_uploading_is_left_to_it(tmp_path, sandbox):
    """A version the daemon's queue holds as queued is not sent a second time (exit 1: not confirmed yet);
    a file that changed since is a new version and goes."""
    config = write_config(tmp_path, watch=[tmp_path / "w"], api_url=sandbox.api_url)
    (tmp_path / "w").mkdir()
    waiting, changed = tmp_path / "waiting.fastq", tmp_path / "changed.fastq"
    waiting.write_bytes(fastq_bytes(2_000, seed=4))
    changed.write_bytes(fastq_bytes(2_000, seed=5))
    store = SqliteStore(str(tmp_path / "state" / "queue.sqlite3"))
    queued = store.add_seen(str(waiting), Identity.of(os.stat(waiting)))
    store.set_state(queued, "queued")
    old = store.add_seen(str(changed), Identity.of(os.stat(changed)))
    store.mark_done(old, sample_id="0123456789abcdef", md5="0" * 32)
    store.close()
    changed.write_bytes(fastq_bytes(2_500, seed=5))
    r = upload(config, str(waiting), str(changed))
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"{waiting}: the daemon is uploading it (queued, file {queued} in its queue); skipped" in r.stdout
    assert f"{changed}: confirmed as sample" in r.stdout
    assert [s["filename"] for s in confirmed(sandbox)] == ["changed.fastq"]


def test_a_daemon_queue_it_cannot_read_stops_it_unless_forced(tmp_path, sandbox):
    """The daemon's queue exists but cannot be read: exit 2 naming it and the choices, nothing sent."""
    config = write_config(tmp_path, watch=[tmp_path / "w"], api_url=sandbox.api_url)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "queue.sqlite3").write_bytes(b"not a database\n" * 400)
    sample = tmp_path / "s.fastq"
    sample.write_bytes(fastq_bytes(2_000, seed=6))
    r = upload(config, str(sample))
    assert r.returncode == 2 and "cannot read the daemon's queue" in r.stderr and "--force" in r.stderr
    assert "Traceback" not in r.stderr and confirmed(sandbox) == []
    assert upload(config, "--force", str(sample)).returncode == 0


def _screen(raw: str) -> list[str]:
    """What a terminal shows after `raw`: escape sequences dropped, each carriage return writing over the
    line from its start (enough for tqdm's bar and its erasing)."""
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw).replace("\r\n", "\n")
    lines = []
    for line in text.split("\n"):
        cells: list[str] = []
        for part in line.split("\r"):
            cells[:len(part)] = part
        lines.append("".join(cells).rstrip())
    return lines


def test_an_invalid_file_is_said_once_and_its_bar_does_not_claim_100_percent(tmp_path, sandbox):
    """On a terminal, a file rejected after all its bytes went out: its reason appears once (not also as a
    log line) and no progress bar is left saying 100 %; a good file keeps its full bar."""
    config = write_config(tmp_path, watch=[tmp_path / "w"], api_url=sandbox.api_url)
    (tmp_path / "w").mkdir()
    bad, good = tmp_path / "bad.fastq", tmp_path / "good.fastq"
    bad.write_bytes(fastq_bytes(2 << 20, seed=7)[:-7])    # cut inside the last record: found at the end
    good.write_bytes(fastq_bytes(100_000, seed=8))
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))   # tqdm needs a width
    proc = subprocess.Popen([PYTHON, "-m", "daemon", "upload", "--config", str(config), str(bad), str(good)],
                            cwd=ROOT, env={**daemon_env(), "TERM": "xterm"}, stdin=subprocess.DEVNULL,
                            stdout=child, stderr=child)
    os.close(child)
    chunks = []
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:       # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(main)
    assert proc.wait(60) == 1
    screen = _screen(b"".join(chunks).decode(errors="replace"))
    said = [line for line in screen if "the file is truncated" in line]
    assert len(said) == 1 and said[0].startswith(f"{bad}: rejected: "), screen
    assert not any("bad.fastq" in line and "100%" in line for line in screen), screen
    assert any("good.fastq" in line and "100%" in line for line in screen), screen


def test_upload_assembles_samples_as_the_daemon_does_without_waiting(tmp_path, sandbox):
    """`upload DIR`: an R1 given without its R2 goes single-end at once (no group wait), an index read is
    skipped (no failure); `--no-pairing` sends a named pair as two samples of their own."""
    config = write_config(tmp_path, watch=[tmp_path / "w"], api_url=sandbox.api_url)
    (tmp_path / "w").mkdir()
    run = tmp_path / "run"
    run.mkdir()
    (run / "Solo_S1_L001_R1_001.fastq").write_bytes(fastq_bytes(3_000, seed=9))
    (run / "Undetermined_S0_L001_I1_001.fastq").write_bytes(fastq_bytes(1_000, seed=10))
    r = upload(config, str(run))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{run / 'Solo_S1_L001_R1_001.fastq'}: confirmed as sample" in r.stdout
    assert f"{run / 'Undetermined_S0_L001_I1_001.fastq'}: skipped: " in r.stdout and "index read" in r.stdout
    assert len(confirmed(sandbox)) == 1              # the index read was not sent (names: the pipeline's)

    pair = tmp_path / "pair"
    pair.mkdir()
    for read in (1, 2):
        (pair / f"P_R{read}.fastq").write_bytes(fastq_bytes(2_000, seed=10 + read))
    r = upload(config, "--no-pairing", str(pair))
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(s["filename"] for s in confirmed(sandbox))[:2] == ["P_R1.fastq", "P_R2.fastq"]
    assert len(confirmed(sandbox)) == 3
