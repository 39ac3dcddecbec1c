"""Configuration: the contract's keys, defaults, and a clear error for every mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon import config
from daemon.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> str:
    p = tmp_path / "config.toml"
    p.write_text(text)
    return str(p)


def test_example_config_parses_and_documents_every_key(tmp_path):
    """config.example.toml loads (watch folder aside) and every key the parser knows appears in it."""
    text = (ROOT / "config.example.toml").read_text()
    watch = tmp_path / "out"
    watch.mkdir()
    s = config.load(write(tmp_path, text.replace("/srv/sequencer/output", str(watch))))
    assert s.api.base_url == "https://app.onecodex.com" and s.watch.settle_seconds == 30
    assert s.queue.path == "/var/lib/seqdrop/queue.sqlite3" and s.upload.workers == 2
    for section in ("api", "watch", "queue", "upload", "log", "metrics", "notify"):
        obj = getattr(s, section)
        for key in obj.__dataclass_fields__:
            name = {"folders": "paths"}.get(key, key)
            assert f"{name} =" in text or f"# {name} =" in text, f"[{section}] {name} undocumented"


def test_defaults_and_relative_paths(tmp_path):
    """Relative paths are relative to the config file's folder; defaults fill the rest."""
    (tmp_path / "runs").mkdir()
    s = config.load(write(tmp_path, '[watch]\npaths = ["runs"]\n[queue]\npath = "state/q.db"\n'))
    assert s.watch.paths == (str(tmp_path / "runs"),)
    assert s.queue.path == str(tmp_path / "state" / "q.db")
    assert s.upload.validate is True and s.log.format == "auto"
    assert "*.fastq.gz" in s.watch.include and "*.fna.bz2" in s.watch.include


def test_watch_entry_tables_with_marker_and_polling(tmp_path):
    """A watch entry can be a table with marker and polling."""
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
    s = config.load(write(tmp_path, '[watch]\npaths = ["a", {path = "b", marker = "illumina", polling = true}]\n'))
    assert [(f.marker, f.polling) for f in s.watch.folders] == [(None, False), ("illumina", True)]


@pytest.mark.parametrize("text,key,words", [
    ("[api]\nbase_ulr = 'https://x'\n", "api", "base_ulr"),
    ("[wacth]\npaths=[]\n", "wacth", "unknown section"),
    ("[api]\nbase_url = 'http://app.onecodex.com'\n", "api.base_url", "plain http"),
    ("[api]\nbase_url = 'ftp://x'\n", "api.base_url", "not an http"),
    ("[watch]\nsettle_seconds = 'thirty'\n", "watch.settle_seconds", "wrong type"),
    ("[watch]\nsettle_seconds = -1\n", "watch.settle_seconds", "at least"),
    ("[watch]\npaths = ['/definitely/not/here']\n", "watch.paths[0]", "does not exist"),
    ("[watch]\npaths = [{path = '.', marker = 'miseq'}]\n", "watch.paths[0]", "unknown run marker"),
    ("[upload]\nworkers = 0\n", "upload.workers", "between 1 and 32"),
    ("[upload]\nworkers = true\n", "upload.workers", "true/false"),
    ("[metrics]\nlisten = '0.0.0.0:9808'\n", "metrics.listen", "loopback"),
    ("[notify]\ndaily_summary_at = '25:00'\n", "notify.daily_summary_at", "time of day"),
    ("[api]\nprobe_interval_s = 900\n", "api.probe_interval_s", "at most 300"),
    ("[log]\nlevel = 'loud'\n", "log.level", "unknown level"),
    ("[api\nbase_url = 1\n", None, "not valid TOML"),
    ("[upload]\nmultipart_threshold_bytes = 6000000000\n", "upload.multipart_threshold_bytes", "between"),
    ("[upload]\nmultipart_threshold_bytes = 1000\n", "upload.multipart_threshold_bytes", "between"),
    ("[upload]\nmultipart_s3_endpoint = 'http://s3.example.com'\n", "upload.multipart_s3_endpoint", "plain http"),
])
def test_mistakes_name_the_file_the_key_and_a_fix(tmp_path, text, key, words):
    """Each mistake raises ConfigError whose text names the file, the key and a fix."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        config.load(path)
    msg = str(e.value)
    assert path in msg and words in msg and "fix:" in msg
    if key:
        assert f"[{key}]" in msg


def test_multipart_keys_default_to_5_gib_and_aws(tmp_path):
    """Files over 5 GiB take the multipart route to AWS by default; a rehearsal lowers the threshold and
    names a loopback S3."""
    s = config.load(write(tmp_path, ""))
    assert s.upload.multipart_threshold_bytes == 5 * 1024**3
    assert s.upload.multipart_s3_endpoint == "" and s.upload.multipart_s3_region == ""
    s = config.load(write(tmp_path, "[upload]\nmultipart_threshold_bytes = 20971520\n"
                                    "multipart_s3_endpoint = 'http://127.0.0.1:8702/'\nmultipart_s3_region = 'eu-west-1'\n"))
    assert s.upload.multipart_threshold_bytes == 20 << 20
    assert s.upload.multipart_s3_endpoint == "http://127.0.0.1:8702" and s.upload.multipart_s3_region == "eu-west-1"


def test_missing_file_is_an_error_unless_optional(tmp_path):
    """A named config that does not exist is an error; optional loading falls back to defaults."""
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(str(tmp_path / "nope.toml"))
    assert config.load(str(tmp_path / "nope.toml"), must_exist=False).api.base_url.startswith("https://")


def test_loopback_http_is_allowed(tmp_path):
    """http:// is accepted for 127.0.0.1, localhost and ::1 (the sandbox)."""
    for host in ("127.0.0.1:8700", "localhost:1", "[::1]:8"):
        s = config.load(write(tmp_path, f"[api]\nbase_url = 'http://{host}/'\n"))
        assert s.api.base_url == f"http://{host}"


