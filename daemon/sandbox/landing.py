"""Where samples land, in the sandbox: projects, tags and metadata, as strict as the published schema.

init_upload's `project`, `tags`, `metadata` and `external_sample_id` are checked against
../shared/reference/onecodex-openapi.json (SampleInitUploadSchema) and refused with a 400 where the
real service would refuse them; what is accepted is kept with the sample and served as the API does:
`GET /api/v1/projects` (with `where`), `/api/v1/projects/{id}`, `/api/v1/tags[/{id}]`,
`/api/v1/metadata/{id}`. The sandbox's own copy of the limits: it imports nothing from the daemon.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import secrets
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from .errors import ApiError

SEEDED_PROJECTS = (   # fixed ids, so that docs and rehearsals can name them
    {"id": "5eed000000000001", "name": "Surveillance", "project_name": "surv"},
    {"id": "5eed000000000002", "name": "Oncology", "project_name": "onco"},
    {"id": "5eed000000000003", "name": "Environmental", "project_name": "env"},
)
METADATA_TEXT = {"name": 255, "description": None, "external_sample_id": 60, "location_string": 255}
METADATA_ENUMS = {
    "library_type": ("WGS", "Targeted/16S", "Other"),
    "sample_type": ("Isolate", "Metagenomic", "Other"),
    "platform": (
        "454 sequencing", "454 GS FLX", "454 GS FLX Titanium", "Illumina", "Illumina Genome Analyzer II",
        "Illumina HiSeq", "Illumina HiSeq 1500", "Illumina HiSeq 2000", "Illumina HiSeq 2500",
        "Illumina HiSeq 3000", "Illumina HiSeq 4000", "Illumina HiSeq X", "Illumina iSeq 100", "Illumina MiniSeq",
        "Illumina MiSeq", "Illumina NextSeq", "Illumina NextSeq 500", "Illumina NextSeq 550", "Illumina NovaSeq",
        "Illumina NovaSeq 5000", "Illumina NovaSeq 6000", "BGISEQ", "BGISEQ 50", "Element", "Element AVITI", "Ion",
        "Ion S5", "Ion S5 XL", "Ion PGM", "Ion Proton", "Ion Torrent", "Oxford Nanopore",
        "Oxford Nanopore GridION X5", "Oxford Nanopore MinION", "Oxford Nanopore PromethION", "PacBio",
        "PacBio RS II", "PacBio Sequel", "PacBio Sequel II System", "PacBio Revio", "PacBio Onso", "SOLiD",
        "Solexa Genome Analyzer", "Sanger", "Other"),
}
METADATA_RANGES = {"location_lat": (-90, 90), "location_lon": (-180, 180)}
METADATA_KEYS = (*METADATA_TEXT, *METADATA_ENUMS, *METADATA_RANGES, "date_collected", "date_sequenced",
                 "starred", "custom")
TAG_MAX_CHARS = 30
PROJECT_REF_RE = re.compile(r"^/api/v1/projects/(?P<id>[a-f0-9]{16})$")
SHORT_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{3,15}$")
WHERE_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "$eq": lambda have, want: have == want, "$ne": lambda have, want: have != want,
    "$in": lambda have, want: isinstance(want, list) and have in want,
}

Action = Callable[[str, bytes, str], tuple[int, Any]]


class Landing:
    """The sandbox's projects and tags (thread-safe); samples keep their landing fields themselves."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._projects: dict[str, dict] = {}
        self._tags: dict[str, str] = {}   # name → id
        self.set_projects(list(SEEDED_PROJECTS))

    def set_projects(self, projects: Any) -> list[dict]:
        """Replace every project with `projects` ([{name, project_name, id?}])."""
        if not isinstance(projects, list):
            raise ApiError(400, "projects must be a list of {name, project_name[, id]}")
        made = [_new_project(p) for p in projects]
        with self._lock:
            self._projects = {p["id"]: p for p in made}
        return self.projects()

    def add_project(self, project: Any) -> dict:
        made = _new_project(project)
        with self._lock:
            if made["id"] in self._projects:
                raise ApiError(400, f"project {made['id']} exists already")
            self._projects[made["id"]] = made
        return _public_project(made)

    def remove_project(self, project_id: str) -> bool:
        with self._lock:
            return self._projects.pop(project_id, None) is not None

    def projects(self) -> list[dict]:
        with self._lock:
            return [_public_project(p) for p in self._projects.values()]

    def tag_ref(self, name: str) -> str:
        """The tag of this name (created on first use, as One Codex does), as a $ref."""
        with self._lock:
            tag_id = self._tags.setdefault(name, secrets.token_hex(8))
        return f"/api/v1/tags/{tag_id}"

    def tags(self) -> list[dict]:
        with self._lock:
            return [{"$uri": f"/api/v1/tags/{i}", "name": n} for n, i in self._tags.items()]

    def check_init(self, data: dict) -> dict:
        """The landing fields of an init_upload body, checked as the published schema says; returns
        what to keep with the sample. Raises ApiError(400) for what One Codex refuses."""
        for name in ("external_sample_id", "sample_id"):
            if data.get(name) is not None:
                raise ApiError(400, f"No pre-uploaded sample matches {name} {data[name]!r} (the top-level "
                                    f"{name} only matches pre-uploaded samples; put a LIMS id in "
                                    "metadata.external_sample_id).")
        project = self._check_project(data.get("project"))
        names, metadata = _check_tags(data.get("tags", [])), _check_metadata(data.get("metadata"))
        # Tags are made only once the whole body is known to be accepted.
        return {"project": project, "tags": [self.tag_ref(name) for name in names], "metadata": metadata}

    def _check_project(self, project: Any) -> str | None:
        if project is None:
            return None
        ref = project.get("$ref") if isinstance(project, dict) else None
        found = PROJECT_REF_RE.match(ref) if isinstance(ref, str) else None
        if not isinstance(project, dict) or set(project) != {"$ref"} or found is None:
            raise ApiError(400, f"project must be {{\"$ref\": \"/api/v1/projects/<16 hex>\"}} (got {project!r}).")
        with self._lock:
            if found["id"] not in self._projects:
                raise ApiError(400, f"Project {ref} does not exist or you do not have access to it.")
        return found["id"]

    # -- serving ---------------------------------------------------------------------------------

    def route(self, path: str, method: str, samples: Callable[[], list[dict]]) -> tuple[str, Action] | None:
        """The API route of `path` this module answers (target name, action), or None."""
        if method != "GET":
            return None
        if path == "/api/v1/projects":
            return "projects", lambda owner, body, query: (200, _where(self.projects(), query))
        if path == "/api/v1/tags":
            return "samples", lambda owner, body, query: (200, _where(self.tags(), query))
        found = re.fullmatch(r"/api/v1/(projects|tags|metadata)/([0-9a-f]{16})", path)
        if found is None:
            return None
        kind, item_id = found.groups()
        target = "projects" if kind == "projects" else "samples"   # a fault target of faults.py
        return target, lambda owner, body, query: (200, self._one(kind, item_id, owner, samples))

    def _one(self, kind: str, item_id: str, owner: str, samples: Callable[[], list[dict]]) -> dict:
        uri = f"/api/v1/{kind}/{item_id}"
        if kind == "metadata":
            for sample in samples():
                if sample["owner"] == owner and metadata_id(sample["sample_id"]) == item_id:
                    return metadata_record(sample)
        else:
            for item in self.projects() if kind == "projects" else self.tags():
                if item["$uri"] == uri:
                    return item
        raise ApiError(404, f"{uri} not found.")


