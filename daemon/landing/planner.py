"""What one sample is told to One Codex: the landing fields of its init and the record kept with it.

`Planner.plan(sample, row)` is called by the pipeline right before each init (design.md, "Where
samples land"): it finds the sample's watch folder, run folder and `SampleSheet.csv` (read then, at
upload time, not when the run started: a sheet fixed during the run counts), matches the sample to
its row, applies `[samples]` < watch path < sample sheet with the placeholders filled in, and
resolves the project through `ProjectResolver` (GET /api/v1/projects, cached). It returns
(the fields for init_upload / init_multipart_upload, the landing record for `store.set_landing`).

Data is never held hostage by metadata: whatever cannot be read, matched, filled in or resolved is
left out, with the reason in the record's "omitted" list, and the sample goes. `LandingClient`
wraps the API client so that an init refused because of the project it names is sent again once
with the project looked up afresh, and then, if need be, without it.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from daemon.assembly.names import parse as parse_name
from daemon.config import Settings
from daemon.config.samples import FolderSamples
from daemon.config.watch import WatchFolder
from daemon.errors import AuthError, Permanent, Transient
from daemon.paths import is_within
from daemon.queue.base import FileRow, SampleRow, Store
from daemon.upload.answers import refuses_project

from . import samplesheet
from .metadata import (
    Context,
    Landing,
    Layer,
    ProjectChoice,
    build,
    init_fields,
    run_date,
)
from .projects import Fetch, Project, ProjectResolver
from .settings import LandingSettings

SHEET_NAME = "SampleSheet.csv"
SHEET_CACHE_ENTRIES = 64       # one per run folder in flight is plenty; the oldest are dropped
R = TypeVar("R")


@dataclass(frozen=True)
class Place:
    """Where a file sits: its watch folder, its run folder (None: not found) and the run's name,
    and the sample sheet that names its samples (None: none, or sheets are off)."""

    root: str
    folder: FolderSamples | None
    run_dir: str | None
    run: str | None
    sheet: str | None


@dataclass
class _Plan:
    """The last plan made on this thread: what a refused init is re-planned from."""

    sample: SampleRow | None
    row: FileRow
    extra: dict[str, Any]
    record: dict[str, Any]


class SheetCache:
    """Parsed sample sheets by (path, mtime_ns, size): a sheet is parsed again only once it changed."""

    def __init__(self, entries: int = SHEET_CACHE_ENTRIES) -> None:
        self._entries = entries
        self._lock = threading.Lock()
        self._sheets: OrderedDict[str, tuple[tuple[int, int], samplesheet.SampleSheet | str]] = OrderedDict()

    def get(self, path: str) -> samplesheet.SampleSheet | str | None:
        """The sheet at `path`, or the sentence saying why it cannot be read; None if there is none."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            return f"{path}: cannot be read ({exc.strerror or exc}); give the seqdrop user read access."
        version = (st.st_mtime_ns, st.st_size)
        with self._lock:
            cached = self._sheets.get(path)
            if cached is not None and cached[0] == version:
                self._sheets.move_to_end(path)
                return cached[1]
        try:
            parsed: samplesheet.SampleSheet | str = samplesheet.read(path)
        except samplesheet.SampleSheetError as exc:
            parsed = str(exc)
        with self._lock:
            self._sheets[path] = (version, parsed)
            self._sheets.move_to_end(path)
            while len(self._sheets) > self._entries:
                self._sheets.popitem(last=False)
        return parsed


def locate(path: str, run: str | None, folders: Sequence[WatchFolder], *, sheets: bool = True) -> Place:
    """The place of the file at `path` whose sample's run folder is called `run` (None: unknown).

    The run folder is the nearest folder above the file with that name, else the nearest holding a
    sample sheet, else the file's own folder (design.md, "Runs"). The sample sheet is the nearest one
    between the file and its run folder (BCL Convert copies it next to its output), else the run
    folder's. Nothing above the watch folder is looked at."""
    inside = [f for f in folders if is_within(path, f.path)]
    watch = max(inside, key=lambda f: len(f.path)) if inside else None
    root = watch.path if watch else os.path.dirname(path)
    chain = []
    folder = os.path.dirname(path)
    while True:
        chain.append(folder)
        if folder == root or not is_within(folder, root) or os.path.dirname(folder) == folder:
            break
        folder = os.path.dirname(folder)
    named = next((d for d in chain if run and os.path.basename(d) == run), None)
    with_sheet = [d for d in chain if os.path.isfile(os.path.join(d, SHEET_NAME))] if sheets else []
    run_dir = named or (with_sheet[0] if with_sheet else chain[0])
    if named is not None:
        with_sheet = [d for d in with_sheet if is_within(d, named)]
    sheet = os.path.join(with_sheet[0], SHEET_NAME) if with_sheet else None
    return Place(root=root, folder=watch.samples if watch else None, run_dir=run_dir,
                 run=run or os.path.basename(run_dir) or None, sheet=sheet)


