"""The configuration file: TOML in, validated frozen settings out.

The only module that reads TOML. Every mistake becomes a ConfigError naming the
file, the key and the fix (the CLI turns it into exit 2, never a traceback).
Relative paths are relative to the config file's folder. Unknown keys are errors:
a typo must not be silently ignored.
"""

from __future__ import annotations

import ipaddress
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from daemon.errors import ConfigError
from daemon.paths import is_really_within

DEFAULT_CONFIG_PATH = "/etc/seqdrop/config.toml"
CREDENTIAL_NAME = "onecodex-api-key"
API_KEY_ENV = "ONE_CODEX_API_KEY"

# Files larger than this take One Codex's multipart route (init_multipart_upload, S3 multipart upload,
# callback): S3 refuses a single POST over 5 GiB. Lower it only to rehearse the route (tests, sandbox).
MULTIPART_THRESHOLD_BYTES = 5 * 1024**3
MIN_MULTIPART_THRESHOLD_BYTES = 1 << 20

DEFAULT_INCLUDE = tuple(
    f"*{ext}{comp}"
    for ext in (".fastq", ".fq", ".fasta", ".fa", ".fna")
    for comp in ("", ".gz", ".bz2")
)


@dataclass(frozen=True)
class WatchFolder:
    path: str                 # absolute
    marker: str | None = None  # None, a preset name, or "glob:<pattern>"
    polling: bool = False


@dataclass(frozen=True)
class ApiSettings:
    base_url: str = "https://app.onecodex.com"
    api_key_file: str | None = None
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0
    probe_interval_s: float = 120.0


@dataclass(frozen=True)
class WatchSettings:
    folders: tuple[WatchFolder, ...] = ()
    settle_seconds: float = 30.0
    rescan_interval_s: float = 300.0
    poll_interval_s: float = 10.0
    include: tuple[str, ...] = DEFAULT_INCLUDE
    exclude: tuple[str, ...] = ()

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(f.path for f in self.folders)


@dataclass(frozen=True)
class QueueSettings:
    path: str = "/var/lib/seqdrop/queue.sqlite3"


@dataclass(frozen=True)
class UploadSettings:
    workers: int = 2
    max_mbps: float = 0.0          # 0 = no cap; megabits per second
    validate: bool = True
    max_backoff_s: float = 600.0   # longest wait between two attempts at one file
    block_size: int = 2 << 20      # bytes read from disk and sent per block
    multipart_threshold_bytes: int = MULTIPART_THRESHOLD_BYTES   # larger files: the multipart route
    multipart_s3_endpoint: str = ""    # S3 endpoint of the multipart route; "" = AWS (tests: moto)
    multipart_s3_region: str = ""      # its region; "" = botocore's default (us-east-1, S3 redirects)


@dataclass(frozen=True)
class LogSettings:
    level: str = "info"
    format: str = "auto"           # auto | json | console


@dataclass(frozen=True)
class MetricsSettings:
    enabled: bool = False
    listen: str = "127.0.0.1:9808"


@dataclass(frozen=True)
class NotifySettings:
    webhook_url: str | None = None
    format: str = "slack"          # slack | json
    daily_summary_at: str | None = None   # "HH:MM" local time, or None