def metadata_id(sample_id: str) -> str:
    """The id of a sample's metadata record (derived, so that it needs no storage)."""
    return hashlib.sha256(sample_id.encode()).hexdigest()[:16]


def metadata_record(sample: dict) -> dict:
    """A sample's metadata as GET /api/v1/metadata/{id} answers it (unset fields are null)."""
    given = sample.get("metadata") or {}
    record = {key: given.get(key) for key in METADATA_KEYS}
    record["starred"] = bool(given.get("starred", False))
    record["custom"] = given.get("custom") or {}
    record.update({"$uri": f"/api/v1/metadata/{metadata_id(sample['sample_id'])}",
                   "sample": {"$ref": f"/api/v1/samples/{sample['sample_id']}"}})
    return record


def sample_landing(sample: dict) -> dict:
    """A sample's `project` and `tags` as GET /api/v1/samples/{id} shows them."""
    project = sample.get("project")
    return {"project": {"$ref": f"/api/v1/projects/{project}"} if project else None,
            "tags": [{"$ref": ref} for ref in sample.get("tags") or []]}


def _check_tags(tags: Any) -> list[str]:
    if not isinstance(tags, list):
        raise ApiError(400, "tags must be a list of {\"name\": ...}.")
    names = []
    for index, tag in enumerate(tags):
        name = tag.get("name") if isinstance(tag, dict) else None
        if not isinstance(name, str) or not name:
            raise ApiError(400, f"tags[{index}] must be {{\"name\": \"<tag>\"}} (got {tag!r}).")
        if len(name) > TAG_MAX_CHARS:
            raise ApiError(400, f"tags[{index}].name: Name must be {TAG_MAX_CHARS} characters or fewer "
                                f"({len(name)}: {name!r}).")
        names.append(name)
    return list(dict.fromkeys(names))


