"""The config file as a whole: read the TOML, check its tables, parse each, then the checks that
need more than one table."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from daemon.config.api import ApiSettings, parse_api
from daemon.config.log import LogSettings, parse_log
from daemon.config.metrics import MetricsSettings, parse_metrics
from daemon.config.notify import NotifySettings, parse_notify
from daemon.config.queue import QueueSettings, parse_queue
from daemon.config.reader import Section
from daemon.config.samples import SamplesSettings, parse_samples
from daemon.config.status_page import StatusPageSettings, parse_status_page
from daemon.config.upload import UploadSettings, parse_upload
from daemon.config.watch import WatchSettings, parse_watch
from daemon.errors import ConfigError
from daemon.paths import is_really_within

DEFAULT_CONFIG_PATH = "/etc/seqdrop/config.toml"

T = TypeVar("T")


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
    status_page: StatusPageSettings = field(default_factory=StatusPageSettings)
    samples: SamplesSettings = field(default_factory=SamplesSettings)


# The tables a config file may hold: one per field of Settings but its source.
SECTIONS = tuple(f.name for f in fields(Settings) if f.name != "source")


def default_config_path() -> str:
    return os.environ.get("SEQDROP_CONFIG") or DEFAULT_CONFIG_PATH


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
    """Validate a parsed TOML document. Tables are read in a fixed order, and the first mistake found
    is raised, so fixing the one named shows the next, never a different one first."""
    _check_tables(raw, file)
    api = _read(raw, "api", file, parse_api)
    watch = _read(raw, "watch", file, lambda s: parse_watch(s, check_folders=check_folders))
    queue = _read(raw, "queue", file, parse_queue)
    _check_queue_outside_watch(queue, watch, file)      # on a shared queue, the audit journal's place
    if queue.shared:
        _check_watch_ids(watch, file)
    upload = _read(raw, "upload", file, parse_upload)
    log = _read(raw, "log", file, parse_log)
    metrics = _read(raw, "metrics", file, parse_metrics)
    notify = _read(raw, "notify", file, parse_notify)
    status_page = _read(raw, "status_page", file, parse_status_page)
    samples = _read(raw, "samples", file, parse_samples)
    return Settings(source=file, api=api, watch=watch, queue=queue, upload=upload, log=log,
                    metrics=metrics, notify=notify, status_page=status_page, samples=samples)


def _check_tables(raw: dict[str, Any], file: str) -> None:
    """Only the known tables, each written as a [table]."""
    for name, value in raw.items():
        if name not in SECTIONS:
            raise ConfigError(f"unknown section or key {name!r}", file=file, key=name,
                              fix=f"the sections are: {', '.join(sorted(SECTIONS))}")
        if not isinstance(value, dict):
            raise ConfigError("must be a [table]", file=file, key=name, fix=f"write it as [{name}]")


def _read(raw: dict[str, Any], name: str, file: str, parser: Callable[[Section], T]) -> T:
    """One table through its parser; keys the parser did not read are errors (after its own)."""
    section = Section(raw.get(name, {}), name, file)
    value = parser(section)
    section.finish()
    return value


# -- checks across tables -----------------------------------------------------------------------
def _check_watch_ids(watch: WatchSettings, file: str) -> None:
    """A shared queue names a file by (watch id, path relative to the watch folder, size, mtime_ns), so
    that hosts mounting the share at different places agree: every watch folder needs its own id."""
    seen: dict[str, str] = {}
    for i, f in enumerate(watch.folders):
        if f.id is None:
            raise ConfigError(f"the watch folder {f.path} has no id, and [queue] url puts the queue in a "
                              f"database shared by several hosts", file=file, key=f"watch.paths[{i}]",
                              fix=f'give it an id, the same on every host: {{path = "{f.path}", id = '
                                  f'"{os.path.basename(f.path.rstrip("/")) or "share"}"}}')
        if f.id in seen:
            raise ConfigError(f"the id {f.id!r} names two watch folders: {seen[f.id]} and {f.path}", file=file,
                              key=f"watch.paths[{i}]", fix="give each watch folder its own id")
        seen[f.id] = f.path


def _check_queue_outside_watch(queue: QueueSettings, watch: WatchSettings, file: str) -> None:
    # The queue writes beside itself (-wal, -shm, .lock): inside a watch folder it would break the
    # rule "never write in the watched folders" (design.md), and the sequencer's share may be wiped.
    for f in watch.folders:
        if is_really_within(queue.path, f.path):
            raise ConfigError(f"the queue {queue.path} is inside the watch folder {f.path}; seqdrop never "
                              f"writes into watched folders", file=file, key="queue.path",
                              fix='put it outside every watch folder, e.g. path = "/var/lib/seqdrop/queue.sqlite3"')
