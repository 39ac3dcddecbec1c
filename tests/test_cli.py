"""The command line as users and scripts see it: exit codes, messages, no tracebacks."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import pytest
from harness import Daemon, fastq_bytes, wait_for

# All imported here, not first under pyfakefs: its dynamic patching would leave them bound to the
# fake file system.
from daemon import config
from daemon.commands import upload as oneshot
from daemon.commands.check import _check_folders, _Report
from daemon.config import Settings, WatchFolder, WatchSettings
from daemon.queue.base import Identity
from daemon.queue.sqlite import SqliteStore
from daemon.sandbox import Sandbox
from daemon.sandbox.faults import Fault
from daemon.upload import retrying

KEY = "cli-test-key"
ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "daemon" / "samples"


def seqdrop(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in ("ONE_CODEX_API_KEY", "SEQDROP_CONFIG")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "daemon", *args], capture_output=True, text=True, check=False,
                          env=full_env, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def sb():
    with Sandbox(api_keys=(KEY,)) as sandbox:
        yield sandbox


@pytest.fixture
def cfg(tmp_path, sb):
    watch = tmp_path / "watch"
    watch.mkdir()
    p = tmp_path / "config.toml"
    p.write_text(f'[api]\nbase_url = "{sb.api_url}"\n[watch]\npaths = ["{watch}"]\n'
                 f'[queue]\npath = "{tmp_path}/q.sqlite3"\n')
    return str(p)


@pytest.mark.parametrize("args,code,words", [
    (["run", "--config", "/nonexistent/seqdrop.toml"], 2, "does not exist"),
    (["status", "--config", "/nonexistent/seqdrop.toml"], 2, "no config at /nonexistent/seqdrop.toml"),
    (["frobnicate"], 2, "invalid choice"),
    ([], 2, "usage"),
])
def test_usage_and_config_errors_exit_2_without_traceback(args, code, words):
    """Usage and config mistakes exit 2 with a message and never a traceback."""
    r = seqdrop(*args)
    assert r.returncode == code
    assert words in (r.stderr + r.stdout)
    assert "Traceback" not in r.stderr


def test_bad_config_key_names_file_key_and_fix(tmp_path):
    """A typo in the config exits 2 naming the file, the key and the fix."""
    p = tmp_path / "c.toml"
    p.write_text("[upload]\nworkres = 3\n")
    r = seqdrop("--config", str(p), "run")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert str(p) in r.stderr and "workres" in r.stderr and "fix:" in r.stderr


def test_config_option_works_before_and_after_the_subcommand(cfg):
    """--config is accepted on either side of the subcommand name."""
    assert seqdrop("--config", cfg, "status", "--json").returncode == 0
    assert seqdrop("status", "--config", cfg, "--json").returncode == 0
    assert seqdrop("status", "--json", env={"SEQDROP_CONFIG": cfg}).returncode == 0


def test_missing_api_key_is_a_config_error(cfg):
    """run without any API key exits 2 and says where a key can come from."""
    r = seqdrop("run", "--config", cfg)
    assert r.returncode == 2 and "ONE_CODEX_API_KEY" in r.stderr and "Traceback" not in r.stderr


def test_status_json_before_the_daemon_ever_ran(cfg):
    """status --json works with no queue yet: every state counted as zero, no files."""
    r = seqdrop("status", "--json", "--config", cfg)
    doc = json.loads(r.stdout)
    assert doc["files"] == [] and set(doc["counts"]) == {"seen", "queued", "uploading", "done", "rejected",
                                                         "failed", "vanished"}


def test_upload_confirms_files_and_exits_0(cfg, sb, tmp_path):
    """seqdrop upload FILE... confirms each file and exits 0; the key never shows in the output."""
    r = seqdrop("upload", "--config", cfg, str(SAMPLES / "demo_R1.fastq"), str(SAMPLES / "demo_contigs.fasta"),
                env={"ONE_CODEX_API_KEY": KEY})
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("confirmed as sample") == 2
    assert KEY not in r.stdout + r.stderr


def test_upload_exits_1_when_a_file_is_rejected(cfg, tmp_path):
    """One bad file among good ones: exit 1, the bad one named with its reason."""
    bad = tmp_path / "bad.fastq"
    bad.write_bytes(b"@r1\nACGT\n+\nII\n")
    r = seqdrop("upload", "--config", cfg, str(SAMPLES / "demo_R1.fastq"), str(bad), env={"ONE_CODEX_API_KEY": KEY})
    assert r.returncode == 1
    assert "confirmed as sample" in r.stdout and "bad.fastq: rejected" in r.stdout


def test_upload_with_a_wrong_key_says_so(cfg):
    """A rejected key: exit 1 and 'API key rejected', no traceback."""
    r = seqdrop("upload", "--config", cfg, str(SAMPLES / "demo_R1.fastq"), env={"ONE_CODEX_API_KEY": "nope"})
    assert r.returncode == 1 and "API key rejected" in r.stdout and "Traceback" not in r.stderr


def test_check_reports_a_good_setup_and_a_bad_key(cfg):
    """check exits 0 when all is well, 1 with the problem and its fix when the key is refused."""
    good = seqdrop("check", "--config", cfg, env={"ONE_CODEX_API_KEY": KEY})
    assert good.returncode == 0 and "all good" in good.stdout
    bad = seqdrop("check", "--config", cfg, env={"ONE_CODEX_API_KEY": "wrong"})
    assert bad.returncode == 1 and "rejected" in bad.stdout and "fix:" in bad.stdout
    assert "wrong" not in bad.stdout.replace("rejected", "")


def test_check_with_a_broken_config_exits_2(tmp_path):
    """check names the config problem and exits 2."""
    p = tmp_path / "c.toml"
    p.write_text("[watch]\npaths = '/no/such/folder'\n")     # a missing folder is waited for, no config error
    r = seqdrop("check", "--config", str(p))
    assert r.returncode == 2 and "wrong type" in r.stdout
    assert r.stdout.count("fix:") == 1, r.stdout      # the fix once, on its own line


# pyfakefs Patcher(additional_skip_names, modules_to_reload, modules_to_patch, allow_root_user)
@pytest.mark.parametrize("fs", [[None, None, None, False]], indirect=True)
def test_check_warns_about_subfolders_it_cannot_read(fs):
    """check names a subfolder of a watch folder that this user cannot list (the daemon would skip its
    files) with the fix; a warning, as the rest of the folder works."""
    fs.create_file("/out/locked/a.fastq")
    fs.create_file("/out/open/b.fastq")
    os.chmod("/out/locked", 0o311)  # can be entered, cannot be listed
    out = io.StringIO()
    report = _Report(out)
    _check_folders(Settings(watch=WatchSettings(folders=(WatchFolder("/out"),))), report)
    assert report.problems == 0 and report.warnings == 1, out.getvalue()
    assert "/out/locked" in out.getvalue() and "read access" in out.getvalue()


def test_check_refuses_a_config_without_watch_folders(tmp_path):
    """check says what `run` would refuse: an empty watch.paths is a config problem (exit 2), not 'ok'."""
    p = tmp_path / "c.toml"
    p.write_text(f'[watch]\npaths = []\n[queue]\npath = "{tmp_path}/q.sqlite3"\n')
    r = seqdrop("check", "--config", str(p), env={"ONE_CODEX_API_KEY": KEY})
    assert r.returncode == 2 and "PROBLEM" in r.stdout and "no watch folders" in r.stdout
    assert "fix:" in r.stdout and "Traceback" not in r.stderr
    assert seqdrop("run", "--config", str(p), env={"ONE_CODEX_API_KEY": KEY}).returncode == 2


def test_retry_names_unknown_and_unretryable_ids(cfg, tmp_path):
    """retry with an ID not in the queue exits 2 naming it; a done file's ID is named and left alone;
    a failed one named beside them is still put back; a non-number or huge ID is a usage error."""
    store = SqliteStore(str(tmp_path / "q.sqlite3"))
    done = store.add_seen(str(tmp_path / "a.fastq"), Identity(1, 2, 3, 4))
    store.set_state(done, "done")
    failed = store.add_seen(str(tmp_path / "b.fastq"), Identity(1, 3, 3, 4))
    store.set_state(failed, "failed", error="400")
    store.close()
    r = seqdrop("retry", str(done), str(failed), "99999", "--config", cfg)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "no file with id 99999" in r.stderr and "seqdrop status" in r.stderr
    assert f"file {done} is done" in r.stdout and "1 file put back" in r.stdout
    os.rename(tmp_path / "q.sqlite3", tmp_path / "moved.sqlite3")
    r = seqdrop("retry", "5", "--config", cfg)
    assert r.returncode == 2 and "No queue yet" in r.stdout
    for bad in ("abc", "0", "99999999999999999999999"):
        r = seqdrop("retry", bad, "--config", cfg)
        assert r.returncode == 2 and "not a file ID" in r.stderr and "Traceback" not in r.stderr


def test_retry_takes_a_local_sample_as_status_shows_it(cfg, tmp_path):
    """`retry s12` puts a rejected paired sample back as one (its two members queued again); a sample not
    in the queue exits 2 naming it and the fix; `sx` is a usage error."""
    store = SqliteStore(str(tmp_path / "q.sqlite3"))
    r1 = store.add_seen(str(tmp_path / "Liver_R1.fastq"), Identity(1, 2, 3, 4))
    r2 = store.add_seen(str(tmp_path / "Liver_R2.fastq"), Identity(1, 3, 3, 4))
    sample = store.add_sample(key="k", folder=str(tmp_path), name="Liver", run=None, paired=True,
                              files=[(r1, "R1", None), (r2, "R2", None)], state="rejected", error="pair mismatch")
    store.close()
    r = seqdrop("retry", f"s{sample}", "--config", cfg)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert f"sample Liver (2 files, s{sample}) put back in the queue" in r.stdout
    store = SqliteStore(str(tmp_path / "q.sqlite3"))
    assert [store.get(i).state for i in (r1, r2)] == ["queued", "queued"]
    store.close()
    r = seqdrop("retry", "--rejected", "s999", "--config", cfg)
    assert r.returncode == 2 and "no sample s999" in r.stderr and "seqdrop status" in r.stderr
    r = seqdrop("retry", "sx", "--config", cfg)
    assert r.returncode == 2 and "not a file ID or a local sample" in r.stderr and "Traceback" not in r.stderr


def test_ctrl_c_during_upload_cancels_the_begun_sample(sb, tmp_path):
    """Ctrl-C (SIGINT) while `seqdrop upload` sends a file: exit 1 (design.md), the file named as not uploaded, no
    traceback, and the sample begun for it cancelled rather than left dangling in the account."""
    big = tmp_path / "slow.fastq"
    big.write_bytes(fastq_bytes(3 << 20))
    watch = tmp_path / "watch"
    watch.mkdir()
    cfg = tmp_path / "slow.toml"   # 2 Mbit/s: the file takes about 12 s, so Ctrl-C lands mid-POST
    cfg.write_text(f'[api]\nbase_url = "{sb.api_url}"\n[watch]\npaths = ["{watch}"]\n'
                   f'[queue]\npath = "{tmp_path}/q.sqlite3"\n[upload]\nmax_mbps = 2\n'
                   f'[log]\nlevel = "debug"\nformat = "json"\n')
    before = {s["sample_id"] for s in sb.samples()}
    env = {k: v for k, v in os.environ.items() if k not in ("ONE_CODEX_API_KEY", "SEQDROP_CONFIG")}
    err_path = tmp_path / "stderr.log"
    with open(err_path, "w") as err_file:
        proc = subprocess.Popen([sys.executable, "-m", "daemon", "upload", "--config", str(cfg), str(big)],
                                cwd=ROOT, env={**env, "ONE_CODEX_API_KEY": KEY}, text=True,
                                stdout=subprocess.PIPE, stderr=err_file)
        try:
            # upload.initialized is logged once the sample is recorded: the POST starts right after.
            wait_for(lambda: "upload.initialized" in err_path.read_text(), 15,
                     lambda: f"upload.initialized in:\n{err_path.read_text()}")
            proc.send_signal(signal.SIGINT)
            out, _ = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    err = err_path.read_text()
    assert proc.returncode == 1, out + err
    assert "Traceback" not in err and "seqdrop: interrupted" in err
    assert f"{big}: interrupted; not uploaded" in out
    new = [s["state"] for s in sb.samples() if s["sample_id"] not in before]
    assert new == ["cancelled"], new


@pytest.mark.parametrize("command", ["run", "status"])
def test_a_queue_path_that_is_a_folder_or_another_file_is_named(tmp_path, command):
    """queue.path naming a folder, or a file that is no database, exits 2 saying which, with its fix
    (not 'make its folder writable')."""
    watch = tmp_path / "watch"
    watch.mkdir()
    other = tmp_path / "notes.txt"
    other.write_text("not a database\n" * 100)
    for queue, words in ((tmp_path / "state", "is a folder"), (other, "is not a seqdrop queue")):
        if queue.suffix == "":
            queue.mkdir()
        p = tmp_path / "c.toml"
        p.write_text(f'[watch]\npaths = ["{watch}"]\n[queue]\npath = "{queue}"\n')
        r = seqdrop(command, "--config", str(p), env={"ONE_CODEX_API_KEY": KEY})
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert str(queue) in r.stderr and words in r.stderr and "writable" not in r.stderr, r.stderr
    assert other.read_text() == "not a database\n" * 100


def test_upload_of_an_unreadable_file_says_what_to_do_here(cfg, tmp_path, monkeypatch):
    """seqdrop upload of a file this user cannot read names it with a fix for a one-shot upload (not the
    daemon's `seqdrop retry --failed`), sends nothing for it, and still uploads the others. The refusal is
    faked (tests may run as root, who reads anything)."""
    locked = tmp_path / "locked.fastq"
    locked.write_bytes((SAMPLES / "demo_R1.fastq").read_bytes())

    def fake_open(path, *args, **kwargs):
        if str(path) == str(locked):
            raise PermissionError(13, "Permission denied", str(path))
        return open(path, *args, **kwargs)

    monkeypatch.setattr(oneshot, "open", fake_open, raising=False)
    out = io.StringIO()
    settings = config.load(cfg, check_folders=False)
    code = oneshot.upload_files(settings, KEY, [str(locked), str(SAMPLES / "demo_R1.fastq")], out=out)
    text = out.getvalue()
    assert code == 1, text
    assert f"{locked}: cannot read it (Permission denied)" in text and "retry" not in text
    assert text.count("confirmed as sample") == 1


def test_demo_runs_to_completion():
    """seqdrop demo, with no setup, shows files going through and exits 0."""
    r = seqdrop("demo", timeout=150)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "samples confirmed" in r.stdout and "rejected" in r.stdout


def test_status_prints_one_line_per_file_with_its_error(cfg, tmp_path):
    """Human status: a counts line, a header, then exactly one line per file holding path, state and error."""
    store = SqliteStore(str(tmp_path / "q.sqlite3"))
    a = store.add_seen(str(tmp_path / "a.fastq"), Identity(1, 2, 3, 4))
    store.add_seen(str(tmp_path / "b.fastq"), Identity(1, 3, 3, 4))
    store.set_state(a, "rejected", error="a.fastq: record 2 (line 5): truncated")
    store.close()
    lines = seqdrop("status", "--config", cfg).stdout.strip().splitlines()
    file_lines = [ln for ln in lines if ".fastq" in ln]
    assert len(file_lines) == 2
    assert "rejected" in file_lines[0] and "truncated" in file_lines[0] and "seen" in file_lines[1]


def test_status_keeps_one_line_for_a_name_holding_a_newline(cfg, tmp_path):
    """A file name with a newline or a tab still takes exactly one status line (escaped as \\n, \\t);
    accented and CJK letters are shown as they are; --json keeps the true path."""
    odd = str(tmp_path / "run 1\nlane\t2 日本.fastq")
    store = SqliteStore(str(tmp_path / "q.sqlite3"))
    a = store.add_seen(odd, Identity(1, 2, 3, 4))
    store.set_state(a, "failed", error=f"cannot read {odd} (permission denied)")
    store.close()
    lines = seqdrop("status", "--config", cfg).stdout.strip().splitlines()
    file_lines = [ln for ln in lines if ".fastq" in ln]
    assert len(file_lines) == 1, lines
    assert "run 1\\nlane\\t2 日本.fastq" in file_lines[0] and file_lines[0].count("\\n") == 2
    doc = json.loads(seqdrop("status", "--json", "--config", cfg).stdout)
    assert [f["path"] for f in doc["files"]] == [odd]


def _long_queue(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "q.sqlite3"))
    with store.batch():
        for i in range(3000):
            store.add_seen(str(tmp_path / f"run/sample_{i:05d}_R1.fastq.gz"), Identity(1, i + 10, 3, 4))
    store.close()


def _blocked_in_a_pipe_write(pid: int) -> bool:
    with open(f"/proc/{pid}/wchan") as f:       # pipe_write (anon_pipe_write on newer kernels)
        return "pipe_write" in f.read()


@pytest.mark.parametrize("unbuffered", ["", "1"], ids=["buffered", "PYTHONUNBUFFERED"])
def test_status_piped_into_a_reader_that_leaves_early(cfg, tmp_path, unbuffered):
    """`seqdrop status | head -1` on a long queue (318 KB): the reader leaves while status is blocked
    writing; status says nothing, no traceback, and exits 1. Under PYTHONUNBUFFERED=1 Python's stdout
    dropped the rest of a partial write without an error, and status ended 0 with its output cut."""
    _long_queue(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("ONE_CODEX_API_KEY", "SEQDROP_CONFIG",
                                                           "PYTHONUNBUFFERED")}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = unbuffered
    proc = subprocess.Popen([sys.executable, "-m", "daemon", "status", "--config", cfg], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout.readline().startswith(b"seen 3000")
        wait_for(lambda: _blocked_in_a_pipe_write(proc.pid), 20, "status blocked writing into the full pipe")
        proc.stdout.close()                    # head -1 has what it wanted
        err = proc.stderr.read().decode()
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "Traceback" not in err and "Exception ignored" not in err and not err, err
    assert proc.returncode == 1


def test_upload_names_what_it_cannot_send_and_gives_up_after_max_wait(cfg, sb, tmp_path):
    """In-process `seqdrop upload`: a missing path, a named pipe and a folder without matching files are
    named and skipped; a file the API keeps refusing with 503 is retried, then failed once --max-wait has
    passed; exit 1."""
    out = io.StringIO()
    settings = config.load(cfg, check_folders=False)
    missing, sample = tmp_path / "nope.fastq", SAMPLES / "demo_R1.fastq"
    pipe, empty = tmp_path / "p.fastq", tmp_path / "e"
    os.mkfifo(pipe)
    empty.mkdir()
    sb.add_fault(Fault(target="init_upload", kind="status", status=503, times=None))
    retrying.set_waits(False)   # the retries still happen, without their backoff
    try:
        code = oneshot.upload_files(settings, KEY, [str(missing), str(pipe), str(empty), str(sample)],
                                    max_wait_s=0, out=out)
    finally:
        retrying.set_waits(True)
        sb.clear_faults()
    lines = out.getvalue().splitlines()
    assert code == 1, lines
    assert lines[:3] == [f"{missing}: cannot read it (No such file or directory)", f"{pipe}: not a regular file",
                         f"{empty}: no file in it matches the config's patterns ([watch] include, exclude)"]
    assert lines[3].startswith(f"{sample}: retrying later: ") and "503" in lines[3], lines
    assert lines[4].startswith(f"{sample}: failed: gave up after 0 s of retries; last error: "), lines
    assert len(lines) == 5, lines


def _python_for_nobody() -> list[str] | None:
    """argv that runs this checkout's seqdrop as user nobody (uid 65534), or None: needs root (to set the
    user) and setpriv, and an interpreter nobody may execute (a venv under /root is not one: the system's
    python of the same version is tried next, given the venv's packages)."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        return None
    env = ["env", "-i", "HOME=/tmp", f"PYTHONPATH={ROOT}:{sysconfig.get_paths()['purelib']}",
           f"ONE_CODEX_API_KEY={KEY}"]
    for exe in (sys.executable, f"/usr/bin/python3.{sys.version_info.minor}"):
        argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *env, exe, "-s", "-m", "daemon"]
        if subprocess.run([*argv, "--version"], capture_output=True, timeout=60).returncode == 0:
            return argv
    return None