@dataclass(frozen=True)
class Settings:
    source: str | None = None      # the config file this came from, None for defaults
    api: ApiSettings = field(default_factory=ApiSettings)
    watch: WatchSettings = field(default_factory=WatchSettings)
    queue: QueueSettings = field(default_factory=QueueSettings)
    upload: UploadSettings = field(default_factory=UploadSettings)
    log: LogSettings = field(default_factory=LogSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    notify: NotifySettings = field(default_factory=NotifySettings)


def default_config_path() -> str:
    return os.environ.get("SEQDROP_CONFIG") or DEFAULT_CONFIG_PATH


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_listen(text: str) -> tuple[str, int]:
    """Split a HOST:PORT value: "127.0.0.1:9808", "[::1]:9808", "localhost:9808"."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT such as 127.0.0.1:9808, got {text!r}")
    return host.strip("[]"), int(port)


def check_url(url: str, *, what: str, carries: str = "the API key") -> str | None:
    """Return None if url is acceptable (https, or http to loopback), else the reason."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{what} {url!r} is not an http(s) URL"
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        return f"{what} {url!r} uses plain http to a host that is not loopback; {carries} would travel unencrypted"
    return None


class _Section:
    """Reads one TOML table, remembering which keys were used, so leftovers are errors."""

    def __init__(self, data: dict[str, Any], name: str, file: str) -> None:
        self.data, self.name, self.file = data, name, file
        self.used: set[str] = set()

    def _err(self, key: str, message: str, fix: str) -> ConfigError:
        return ConfigError(message, file=self.file, key=f"{self.name}.{key}", fix=fix)

    def get(self, key: str, default: Any, types: type | tuple[type, ...], *, fix: str) -> Any:
        self.used.add(key)
        if key not in self.data:
            return default
        value = self.data[key]
        if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
            raise self._err(key, f"must not be true/false (got {value!r})", fix)
        if not isinstance(value, types):
            raise self._err(key, f"has the wrong type ({type(value).__name__}: {value!r})", fix)
        return value

    def number(self, key: str, default: float, *, minimum: float, fix: str) -> float:
        value = float(self.get(key, default, (int, float), fix=fix))
        if not math.isfinite(value):   # TOML allows nan and inf; both compare False with any bound
            raise self._err(key, f"must be a finite number (got {value:g})", fix)
        if value < minimum:
            raise self._err(key, f"must be at least {minimum:g} (got {value:g})", fix)
        return value

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            known = ", ".join(sorted(self.used))
            raise ConfigError(
                f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}",
                file=self.file, key=self.name,
                fix=f"check the spelling; the keys of [{self.name}] are: {known}")


def _resolve(base: Path, value: str) -> str:
    p = Path(os.path.expanduser(value))
    return str(p if p.is_absolute() else (base / p).resolve())


def load(path: str | None = None, *, must_exist: bool = True, check_folders: bool = True) -> Settings:
    """Load and validate the config file. Missing file → defaults only if must_exist is False."""
    file = path or default_config_path()
    p = Path(file)
    if not p.exists():
        if must_exist:
            raise ConfigError("the config file does not exist", file=file,
                              fix="create it from config.example.toml, or pass --config PATH "
                                  "(or set SEQDROP_CONFIG)")
        return Settings()
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8-sig"))   # -sig: a BOM (Windows editors) is no error
    except PermissionError:
        raise ConfigError("cannot be read (permission denied)", file=file,
                          fix="make it readable by the user seqdrop runs as") from None
    except IsADirectoryError:
        raise ConfigError("is a folder, not a file", file=file, fix="point --config at the TOML file") from None
    except UnicodeDecodeError:
        raise ConfigError("is not UTF-8 text", file=file, fix="save it as UTF-8") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"is not valid TOML ({e})", file=file,
                          fix="correct the syntax at the line named; strings need quotes") from None
    return parse(raw, file=str(p.resolve()), check_folders=check_folders)


