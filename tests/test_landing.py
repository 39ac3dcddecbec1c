"""Where samples land: the published limits, placeholders, precedence, config errors, the init_upload
bodies (validated against the published JSON schema) and project resolution."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from pathlib import Path

import jsonschema
import pytest
import requests

from daemon.errors import ConfigError
from daemon.landing import metadata as md
from daemon.landing import samplesheet
from daemon.landing.metadata import Context, Layer, ProjectChoice
from daemon.landing.projects import ProjectLookupError, ProjectResolver
from daemon.landing.settings import layer_from_table, settings_from_table
from daemon.sandbox import Sandbox
from daemon.sandbox import landing as sandbox_landing

# ../shared beside the checkout (design.md); a git worktree of it sits one folder deeper.
OPENAPI = next((p for p in (Path(__file__).resolve().parents[n] / "shared" / "reference" / "onecodex-openapi.json"
                            for n in (2, 3)) if p.exists()), Path("../shared/reference/onecodex-openapi.json"))
needs_openapi = pytest.mark.skipif(not OPENAPI.exists(), reason=f"the published API description is not at {OPENAPI}")
KEY = "sandbox-key"
SHEET = samplesheet.parse("\n".join([
    "[Header]", "Experiment Name,Surveillance-42", "[Data]",
    "Sample_ID,Sample_Name,Sample_Project,Description",
    "LIMS-001,Liver,SURV,\"biopsy, left lobe\"",
    f"{'L' * 61},Kidney,Unknown project,",
]), source="SampleSheet.csv")
CONTEXT = Context(run="230511_M01234_0042_000000000-ABCDE", sample="Liver_S1", folder="miseq",
                  date=dt.date(2023, 5, 11))


def init_schema() -> dict:
    paths = json.loads(OPENAPI.read_text())["paths"]
    return paths["/api/v1/samples/init_upload"]["post"]["requestBody"]["content"]["application/json"]["schema"]


def metadata_properties() -> dict:
    return init_schema()["properties"]["metadata"]["anyOf"][0]["properties"]


def first_of(prop: dict) -> dict:
    return next(choice for choice in prop["anyOf"] if choice.get("type") != "null")


@needs_openapi
def test_limits_match_the_published_schema():
    """The constants (ours and the sandbox's) are the published ones: keys, lengths, enums, ranges."""
    props = metadata_properties()
    assert set(md.METADATA_KEYS) == set(props) == set(sandbox_landing.METADATA_KEYS)
    assert init_schema()["properties"]["tags"]["items"]["properties"]["name"]["maxLength"] == md.TAG_MAX_CHARS
    assert re.search(r"Up to (\d+) characters", props["external_sample_id"]["description"])[1] == str(
        md.EXTERNAL_SAMPLE_ID_MAX_CHARS)
    assert first_of(props["name"])["maxLength"] == md.NAME_MAX_CHARS
    assert first_of(props["location_string"])["maxLength"] == md.LOCATION_STRING_MAX_CHARS
    for field, values in md.ENUMS.items():
        assert tuple(first_of(props[field])["enum"]) == values == sandbox_landing.METADATA_ENUMS[field]
    for field, (low, high) in (("location_lat", md.LAT_RANGE), ("location_lon", md.LON_RANGE)):
        assert (first_of(props[field])["minimum"], first_of(props[field])["maximum"]) == (low, high)
    assert {f for f in props if first_of(props[f]).get("format") == "date-time"} == set(md.DATES)
    assert "depth of one" in props["custom"]["description"]


@needs_openapi
def test_bodies_validate_against_the_schema_and_the_sandbox_accepts_them(tmp_path):
    """A sample-sheet sample's body validates against the published schema, and the sandbox keeps it."""
    layers = [Layer(project="Surveillance", tags=("seqdrop",), metadata={"platform": "Illumina"}),
              Layer(tags=("{folder}", "miseq"), metadata={"platform": "Illumina MiSeq", "library_type": "WGS",
                                                            "date_sequenced": "{date}",
                                                            "custom": {"run": "{run}", "lane_count": 1}})]
    landing = md.build(layers, CONTEXT, row=SHEET.match("Liver_S1").row, sheet_projects={"SURV": "onco"})
    body = {"filename": "Liver_S1_R1_001.fastq.gz", "size": 10, "upload_type": "standard",
            **md.init_fields(landing, "5eed000000000002")}
    # date-time is checked by format; "uri" is not: the published schema marks the project's $ref
    # `format: uri` yet documents (and its pattern requires) a relative reference, which a strict URI
    # checker (rfc3987, when installed) refuses. The pattern is checked either way.
    jsonschema.validate(body, init_schema(), format_checker=jsonschema.FormatChecker(formats=("date-time",)))
    assert body["metadata"]["date_sequenced"] == "2023-05-11T00:00:00+00:00"
    assert dt.datetime.fromisoformat(body["metadata"]["date_sequenced"]).tzinfo is not None
    assert body["project"] == {"$ref": "/api/v1/projects/5eed000000000002"}
    with Sandbox(data_dir=tmp_path / "sb", api_keys=(KEY,)) as sb:
        answer = requests.post(f"{sb.api_url}/api/v1/samples/init_upload", json=body, auth=(KEY, ""), timeout=5)
        assert answer.status_code == 200, answer.text
        assert sb.samples()[0]["metadata"]["name"] == "Liver"


def test_precedence_samples_then_watch_path_then_sheet():
    """[samples] < watch path < sample sheet; tags replace, custom keys merge."""
    layers = [Layer(project="Surveillance", tags=("seqdrop",),
                    metadata={"name": "cfg", "description": "cfg", "sample_type": "Isolate", "custom": {"a": 1, "b": 1}}),
              Layer(project="Oncology", tags=("miseq", "{run}", "miseq"), metadata={"custom": {"b": 2}})]
    landing = md.build(layers, CONTEXT, row=SHEET.match("Liver_S1").row, sheet_projects={})
    # A MiSeq run folder's name is 34 characters: as a tag it breaks the 30-character limit.
    assert landing.tags == ("miseq",)
    assert [o.field for o in landing.omitted] == ["tags[1]"]
    assert landing.metadata == {"name": "Liver", "description": "biopsy, left lobe", "sample_type": "Isolate",
                                "custom": {"a": 1, "b": 2}, "external_sample_id": "LIMS-001"}
    assert [c.spec for c in landing.projects] == ["SURV", "Oncology"]
    assert landing.projects[0].source == "Sample_Project 'SURV' in the sample sheet"
    assert md.build(layers[:1], CONTEXT).projects == (ProjectChoice("Surveillance", "the config's project"),)


def test_sheet_and_placeholder_values_that_break_a_limit_are_left_out_with_why():
    """A too-long Sample_ID or expanded tag, or a placeholder with no value, is left out and named."""
    layers = [Layer(tags=("{run}", "ok", "{sample}"), metadata={"location_string": "{folder}"})]
    landing = md.build(layers, Context(run="R" * 31, sample="Kidney_S2"), row=SHEET.match("Kidney_S2").row)
    assert landing.tags == ("ok", "Kidney_S2")
    assert landing.metadata == {"name": "Kidney"}
    reasons = {o.field: o.reason for o in landing.omitted}
    assert reasons["tags[0]"] == f"left out: a tag is at most 30 characters (31: {'R' * 31!r})"
    assert reasons["metadata.location_string"] == "left out: {folder} has no value for this sample"
    assert reasons["metadata.external_sample_id"].startswith("left out: the sample sheet line 6: is at most 60")


def test_run_date_from_folder_names_else_mtime():
    """{date}: Illumina YYMMDD_, Nanopore/NovaSeq X YYYYMMDD_, else the file's local mtime date."""
    mtime_ns = 1_700_000_000 * 10**9
    assert md.run_date("230511_M01234_0042_000000000-ABCDE", mtime_ns) == dt.date(2023, 5, 11)
    assert md.run_date("20240511_1432_MN12345_FAX12345_abcdef12", mtime_ns) == dt.date(2024, 5, 11)
    assert md.run_date("991399_not_a_date", mtime_ns) == dt.datetime.fromtimestamp(1_700_000_000).date()
    assert md.run_date(None, mtime_ns) == dt.datetime.fromtimestamp(1_700_000_000).date()
    ctx = md.context_for(sample="S", run_dir=Path("/srv/miseq/230511_M01"), watch_root=Path("/srv/miseq"),
                         mtime_ns=mtime_ns)
    assert md.expand("{folder}/{run}/{sample}/{date}/{other}", ctx) == "miseq/230511_M01/S/2023-05-11/{other}"


@pytest.mark.parametrize("table, key, message", [
    ({"tags": ["x" * 31]}, "samples.tags[0]", "a tag is at most 30 characters"),
    ({"tags": "miseq"}, "samples.tags", "must be a list of strings"),
    ({"metadata": {"custom": {"run": {"id": 1}}}}, "samples.metadata.custom", "must be flat: 'run' holds a table"),
    ({"metadata": {"library_type": "Amplicon"}}, "samples.metadata.library_type", "'Amplicon' is not one of: WGS"),
    ({"metadata": {"platform": "MiSeq"}}, "samples.metadata.platform", "'MiSeq' is not one of"),
    ({"metadata": {"external_sample_id": "x" * 61}}, "samples.metadata.external_sample_id", "at most 60"),
    ({"metadata": {"colour": "red"}}, "samples.metadata", "unknown metadata key 'colour'"),
    ({"metadata": {"location_lat": 100}}, "samples.metadata.location_lat", "from -90 to 90"),
    ({"metadata": {"date_sequenced": "May 11"}}, "samples.metadata.date_sequenced", "is not a date"),
    ({"metadata": {"date_sequenced": "{date}T12"}}, "samples.metadata.date_sequenced", "\"{date}\" alone"),
    ({"tags": ["{runname}"]}, "samples.tags[0]", "unknown placeholder {runname}"),
    ({"project": ""}, "samples.project", "must be a project id"),
])
def test_config_values_that_break_a_limit_are_config_errors(table, key, message):
    """A config value that breaks a published limit is a ConfigError naming the file, key and fix."""
    with pytest.raises(ConfigError) as caught:
        layer_from_table(table, file="/etc/seqdrop/config.toml", key="samples")
    assert caught.value.key == key and message in str(caught.value) and caught.value.fix
    assert str(caught.value).startswith(f"/etc/seqdrop/config.toml: [{key}]")


def test_config_layer_and_settings_read_good_values():
    """Good values (TOML dates, placeholders) pass and land in the dataclasses."""
    settings = settings_from_table({"project": "surv", "tags": ["{run}"], "sample_sheet": False,
                                    "metadata": {"date_collected": dt.date(2023, 5, 1), "custom": {"who": "{folder}"}},
                                    "projects": {"SURV": "Surveillance"}, "pairing": "auto"}, file="c.toml")
    assert settings.sample_sheet is False and dict(settings.projects) == {"SURV": "Surveillance"}
    assert settings.defaults.tags == ("{run}",) and settings.defaults.project == "surv"
    landing = md.build([settings.defaults], CONTEXT)
    assert landing.metadata == {"date_collected": "2023-05-01T00:00:00+00:00", "custom": {"who": "miseq"}}
    with pytest.raises(ConfigError, match=r"\[samples.projects\]"):
        settings_from_table({"projects": {"SURV": 3}}, file="c.toml")


class FakeProjects:
    """GET /api/v1/projects as a callable: answers `where` over a list, counts the calls."""

    def __init__(self, projects: list[dict]) -> None:
        self.projects, self.calls = projects, []

    def __call__(self, params):
        self.calls.append(params)
        field, condition = next(iter(json.loads(params["where"]).items()))
        return [p for p in self.projects if p.get(field) == condition["$eq"]]


def project(pid: str, name: str, short: str) -> dict:
    return {"$uri": f"/api/v1/projects/{pid}", "name": name, "project_name": short}


def test_resolver_finds_by_id_name_and_short_name_and_caches():
    """An id, a name or a short name resolve to one project; each is asked once."""
    fake = FakeProjects([project("a" * 16, "Surveillance", "surv"), project("b" * 16, "Oncology", "onco")])
    resolver = ProjectResolver(fetch=fake)
    assert resolver.resolve("a" * 16).name == "Surveillance"
    assert resolver.resolve("Oncology").id == "b" * 16
    assert resolver.resolve("surv").id == "a" * 16
    calls = len(fake.calls)
    assert resolver.resolve("surv").id == resolver.resolve("Oncology").id[:0] + "a" * 16
    assert len(fake.calls) == calls


def test_resolver_names_ambiguous_and_missing_projects_and_retries_after_ttl():
    """Two projects or none are a sentence; a miss is remembered for miss_ttl_s, then asked again."""
    now = [0.0]
    fake = FakeProjects([project("a" * 16, "Shared", "s1"), project("b" * 16, "Other", "Shared")])
    resolver = ProjectResolver(fetch=fake, clock=lambda: now[0], miss_ttl_s=60)
    with pytest.raises(ProjectLookupError, match=r"'Shared' matches 2 One Codex projects .*16-character id"):
        resolver.resolve("Shared")
    with pytest.raises(ProjectLookupError, match=r"no One Codex project .* called 'New' \(names are case-sensitive\)"):
        resolver.resolve("New")
    calls = len(fake.calls)
    with pytest.raises(ProjectLookupError):
        resolver.resolve("New")
    assert len(fake.calls) == calls
    fake.projects.append(project("c" * 16, "New", "new"))
    now[0] = 61.0
    assert resolver.resolve("New").id == "c" * 16


def test_resolve_first_falls_back_and_forget_asks_again():
    """The first choice that resolves wins, earlier ones are named; forget() re-resolves a name."""
    fake = FakeProjects([project("a" * 16, "Surveillance", "surv")])
    resolver = ProjectResolver(fetch=fake)
    choices = [ProjectChoice("SURV-X", "Sample_Project 'SURV-X' in SampleSheet.csv"),
               ProjectChoice("surv", "the config's project")]
    result = resolver.resolve_first(choices)
    assert result.project.id == "a" * 16
    assert result.problems[0].startswith("Sample_Project 'SURV-X' in SampleSheet.csv: no One Codex project")
    nothing = resolver.resolve_first(choices[:1])
    assert nothing.project is None and "without a project" in nothing.problems[-1]
    fake.projects[0] = project("d" * 16, "Surveillance", "surv")   # re-created under a new id
    assert resolver.resolve("surv").id == "a" * 16                  # cached
    resolver.forget("a" * 16)
    assert resolver.resolve("surv").id == "d" * 16


def test_resolver_against_the_sandbox_over_http(tmp_path):
    """With requests as the fetch, names resolve through the sandbox's GET /api/v1/projects."""
    with Sandbox(data_dir=tmp_path / "sb", api_keys=(KEY,)) as sb:
        def fetch(params):
            answer = requests.get(f"{sb.api_url}/api/v1/projects", params=params, auth=(KEY, ""), timeout=5)
            answer.raise_for_status()
            return answer.json()
        resolver = ProjectResolver(fetch=fetch)
        assert resolver.resolve("Oncology").id == resolver.resolve("onco").id == "5eed000000000002"
        assert resolver.resolve("5eed000000000003").name == "Environmental"
        with pytest.raises(ProjectLookupError):
            resolver.resolve("oncology")
    assert os.environ.get("ONE_CODEX_API_KEY") != KEY   # the test never set the daemon's key