@pytest.fixture
def root_made_queue():
    """A state folder owned by nobody (the service user) holding a queue that root created (as `sudo seqdrop
    run` would), in a folder every user may traverse; yields (config, state folder, the argv prefix)."""
    argv = _python_for_nobody()
    if argv is None:
        pytest.skip("needs root, setpriv and a python that user nobody can run (to make files another user owns)")
    top = Path(tempfile.mkdtemp(prefix="seqdrop-owner-", dir="/tmp"))
    try:
        top.chmod(0o755)
        state, watch = top / "state", top / "watch"
        state.mkdir()
        watch.mkdir()
        os.chown(state, 65534, 65534)
        config = top / "seqdrop.toml"
        config.write_text(f'[api]\nbase_url = "http://127.0.0.1:9"\n[watch]\npaths = ["{watch}"]\n'
                          f'[queue]\npath = "{state}/queue.sqlite3"\n[log]\nformat = "json"\n')
        config.chmod(0o644)
        store = SqliteStore(str(state / "queue.sqlite3"))
        store.lock_exclusive()
        failed = store.add_seen(str(watch / "a.fastq"), Identity(1, 2, 3, 4))
        store.set_state(failed, "failed", error="400")
        store.close()
        yield config, state, argv
    finally:
        shutil.rmtree(top)