def parse(raw: dict[str, Any], *, file: str, check_folders: bool = True) -> Settings:
    base = Path(file).parent
    sections = {"api", "watch", "queue", "upload", "log", "metrics", "notify"}
    for name, value in raw.items():
        if name not in sections:
            raise ConfigError(f"unknown section or key {name!r}", file=file, key=name,
                              fix=f"the sections are: {', '.join(sorted(sections))}")
        if not isinstance(value, dict):
            raise ConfigError("must be a [table]", file=file, key=name, fix=f"write it as [{name}]")

    s = _Section(raw.get("api", {}), "api", file)
    base_url = s.get("base_url", ApiSettings.base_url, str, fix='e.g. base_url = "https://app.onecodex.com"')
    base_url = base_url.rstrip("/")
    if reason := check_url(base_url, what="base_url"):
        raise ConfigError(reason, file=file, key="api.base_url",
                          fix="use https://, or http:// only with 127.0.0.1/localhost (the sandbox)")
    key_file = s.get("api_key_file", None, str, fix='api_key_file = "/etc/seqdrop/api-key"')
    api = ApiSettings(
        base_url=base_url,
        api_key_file=_resolve(base, key_file) if key_file else None,
        connect_timeout_s=s.number("connect_timeout_s", ApiSettings.connect_timeout_s, minimum=0.1,
                                   fix="seconds, e.g. 10"),
        read_timeout_s=s.number("read_timeout_s", ApiSettings.read_timeout_s, minimum=0.1,
                                fix="seconds, e.g. 60"),
        probe_interval_s=s.number("probe_interval_s", ApiSettings.probe_interval_s, minimum=1,
                                  fix="seconds, at most 300 (design: probe at least every 5 minutes)"),
    )
    if api.probe_interval_s > 300:
        raise ConfigError("must be at most 300 seconds", file=file, key="api.probe_interval_s",
                          fix="a paused daemon probes the key at least every 5 minutes")
    s.finish()

    s = _Section(raw.get("watch", {}), "watch", file)
    entries = s.get("paths", [], list, fix='paths = ["/srv/sequencer/output"]')
    folders = []
    for i, entry in enumerate(entries):
        key = f"watch.paths[{i}]"
        if isinstance(entry, str):
            entry = {"path": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise ConfigError("must be a folder path or {path = \"...\", marker = \"...\", polling = true}",
                              file=file, key=key, fix='e.g. paths = ["/srv/out", {path = "/mnt/nas", polling = true}]')
        extra = set(entry) - {"path", "marker", "polling"}
        if extra:
            raise ConfigError(f"unknown key(s) {', '.join(sorted(extra))}", file=file, key=key,
                              fix="a watch entry takes path, marker and polling")
        marker = entry.get("marker")
        if marker is not None and not isinstance(marker, str):
            raise ConfigError("marker must be a string", file=file, key=key,
                              fix='marker = "illumina" | "bclconvert" | "nanopore" | "glob:<pattern>"')
        if marker in ("", "none"):
            marker = None
        if marker is not None:
            _check_marker(marker, file=file, key=key)
        polling = entry.get("polling", False)
        if not isinstance(polling, bool):
            raise ConfigError("polling must be true or false", file=file, key=key, fix="polling = true")
        folder = _resolve(base, entry["path"])
        if check_folders:
            if not os.path.exists(folder):
                raise ConfigError(f"watch folder {folder} does not exist", file=file, key=key,
                                  fix="create it, mount the share first (the unit orders itself after "
                                      "mounts with RequiresMountsFor=), or correct the path")
            if not os.path.isdir(folder):
                raise ConfigError(f"watch path {folder} is not a folder", file=file, key=key,
                                  fix="name the folder the instrument writes into")
            if not os.access(folder, os.R_OK | os.X_OK):
                raise ConfigError(f"watch folder {folder} cannot be read by this user", file=file, key=key,
                                  fix="give the user seqdrop runs as read access (e.g. add it to the "
                                      "instrument's group), then start it again")
        folders.append(WatchFolder(path=folder, marker=marker, polling=polling))
    if len({f.path for f in folders}) != len(folders):
        raise ConfigError("the same folder is listed twice", file=file, key="watch.paths",
                          fix="list each folder once")
    include = tuple(s.get("include", list(DEFAULT_INCLUDE), list, fix='include = ["*.fastq.gz"]'))
    exclude = tuple(s.get("exclude", [], list, fix='exclude = ["*_undetermined*"]'))
    for name, pats in (("include", include), ("exclude", exclude)):
        if not all(isinstance(x, str) and x for x in pats):
            raise ConfigError("must be a list of glob patterns (strings)", file=file, key=f"watch.{name}",
                              fix='e.g. ["*.fastq.gz"]')
    watch = WatchSettings(
        folders=tuple(folders),
        settle_seconds=s.number("settle_seconds", WatchSettings.settle_seconds, minimum=0,
                                fix="seconds a file must stay unchanged, e.g. 30"),
        rescan_interval_s=s.number("rescan_interval_s", WatchSettings.rescan_interval_s, minimum=1,
                                   fix="seconds between full rescans, e.g. 300"),
        poll_interval_s=s.number("poll_interval_s", WatchSettings.poll_interval_s, minimum=0.1,
                                 fix="seconds between polls of network shares, e.g. 10"),
        include=include, exclude=exclude,
    )
    s.finish()

    s = _Section(raw.get("queue", {}), "queue", file)
    queue = QueueSettings(path=_resolve(base, s.get("path", QueueSettings.path, str,
                                                    fix='path = "/var/lib/seqdrop/queue.sqlite3"')))
    s.finish()
    # The queue writes beside itself (-wal, -shm, .lock): inside a watch folder it would break the
    # rule "never write in the watched folders" (design.md), and the sequencer's share may be wiped.
    for f in folders:
        if is_really_within(queue.path, f.path):
            raise ConfigError(f"the queue {queue.path} is inside the watch folder {f.path}; seqdrop never "
                              f"writes into watched folders", file=file, key="queue.path",
                              fix='put it outside every watch folder, e.g. path = "/var/lib/seqdrop/queue.sqlite3"')

    s = _Section(raw.get("upload", {}), "upload", file)
    workers = s.get("workers", UploadSettings.workers, int, fix="workers = 2")
    if not 1 <= workers <= 32:
        raise ConfigError(f"must be between 1 and 32 (got {workers})", file=file, key="upload.workers",
                          fix="workers = 2 suits most links")
    upload = UploadSettings(
        workers=workers,
        max_mbps=s.number("max_mbps", UploadSettings.max_mbps, minimum=0, fix="megabits per second; 0 = no cap"),
        validate=s.get("validate", True, bool, fix="validate = true"),
        max_backoff_s=s.number("max_backoff_s", UploadSettings.max_backoff_s, minimum=1, fix="seconds, e.g. 600"),
        block_size=int(s.number("block_size", UploadSettings.block_size, minimum=65536,
                                fix="bytes, e.g. 4194304")),
        **_multipart_keys(s, file),
    )
    s.finish()

    s = _Section(raw.get("log", {}), "log", file)
    level = s.get("level", "info", str, fix='level = "info"').lower()
    if level not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"unknown level {level!r}", file=file, key="log.level",
                          fix="one of debug, info, warning, error")
    fmt = s.get("format", "auto", str, fix='format = "auto"')
    if fmt not in ("auto", "json", "console"):
        raise ConfigError(f"unknown format {fmt!r}", file=file, key="log.format",
                          fix="auto (console on a terminal, JSON otherwise), json or console")
    log = LogSettings(level=level, format=fmt)
    s.finish()

    s = _Section(raw.get("metrics", {}), "metrics", file)
    metrics = MetricsSettings(
        enabled=s.get("enabled", False, bool, fix="enabled = true"),
        listen=s.get("listen", MetricsSettings.listen, str, fix='listen = "127.0.0.1:9808"'),
    )
    try:
        host, _port = parse_listen(metrics.listen)
    except ValueError:
        host = ""
    if not is_loopback_host(host):
        raise ConfigError(f"listen {metrics.listen!r} must be a loopback HOST:PORT", file=file,
                          key="metrics.listen", fix='e.g. "127.0.0.1:9808" (put a reverse proxy in front '
                                                  'to expose it)')
    s.finish()

    s = _Section(raw.get("notify", {}), "notify", file)
    url = s.get("webhook_url", None, str, fix='webhook_url = "https://hooks.slack.com/services/..."') or None
    if url and (reason := check_url(url, what="webhook_url")):
        raise ConfigError(reason, file=file, key="notify.webhook_url", fix="use an https:// URL")
    nfmt = s.get("format", "slack", str, fix='format = "slack"')
    if nfmt not in ("slack", "json"):
        raise ConfigError(f"unknown format {nfmt!r}", file=file, key="notify.format", fix='"slack" or "json"')
    daily = s.get("daily_summary_at", None, str, fix='daily_summary_at = "08:00"') or None
    if daily is not None:
        hh, _, mm = daily.partition(":")
        if not (hh.isdigit() and mm.isdigit() and int(hh) < 24 and int(mm) < 60):
            raise ConfigError(f"{daily!r} is not a time of day", file=file, key="notify.daily_summary_at",
                              fix='write it as "HH:MM", e.g. "08:00"')
    notify = NotifySettings(webhook_url=url, format=nfmt, daily_summary_at=daily)
    s.finish()

    return Settings(source=file, api=api, watch=watch, queue=queue, upload=upload, log=log,
                    metrics=metrics, notify=notify)


