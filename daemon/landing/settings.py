"""Where-samples-land settings: the dataclasses config will hold, and their checks.

Proposed TOML (not read by daemon/config yet; `layer_from_table` and `settings_from_table` take the
parsed tables, so that config/ stays the only reader of TOML):

    [samples]
    sample_sheet = true                      # read SampleSheet.csv in the run folder
    project = "Surveillance"                 # a 16-hex id, a project's name or its short name
    tags = ["seqdrop", "{run}"]
    [samples.metadata]                       # One Codex's keys; strings may hold {run} {sample} {folder} {date}
    platform = "Illumina MiSeq"
    date_sequenced = "{date}"
    [samples.metadata.custom]                # flat: text, numbers, true/false
    lab = "Microbiology"
    [samples.projects]                       # Sample_Project in the sheet → One Codex project
    SURV = "Surveillance"

    [watch]
    paths = [{path = "/srv/miseq", project = "a1b2c3d4e5f67890", tags = ["miseq", "{run}"],
              metadata = {platform = "Illumina MiSeq"}}]

Precedence: `[samples]` < watch path < sample sheet. `project` and each metadata key (each `custom`
key) of the more specific layer win; a layer's `tags` replace the list of the layer below.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from daemon.errors import ConfigError

from .metadata import DATES, METADATA_KEYS, PLACEHOLDERS, Layer, check_value, unknown_placeholders

LAYER_KEYS = ("project", "tags", "metadata")   # what a watch path's table may hold for landing
PLACEHOLDER_HELP = "the placeholders are " + ", ".join(f"{{{name}}}" for name in PLACEHOLDERS)


@dataclass(frozen=True)
class LandingSettings:
    """`[samples]`'s landing keys: the default layer, whether sample sheets are read, the project map."""

    defaults: Layer = field(default_factory=Layer)
    sample_sheet: bool = True
    projects: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


def settings_from_table(table: Mapping[str, Any], *, file: str, key: str = "samples") -> LandingSettings:
    """`[samples]`'s landing keys (its other keys are not read here)."""
    sample_sheet = table.get("sample_sheet", True)
    if not isinstance(sample_sheet, bool):
        raise ConfigError(f"must be true or false (got {sample_sheet!r})", file=file, key=f"{key}.sample_sheet",
                          fix="sample_sheet = true")
    projects = table.get("projects", {})
    if not isinstance(projects, Mapping) or not all(isinstance(v, str) and v for v in projects.values()):
        raise ConfigError("must be a table of Sample_Project = \"One Codex project\"", file=file,
                          key=f"{key}.projects", fix='[samples.projects]\nSURV = "Surveillance"')
    return LandingSettings(layer_from_table(table, file=file, key=key), sample_sheet,
                           MappingProxyType(dict(projects)))


def layer_from_table(table: Mapping[str, Any], *, file: str, key: str) -> Layer:
    """The landing keys of `[samples]` or of a watch path's table, checked: a value that breaks a
    published limit is a ConfigError naming the key (values with placeholders are checked per sample)."""
    project = table.get("project")
    if project is not None and not (isinstance(project, str) and project.strip()):
        raise ConfigError(f"must be a project id, name or short name (got {project!r})", file=file,
                          key=f"{key}.project", fix='project = "Surveillance"')
    if project is not None:
        _placeholders(project, file, f"{key}.project")
    tags = table.get("tags")
    if tags is not None:
        if not isinstance(tags, list):
            raise ConfigError(f"must be a list of strings (got {tags!r})", file=file, key=f"{key}.tags",
                              fix='tags = ["miseq", "{run}"]')
        for index, tag in enumerate(tags):
            _check(file, f"{key}.tags[{index}]", "tag", tag)
        tags = tuple(tags)
    metadata = table.get("metadata")
    if metadata is not None:
        metadata = _metadata(metadata, file, f"{key}.metadata")
    return Layer(project=project, tags=tags, metadata=metadata)


def _metadata(table: Any, file: str, key: str) -> Mapping[str, Any]:
    if not isinstance(table, Mapping):
        raise ConfigError("must be a table", file=file, key=key, fix="[samples.metadata]\nplatform = \"Illumina\"")
    unknown = sorted(set(table) - set(METADATA_KEYS))
    if unknown:
        raise ConfigError(f"unknown metadata key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}",
                          file=file, key=key, fix=f"the keys are: {', '.join(METADATA_KEYS)}; put your own in "
                                                  f"[{key.split('.')[0]}.metadata.custom]")
    for name, value in table.items():
        if name == "custom":
            _check(file, f"{key}.custom", "custom", value)
            for item_name, item in value.items():
                if isinstance(item, str):
                    _placeholders(item, file, f"{key}.custom.{item_name}")
        else:
            _check(file, f"{key}.{name}", name, value)
    return MappingProxyType(dict(table))


def _check(file: str, key: str, field_name: str, value: Any) -> None:
    """A value without placeholders must fit now; one with them is checked once they are filled in."""
    if isinstance(value, str) and _placeholders(value, file, key):
        if field_name in DATES and value.strip() != "{date}":
            raise ConfigError(f"{value!r}: a date field takes a date or \"{{date}}\" alone", file=file, key=key,
                              fix='date_sequenced = "{date}"')
        return
    problem = check_value(field_name, value)
    if problem:
        raise ConfigError(problem, file=file, key=key, fix="see the One Codex API's limits in README "
                                                           "(\"Where samples land\")")


def _placeholders(text: str, file: str, key: str) -> bool:
    """Does `text` hold placeholders? Unknown ones are an error."""
    unknown = unknown_placeholders(text)
    if unknown:
        raise ConfigError(f"unknown placeholder {unknown[0]} in {text!r}", file=file, key=key, fix=PLACEHOLDER_HELP)
    return "{" in text and any(f"{{{name}}}" in text for name in PLACEHOLDERS)
