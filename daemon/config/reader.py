"""Reading one TOML table: typed values, and every mistake as a ConfigError naming the key and the fix."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from daemon.errors import ConfigError


class Section:
    """Reads one TOML table, remembering which keys were used, so leftovers are errors."""

    def __init__(self, data: dict[str, Any], name: str, file: str) -> None:
        self.data, self.name, self.file = data, name, file
        self.used: set[str] = set()

    def error(self, key: str, message: str, fix: str) -> ConfigError:
        """A mistake in this table's key (or in an item of it, e.g. "paths[0]")."""
        return ConfigError(message, file=self.file, key=f"{self.name}.{key}", fix=fix)

    def get(self, key: str, default: Any, types: type | tuple[type, ...], *, fix: str) -> Any:
        self.used.add(key)
        if key not in self.data:
            return default
        value = self.data[key]
        if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
            raise self.error(key, f"must not be true/false (got {value!r})", fix)
        if not isinstance(value, types):
            raise self.error(key, f"has the wrong type ({type(value).__name__}: {value!r})", fix)
        return value

    def number(self, key: str, default: float, *, minimum: float, fix: str) -> float:
        value = float(self.get(key, default, (int, float), fix=fix))
        if not math.isfinite(value):   # TOML allows nan and inf; both compare False with any bound
            raise self.error(key, f"must be a finite number (got {value:g})", fix)
        if value < minimum:
            raise self.error(key, f"must be at least {minimum:g} (got {value:g})", fix)
        return value

    def path(self, value: str) -> str:
        """An absolute path: ~ expanded, a relative one taken from the config file's folder."""
        p = Path(os.path.expanduser(value))
        return str(p if p.is_absolute() else (Path(self.file).parent / p).resolve())

    def finish(self) -> None:
        """Every key of the table must have been read: a typo must not be silently ignored."""
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            known = ", ".join(sorted(self.used))
            raise ConfigError(
                f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}",
                file=self.file, key=self.name,
                fix=f"check the spelling; the keys of [{self.name}] are: {known}")