def _multipart_keys(s: _Section, file: str) -> dict[str, Any]:
    threshold = s.get("multipart_threshold_bytes", MULTIPART_THRESHOLD_BYTES, int,
                      fix=f"leave it out (default {MULTIPART_THRESHOLD_BYTES}, 5 GiB); lower only to rehearse")
    if not MIN_MULTIPART_THRESHOLD_BYTES <= threshold <= MULTIPART_THRESHOLD_BYTES:
        raise ConfigError(f"must be between {MIN_MULTIPART_THRESHOLD_BYTES} and {MULTIPART_THRESHOLD_BYTES} "
                          f"(got {threshold})", file=file, key="upload.multipart_threshold_bytes",
                          fix="leave it out: files over 5 GiB must take the multipart route, smaller ones "
                              "only do so to rehearse it")
    endpoint = s.get("multipart_s3_endpoint", "", str,
                     fix='leave it out (AWS), or e.g. "http://127.0.0.1:8702" for a local moto_server').rstrip("/")
    if endpoint and (reason := check_url(endpoint, what="multipart_s3_endpoint")):
        raise ConfigError(reason, file=file, key="upload.multipart_s3_endpoint",
                          fix="use https://, or http:// only with 127.0.0.1/localhost (a local test S3)")
    region = s.get("multipart_s3_region", "", str, fix='e.g. "us-east-1"; leave it out for the default')
    return {"multipart_threshold_bytes": threshold, "multipart_s3_endpoint": endpoint,
            "multipart_s3_region": region}