class Planner:
    def __init__(self, *, landing: LandingSettings, folders: Sequence[WatchFolder],
                 resolver: ProjectResolver | None, store: Store | None = None, log: Any = None) -> None:
        self.landing, self.folders, self.resolver = landing, tuple(folders), resolver
        self.store, self.log = store, log
        self.sheets = SheetCache()
        self._local = threading.local()

    @classmethod
    def from_settings(cls, settings: Settings, *, fetch: Fetch | None, store: Store | None = None,
                      log: Any = None) -> Planner:
        """A planner for `settings`; `fetch` answers GET /api/v1/projects (the client's `projects`)."""
        return cls(landing=settings.samples.landing, folders=settings.watch.folders,
                   resolver=ProjectResolver(fetch=fetch) if fetch is not None else None, store=store, log=log)

    def plan(self, sample: SampleRow | None, row: FileRow) -> tuple[dict[str, Any], dict[str, Any]]:
        """(the landing fields of this sample's init, its landing record). `row` is the lead member
        (or a file with no sample row, planned as a one-file sample)."""
        try:
            extra, record = self._plan(sample, row)
        except Exception as exc:   # noqa: BLE001 — a bug here must cost the metadata, never the upload
            if self.log is not None:
                self.log.error("landing.plan_failed", path=row.path, error=f"{type(exc).__name__}: {exc}")
            extra, record = {}, empty_record(f"not planned: {type(exc).__name__}: {exc}")
        self._local.last = _Plan(sample, row, extra, record)
        return extra, record

    def _plan(self, sample: SampleRow | None, row: FileRow) -> tuple[dict[str, Any], dict[str, Any]]:
        name = sample.name if sample is not None else parse_name(os.path.basename(row.path)).stem
        first = sample.files[0].path if sample is not None and sample.files else row.path
        landing, _place, sheet_omitted = self.prepare(path=first, name=name, mtime_ns=row.identity.mtime_ns,
                                                      run=sample.run if sample is not None else None)
        project, project_note = self._project(landing.projects)
        record = landing_record(landing, project, before=sheet_omitted,
                                after=[["project", project_note]] if project_note else [])
        if self.log is not None and record["omitted"]:
            self.log.warning("landing.omitted", path=row.path, sample=name,
                             fields=",".join(field for field, _ in record["omitted"]))
        return init_fields(landing, project.id if project else None), record

    def prepare(self, *, path: str, name: str, run: str | None, mtime_ns: int) -> tuple[Landing, Place, list[list[str]]]:
        """What a sample named `name` whose first file is `path` lands with, before its project is
        resolved: (the landing, its place, what its sample sheet could not give and why)."""
        place = locate(path, run, self.folders, sheets=self.landing.sample_sheet)
        sheet_omitted: list[list[str]] = []
        sheet_row = self._sheet_row(place, name, sheet_omitted)
        context = Context(run=place.run, sample=name, folder=os.path.basename(place.root.rstrip(os.sep)) or None,
                          date=run_date(place.run, mtime_ns))
        layers = [self.landing.defaults, place.folder.landing if place.folder is not None else Layer()]
        landing = build(layers, context, row=sheet_row, sheet_projects=self.landing.projects,
                        sheet_source=place.sheet or SHEET_NAME)
        return landing, place, sheet_omitted

    def _sheet_row(self, place: Place, name: str, omitted: list[list[str]]) -> samplesheet.SheetRow | None:
        if place.sheet is None:
            return None
        sheet = self.sheets.get(place.sheet)
        if sheet is None:
            return None
        if isinstance(sheet, str):
            omitted.append(["sample_sheet", (f"{sheet} The sample goes without the sheet's name, project and "
                                             "description.")])
            return None
        found = sheet.match(name)
        if found is None:
            omitted.append(["sample_sheet", (f"sample {name} has no row in {place.sheet}: it goes without the "
                                             f"sheet's name, project and description; add a row with Sample_ID "
                                             f"{name!r} if it belongs.")])
            return None
        if found.by == "number":
            omitted.append(["sample_sheet", (f"sample {name} matched {place.sheet} line {found.row.line} only by "
                                             f"its number _S{found.row.number} (Sample_ID {found.row.sample_id!r}): "
                                             "the sheet may have been edited after the run; check the name.")])
        return found.row

    def _project(self, choices: Sequence[ProjectChoice]) -> tuple[Project | None, str | None]:
        """The project of the first choice that names one, and a sentence for what was passed over."""
        if not choices:
            return None, None
        if self.resolver is None:
            return None, "no One Codex client to look projects up with; the sample goes without a project."
        try:
            resolution = self.resolver.resolve_first(choices)
        except (Transient, AuthError, Permanent) as exc:
            return None, (f"could not ask One Codex for the project ({exc}); the sample goes without a project "
                          "(private to the uploader).")
        note = " ".join(resolution.problems) or None
        if resolution.project is not None and note:
            note += f" It went to {project_label(resolution.project)} instead."
        return resolution.project, note

    # -- a project One Codex refuses at init ---------------------------------------------------

    def send(self, init: Callable[[dict[str, Any] | None], R], extra: dict[str, Any] | None) -> R:
        """init(extra), and, if One Codex refuses the project it names, once more with the project
        looked up afresh, then without it. `extra` and its plan's record are updated in place (and
        the record stored again), so what the pipeline keeps says where the sample went."""
        project_id = project_of(extra)
        if extra is None or project_id is None:
            return init(extra)
        try:
            return init(extra)
        except Permanent as exc:
            if not refuses_project(exc, project_id):
                raise
            refusal = str(exc)
        if self.log is not None:
            self.log.warning("landing.project_refused", project=project_id, error=refusal)
        if self.resolver is not None:
            self.resolver.forget(project_id)
        self._replan(extra)
        if project_of(extra) not in (None, project_id):
            try:
                return init(extra)
            except Permanent as exc:
                if not refuses_project(exc, project_of(extra) or ""):
                    raise
                refusal = str(exc)
        if project_of(extra) is not None:
            self._without_project(extra, f"One Codex refused it at init: {refusal}")
        return init(extra)

    def _replan(self, extra: dict[str, Any]) -> None:
        last: _Plan | None = getattr(self._local, "last", None)
        if last is None or last.extra is not extra:
            self._without_project(extra, "One Codex refused it at init; the sample goes without a project.")
            return
        new_extra, new_record = self._plan(last.sample, last.row)
        extra.clear()
        extra.update(new_extra)
        self._store_record(last, new_record)

    def _without_project(self, extra: dict[str, Any], reason: str) -> None:
        project_id = project_of(extra)
        extra.pop("project", None)
        last: _Plan | None = getattr(self._local, "last", None)
        if last is not None and last.extra is extra:
            record = dict(last.record, project=None, project_name=None)
            record["omitted"] = [*last.record.get("omitted", []),
                                 ["project", f"project {project_id} left out: {reason}"]]
            self._store_record(last, record)

    def _store_record(self, last: _Plan, record: dict[str, Any]) -> None:
        last.record.clear()
        last.record.update(record)
        if self.store is not None and last.sample is not None:
            self.store.set_landing(last.sample.id, last.record)


