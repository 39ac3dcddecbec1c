"""Configuration: the contract's keys, defaults, and a clear error for every mistake."""

from __future__ import annotations

import os
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
    ("[watch]\nmax_depth = 0\n", "watch.max_depth", "between 1 and 256"),
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
    real_access = os.access
    monkeypatch.setattr(os, "access",
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


# Every message the parser gives, word for word, with its key and fix ("{tmp}" is the config's folder,
# which holds a folder "runs" and a file "afile"). Users and scripts read these: they change on purpose
# only, never as a side effect of reshaping the parser.
EXACT = [
    ("[api]\nbase_url = 1\n", "api.base_url", "has the wrong type (int: 1)",
     'e.g. base_url = "https://app.onecodex.com"'),
    ("[api]\napi_key_file = 5\n", "api.api_key_file", "has the wrong type (int: 5)",
     'api_key_file = "/etc/seqdrop/api-key"'),
    ("[api]\nconnect_timeout_s = 0\n", "api.connect_timeout_s", "must be at least 0.1 (got 0)", "seconds, e.g. 10"),
    ("[api]\nconnect_timeout_s = true\n", "api.connect_timeout_s", "must not be true/false (got True)",
     "seconds, e.g. 10"),
    ("[api]\nread_timeout_s = nan\n", "api.read_timeout_s", "must be a finite number (got nan)", "seconds, e.g. 60"),
    ("[api]\nprobe_interval_s = 0.5\n", "api.probe_interval_s", "must be at least 1 (got 0.5)",
     "seconds, at most 300 (design: probe at least every 5 minutes)"),
    ("[api]\nprobe_interval_s = 301\n", "api.probe_interval_s", "must be at most 300 seconds",
     "a paused daemon probes the key at least every 5 minutes"),
    ("[api]\nbase_url = 'ftp://x'\n", "api.base_url", "base_url 'ftp://x' is not an http(s) URL",
     "use https://, or http:// only with 127.0.0.1/localhost (the sandbox)"),
    ("[watch]\npaths = 'runs'\n", "watch.paths", "has the wrong type (str: 'runs')",
     'paths = ["/srv/sequencer/output"]'),
    ("[watch]\npaths = [{marker = 'illumina'}]\n", "watch.paths[0]",
     'must be a folder path or {path = "...", marker = "...", polling = true}',
     'e.g. paths = ["/srv/out", {path = "/mnt/nas", polling = true}]'),
    ("[watch]\npaths = [{path = 'runs', mark = 'x'}]\n", "watch.paths[0]", "unknown key(s) mark",
     "a watch entry takes path, marker, polling, id, pairing, merge_lanes, group_wait_seconds, project, tags, metadata"),
    ("[watch]\npaths = [{path = 'runs', marker = 1}]\n", "watch.paths[0]", "marker must be a string",
     'marker = "illumina" | "bclconvert" | "nanopore" | "glob:<pattern>"'),
    ("[watch]\npaths = [{path = 'runs', marker = 'glob:'}]\n", "watch.paths[0]", "unknown run marker 'glob:'",
     "one of illumina, bclconvert, nanopore, or glob:<pattern> (e.g. glob:RunDone.txt)"),
    ("[watch]\npaths = [{path = 'runs', polling = 'yes'}]\n", "watch.paths[0]", "polling must be true or false",
     "polling = true"),
    ("[watch]\npaths = ['afile']\n", "watch.paths[0]", "watch path {tmp}/afile is not a folder",
     "name the folder the instrument writes into"),
    ("[watch]\npaths = ['runs', 'runs/']\n", "watch.paths",
     "the same folder is listed twice: paths[0] {tmp}/runs and paths[1] {tmp}/runs",
     "list each folder once (keep one of the two entries; its real path is {tmp}/runs)"),
    ("[watch]\nmax_depth = 257\n", "watch.max_depth", "must be between 1 and 256 (got 257)",
     "the number of folder levels below a watch folder that are watched, e.g. 32"),
    ("[watch]\nmax_depth = 'deep'\n", "watch.max_depth", "has the wrong type (str: 'deep')", "max_depth = 32"),
    ("[watch]\ninclude = '*.fq'\n", "watch.include", "has the wrong type (str: '*.fq')",
     'include = ["*.fastq.gz"]'),
    ("[watch]\ninclude = ['*.fq', '']\n", "watch.include", "must be a list of glob patterns (strings)",
     'e.g. ["*.fastq.gz"]'),
    ("[watch]\nexclude = [1]\n", "watch.exclude", "must be a list of glob patterns (strings)",
     'e.g. ["*.fastq.gz"]'),
    ("[watch]\nrescan_interval_s = 0\n", "watch.rescan_interval_s", "must be at least 1 (got 0)",
     "seconds between full rescans, e.g. 300"),
    ("[watch]\npoll_interval_s = inf\n", "watch.poll_interval_s", "must be a finite number (got inf)",
     "seconds between polls of network shares, e.g. 10"),
    ("[queue]\npath = 3\n", "queue.path", "has the wrong type (int: 3)", 'path = "/var/lib/seqdrop/queue.sqlite3"'),
    ("[watch]\npaths = ['runs']\n[queue]\npath = 'runs/q'\n", "queue.path",
     "the queue {tmp}/runs/q is inside the watch folder {tmp}/runs; seqdrop never writes into watched folders",
     'put it outside every watch folder, e.g. path = "/var/lib/seqdrop/queue.sqlite3"'),
    ("[upload]\nworkers = 33\n", "upload.workers", "must be between 1 and 32 (got 33)",
     "workers = 2 suits most links"),
    ("[upload]\nworkers = 2.5\n", "upload.workers", "has the wrong type (float: 2.5)", "workers = 2"),
    ("[upload]\nmax_mbps = -1\n", "upload.max_mbps", "must be at least 0 (got -1)",
     "megabits per second; 0 = no cap"),
    ("[upload]\nvalidate = 'yes'\n", "upload.validate", "has the wrong type (str: 'yes')", "validate = true"),
    ("[upload]\nmax_backoff_s = 0\n", "upload.max_backoff_s", "must be at least 1 (got 0)", "seconds, e.g. 600"),
    ("[upload]\nblock_size = 1024\n", "upload.block_size", "must be at least 65536 (got 1024)",
     "bytes, e.g. 4194304"),
    ("[upload]\nmultipart_threshold_bytes = 1000\n", "upload.multipart_threshold_bytes",
     "must be between 1048576 and 5368709120 (got 1000)",
     "leave it out: files over 5 GiB must take the multipart route, smaller ones only do so to rehearse it"),
    ("[upload]\nmultipart_threshold_bytes = 1.5\n", "upload.multipart_threshold_bytes",
     "has the wrong type (float: 1.5)", "leave it out (default 5368709120, 5 GiB); lower only to rehearse"),
    ("[upload]\nmultipart_s3_endpoint = 'ftp://x'\n", "upload.multipart_s3_endpoint",
     "multipart_s3_endpoint 'ftp://x' is not an http(s) URL",
     "use https://, or http:// only with 127.0.0.1/localhost (a local test S3)"),
    ("[upload]\nmultipart_s3_region = 1\n", "upload.multipart_s3_region", "has the wrong type (int: 1)",
     'e.g. "us-east-1"; leave it out for the default'),
    ("[log]\nlevel = 'LOUD'\n", "log.level", "unknown level 'loud'", "one of debug, info, warning, error"),
    ("[log]\nlevel = 1\n", "log.level", "has the wrong type (int: 1)", 'level = "info"'),
    ("[log]\nformat = 'xml'\n", "log.format", "unknown format 'xml'",
     "auto (the journal under systemd, console on a terminal, JSON otherwise), journal, json or console"),
    ("[metrics]\nenabled = 1\n", "metrics.enabled", "has the wrong type (int: 1)", "enabled = true"),
    ("[metrics]\nlisten = '9808'\n", "metrics.listen", "listen '9808' must be a loopback HOST:PORT",
     'e.g. "127.0.0.1:9808" (put a reverse proxy in front to expose it)'),
    ("[notify]\nwebhook_url = 'http://hooks.example.com/x'\n", "notify.webhook_url",
     ("webhook_url 'http://hooks.example.com/x' uses plain http to a host that is not loopback; the API key "
      "would travel unencrypted"), "use an https:// URL"),
    ("[notify]\nformat = 'teams'\n", "notify.format", "unknown format 'teams'", '"slack" or "json"'),
    ("[notify]\ndaily_summary_at = '8am'\n", "notify.daily_summary_at", "'8am' is not a time of day",
     'write it as "HH:MM", e.g. "08:00"'),
    ("[notify]\ndaily_summary_at = 8\n", "notify.daily_summary_at", "has the wrong type (int: 8)",
     'daily_summary_at = "08:00"'),
    ("api = 1\n", "api", "must be a [table]", "write it as [api]"),
    ("x = 1\n", "x", "unknown section or key 'x'", "the sections are: api, log, metrics, notify, queue, samples, status_page, upload, watch"),
]


# The keys each table knows, as an unknown key's fix lists them.
KNOWN_KEYS = {
    "api": "api_key_file, base_url, call_deadline_s, connect_timeout_s, probe_interval_s, read_timeout_s",
    "watch": "exclude, include, max_depth, paths, poll_interval_s, rescan_interval_s, settle_seconds",
    "queue": "host, lease_s, path, url",
    "upload": "allow_missing_etag, block_size, max_backoff_s, max_mbps, multipart_s3_endpoint, multipart_s3_region, "
              "multipart_threshold_bytes, stall_timeout_s, validate, workers",
    "log": "format, level",
    "metrics": "enabled, listen",
    "notify": "daily_summary_at, email_from, email_password_file, email_security, email_smtp_host, "
              "email_smtp_port, email_to, email_username, format, webhook_url",
    "status_page": "enabled, listen, password_file, tls_cert_file, tls_key_file, username",
}


@pytest.mark.parametrize("section", KNOWN_KEYS)
def test_an_unknown_key_lists_the_keys_of_its_table(tmp_path, section):
    """An unknown key (or several) is named, with every key its table knows as the fix."""
    for text, words in ((f"[{section}]\nx = 1\n", "unknown key 'x'"),
                        (f"[{section}]\nx = 1\ny = 2\n", "unknown keys 'x', 'y'")):
        path = write(tmp_path, text)
        with pytest.raises(ConfigError) as e:
            config.load(path)
        assert str(e.value) == (f"{path}: [{section}] {words} — fix: check the spelling; the keys of "
                                f"[{section}] are: {KNOWN_KEYS[section]}")


@pytest.mark.parametrize("text,key,message,fix", EXACT)
def test_every_message_word_for_word(tmp_path, text, key, message, fix):
    """Each mistake gives exactly its message, key and fix."""
    (tmp_path / "runs").mkdir()
    (tmp_path / "afile").write_text("not a folder\n")
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        config.load(path)
    message, fix = message.replace("{tmp}", str(tmp_path)), fix.replace("{tmp}", str(tmp_path))
    assert str(e.value) == f"{path}: [{key}] {message} — fix: {fix}"


def test_a_config_that_is_a_folder_or_not_text_names_the_fix(tmp_path):
    """A --config naming a folder, or a file that is not UTF-8, says which, with its fix."""
    with pytest.raises(ConfigError) as e:
        config.load(str(tmp_path))
    assert str(e.value) == f"{tmp_path}: is a folder, not a file — fix: point --config at the TOML file"
    p = tmp_path / "latin1.toml"
    p.write_bytes("[log]\nlevel = 'd\xe9bug'\n".encode("latin-1"))
    with pytest.raises(ConfigError) as e:
        config.load(str(p))
    assert str(e.value) == f"{p}: is not UTF-8 text — fix: save it as UTF-8"


def test_the_first_mistake_found_is_the_one_reported(tmp_path):
    """Tables are read in a fixed order (api, watch, queue and its place beside the watch folders,
    upload, log, metrics, notify), and within one a bad value comes before an unknown key: fixing
    the mistake named shows the next one, never a different one first."""
    (tmp_path / "runs").mkdir()
    cases = [("[log]\nlevel = 'loud'\n[api]\nx = 1\n", "[api]"),
             ("[upload]\nworkers = 0\n[watch]\npaths = ['runs']\n[queue]\npath = 'runs/q'\n", "[queue.path]"),
             ("[upload]\nx = 1\nworkers = 0\n", "[upload.workers]")]
    for text, key in cases:
        with pytest.raises(ConfigError) as e:
            config.load(write(tmp_path, text))
        assert e.value.key == key.strip("[]"), (text, str(e.value))


def test_every_key_lands_in_its_field(tmp_path):
    """A config setting every key to something other than its default gives exactly those settings."""
    for d in ("runs", "other"):
        (tmp_path / d).mkdir()
    path = write(tmp_path, """
        [api]
        base_url = "https://example.org/"
        api_key_file = "k"
        connect_timeout_s = 3
        read_timeout_s = 4
        probe_interval_s = 5
        [watch]
        paths = ["runs", {path = "other", marker = "glob:RunDone.txt", polling = true}]
        settle_seconds = 1
        rescan_interval_s = 2
        poll_interval_s = 3
        include = ["*.x"]
        exclude = ["*.y"]
        max_depth = 7
        [queue]
        path = "../q-state/q.db"
        [upload]
        workers = 3
        max_mbps = 10
        validate = false
        max_backoff_s = 7
        block_size = 131072
        multipart_threshold_bytes = 2097152
        multipart_s3_endpoint = "https://s3.example.org/"
        multipart_s3_region = "eu-west-1"
        [log]
        level = "DEBUG"
        format = "json"
        [metrics]
        enabled = true
        listen = "[::1]:9000"
        [notify]
        webhook_url = "https://hooks.example.org/x"
        format = "json"
        daily_summary_at = "07:30"
        """.replace("\n        ", "\n"))
    assert config.load(path) == config.Settings(
        source=path,
        api=config.ApiSettings(base_url="https://example.org", api_key_file=str(tmp_path / "k"),
                               connect_timeout_s=3, read_timeout_s=4, probe_interval_s=5),
        watch=config.WatchSettings(
            folders=(config.WatchFolder(str(tmp_path / "runs")),
                     config.WatchFolder(str(tmp_path / "other"), marker="glob:RunDone.txt", polling=True)),
            settle_seconds=1, rescan_interval_s=2, poll_interval_s=3, include=("*.x",), exclude=("*.y",),
            max_depth=7),
        queue=config.QueueSettings(path=str(tmp_path.parent / "q-state" / "q.db")),
        upload=config.UploadSettings(workers=3, max_mbps=10, validate=False, max_backoff_s=7, block_size=131072,
                                     multipart_threshold_bytes=2 << 20,
                                     multipart_s3_endpoint="https://s3.example.org",
                                     multipart_s3_region="eu-west-1"),
        log=config.LogSettings(level="debug", format="json"),
        metrics=config.MetricsSettings(enabled=True, listen="[::1]:9000"),
        notify=config.NotifySettings(webhook_url="https://hooks.example.org/x", format="json",
                                     daily_summary_at="07:30"))


def test_an_empty_file_gives_the_defaults_and_empty_strings_mean_unset(tmp_path):
    """No keys: every field at its default. A marker of "" or "none", and an empty webhook_url or
    daily_summary_at, mean "not set"."""
    path = write(tmp_path, "")
    assert config.load(path) == config.Settings(source=path)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    s = config.load(write(tmp_path, "[watch]\npaths = [{path = 'a', marker = ''}, {path = 'b', marker = 'none'}]\n"
                                    "[notify]\nwebhook_url = ''\ndaily_summary_at = ''\n"))
    assert [f.marker for f in s.watch.folders] == [None, None]
    assert s.notify.webhook_url is None and s.notify.daily_summary_at is None


# -- watch folders: missing ones are waited for; each folder once, by its real path (issue 10, 13) ----

def test_a_missing_watch_folder_is_no_config_error(tmp_path):
    """A watch folder that is not there yet (a NAS not mounted) loads: the daemon waits for it."""
    s = config.load(write(tmp_path, "[watch]\npaths = ['/definitely/not/here', 'later']\n"))
    assert s.watch.paths == ("/definitely/not/here", str(tmp_path / "later"))


def test_one_folder_listed_twice_through_a_symlink_is_refused_naming_both(tmp_path):
    """The same folder, once by its path and once through a symbolic link: exit-2 error naming both entries."""
    (tmp_path / "runs").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "runs")
    with pytest.raises(ConfigError) as e:
        config.load(write(tmp_path, f"[watch]\npaths = ['{tmp_path}/runs', '{tmp_path}/alias']\n"))
    assert e.value.key == "watch.paths"
    assert str(e.value) == (
        f"{tmp_path}/config.toml: [watch.paths] the same folder is listed twice: paths[0] {tmp_path}/runs and "
        f"paths[1] {tmp_path}/alias ({tmp_path}/alias is a symbolic link to {tmp_path}/runs); its files would be "
        f"uploaded twice — fix: list each folder once (keep one of the two entries; its real path is "
        f"{tmp_path}/runs)")