def _check_marker(marker: str, *, file: str, key: str) -> None:
    presets = ("illumina", "bclconvert", "nanopore")
    if marker in presets or (marker.startswith("glob:") and len(marker) > 5):
        return
    raise ConfigError(f"unknown run marker {marker!r}", file=file, key=key,
                      fix=f"one of {', '.join(presets)}, or glob:<pattern> (e.g. glob:RunDone.txt)")


def load_api_key(settings: Settings, *, env: dict[str, str] | None = None) -> str:
    """The API key, from (in order) ONE_CODEX_API_KEY, api.api_key_file, the systemd credential."""
    env = os.environ if env is None else env
    if key := env.get(API_KEY_ENV, "").strip():
        return key
    candidates: list[tuple[str, str]] = []
    if settings.api.api_key_file:
        candidates.append((settings.api.api_key_file, "api.api_key_file"))
    if creds := env.get("CREDENTIALS_DIRECTORY"):
        candidates.append((os.path.join(creds, CREDENTIAL_NAME), f"systemd credential {CREDENTIAL_NAME}"))
    for path, what in candidates:
        try:
            key = Path(path).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            if what == "api.api_key_file":
                raise ConfigError(f"the API key file {path} does not exist", file=settings.source,
                                  key="api.api_key_file", fix="write the key into it (mode 0600)") from None
            continue
        except (PermissionError, IsADirectoryError, UnicodeDecodeError) as e:
            raise ConfigError(f"the API key file {path} cannot be read ({e.__class__.__name__})",
                              file=settings.source, key="api.api_key_file",
                              fix="make it a text file readable by the user seqdrop runs as") from None
        if key:
            return key
        raise ConfigError(f"the API key file {path} is empty", file=settings.source, key="api.api_key_file",
                          fix="write your One Codex API key into it")
    raise ConfigError("no One Codex API key found", file=settings.source, key="api",
                      fix=f"set {API_KEY_ENV}, or api_key_file = \"/etc/seqdrop/api-key\" in [api], or "
                          f"LoadCredential={CREDENTIAL_NAME}:/path in the systemd unit")