class LandingClient:
    """The API client as the pipeline sees it: every call passes through, but an init whose project
    One Codex refuses goes through `Planner.send` (re-resolved once, then sent without it)."""

    def __init__(self, client: Any, planner: Planner) -> None:
        self._client, self._planner = client, planner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def init_upload(self, *args: Any, extra: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        return self._planner.send(lambda e: self._client.init_upload(*args, **kwargs, **_extra_kw(e)), extra)

    def init_multipart_upload(self, *args: Any, extra: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        return self._planner.send(lambda e: self._client.init_multipart_upload(*args, **kwargs, **_extra_kw(e)),
                                  extra)


def _extra_kw(extra: dict[str, Any] | None) -> dict[str, Any]:
    """No `extra` keyword at all when there is nothing to send: the init is exactly as it was before
    landing existed (and a client, or a test's stand-in, without the keyword keeps working)."""
    return {"extra": extra} if extra else {}


def project_of(extra: dict[str, Any] | None) -> str | None:
    """The project id an init's landing fields name, if any."""
    ref = (extra or {}).get("project")
    text = ref.get("$ref") if isinstance(ref, dict) else None
    return text.rsplit("/", 1)[-1] if isinstance(text, str) and text else None


def project_label(project: Project) -> str:
    return f"{project.name or project.short_name or ''} ({project.id})".strip()


def landing_record(landing: Landing, project: Project | None, *, before: Sequence[list[str]] = (),
                   after: Sequence[list[str]] = ()) -> dict[str, Any]:
    """The record `store.set_landing` keeps and `status` shows (SAMPLES.md); `before`/`after`: what
    was left out besides `landing.omitted` (the sample sheet's problems, the project's)."""
    omitted = [*before, *([o.field, o.reason] for o in landing.omitted), *after]
    return {"project": project.id if project else None, "project_name": (project.name or project.short_name)
            if project else None, "tags": list(landing.tags), "metadata": dict(landing.metadata), "omitted": omitted}


def empty_record(reason: str) -> dict[str, Any]:
    return {"project": None, "project_name": None, "tags": [], "metadata": {}, "omitted": [["landing", reason]]}
