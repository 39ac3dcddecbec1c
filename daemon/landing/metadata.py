"""What init_upload is told about a sample: `project`, `tags`, `metadata`, within the published limits.

The limits are those of ../shared/reference/onecodex-openapi.json (init_upload's request schema;
tests/test_landing.py reads them from the file to prove these constants match). A value that breaks
one is, from the config file, a config error naming the key (`check_value`); from a sample sheet or a
placeholder, left out with the reason (`build`): data is never held hostage by metadata.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .samplesheet import SheetRow

TAG_MAX_CHARS = 30
EXTERNAL_SAMPLE_ID_MAX_CHARS = 60
NAME_MAX_CHARS = 255
LOCATION_STRING_MAX_CHARS = 255
LAT_RANGE = (-90.0, 90.0)
LON_RANGE = (-180.0, 180.0)
LIBRARY_TYPES = ("WGS", "Targeted/16S", "Other")
SAMPLE_TYPES = ("Isolate", "Metagenomic", "Other")
PLATFORMS = (
    "454 sequencing", "454 GS FLX", "454 GS FLX Titanium", "Illumina", "Illumina Genome Analyzer II",
    "Illumina HiSeq", "Illumina HiSeq 1500", "Illumina HiSeq 2000", "Illumina HiSeq 2500", "Illumina HiSeq 3000",
    "Illumina HiSeq 4000", "Illumina HiSeq X", "Illumina iSeq 100", "Illumina MiniSeq", "Illumina MiSeq",
    "Illumina NextSeq", "Illumina NextSeq 500", "Illumina NextSeq 550", "Illumina NovaSeq", "Illumina NovaSeq 5000",
    "Illumina NovaSeq 6000", "BGISEQ", "BGISEQ 50", "Element", "Element AVITI", "Ion", "Ion S5", "Ion S5 XL",
    "Ion PGM", "Ion Proton", "Ion Torrent", "Oxford Nanopore", "Oxford Nanopore GridION X5",
    "Oxford Nanopore MinION", "Oxford Nanopore PromethION", "PacBio", "PacBio RS II", "PacBio Sequel",
    "PacBio Sequel II System", "PacBio Revio", "PacBio Onso", "SOLiD", "Solexa Genome Analyzer", "Sanger", "Other",
)
TEXT_LIMITS = {"name": NAME_MAX_CHARS, "description": None, "external_sample_id": EXTERNAL_SAMPLE_ID_MAX_CHARS,
               "location_string": LOCATION_STRING_MAX_CHARS}
ENUMS = {"platform": PLATFORMS, "library_type": LIBRARY_TYPES, "sample_type": SAMPLE_TYPES}
DATES = ("date_collected", "date_sequenced")
METADATA_KEYS = (*TEXT_LIMITS, *ENUMS, *DATES, "location_lat", "location_lon", "starred", "custom")
PLACEHOLDERS = ("run", "sample", "folder", "date")
PLACEHOLDER_RE = re.compile(r"\{([A-Za-z_]\w*)\}")
# Run folders start with their date: Illumina YYMMDD_ (MiSeq, NextSeq, NovaSeq 6000), Nanopore and
# NovaSeq X YYYYMMDD_.
RUN_DATE_RE = re.compile(r"^(?:(?P<long>\d{8})|(?P<short>\d{6}))_")


@dataclass(frozen=True)
class Context:
    """The values of the placeholders for one sample; None: this sample has none."""

    run: str | None = None
    sample: str | None = None
    folder: str | None = None
    date: dt.date | None = None


@dataclass(frozen=True)
class Omitted:
    """A field left out of init_upload, and why (shown by `status`)."""

    field: str
    reason: str


@dataclass(frozen=True)
class ProjectChoice:
    """A project to try (an id, a name or a short name) and where it came from, for messages."""

    spec: str
    source: str


@dataclass(frozen=True)
class Layer:
    """One layer of settings ([samples], then a watch path): what it sets; None/empty: inherit."""

    project: str | None = None
    tags: tuple[str, ...] | None = None
    metadata: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Landing:
    """Where one sample lands: project choices in order (the first that resolves wins), tags,
    metadata, and every field left out."""

    projects: tuple[ProjectChoice, ...]
    tags: tuple[str, ...]
    metadata: Mapping[str, Any]
    omitted: tuple[Omitted, ...]


class MissingValue(ValueError):
    """A placeholder with no value for this sample."""


def run_date(run_name: str | None, mtime_ns: int) -> dt.date:
    """The run's date from its folder name (YYYYMMDD_ or YYMMDD_), else the file's local mtime date."""
    found = RUN_DATE_RE.match(run_name or "")
    if found:
        try:
            if found["long"]:
                return dt.datetime.strptime(found["long"], "%Y%m%d").date()
            return dt.datetime.strptime(found["short"], "%y%m%d").date()
        except ValueError:
            pass  # digits that are no date (a plate number): fall back to the mtime
    return dt.datetime.fromtimestamp(mtime_ns / 1e9).date()


def context_for(*, sample: str, run_dir: Path | None, watch_root: Path, mtime_ns: int) -> Context:
    """The placeholders of a sample in `run_dir` (None: not known) under the watch folder `watch_root`."""
    run = run_dir.name if run_dir is not None else None
    return Context(run=run, sample=sample, folder=watch_root.name or None, date=run_date(run, mtime_ns))


def expand(text: str, context: Context) -> str:
    """`text` with its placeholders filled in; MissingValue names one that has no value."""
    def fill(found: re.Match[str]) -> str:
        name = found[1]
        if name not in PLACEHOLDERS:
            return found[0]   # check_value refuses these in the config; a sheet's braces are text
        value = getattr(context, name)
        if value is None:
            raise MissingValue(f"{{{name}}} has no value for this sample")
        return value.isoformat() if isinstance(value, dt.date) else str(value)
    return PLACEHOLDER_RE.sub(fill, text)


def unknown_placeholders(text: str) -> list[str]:
    return [f"{{{name}}}" for name in PLACEHOLDER_RE.findall(text) if name not in PLACEHOLDERS]


def check_value(field: str, value: Any) -> str | None:
    """Why `value` cannot be metadata `field` (or a tag, field "tag"), or None if it can."""
    if field == "tag":
        if not isinstance(value, str) or not value.strip():
            return "a tag must be a non-empty string"
        return f"a tag is at most {TAG_MAX_CHARS} characters ({len(value)}: {value!r})" \
            if len(value) > TAG_MAX_CHARS else None
    if field in TEXT_LIMITS:
        limit = TEXT_LIMITS[field]
        if not isinstance(value, str):
            return f"must be text (got {type(value).__name__})"
        return f"is at most {limit} characters ({len(value)}: {value!r})" if limit and len(value) > limit else None
    if field in ENUMS:
        return None if value in ENUMS[field] else f"{value!r} is not one of: {', '.join(ENUMS[field])}"
    if field in DATES:
        return None if to_datetime(value) is not None else \
            f"{value!r} is not a date (YYYY-MM-DD) or a date and time (YYYY-MM-DDTHH:MM:SS+00:00)"
    if field in ("location_lat", "location_lon"):
        low, high = LAT_RANGE if field == "location_lat" else LON_RANGE
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high
        return None if ok else f"must be a number from {low:g} to {high:g} (got {value!r})"
    if field == "starred":
        return None if isinstance(value, bool) else f"must be true or false (got {value!r})"
    if field == "custom":
        return _custom_problem(value)
    return f"is not a One Codex metadata field; the fields are: {', '.join(METADATA_KEYS)}"


def _custom_problem(value: Any) -> str | None:
    if not isinstance(value, Mapping):
        return "must be a table of names and values"
    for name, item in value.items():
        if isinstance(item, (Mapping, list, tuple)):
            return f"must be flat: {name!r} holds a {'table' if isinstance(item, Mapping) else 'list'} " \
                   "(One Codex takes only text, numbers and true/false there)"
        if not isinstance(item, (str, int, float, bool)):
            return f"{name!r} holds a {type(item).__name__}; One Codex takes only text, numbers and true/false"
    return None


def to_datetime(value: Any) -> str | None:
    """A date or date and time as the schema's `date-time` (RFC 3339): a bare date is midnight UTC,
    a time without a zone is local time. None when it is neither."""
    if isinstance(value, str):
        try:
            value = dt.date.fromisoformat(value) if len(value) == 10 else dt.datetime.fromisoformat(value)
        except ValueError:
            return None
    if isinstance(value, dt.datetime):
        return (value if value.tzinfo else value.astimezone()).isoformat(timespec="seconds")
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC).isoformat()
    return None


def build(layers: Sequence[Layer], context: Context, *, row: SheetRow | None = None,
          sheet_projects: Mapping[str, str] | None = None, sheet_source: str = "the sample sheet") -> Landing:
    """Where a sample lands: `layers` from the least to the most specific ([samples], then the watch
    path), then its sample-sheet `row`. Placeholders are filled in from `context`; a value that then
    breaks a limit, or a placeholder with no value, is left out and named in `omitted`."""
    omitted: list[Omitted] = []
    project, tags, metadata = None, (), {}
    for layer in layers:
        project = layer.project if layer.project is not None else project
        tags = layer.tags if layer.tags is not None else tags
        for name, value in (layer.metadata or {}).items():
            metadata[name] = {**metadata.get("custom", {}), **value} if name == "custom" else value
    filled_tags = [t for i, tag in enumerate(tags) if (t := _fill(f"tags[{i}]", "tag", tag, context, omitted))]
    filled = {}
    for name, value in metadata.items():
        if name == "custom":
            custom = {k: v for k, item in value.items()
                      if (v := _fill(f"metadata.custom.{k}", None, item, context, omitted)) is not None}
            if custom:
                filled["custom"] = custom
        elif (v := _fill(f"metadata.{name}", name, value, context, omitted)) is not None:
            filled[name] = v
    choices = []
    if row is not None:
        _from_row(row, filled, omitted, sheet_source)
        choices.extend(_row_projects(row, sheet_projects or {}, sheet_source))
    if project is not None and (spec := _fill("project", None, project, context, omitted)):
        choices.append(ProjectChoice(spec, "the config's project"))
    return Landing(tuple(choices), tuple(dict.fromkeys(filled_tags)), filled, tuple(omitted))


def _fill(label: str, field: str | None, value: Any, context: Context, omitted: list[Omitted]) -> Any:
    """`value` with placeholders filled and checked, or None (and why, in `omitted`)."""
    if isinstance(value, str):
        try:
            value = expand(value, context)
        except MissingValue as exc:
            omitted.append(Omitted(label, f"left out: {exc}"))
            return None
    problem = check_value(field, value) if field else None
    if problem:
        omitted.append(Omitted(label, f"left out: {problem}"))
        return None
    return to_datetime(value) if field in DATES else value


def _from_row(row: SheetRow, metadata: dict[str, Any], omitted: list[Omitted], source: str) -> None:
    """The sheet's name, external id and description win over the config's."""
    values = {"name": row.sample_name or row.sample_id, "external_sample_id": row.sample_id,
              "description": row.description}
    for name, value in values.items():
        if not value:
            continue
        problem = check_value(name, value)
        if problem:
            omitted.append(Omitted(f"metadata.{name}", f"left out: {source} line {row.line}: {problem}"))
        else:
            metadata[name] = value


def _row_projects(row: SheetRow, mapping: Mapping[str, str], source: str) -> list[ProjectChoice]:
    if not row.sample_project:
        return []
    if row.sample_project in mapping:
        return [ProjectChoice(mapping[row.sample_project], f"samples.projects[{row.sample_project!r}]")]
    return [ProjectChoice(row.sample_project, f"Sample_Project {row.sample_project!r} in {source}")]


def init_fields(landing: Landing, project_id: str | None) -> dict[str, Any]:
    """The landing fields of an init_upload / init_multipart_upload body; empty ones are not sent."""
    body: dict[str, Any] = {}
    if project_id is not None:
        # The published schema takes a reference; the official client (onecodex/lib/upload.py) sends
        # a bare id. We follow the spec (../shared/reference/README.md).
        body["project"] = {"$ref": f"/api/v1/projects/{project_id}"}
    if landing.tags:
        body["tags"] = [{"name": tag} for tag in landing.tags]
    if landing.metadata:
        body["metadata"] = dict(landing.metadata)
    return body