def _check_metadata(metadata: Any) -> dict:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise ApiError(400, "metadata must be an object.")
    unknown = sorted(set(metadata) - set(METADATA_KEYS))
    if unknown:
        raise ApiError(400, f"metadata: unknown field(s) {', '.join(unknown)}; put your own in metadata.custom.")
    for key, value in metadata.items():
        problem = _metadata_problem(key, value) if value is not None else None
        if problem:
            raise ApiError(400, f"metadata.{key}: {problem}")
    return dict(metadata)


def _metadata_problem(key: str, value: Any) -> str | None:
    if key in METADATA_TEXT:
        limit = METADATA_TEXT[key]
        if not isinstance(value, str):
            return "Not a valid string."
        return f"Longer than maximum length {limit}." if limit and len(value) > limit else None
    if key in METADATA_ENUMS:
        return None if value in METADATA_ENUMS[key] else f"Must be one of: {', '.join(METADATA_ENUMS[key])}."
    if key in METADATA_RANGES:
        low, high = METADATA_RANGES[key]
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high
        return None if ok else f"Must be a number from {low} to {high}."
    if key == "starred":
        return None if isinstance(value, bool) else "Not a valid boolean."
    if key == "custom":
        if not isinstance(value, dict):
            return "Not a valid mapping."
        nested = [k for k, v in value.items() if isinstance(v, (dict, list))]
        return f"must have a depth of one: {nested[0]!r} is nested." if nested else None
    return _date_problem(value)


def _date_problem(value: Any) -> str | None:
    """`format: date-time` (RFC 3339): a date, a time and a zone."""
    try:
        parsed = dt.datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        parsed = None
    if parsed is None or "T" not in value.upper() or parsed.tzinfo is None:
        return "Not a valid datetime (RFC 3339, e.g. 2024-05-11T00:00:00Z)."
    return None


def _new_project(project: Any) -> dict:
    if not isinstance(project, dict) or not isinstance(project.get("name"), str) or not project["name"]:
        raise ApiError(400, f"a project needs a name (got {project!r})")
    short = project.get("project_name")
    if short is not None and not (isinstance(short, str) and SHORT_NAME_RE.fullmatch(short)):
        raise ApiError(400, f"project_name {short!r} must match {SHORT_NAME_RE.pattern}")
    project_id = project.get("id") or secrets.token_hex(8)
    if not isinstance(project_id, str) or not re.fullmatch(r"[0-9a-f]{16}", project_id):
        raise ApiError(400, f"a project id is 16 lowercase hex digits (got {project_id!r})")
    return {"id": project_id, "name": project["name"], "project_name": short,
            "description": project.get("description")}


def _public_project(project: dict) -> dict:
    return {"$uri": f"/api/v1/projects/{project['id']}", "name": project["name"],
            "project_name": project["project_name"], "description": project["description"],
            "external_id": None, "owner": {"$ref": "/api/v1/users/5eed0000000000aa"},
            "permissions": ["can_see_samples", "can_add_samples"], "public": False}


def _where(items: list[dict], query: str) -> list[dict]:
    """Potion's Mongo-style `where` ({"field": value} or {"field": {"$eq"|"$ne"|"$in": …}}), then
    `page`/`per_page`."""
    params = parse_qs(query)
    try:
        clause = json.loads(params["where"][0]) if "where" in params else {}
        per_page, page = int(params.get("per_page", ["50"])[0]), int(params.get("page", ["1"])[0])
    except (ValueError, json.JSONDecodeError):
        raise ApiError(400, "where must be a JSON object; page and per_page integers.") from None
    if not isinstance(clause, dict) or not 1 <= per_page <= 200 or page < 1:
        raise ApiError(400, "where must be a JSON object; per_page from 1 to 200; page at least 1.")
    chosen = [item for item in items if all(_holds(item, k, v) for k, v in clause.items())]
    return chosen[(page - 1) * per_page: page * per_page]


def _holds(item: dict, field: str, condition: Any) -> bool:
    if field not in item:
        raise ApiError(400, f"where: unknown field {field!r}.")
    if not isinstance(condition, dict):
        return item[field] == condition
    for op, want in condition.items():
        if op not in WHERE_OPS:
            raise ApiError(400, f"where: unsupported operator {op!r} (the sandbox knows {', '.join(WHERE_OPS)}).")
        if not WHERE_OPS[op](item[field], want):
            return False
    return True
