"""The configuration file: TOML in, validated frozen settings out.

The only package that reads TOML. Every mistake becomes a ConfigError naming the
file, the key and the fix (the CLI turns it into exit 2, never a traceback).
Relative paths are relative to the config file's folder. Unknown keys are errors:
a typo must not be silently ignored.

One module per [table] holds its settings and its parser (api, watch, queue, upload, log,
metrics, notify); reader.py reads one table; document.py reads the file, runs the parsers
in order, then the checks across tables. A new table is a new module, a field of Settings
and one line in document.parse.
"""

from daemon.config.addresses import check_url, is_loopback_host, parse_listen
from daemon.config.api import ApiSettings
from daemon.config.api_key import API_KEY_ENV, CREDENTIAL_NAME, load_api_key
from daemon.config.document import (
    DEFAULT_CONFIG_PATH,
    SECTIONS,
    Settings,
    default_config_path,
    load,
    parse,
)
from daemon.config.log import LogSettings
from daemon.config.metrics import MetricsSettings
from daemon.config.notify import NotifySettings
from daemon.config.queue import QueueSettings
from daemon.config.upload import (
    MIN_MULTIPART_THRESHOLD_BYTES,
    MULTIPART_THRESHOLD_BYTES,
    UploadSettings,
)
from daemon.config.watch import DEFAULT_INCLUDE, DEFAULT_MAX_DEPTH, WatchFolder, WatchSettings

__all__ = [
    "API_KEY_ENV", "CREDENTIAL_NAME", "DEFAULT_CONFIG_PATH", "DEFAULT_INCLUDE", "DEFAULT_MAX_DEPTH", "MIN_MULTIPART_THRESHOLD_BYTES",
    "MULTIPART_THRESHOLD_BYTES", "SECTIONS", "ApiSettings", "LogSettings", "MetricsSettings", "NotifySettings",
    "QueueSettings", "Settings", "UploadSettings", "WatchFolder", "WatchSettings", "check_url",
    "default_config_path", "is_loopback_host", "load", "load_api_key", "parse", "parse_listen",
]
