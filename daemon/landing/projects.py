"""Project names → One Codex project ids, through `GET /api/v1/projects?where=…`, cached.

The HTTP call is the caller's (`fetch`: the daemon's client, which owns requests, the key and the
error mapping): this module only decides what to ask and what the answers mean. A project id, name
or short name is looked up once and remembered; `forget(id)` drops what pointed at a project One
Codex later calls unknown, so the next sample asks again. A name that finds no project, or two, is
remembered for `miss_ttl_s` (a project created meanwhile is found then) and named in a sentence.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .metadata import ProjectChoice

# GET /api/v1/projects with these query parameters → its JSON answer (a list of projects). Errors
# (Transient, AuthError…) are the caller's and pass through unchanged.
Fetch = Callable[[Mapping[str, str]], Any]
PROJECT_ID_RE = re.compile(r"^[0-9a-f]{16}$")
URI_RE = re.compile(r"^/api/v1/projects/(?P<id>[0-9a-f]{16})$")


@dataclass(frozen=True)
class Project:
    id: str
    name: str | None
    short_name: str | None


class ProjectLookupError(LookupError):
    """No project, or more than one, answers to a name; str() says which and what to do."""


@dataclass(frozen=True)
class Resolution:
    """The project a sample goes to (None: it stays private, unfiled) and why each choice before
    it was passed over."""

    project: Project | None
    problems: tuple[str, ...]


class ProjectResolver:
    def __init__(self, *, fetch: Fetch, clock: Callable[[], float] = time.monotonic,
                 miss_ttl_s: float = 300.0) -> None:
        self._fetch, self._clock, self._miss_ttl_s = fetch, clock, miss_ttl_s
        self._lock = threading.Lock()
        self._found: dict[str, Project] = {}
        self._missed: dict[str, tuple[float, str]] = {}   # spec → (expires at, message)

    def resolve(self, spec: str) -> Project:
        """The project `spec` names (a 16-hex id, a name or a short name); ProjectLookupError if
        none or several do."""
        with self._lock:
            if spec in self._found:
                return self._found[spec]
            missed = self._missed.get(spec)
            if missed is not None and self._clock() < missed[0]:
                raise ProjectLookupError(missed[1])
        try:
            project = self._lookup(spec)   # outside the lock: other workers' cached names go on
        except ProjectLookupError as exc:
            with self._lock:
                self._missed[spec] = (self._clock() + self._miss_ttl_s, str(exc))
            raise
        with self._lock:
            self._found[spec] = project
            self._missed.pop(spec, None)
        return project

    def resolve_first(self, choices: Sequence[ProjectChoice]) -> Resolution:
        """The first of `choices` that names one project; each one passed over, in a sentence."""
        problems = []
        for choice in choices:
            try:
                return Resolution(self.resolve(choice.spec), tuple(problems))
            except ProjectLookupError as exc:
                problems.append(f"{choice.source}: {exc}")
        if problems:
            problems.append("the sample goes without a project (private to the uploader).")
        return Resolution(None, tuple(problems))

    def forget(self, project_id: str) -> None:
        """One Codex says this project is unknown (deleted, or access withdrawn): ask again next time."""
        with self._lock:
            for spec in [s for s, p in self._found.items() if p.id == project_id]:
                del self._found[spec]

    def _lookup(self, spec: str) -> Project:
        if PROJECT_ID_RE.fullmatch(spec):
            found = self._where({"$uri": {"$eq": f"/api/v1/projects/{spec}"}})
            if found:
                return found[0]
        # Potion's `where` has no $or: ask by full name, then by short name.
        candidates = {p.id: p for p in self._where({"name": {"$eq": spec}})}
        candidates.update({p.id: p for p in self._where({"project_name": {"$eq": spec}})})
        if not candidates:
            return _none(spec)
        if len(candidates) > 1:
            listed = "; ".join(f"{p.id} ({p.name or ''} / {p.short_name or ''})" for p in candidates.values())
            raise ProjectLookupError(f"project {spec!r} matches {len(candidates)} One Codex projects ({listed}); "
                                     "give the project's 16-character id instead.")
        return next(iter(candidates.values()))

    def _where(self, clause: Mapping[str, Any]) -> list[Project]:
        answer = self._fetch({"where": json.dumps(clause), "per_page": "50"})
        if not isinstance(answer, list):
            raise ProjectLookupError("One Codex answered the project lookup with something that is not a "
                                     "list of projects; try again later.")
        return [p for p in map(_project, answer) if p is not None]


def _none(spec: str) -> Project:
    hint = " (names are case-sensitive)" if not PROJECT_ID_RE.fullmatch(spec) else ""
    raise ProjectLookupError(f"no One Codex project visible to this API key is called {spec!r}{hint}; "
                             "check the name, or give the project's 16-character id from its page's address.")


def _project(item: Any) -> Project | None:
    """A project from the API's answer (components.schemas.projects); None for one without an id."""
    if not isinstance(item, dict) or not isinstance(item.get("$uri"), str):
        return None
    found = URI_RE.match(item["$uri"])
    if found is None:
        return None
    name, short = item.get("name"), item.get("project_name")
    return Project(found["id"], name if isinstance(name, str) else None, short if isinstance(short, str) else None)
