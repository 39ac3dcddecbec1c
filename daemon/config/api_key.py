"""The API key: from the environment, the key file named in [api], or a systemd credential.

Kept apart from the settings: the key is read when a command needs it, never stored in Settings.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from daemon.config.document import Settings
from daemon.errors import ConfigError

CREDENTIAL_NAME = "onecodex-api-key"
API_KEY_ENV = "ONE_CODEX_API_KEY"


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


def key_file_exposure(settings: Settings) -> tuple[str, str] | None:
    """(what is wrong, the fix) when api.api_key_file can be read by its group or by everyone: the key
    opens the lab's One Codex account to whoever reads it."""
    path = settings.api.api_key_file
    if not path:
        return None
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None     # load_api_key names a missing or unreadable file
    if not mode & 0o044:
        return None
    who = {0o040: "its group", 0o004: "every user", 0o044: "its group and every user"}[mode & 0o044]
    return (f"the API key file {path} can be read by {who} (mode {stat.S_IMODE(mode):04o})",
            f"chmod 600 {path}")
