"""The sandbox's projects, tags and metadata: GET /api/v1/projects with `where`, init_upload's landing
fields accepted or refused as the published schema says, shown on the sample; over loopback HTTP."""

from __future__ import annotations

import json

import pytest
import requests

from daemon.sandbox import Fault, Sandbox

KEY = "sandbox-key"
SURV = "5eed000000000001"


@pytest.fixture
def sb(tmp_path):
    with Sandbox(data_dir=tmp_path / "sandbox", api_keys=(KEY,)) as sandbox:
        yield sandbox


def get(sb, path, **params):
    return requests.get(f"{sb.api_url}{path}", params=params, auth=(KEY, ""), timeout=5)


def init(sb, **extra):
    body = {"filename": "reads.fq", "size": 10, "upload_type": "standard", **extra}
    return requests.post(f"{sb.api_url}/api/v1/samples/init_upload", json=body, auth=(KEY, ""), timeout=5)


def admin(sb, method, path, body=None):
    return requests.request(method, f"{sb.api_url}/_sandbox/{path}", json=body, timeout=5)


def test_projects_are_seeded_and_filtered_by_where(sb):
    """GET /api/v1/projects lists the seeded projects; `where` filters by name, short name or $uri."""
    everything = get(sb, "/api/v1/projects").json()
    assert {p["name"] for p in everything} == {"Surveillance", "Oncology", "Environmental"}
    by_name = get(sb, "/api/v1/projects", where=json.dumps({"name": {"$eq": "Oncology"}})).json()
    assert [(p["$uri"], p["project_name"]) for p in by_name] == [("/api/v1/projects/5eed000000000002", "onco")]
    assert get(sb, "/api/v1/projects", where=json.dumps({"project_name": "surv"})).json()[0]["name"] == "Surveillance"
    by_uri = get(sb, "/api/v1/projects", where=json.dumps({"$uri": {"$in": [f"/api/v1/projects/{SURV}"]}}))
    assert [p["name"] for p in by_uri.json()] == ["Surveillance"]
    assert get(sb, "/api/v1/projects", where=json.dumps({"name": "Nope"})).json() == []
    assert get(sb, f"/api/v1/projects/{SURV}").json()["name"] == "Surveillance"


def test_projects_need_the_key_and_a_sane_where(sb):
    """Project lookups are authenticated; a bad `where` is a 400 naming the problem."""
    assert requests.get(f"{sb.api_url}/api/v1/projects", timeout=5).status_code == 401
    bad = get(sb, "/api/v1/projects", where=json.dumps({"name": {"$regex": "x"}}))
    assert bad.status_code == 400 and "unsupported operator '$regex'" in bad.json()["message"]
    assert get(sb, "/api/v1/projects", where="{not json").status_code == 400
    assert get(sb, "/api/v1/projects", where=json.dumps({"colour": "red"})).status_code == 400


def test_admin_sets_adds_and_removes_projects(sb):
    """Projects are settable through the admin API (e.g. two of one name, to rehearse ambiguity)."""
    admin(sb, "PUT", "projects", [{"id": "00000000000000aa", "name": "Shared", "project_name": "shared1"},
                                  {"name": "Shared", "project_name": "shared2"}])
    made = admin(sb, "POST", "projects", {"name": "New", "project_name": "new"})
    assert made.status_code == 201
    shared = get(sb, "/api/v1/projects", where=json.dumps({"name": "Shared"})).json()
    assert len(shared) == 2
    assert admin(sb, "DELETE", "projects/00000000000000aa").status_code == 200
    assert {p["name"] for p in admin(sb, "GET", "projects").json()} == {"Shared", "New"}
    assert admin(sb, "POST", "projects", {"name": "Bad", "project_name": "x"}).status_code == 400


def test_landing_fields_are_kept_and_shown_on_the_sample(sb):
    """Accepted project, tags and metadata are shown by GET /api/v1/samples/{id} and its references."""
    metadata = {"name": "Liver", "external_sample_id": "LIMS-001", "platform": "Illumina MiSeq",
                "library_type": "WGS", "date_sequenced": "2023-05-11T00:00:00+00:00", "starred": True,
                "custom": {"lab": "micro", "plate": 3, "passed_qc": True}}
    answer = init(sb, project={"$ref": f"/api/v1/projects/{SURV}"}, tags=[{"name": "230511_M01"}, {"name": "miseq"}],
                  metadata=metadata)
    assert answer.status_code == 200, answer.text
    sample = get(sb, f"/api/v1/samples/{answer.json()['sample_id']}").json()
    assert sample["project"] == {"$ref": f"/api/v1/projects/{SURV}"}
    tag_names = [get(sb, tag["$ref"]).json()["name"] for tag in sample["tags"]]
    assert tag_names == ["230511_M01", "miseq"]
    record = get(sb, sample["metadata"]["$ref"]).json()
    assert {k: record[k] for k in metadata} == metadata
    assert record["sample"] == {"$ref": sample["$uri"]} and record["location_lat"] is None
    assert {t["name"] for t in get(sb, "/api/v1/tags").json()} == {"230511_M01", "miseq"}


@pytest.mark.parametrize("extra, message", [
    ({"tags": [{"name": "x" * 31}]}, "Name must be 30 characters or fewer"),
    ({"tags": ["plain"]}, "tags[0] must be {\"name\""),
    ({"metadata": {"custom": {"run": {"id": 1}}}}, "metadata.custom: must have a depth of one"),
    ({"metadata": {"library_type": "Amplicon"}}, "metadata.library_type: Must be one of: WGS, Targeted/16S, Other"),
    ({"metadata": {"platform": "MiSeq"}}, "metadata.platform: Must be one of"),
    ({"metadata": {"sample_type": "Clinical"}}, "metadata.sample_type"),
    ({"metadata": {"external_sample_id": "x" * 61}}, "Longer than maximum length 60"),
    ({"metadata": {"date_sequenced": "2023-05-11"}}, "Not a valid datetime"),
    ({"metadata": {"location_lat": 91}}, "metadata.location_lat"),
    ({"metadata": {"colour": "red"}}, "unknown field(s) colour"),
    ({"project": {"$ref": "/api/v1/projects/ffffffffffffffff"}}, "does not exist"),
    ({"project": "5eed000000000001"}, "project must be {\"$ref\""),
    ({"external_sample_id": "LIMS-001"}, "No pre-uploaded sample matches external_sample_id"),
])
def test_init_refuses_what_the_schema_refuses(sb, extra, message):
    """Each landing field the real service refuses is a 400 with its message, and no sample is made."""
    answer = init(sb, **extra)
    assert answer.status_code == 400 and message in answer.json()["message"], answer.text
    assert sb.samples() == [] and get(sb, "/api/v1/tags").json() == []


def test_removed_project_is_refused_then(sb):
    """A project removed after it was looked up is refused at init (what makes a client re-resolve)."""
    assert init(sb, project={"$ref": f"/api/v1/projects/{SURV}"}).status_code == 200
    admin(sb, "DELETE", f"projects/{SURV}")
    assert init(sb, project={"$ref": f"/api/v1/projects/{SURV}"}).status_code == 400


def test_project_lookups_can_fail_on_purpose(sb):
    """The `projects` fault target makes a project lookup fail, to rehearse an outage there."""
    sb.add_fault(Fault(target="projects", kind="status", status=503, retry_after_s=1))
    assert get(sb, "/api/v1/projects").status_code == 503
    assert get(sb, "/api/v1/projects").status_code == 200
