"""The [samples] table: how finished files become samples (design.md, "Samples") and where they land
("Where samples land"). A watch path's table may override each of these for its folder
(daemon/config/watch.py reads those with `folder_overrides`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from daemon.config.reader import Section
from daemon.errors import ConfigError
from daemon.landing.metadata import Layer
from daemon.landing.settings import LAYER_KEYS, LandingSettings, layer_from_table, settings_from_table

PAIRING = ("auto", "off")
DEFAULT_GROUP_WAIT_S = 120.0
ASSEMBLY_KEYS = ("pairing", "merge_lanes", "group_wait_seconds")
LANDING_KEYS = ("sample_sheet", "projects") + LAYER_KEYS


@dataclass(frozen=True)
class Assembly:
    """How one folder's files become samples."""
    pairing: str = "auto"                 # "auto": R1+R2 (and lanes) are one sample; "off": one file, one sample
    merge_lanes: bool = True              # lanes of one read concatenated into one sample
    group_wait_s: float = DEFAULT_GROUP_WAIT_S


@dataclass(frozen=True)
class FolderSamples:
    """A watch path's own [samples] settings: None (or an empty layer) inherits [samples]'s."""
    pairing: str | None = None
    merge_lanes: bool | None = None
    group_wait_s: float | None = None
    landing: Layer = field(default_factory=Layer)


@dataclass(frozen=True)
class SamplesSettings:
    assembly: Assembly = field(default_factory=Assembly)
    landing: LandingSettings = field(default_factory=LandingSettings)

    def assembly_for(self, folder: FolderSamples | None) -> Assembly:
        """The assembly settings of one watch folder: its own, else [samples]'s."""
        if folder is None:
            return self.assembly
        base = self.assembly
        return Assembly(pairing=folder.pairing or base.pairing,
                        merge_lanes=base.merge_lanes if folder.merge_lanes is None else folder.merge_lanes,
                        group_wait_s=base.group_wait_s if folder.group_wait_s is None else folder.group_wait_s)


def parse_samples(s: Section) -> SamplesSettings:
    assembly = Assembly(
        pairing=_pairing(s.get("pairing", "auto", str, fix='pairing = "auto"'), s.error, "pairing"),
        merge_lanes=s.get("merge_lanes", True, bool, fix="merge_lanes = true"),
        group_wait_s=s.number("group_wait_seconds", DEFAULT_GROUP_WAIT_S, minimum=0,
                              fix="seconds to wait for more files of a sample, e.g. 120"))
    # (object, bool): the reader refuses true/false unless bool is named (sample_sheet is one)
    table = {key: s.get(key, None, (object, bool), fix="") for key in LANDING_KEYS}      # marks them read
    table = {key: value for key, value in table.items() if value is not None}
    landing = settings_from_table(table, file=s.file, key=s.name)
    return SamplesSettings(assembly=assembly, landing=landing)


def folder_overrides(entry: Mapping[str, Any], *, file: str, key: str) -> FolderSamples:
    """A watch path table's sample keys (pairing, merge_lanes, group_wait_seconds, project, tags,
    metadata), checked like [samples]'s."""
    def error(name: str, message: str, fix: str) -> ConfigError:
        return ConfigError(message, file=file, key=f"{key}.{name}", fix=fix)

    pairing = entry.get("pairing")
    if pairing is not None:
        if not isinstance(pairing, str):
            raise error("pairing", f"must be \"auto\" or \"off\" (got {pairing!r})", 'pairing = "off"')
        _pairing(pairing, error, "pairing")
    merge_lanes = entry.get("merge_lanes")
    if merge_lanes is not None and not isinstance(merge_lanes, bool):
        raise error("merge_lanes", f"must be true or false (got {merge_lanes!r})", "merge_lanes = false")
    wait = entry.get("group_wait_seconds")
    if wait is not None and (isinstance(wait, bool) or not isinstance(wait, (int, float)) or not wait >= 0):
        raise error("group_wait_seconds", f"must be a number of seconds ≥ 0 (got {wait!r})",
                    "group_wait_seconds = 120")
    layer = layer_from_table({k: entry[k] for k in LAYER_KEYS if k in entry}, file=file, key=key)
    return FolderSamples(pairing=pairing, merge_lanes=merge_lanes,
                         group_wait_s=None if wait is None else float(wait), landing=layer)


def _pairing(value: str, error: Any, key: str) -> str:
    if value not in PAIRING:
        raise error(key, f"must be \"auto\" or \"off\" (got {value!r})",
                    '"auto" assembles R1+R2 and lanes into one sample; "off" uploads each file as its own')
    return value
