"""`seqdrop check`'s look at where samples will land, without uploading anything.

It walks the watch folders as the daemon's scan does (bounded), plans each sample it finds the way
the pipeline will (`Planner.prepare`), and reports, each with its fix:
- sample sheets that cannot be read, and sheets that disagree with the run's files (`reconcile`:
  samples without a row, rows without a sample);
- project names (from the config, `[samples.projects]` and the sheets) that match no One Codex
  project or more than one, from one listing of GET /api/v1/projects;
- values that placeholders make break a limit (a 34-character MiSeq run name as a tag).
The data still goes in every case: these are what the uploads would leave out.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from daemon.assembly.names import parse as parse_name
from daemon.config import Settings
from daemon.detection.files import Matcher, scan
from daemon.errors import AuthError, Permanent, Transient

from . import samplesheet
from .metadata import PLACEHOLDER_RE, ProjectChoice
from .planner import Planner
from .projects import ProjectResolver

MAX_FILES = 20_000             # files looked at per check: a share of old runs must not take minutes
MAX_PROBLEMS_PER_SHEET = 5     # then "and N more"
PROJECT_PAGE = 100
MAX_PROJECT_PAGES = 10
Lister = Callable[[Mapping[str, str]], Any]     # OneCodexClient.projects


@dataclass(frozen=True)
class Finding:
    level: str          # "ok", "warn" or "bad" (check's ok/warning/PROBLEM)
    what: str
    detail: str
    fix: str = ""


@dataclass
class _Seen:
    """What the walk found: each sheet's sample stems, each planned sample's choices and omissions."""

    stems: dict[str, set[str]]
    choices: dict[str, set[str]]                  # project spec → where it comes from
    omitted: dict[tuple[str, str], list[str]]     # (watch folder, field) → reasons
    files: int = 0


def survey(settings: Settings, *, projects: Lister | None) -> list[Finding]:
    """Every landing problem the check can see; `projects` lists One Codex projects (None: the API
    could not be reached, so project names are not checked)."""
    planner = Planner.from_settings(settings, fetch=None)
    seen = _walk(settings, planner)
    findings = _sheets(planner, seen)
    findings += _placeholders(seen)
    for layer_source, spec in _config_projects(settings):
        seen.choices.setdefault(spec, set()).add(layer_source)
    findings += _projects(seen.choices, projects)
    return findings


def _walk(settings: Settings, planner: Planner) -> _Seen:
    seen = _Seen(stems=defaultdict(set), choices={}, omitted=defaultdict(list))
    matcher = Matcher(settings.watch.include, settings.watch.exclude, max_depth=settings.watch.max_depth)
    planned: set[tuple[str, str]] = set()
    for folder in settings.watch.folders:
        for path, st in scan(folder.path, matcher, log=_Quiet()):
            seen.files += 1
            if seen.files > MAX_FILES:
                return seen
            name = parse_name(os.path.basename(path))
            if name.role == "index" or (os.path.dirname(path), name.stem) in planned:
                continue
            planned.add((os.path.dirname(path), name.stem))
            landing, place, _ = planner.prepare(path=path, name=name.stem, run=None, mtime_ns=st.st_mtime_ns)
            if place.sheet is not None and not _undetermined(name.stem):
                seen.stems[place.sheet].add(name.stem)
            for choice in landing.projects:
                seen.choices.setdefault(choice.spec, set()).add(choice.source)
            for omitted in landing.omitted:
                seen.omitted[(folder.path, omitted.field)].append(omitted.reason)
    return seen


def _undetermined(stem: str) -> bool:
    found = samplesheet.NUMBERED_RE.match(stem)
    return found is not None and found["n"] == "0"


def _sheets(planner: Planner, seen: _Seen) -> list[Finding]:
    findings = []
    for sheet_path, stems in sorted(seen.stems.items()):
        sheet = planner.sheets.get(sheet_path)
        if sheet is None:
            continue
        if isinstance(sheet, str):
            findings.append(Finding("bad", "sample sheet", sheet,
                                    "correct it (it is read again when each sample is uploaded); until then its "
                                    "samples go without the sheet's names, projects and descriptions"))
            continue
        problems = sheet.reconcile(sorted(stems)).problems
        for problem in problems[:MAX_PROBLEMS_PER_SHEET]:
            findings.append(Finding("warn", "sample sheet", problem,
                                    "if the run is still being written, wait; otherwise correct the sheet or the "
                                    "file names (the samples go either way)"))
        if len(problems) > MAX_PROBLEMS_PER_SHEET:
            findings.append(Finding("warn", "sample sheet", f"{sheet_path}: and {len(problems) - MAX_PROBLEMS_PER_SHEET} "
                                                           "more disagreement(s) like these", "as above"))
        if not problems:
            findings.append(Finding("ok", "sample sheet", f"{sheet_path}: {len(sheet.rows)} row(s), every sample "
                                                         "matched"))
    return findings


def _placeholders(seen: _Seen) -> list[Finding]:
    findings = []
    for (folder, field), reasons in sorted(seen.omitted.items()):
        fix = ("a tag is at most 30 characters: use \"{date}\" or a short literal instead of \"{run}\" (MiSeq "
               "run names are 34)") if field.startswith("tags") else \
            "shorten or correct the value (the limits are in README, \"Where samples land\"); the samples go without it"
        findings.append(Finding("warn", "landing", f"{field} is left out for {len(reasons)} sample(s) in {folder}, "
                                                   f"e.g. {reasons[0]}", fix))
    return findings


def _config_projects(settings: Settings) -> Iterable[tuple[str, str]]:
    landing = settings.samples.landing
    if landing.defaults.project:
        yield "[samples] project", landing.defaults.project
    for folder in settings.watch.folders:
        if folder.samples is not None and folder.samples.landing.project:
            yield f"the project of watch path {folder.path}", folder.samples.landing.project
    for value, spec in landing.projects.items():
        yield f"samples.projects[{value!r}]", spec


def _projects(choices: dict[str, set[str]], lister: Lister | None) -> list[Finding]:
    specs = {spec: sources for spec, sources in choices.items() if not PLACEHOLDER_RE.search(spec)}
    if not specs:
        return []
    if lister is None:
        return [Finding("warn", "projects", "not checked: One Codex could not be asked",
                        "fix the API problem above, then run seqdrop check again")]
    try:
        listed = _list_all(lister)
    except (Transient, Permanent, AuthError) as exc:
        return [Finding("warn", "projects", f"not checked: GET /api/v1/projects failed ({exc})",
                        "run seqdrop check again later")]
    resolver = ProjectResolver(fetch=lambda params: _local_where(listed, params))
    findings, found = [], []
    for spec, sources in sorted(specs.items()):
        where = " and ".join(sorted(sources))
        result = resolver.resolve_first([ProjectChoice(spec, where)])
        if result.project is not None:
            found.append(f"{spec!r} → {result.project.id}")
            continue
        sheet_only = all(s.startswith("Sample_Project") for s in sources)
        findings.append(Finding("warn" if sheet_only else "bad", "project", result.problems[0],
                                "create the project in One Codex, correct the name, or give its 16-character id; "
                                "until then those samples go to the next project in line, else stay private"))
    if found:
        findings.insert(0, Finding("ok", "projects", "; ".join(found)))
    return findings


def _list_all(lister: Lister) -> list[Any]:
    """Every project the key can see (one page for most labs)."""
    listed: list[Any] = []
    for page in range(1, MAX_PROJECT_PAGES + 1):
        answer = lister({"per_page": str(PROJECT_PAGE), "page": str(page)})
        if not isinstance(answer, list):
            raise Permanent("the answer is not a list of projects")
        listed += answer
        if len(answer) < PROJECT_PAGE:
            break
    return listed


def _local_where(listed: list[Any], params: Mapping[str, str]) -> list[Any]:
    """The `where` clauses ProjectResolver sends ({field: {"$eq": value}}), answered from one listing."""
    clause = json.loads(params.get("where", "{}"))
    (field, condition), = clause.items()
    wanted = condition.get("$eq") if isinstance(condition, dict) else condition
    return [p for p in listed if isinstance(p, dict) and p.get(field) == wanted]


class _Quiet:
    """The scan's log: the check reports unreadable and too-deep folders itself."""

    def info(self, event: str, **fields: Any) -> None:
        pass

    def warning(self, event: str, **fields: Any) -> None:
        pass