def test_a_folder_inside_another_through_a_symlink_is_refused(tmp_path):
    """A watch folder that is another one's sub-folder only by its real path would see files twice: refused."""
    (tmp_path / "share" / "run1").mkdir(parents=True)
    (tmp_path / "run_link").symlink_to(tmp_path / "share" / "run1")
    with pytest.raises(ConfigError) as e:
        config.load(write(tmp_path, f"[watch]\npaths = [{{path = '{tmp_path}/run_link', marker = 'illumina'}}, "
                                    f"'{tmp_path}/share']\n"))
    assert e.value.key == "watch.paths"
    assert f"paths[0] {tmp_path}/run_link is inside paths[1] {tmp_path}/share through a symbolic link" in str(e.value)
    assert e.value.fix == f"list it by its path below the other entry: {tmp_path}/share/run1"


def test_a_run_folder_listed_below_its_share_is_allowed(tmp_path):
    """Nested by path (a run folder with its own marker inside a watched share) stays allowed."""
    (tmp_path / "share" / "run1").mkdir(parents=True)
    s = config.load(write(tmp_path, "[watch]\npaths = ['share', {path = 'share/run1', marker = 'illumina'}]\n"))
    assert s.watch.paths == (str(tmp_path / "share"), str(tmp_path / "share" / "run1"))
    assert s.watch.max_depth == 32