def test_a_queue_root_left_behind_names_its_owner_and_the_chown(root_made_queue):
    """Root ran seqdrop once by hand, so the queue's files are root's: run (exit 1: systemd tries again and
    the service resumes once fixed), retry and check say which files belong to root and give the chown for
    the folder's owner, not "make its folder writable"; status still reads the queue and warns."""
    config, state, argv = root_made_queue
    chown = f"chown nobody: {state}/*"
    for name in os.listdir(state):
        (state / name).chmod(0o644)      # readable by all, as root's umask 022 left them before 0600 state files

    def as_nobody(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*argv, *args, "--config", str(config)], capture_output=True, text=True, timeout=60)

    for command, code in (("run", 1), ("retry", 2), ("check", 1), ("status", 0)):
        r = as_nobody(command)
        text = r.stdout + r.stderr
        assert r.returncode == code, (command, text)
        assert f"{state}/queue.sqlite3 belongs to root" in text and chown in text, (command, text)
        assert "writable by the seqdrop user" not in text and "Traceback" not in text, (command, text)
    assert "1  " in as_nobody("status").stdout.splitlines()[-1]     # the file is still listed
    for name in os.listdir(state):
        (state / name).chmod(0o600)      # private state files: the other user cannot even read them
    r = as_nobody("status")
    assert r.returncode == 2 and chown in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_an_api_key_file_others_can_read_draws_a_warning(cfg, sb, tmp_path):
    """A key file readable by group or others: check warns naming the file and `chmod 600 FILE` (and still
    passes); the daemon says the same at start-up; a 0600 file draws nothing."""
    key_file = tmp_path / "api-key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o644)
    text = Path(cfg).read_text().replace("[api]\n", f'[api]\napi_key_file = "{key_file}"\n')
    Path(cfg).write_text(text + '[log]\nformat = "json"\n')
    r = seqdrop("check", "--config", cfg)
    assert r.returncode == 0 and "warning  API key" in r.stdout, r.stdout
    assert f"{key_file} can be read by its group and every user (mode 0644)" in r.stdout
    assert f"fix: chmod 600 {key_file}" in r.stdout
    log = tmp_path / "daemon.log"
    with Daemon(Path(cfg), log_path=log, api_key=None) as daemon:
        daemon.wait_ready(30)
        event = next(e for e in daemon.log_events() if e["event"] == "config.api_key_file_exposed")
        assert event["level"] == "warning" and event["fix"] == f"chmod 600 {key_file}"
        assert daemon.terminate() == 0
    key_file.chmod(0o600)
    r = seqdrop("check", "--config", cfg)
    assert r.returncode == 0 and "chmod" not in r.stdout and "ok       API key: found" in r.stdout