def test_api_key_sources_in_order(tmp_path):
    """Key from the environment first, then api_key_file, then the systemd credential."""
    keyfile = tmp_path / "key"
    keyfile.write_text("from-file\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "onecodex-api-key").write_text("from-credential")
    s = config.load(write(tmp_path, f"[api]\napi_key_file = '{keyfile}'\n"))
    assert config.load_api_key(s, env={"ONE_CODEX_API_KEY": "from-env"}) == "from-env"
    assert config.load_api_key(s, env={"CREDENTIALS_DIRECTORY": str(creds)}) == "from-file"
    bare = config.load(write(tmp_path, ""))
    assert config.load_api_key(bare, env={"CREDENTIALS_DIRECTORY": str(creds)}) == "from-credential"
    with pytest.raises(ConfigError, match="no One Codex API key"):
        config.load_api_key(bare, env={})
    keyfile.write_text("  \n")
    with pytest.raises(ConfigError, match="is empty"):
        config.load_api_key(s, env={})


@pytest.mark.parametrize("queue", ["runs/q.sqlite3", "runs/sub/q.sqlite3", "link/q.sqlite3"])
def test_a_queue_inside_a_watch_folder_is_refused(tmp_path, queue):
    """A queue inside a watch folder (directly, below it, or through a link to it) is a config error:
    seqdrop would write its database beside the instrument's files."""
    (tmp_path / "runs").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "runs")
    path = write(tmp_path, f'[watch]\npaths = ["runs"]\n[queue]\npath = "{queue}"\n')
    with pytest.raises(ConfigError) as e:
        config.load(path)
    msg = str(e.value)
    assert path in msg and "[queue.path]" in msg and "inside the watch folder" in msg and "fix:" in msg
    # Beside the watch folder (a name that merely starts the same) is fine.
    config.load(write(tmp_path, '[watch]\npaths = ["runs"]\n[queue]\npath = "runs-state/q.sqlite3"\n'))


def test_a_watch_folder_this_user_cannot_read_is_refused(tmp_path, monkeypatch):
    """A watch folder the daemon's user cannot list is a config error naming it and the fix (not a
    daemon that starts and sees nothing). The permission answer is faked: the tests may run as root."""
    (tmp_path / "runs").mkdir()
    path = write(tmp_path, '[watch]\npaths = ["runs"]\n')
    real_access = config.os.access
    monkeypatch.setattr(config.os, "access",
                        lambda p, mode: False if str(p) == str(tmp_path / "runs") else real_access(p, mode))
    with pytest.raises(ConfigError) as e:
        config.load(path)
    msg = str(e.value)
    assert "[watch.paths[0]]" in msg and str(tmp_path / "runs") in msg and "read access" in msg
    config.load(path, check_folders=False)     # status and retry still work


def test_a_config_saved_with_a_byte_order_mark_loads(tmp_path):
    """A config saved by a Windows editor (UTF-8 with a BOM, CRLF line ends) loads like any other."""
    (tmp_path / "runs").mkdir()
    p = tmp_path / "config.toml"
    p.write_bytes(b'\xef\xbb\xbf[watch]\r\npaths = ["runs"]\r\nsettle_seconds = 5\r\n')
    s = config.load(str(p))
    assert s.watch.paths == (str(tmp_path / "runs"),) and s.watch.settle_seconds == 5
