"""The landing planner: a lab's two instruments (a MiSeq run with a v1 sheet, a NovaSeq run with a
BCL Convert v2 sheet) land each sample in its project with its name, external id, description, tags
and date_sequenced; the init bodies match the published schema; every bad input of issue 12 leaves its
field out with the reason and the sample still goes; a sheet is read at upload time; a project One
Codex calls unknown is looked up once more. Against the sandbox over loopback, the queue in tmp_path."""

from __future__ import annotations

import datetime as dt
import gzip
import io
import json
import os
import re
import secrets
import threading
from pathlib import Path

import jsonschema
import pytest
import requests
import structlog
from moto.server import ThreadedMotoServer
from test_landing import OPENAPI, init_schema, needs_openapi

from daemon import config
from daemon.commands.check import run_checks
from daemon.errors import Permanent
from daemon.landing.metadata import Layer
from daemon.landing.planner import LandingClient, Planner, locate
from daemon.landing.settings import LandingSettings
from daemon.queue.base import Identity
from daemon.queue.sqlite import SqliteStore
from daemon.sandbox import Sandbox
from daemon.upload.build import make_pipeline
from daemon.upload.client import OneCodexClient

KEY = "sandbox-key"
SURV, ONCO, ENV = "5eed000000000001", "5eed000000000002", "5eed000000000003"
MISEQ_RUN = "230511_M01234_0042_000000000-ABCDE"     # 34 characters: too long for a tag
NOVASEQ_RUN = "20240603_LH00123_0042_A22ABCDEF3"
V1_LINES = (
    "\ufeff[Header],,,,", "IEMFileVersion,4,,,", "Experiment Name,Surveillance-42,,,", "Date,5/11/2023,,,",
    "[Reads],,,,", "151,,,,", "151,,,,", "[Data],,,,",
    "Sample_ID,Sample_Name,Sample_Project,Description,index",
    'LIMS-001,Liver,,"biopsy, left lobe",ACGTACGT',
    "LIMS-002,Soil,ENV,river bank,TTGGCCAA", "")
V1_SHEET = "\r\n".join(V1_LINES)      # as instrument software writes it: CRLF, a BOM, trailing commas
V2_LINES = (
    "[Header]", "FileFormatVersion,2", f"RunName,{NOVASEQ_RUN}", "InstrumentPlatform,NovaSeqXSeries",
    "[BCLConvert_Settings]", "SoftwareVersion,4.1.7",
    "[BCLConvert_Data]", "Lane,Sample_ID,Sample_Project,Description,Index",
    "1,ONC-7,Oncology,tumour,AAAA", "2,ONC-7,Oncology,tumour,AAAA", "1,ONC-8,,normal,CCCC",
    "[Cloud_Data]", "Sample_ID,ProjectName", "ONC-7,whatever", "")
V2_SHEET = "\n".join(V2_LINES)


def toml_config(tmp: Path, miseq: Path, novaseq: Path, *, extra: str = "",
                miseq_tags: str = '["miseq", "{date}"]') -> Path:
    """Two instruments, two projects, a sample sheet, tags: the README's lab."""
    path = tmp / "config.toml"
    path.write_text(f"""
[api]
base_url = "{{url}}"
[watch]
paths = [
  {{path = "{miseq}", project = "Surveillance", tags = {miseq_tags}, metadata = {{platform = "Illumina MiSeq", date_sequenced = "{{date}}"}}}},
  {{path = "{novaseq}", project = "onco", tags = ["novaseq"], metadata = {{platform = "Illumina NovaSeq", library_type = "WGS", date_sequenced = "{{date}}"}}}},
]
[queue]
path = "{tmp / 'q.sqlite3'}"
[samples]
tags = ["seqdrop"]
{extra}
[samples.metadata]
sample_type = "Metagenomic"
[samples.metadata.custom]
lab = "Microbiology"
run = "{{run}}"
[samples.projects]
ENV = "Environmental"
""")
    return path


class Lab:
    """The watch folders, their runs, the queue, the sandbox and a planner over them."""

    def __init__(self, tmp: Path, sb: Sandbox, *, extra_config: str = "", miseq_tags: str | None = None) -> None:
        self.tmp, self.sb = tmp, sb
        self.miseq, self.novaseq = tmp / "watch" / "miseq", tmp / "watch" / "novaseq"
        self.miseq_run, self.novaseq_run = self.miseq / MISEQ_RUN, self.novaseq / NOVASEQ_RUN
        self.basecalls = self.miseq_run / "Data" / "Intensities" / "BaseCalls"
        self.fastq = self.novaseq_run / "Analysis" / "1" / "Data" / "fastq"
        for folder in (self.basecalls, self.fastq):
            folder.mkdir(parents=True)
        (self.miseq_run / "SampleSheet.csv").write_bytes(V1_SHEET.encode())
        (self.novaseq_run / "SampleSheet.csv").write_text(V2_SHEET)
        tags = {"miseq_tags": miseq_tags} if miseq_tags is not None else {}
        text = toml_config(tmp, self.miseq, self.novaseq, extra=extra_config, **tags).read_text()
        (tmp / "config.toml").write_text(text.replace("{url}", sb.api_url))
        self.settings = config.load(str(tmp / "config.toml"))
        self.store = SqliteStore(str(tmp / "q.sqlite3"))
        self.client = OneCodexClient(sb.api_url, KEY)
        self.planner = Planner.from_settings(self.settings, fetch=self.client.projects, store=self.store)

    def sample(self, folder: Path, name: str, run: str | None, lanes: tuple[int, ...] = (1,)) -> int:
        """A paired sample of `lanes` in `folder` (files written, rows added as assembly would)."""
        files = []
        for role in ("R1", "R2"):
            for lane in lanes:
                path = folder / f"{name}_L{lane:03d}_{role}_001.fastq.gz"
                path.write_bytes(b"reads")
                files.append((self.store.add_seen(str(path), Identity.of(os.stat(path))), role, lane))
        sample = self.store.add_sample(key=f"{folder}/{name}", folder=str(folder), name=name, run=run,
                                       paired=True, files=files)
        assert sample is not None
        return sample

    def plan(self, sample: int) -> tuple[dict, dict]:
        row = self.store.sample(sample)
        return self.planner.plan(row, row.files[0])


@pytest.fixture
def sb(tmp_path):
    with Sandbox(data_dir=tmp_path / "sandbox", api_keys=(KEY,)) as sandbox:
        yield sandbox


@pytest.fixture
def lab(tmp_path, sb):
    made = Lab(tmp_path, sb)
    yield made
    made.store.close()


def project_fetches(sb: Sandbox) -> int:
    return sum(1 for r in sb.requests() if r["path"].split("?")[0] == "/api/v1/projects")


def post_init(sb: Sandbox, extra: dict, filename: str = "Liver_S1_R1_001.fastq.gz") -> dict:
    """A standard init_upload carrying the planner's fields, as the pipeline sends them; the sample
    as GET /api/v1/samples/{id} then shows it, with its tags' names."""
    body = {"filename": filename, "size": 10, "upload_type": "standard", **extra}
    answer = requests.post(f"{sb.api_url}/api/v1/samples/init_upload", json=body, auth=(KEY, ""), timeout=5)
    assert answer.status_code == 200, answer.text
    shown = requests.get(f"{sb.api_url}/api/v1/samples/{answer.json()['sample_id']}", auth=(KEY, ""), timeout=5).json()
    tag_names = {t["$uri"]: t["name"] for t in sb.landing.tags()}
    metadata = requests.get(f"{sb.api_url}{shown['metadata']['$ref']}", auth=(KEY, ""), timeout=5).json()
    return {**shown, "tag_names": [tag_names[t["$ref"]] for t in shown.get("tags") or []], "metadata": metadata}


def test_a_miseq_run_lands_each_sample_in_its_project_with_the_sheets_names(lab):
    """v1 sheet: Liver → the watch path's project (no Sample_Project), Soil → ENV via [samples.projects]."""
    liver, soil = lab.sample(lab.basecalls, "Liver_S1", MISEQ_RUN), lab.sample(lab.basecalls, "Soil_S2", MISEQ_RUN)
    extra, record = lab.plan(liver)
    assert extra["project"] == {"$ref": f"/api/v1/projects/{SURV}"}
    assert extra["tags"] == [{"name": "miseq"}, {"name": "2023-05-11"}]
    assert extra["metadata"] == {
        "sample_type": "Metagenomic", "platform": "Illumina MiSeq", "date_sequenced": "2023-05-11T00:00:00+00:00",
        "custom": {"lab": "Microbiology", "run": MISEQ_RUN}, "name": "Liver", "external_sample_id": "LIMS-001",
        "description": "biopsy, left lobe"}
    assert record == {"project": SURV, "project_name": "Surveillance", "tags": ["miseq", "2023-05-11"],
                      "metadata": extra["metadata"], "omitted": []}
    shown = post_init(lab.sb, extra)
    assert shown["project"] == {"$ref": f"/api/v1/projects/{SURV}"} and shown["tag_names"] == ["miseq", "2023-05-11"]
    assert shown["metadata"]["name"] == "Liver" and shown["metadata"]["external_sample_id"] == "LIMS-001"
    extra, record = lab.plan(soil)
    assert (record["project"], record["project_name"]) == (ENV, "Environmental")
    assert {k: extra["metadata"][k] for k in ("name", "external_sample_id", "description")} == {
        "name": "Soil", "external_sample_id": "LIMS-002", "description": "river bank"}
    assert post_init(lab.sb, extra)["project"] == {"$ref": f"/api/v1/projects/{ENV}"}


def test_a_novaseq_bcl_convert_run_lands_each_sample(lab):
    """v2 sheet: ONC-7 (two lanes) → Sample_Project Oncology; ONC-8 (no project) → the watch path's
    "onco" (a short name); BCL Convert names files by Sample_ID; {date} from a YYYYMMDD_ run name."""
    seven = lab.sample(lab.fastq, "ONC-7_S1", NOVASEQ_RUN, lanes=(1, 2))
    eight = lab.sample(lab.fastq, "ONC-8_S2", NOVASEQ_RUN)
    for sample, name, description in ((seven, "ONC-7", "tumour"), (eight, "ONC-8", "normal")):
        extra, record = lab.plan(sample)
        assert (record["project"], record["project_name"], record["omitted"]) == (ONCO, "Oncology", [])
        assert record["tags"] == ["novaseq"]
        assert {k: extra["metadata"][k] for k in ("name", "external_sample_id", "description", "date_sequenced",
                                                  "platform", "library_type")} == {
            "name": name, "external_sample_id": name, "description": description,
            "date_sequenced": "2024-06-03T00:00:00+00:00", "platform": "Illumina NovaSeq", "library_type": "WGS"}
        shown = post_init(lab.sb, extra, filename=f"{name}_S1_R1_001.fastq.gz")
        assert shown["project"] == {"$ref": f"/api/v1/projects/{ONCO}"} and shown["tag_names"] == ["novaseq"]


@needs_openapi
def test_init_bodies_validate_against_the_published_schemas(lab):
    """Both routes' request bodies, with the planner's fields, validate against the published schema."""
    paths = json.loads(OPENAPI.read_text())["paths"]
    multipart = paths["/api/v1/samples/init_multipart_upload"]["post"]["requestBody"]["content"][
        "application/json"]["schema"]
    checker = jsonschema.FormatChecker(formats=("date-time",))   # "uri": see test_landing
    for sample in (lab.sample(lab.basecalls, "Liver_S1", MISEQ_RUN), lab.sample(lab.fastq, "ONC-7_S1", NOVASEQ_RUN)):
        extra, _ = lab.plan(sample)
        jsonschema.validate({"filename": "a_R1.fastq.gz", "size": 5, "upload_type": "standard",
                             "paired_end_filename": "a_R2.fastq.gz", **extra}, init_schema(), format_checker=checker)
        jsonschema.validate({"filename": "a_R1.fastq.gz", "sample_id": None, "external_sample_id": None, **extra},
                            multipart, format_checker=checker)


def test_a_file_without_a_sample_row_is_planned_as_a_one_file_sample(lab):
    """No sample row (a format-2 queue row): its folder and run are found from its path alone."""
    path = lab.basecalls / "Soil_S2_L001_R1_001.fastq.gz"
    path.write_bytes(b"x")
    row = lab.store.get(lab.store.add_seen(str(path), Identity.of(os.stat(path))))
    extra, record = lab.planner.plan(None, row)
    assert record["project"] == ENV and extra["metadata"]["name"] == "Soil"
    assert extra["metadata"]["custom"]["run"] == MISEQ_RUN     # the folder holding the sheet is the run


def test_a_sheet_edited_after_the_run_started_is_read_at_upload_time(lab):
    """The sheet is read when the sample is planned (cached by mtime and size): a fix made during the
    run counts; an unchanged sheet is not parsed again."""
    liver = lab.sample(lab.basecalls, "Liver_S1", MISEQ_RUN)
    assert lab.plan(liver)[0]["metadata"]["description"] == "biopsy, left lobe"
    sheet = lab.miseq_run / "SampleSheet.csv"
    sheet.write_bytes(V1_SHEET.replace('"biopsy, left lobe"', "right lobe").replace(",,ENV", ",Oncology,ENV")
                      .replace("LIMS-001,Liver,,", "LIMS-001,Liver,Oncology,").encode())
    os.utime(sheet, ns=(os.stat(sheet).st_atime_ns, os.stat(sheet).st_mtime_ns + 1_000_000_000))
    extra, record = lab.plan(liver)
    assert extra["metadata"]["description"] == "right lobe" and record["project"] == ONCO
    assert lab.planner.sheets.get(str(sheet)) is lab.planner.sheets.get(str(sheet))   # cached while unchanged


@pytest.mark.parametrize("sheet, name, reason", [
    ("[Data]\nSample_ID,Sample_Name\nLIMS-001,Liver\nLIMS-001,Liver\n", "Liver_S1",
     "Sample_ID 'LIMS-001' appears twice (first on line 3); each sample needs its own ID."),
    ('[Data]\nSample_ID,Sample_Name\n"LIMS-001,Liver\n', "Liver_S1", "not valid CSV"),
    ("[Header]\nIEMFileVersion,4\n", "Liver_S1", "no [Data] (v1) or [BCLConvert_Data] (v2) section"),
    (b"[Data]\nSample_ID,Sample_Name\nLIMS-001,L\xe9ber\n", "Liver_S1", "not UTF-8 text; save the sheet as UTF-8"),
    ("[Data]\nSample_ID,Sample_Name\nLIMS-009,Heart\n", "Liver_S3",
     "sample Liver_S3 has no row in"),
])
def test_a_bad_sheet_leaves_its_fields_out_and_the_sample_goes(lab, sheet, name, reason):
    """Malformed, duplicate Sample_IDs, not a sample sheet, not UTF-8, no row for the sample: named,
    with the fix; the config's project, tags and metadata still go."""
    sheet_path = lab.miseq_run / "SampleSheet.csv"
    sheet_path.write_bytes(sheet if isinstance(sheet, bytes) else sheet.encode())
    extra, record = lab.plan(lab.sample(lab.basecalls, name, MISEQ_RUN))
    field = "sample_sheet"
    assert record["omitted"][0][0] == field and reason in record["omitted"][0][1]
    assert record["project"] == SURV and "name" not in extra["metadata"]       # the config's layers still apply
    assert "the sheet's name, project and description" in record["omitted"][0][1]


def test_a_project_name_matching_two_projects_or_none_is_left_out_with_the_fix(lab):
    """Sample_Project "Shared" matches two projects: the watch path's project is used and the
    sheet's is named; a config project that matches none leaves the sample without a project."""
    requests.post(f"{lab.sb.api_url}/_sandbox/projects", json={"name": "Shared", "project_name": "shared1"}, timeout=5)
    requests.post(f"{lab.sb.api_url}/_sandbox/projects", json={"name": "Shared", "project_name": "shared2"}, timeout=5)
    (lab.miseq_run / "SampleSheet.csv").write_text("[Data]\nSample_ID,Sample_Project\nLiver,Shared\n")
    extra, record = lab.plan(lab.sample(lab.basecalls, "Liver_S1", MISEQ_RUN))
    assert record["project"] == SURV
    assert record["omitted"] == [["project", record["omitted"][0][1]]]
    assert "matches 2 One Codex projects" in record["omitted"][0][1]
    assert "give the project's 16-character id instead" in record["omitted"][0][1]
    assert record["omitted"][0][1].endswith(f"It went to Surveillance ({SURV}) instead.")
    requests.put(f"{lab.sb.api_url}/_sandbox/projects", json=[{"name": "Other", "project_name": "other"}], timeout=5)
    lab.planner.resolver = type(lab.planner.resolver)(fetch=lab.client.projects)        # a fresh cache
    (lab.miseq_run / "SampleSheet.csv").unlink()
    extra, record = lab.plan(lab.sample(lab.basecalls, "Soil_S2", MISEQ_RUN))
    assert "project" not in extra and record["project"] is None
    assert "no One Codex project visible to this API key is called 'Surveillance'" in record["omitted"][0][1]
    assert record["omitted"][0][1].endswith("the sample goes without a project (private to the uploader).")


def test_a_placeholder_that_breaks_a_limit_is_left_out(lab):
    """{run} as a tag: a MiSeq run name (34 characters) is over the 30-character limit: left out, named,
    the other tags sent."""
    planner = Planner(landing=LandingSettings(defaults=Layer(tags=("{run}", "{sample}")), sample_sheet=False),
                      folders=lab.settings.watch.folders, resolver=None)
    liver = lab.store.sample(lab.sample(lab.basecalls, "Liver_S1", MISEQ_RUN))
    extra, record = planner.plan(liver, liver.files[0])
    assert extra["tags"] == [{"name": "miseq"}, {"name": "2023-05-11"}]      # the watch path's tags replace
    planner = Planner(landing=LandingSettings(defaults=Layer(tags=("{run}", "{sample}")), sample_sheet=False),
                      folders=(), resolver=None)
    extra, record = planner.plan(liver, liver.files[0])
    assert extra["tags"] == [{"name": "Liver_S1"}]
    assert record["omitted"] == [["tags[0]", f"left out: a tag is at most 30 characters (34: {MISEQ_RUN!r})"]]


def test_project_unknown_at_init_is_looked_up_once_more(lab, tmp_path):
    """One Codex refuses the cached project (deleted, made again under a new id): the planner forgets
    it, asks GET /api/v1/projects once more, and the init goes to the new project; the record says so."""
    liver = lab.sample(lab.basecalls, "Liver_S1", MISEQ_RUN)
    assert lab.plan(liver)[1]["project"] == SURV
    fetched = project_fetches(lab.sb)
    requests.delete(f"{lab.sb.api_url}/_sandbox/projects/{SURV}", timeout=5)
    requests.post(f"{lab.sb.api_url}/_sandbox/projects",
                  json={"id": "00000000000000aa", "name": "Surveillance", "project_name": "surv"}, timeout=5)
    client = LandingClient(StandardInit(lab.sb), lab.planner)
    extra, record = lab.plan(liver)
    assert project_fetches(lab.sb) == fetched and record["project"] == SURV       # cached: not asked again
    sample_id = client.init_upload("Liver_S1_R1_001.fastq.gz", 10, extra=extra)
    assert lab.sb.samples()[-1]["project"] == "00000000000000aa" and sample_id == lab.sb.samples()[-1]["sample_id"]
    assert record["project"] == "00000000000000aa" and extra["project"]["$ref"].endswith("00000000000000aa")
    assert lab.store.sample(liver).landing["project"] == "00000000000000aa"
    assert project_fetches(lab.sb) - fetched == 2           # one lookup: by name, then by short name
    inits = [r for r in lab.sb.requests() if r["path"] == "/api/v1/samples/init_upload"]
    assert [r["status"] for r in inits] == [400, 200]


def test_a_project_gone_for_good_sends_the_sample_without_it(lab):
    """The project is deleted and not made again: the init is sent again without a project; the
    record names the project and why; the data is never held hostage."""
    liver = lab.sample(lab.basecalls, "Liver_S1", MISEQ_RUN)
    extra, record = lab.plan(liver)
    requests.delete(f"{lab.sb.api_url}/_sandbox/projects/{SURV}", timeout=5)
    LandingClient(StandardInit(lab.sb), lab.planner).init_upload("Liver_S1_R1_001.fastq.gz", 10, extra=extra)
    assert lab.sb.samples()[-1]["project"] is None and "project" not in extra
    assert record["project"] is None and record["omitted"][-1][0] == "project"
    assert "no One Codex project visible to this API key is called 'Surveillance'" in record["omitted"][-1][1]
    assert lab.store.sample(liver).landing == record


def test_refusals_that_are_not_about_the_project_pass_through(lab):
    """Another refusal of the init (here a bad file name) is the pipeline's, unchanged."""
    extra, _ = lab.plan(lab.sample(lab.basecalls, "Liver_S1", MISEQ_RUN))
    with pytest.raises(Permanent, match="Invalid filename"):
        LandingClient(StandardInit(lab.sb), lab.planner).init_upload("no extension", 10, extra=extra)
    assert extra["project"] == {"$ref": f"/api/v1/projects/{SURV}"}


def test_locate_finds_the_run_folder_and_its_sheet(lab):
    """The run folder is the ancestor named like the sample's run; the sheet the nearest below it."""
    (lab.fastq / "SampleSheet.csv").write_text(V2_SHEET)       # BCL Convert's copy beside its output
    place = locate(str(lab.fastq / "x_R1.fastq"), NOVASEQ_RUN, lab.settings.watch.folders)
    assert (place.root, place.run_dir, place.sheet) == (str(lab.novaseq), str(lab.novaseq_run),
                                                        str(lab.fastq / "SampleSheet.csv"))
    loose = lab.miseq / "loose.fastq"
    place = locate(str(loose), None, lab.settings.watch.folders)
    assert (place.run_dir, place.run, place.sheet) == (str(lab.miseq), "miseq", None)


def test_the_client_lists_projects_with_where(lab):
    """OneCodexClient.projects: GET /api/v1/projects with the `where` the sandbox supports."""
    found = lab.client.projects({"where": json.dumps({"name": {"$eq": "Oncology"}}), "per_page": "50"})
    assert [p["$uri"] for p in found] == [f"/api/v1/projects/{ONCO}"]


def test_multipart_init_sends_the_landing_fields(tmp_path, sb):
    """init_multipart_upload takes the same fields (moto's S3 behind the sandbox's multipart route)."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)   # port 0: no race for it
    server.start()
    port = server.get_host_and_port()[1]
    try:
        with Sandbox(api_keys=(KEY,), multipart_s3_endpoint=f"http://127.0.0.1:{port}",
                     multipart_bucket=f"seqdrop-mp-{secrets.token_hex(4)}") as mp:
            lab = Lab(tmp_path, mp)
            extra, _ = lab.plan(lab.sample(lab.basecalls, "Liver_S1", MISEQ_RUN))
            init = lab.client.init_multipart_upload("Liver_S1_R1_001.fastq.gz", extra=extra)
            kept = next(s for s in mp.samples() if s["sample_id"] == init.sample_id)
            assert kept["project"] == SURV and kept["metadata"]["name"] == "Liver"
            lab.store.close()
    finally:
        server.stop()


class StandardInit:
    """init_upload with landing fields over loopback, mapped to daemon.errors as the client does
    (main's OneCodexClient.init_upload takes `extra` once the paired branch is merged)."""

    def __init__(self, sb: Sandbox) -> None:
        self.client = OneCodexClient(sb.api_url, KEY)

    def init_upload(self, filename: str, size: int, *, extra: dict | None = None) -> str:
        body = {"filename": filename, "size": size, "upload_type": "standard", **(extra or {})}
        # The client's own call: its error mapping is what the pipeline sees.
        return self.client._api("POST", "/api/v1/samples/init_upload", json=body)["sample_id"]


def test_date_from_the_run_name_else_the_files_mtime(lab):
    """{date}: a run folder without a date in its name takes the lead file's modification date."""
    odd = lab.miseq / "run-without-date"
    odd.mkdir()
    sample = lab.sample(odd, "Liver_S1", "run-without-date")
    lead = lab.store.sample(sample).files[0]
    expected = dt.datetime.fromtimestamp(lead.identity.mtime_ns / 1e9).date().isoformat()
    assert lab.plan(sample)[1]["tags"] == ["miseq", expected]


def fastq(names: list[str], read: int) -> bytes:
    return "".join(f"@{n} {read}:N:0:1\nACGTACGTAC\n+\nIIIIIIIIII\n" for n in names).encode()


def test_a_paired_sample_lands_through_the_pipeline(lab):
    """End to end: make_pipeline's pipeline uploads a two-lane paired MiSeq sample to the sandbox; One
    Codex shows its project, tags and metadata; the queue keeps the landing record."""
    files = []
    for role in ("R1", "R2"):
        for lane in (1, 2):
            path = lab.basecalls / f"Soil_S2_L00{lane}_{role}_001.fastq.gz"
            path.write_bytes(gzip.compress(fastq([f"M01:{lane}:{i}" for i in range(20)], int(role[1]))))
            files.append((lab.store.add_seen(str(path), Identity.of(os.stat(path))), role, lane))
    sample = lab.store.add_sample(key="soil", folder=str(lab.basecalls), name="Soil_S2", run=MISEQ_RUN,
                                  paired=True, files=files)
    pipeline = make_pipeline(lab.settings, store=lab.store, client=lab.client, log=structlog.get_logger(),
                             stop=threading.Event())
    try:
        lead = lab.store.claim_next("w")
        assert lead is not None and lead.id == files[0][0]
        assert pipeline.process(lead) == "done", lab.store.get(lead.id).error
    finally:
        pipeline.close()
    sample_id = lab.store.get(lead.id).sample_id
    shown = requests.get(f"{lab.sb.api_url}/api/v1/samples/{sample_id}", auth=(KEY, ""), timeout=5).json()
    assert shown["project"] == {"$ref": f"/api/v1/projects/{ENV}"}
    tag_names = {t["$uri"]: t["name"] for t in lab.sb.landing.tags()}
    assert [tag_names[t["$ref"]] for t in shown["tags"]] == ["miseq", "2023-05-11"]
    metadata = requests.get(f"{lab.sb.api_url}{shown['metadata']['$ref']}", auth=(KEY, ""), timeout=5).json()
    assert (metadata["name"], metadata["external_sample_id"], metadata["description"]) == (
        "Soil", "LIMS-002", "river bank")
    landing = lab.store.sample(sample).landing
    assert (landing["project"], landing["project_name"], landing["omitted"]) == (ENV, "Environmental", [])
    assert lab.store.sample(sample).public()["project"] == ENV


def test_check_names_each_landing_problem_with_its_fix(tmp_path, sb):
    """`seqdrop check` without uploading: a malformed sheet (PROBLEM), a sheet and a run that disagree,
    a config project that matches nothing (PROBLEM), a sheet's project that matches two, a {run} tag
    over the limit; each with its fix. Projects are listed with one GET."""
    lab = Lab(tmp_path, sb, miseq_tags='["miseq", "{run}"]', extra_config="")
    lab.store.close()
    requests.post(f"{sb.api_url}/_sandbox/projects", json={"name": "Shared", "project_name": "shared1"}, timeout=5)
    requests.post(f"{sb.api_url}/_sandbox/projects", json={"name": "Shared", "project_name": "shared2"}, timeout=5)
    config_text = (tmp_path / "config.toml").read_text().replace('ENV = "Environmental"',
                                                                 'ENV = "Environmental"\nOLD = "Retired project"')
    (tmp_path / "config.toml").write_text(config_text)
    (lab.miseq_run / "SampleSheet.csv").write_text(V1_SHEET.replace("LIMS-002,Soil,ENV,", "LIMS-002,Soil,Shared,")
                                                   + "LIMS-003,Kidney,,,GGGGAAAA\r\n")
    (lab.novaseq_run / "SampleSheet.csv").write_text("[BCLConvert_Data]\nLane,Sample_ID\nx,ONC-7\n")
    for folder, stem in ((lab.basecalls, "Liver_S1"), (lab.basecalls, "Soil_S2"), (lab.basecalls, "Stray_S9"),
                         (lab.basecalls, "Undetermined_S0"), (lab.fastq, "ONC-7_S1")):
        for role in ("R1", "R2"):
            (folder / f"{stem}_L001_{role}_001.fastq.gz").write_bytes(b"x")
    out = io.StringIO()
    assert run_checks(str(tmp_path / "config.toml"), out=out, env={"ONE_CODEX_API_KEY": KEY}) == 1
    text = out.getvalue()
    lines = text.splitlines()
    assert f"PROBLEM  sample sheet: {lab.novaseq_run / 'SampleSheet.csv'} line 3: Lane 'x' is not a lane number." in text
    assert "sample Stray_S9 has no row in" in text and "Sample_ID 'LIMS-003' names a sample that never appeared" in text
    assert "Undetermined" not in text
    assert "fix: if the run is still being written, wait; otherwise correct the sheet" in text
    assert any("PROBLEM  project: samples.projects['OLD']: no One Codex project visible to this API key is called "
               "'Retired project'" in line for line in lines)
    assert any(line.startswith("  warning  project: Sample_Project 'Shared'") and "matches 2 One Codex projects" in line
               for line in lines)
    assert "fix: create the project in One Codex, correct the name, or give its 16-character id" in text
    assert any(line.startswith("  warning  landing: tags[1] is left out for 4 sample(s) in") and
               f"(34: {MISEQ_RUN!r})" in line for line in lines)
    assert 'fix: a tag is at most 30 characters: use "{date}" or a short literal instead of "{run}"' in text
    assert "ok       projects: 'Environmental' → 5eed000000000003; 'Surveillance' → 5eed000000000001; " \
           "'onco' → 5eed000000000002" in text
    assert project_fetches(sb) == 1


def test_check_a_tag_over_the_limit_in_the_config_is_a_config_error(tmp_path, sb):
    """A value from the config itself that breaks a limit is a config error: exit 2, the key named."""
    lab = Lab(tmp_path, sb)
    lab.store.close()
    text = (tmp_path / "config.toml").read_text().replace('tags = ["seqdrop"]', f'tags = ["{"x" * 31}"]')
    (tmp_path / "config.toml").write_text(text)
    out = io.StringIO()
    assert run_checks(str(tmp_path / "config.toml"), out=out, env={"ONE_CODEX_API_KEY": KEY}) == 2
    assert "samples.tags[0]" in out.getvalue() and "a tag is at most 30 characters" in out.getvalue()


def test_sample_sheet_false_in_the_config_leaves_sheets_unread(tmp_path, sb):
    """[samples] sample_sheet = false: the sheet's names and projects are not used; the config's are."""
    lab = Lab(tmp_path, sb, extra_config="sample_sheet = false")
    assert lab.settings.samples.landing.sample_sheet is False
    extra, record = lab.plan(lab.sample(lab.basecalls, "Soil_S2", MISEQ_RUN))
    assert record["project"] == SURV and "name" not in extra["metadata"] and record["omitted"] == []
    lab.store.close()


def test_the_readme_lab_setup_lands_as_the_readme_says(tmp_path, sb):
    """README's lab: its config block loads and its sample sheet lands Liver and Soil as it says."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = next(b for b in re.findall(r"```toml\n(.*?)```", readme, flags=re.DOTALL) if "[samples.projects]" in b)
    sheet = next(b for b in re.findall(r"```csv\n(.*?)```", readme, flags=re.DOTALL) if "[Data]" in b)
    run = tmp_path / "miseq" / MISEQ_RUN
    run.mkdir(parents=True)
    (tmp_path / "novaseq").mkdir()
    (run / "SampleSheet.csv").write_text(sheet)
    (tmp_path / "config.toml").write_text(f'[api]\nbase_url = "{sb.api_url}"\n[queue]\npath = "{tmp_path}/q.sqlite3"\n'
                                          + block.replace("/srv/", f"{tmp_path}/"))
    settings = config.load(str(tmp_path / "config.toml"))
    planner = Planner.from_settings(settings, fetch=OneCodexClient(sb.api_url, KEY).projects)
    store = SqliteStore(str(tmp_path / "q.sqlite3"))
    try:
        for stem, project, name in (("Liver_S1", SURV, "Liver"), ("Soil_S2", ENV, "Soil")):
            path = run / f"{stem}_L001_R1_001.fastq.gz"
            path.write_bytes(b"x")
            row = store.get(store.add_seen(str(path), Identity.of(os.stat(path))))
            extra, record = planner.plan(None, row)
            assert (record["project"], record["tags"], record["omitted"]) == (project, ["miseq", "2023-05-11"], [])
            assert extra["metadata"]["name"] == name and extra["metadata"]["custom"] == {"lab": "Microbiology",
                                                                                          "run": MISEQ_RUN}
        assert extra["metadata"]["date_sequenced"] == "2023-05-11T00:00:00+00:00"
    finally:
        store.close()


def test_a_project_refused_again_after_the_lookup_goes_without_it(lab):
    """One Codex still lists the project but refuses it at init (access withdrawn): after one more
    lookup gives the same id, the init is sent without a project and the record says why."""
    liver = lab.sample(lab.basecalls, "Liver_S1", MISEQ_RUN)
    sent: list[dict] = []

    def init(extra: dict | None) -> str:
        sent.append(dict(extra or {}))
        if extra and "project" in extra:
            raise Permanent(f"/api/v1/samples/init_upload: HTTP 403-like 400: no access to project {SURV}")
        return "0123456789abcdef"

    extra, record = lab.plan(liver)
    assert lab.planner.send(init, extra) == "0123456789abcdef"
    assert ["project" in body for body in sent] == [True, False]
    assert record["project"] is None and record["omitted"][-1][0] == "project"
    assert record["omitted"][-1][1] == (f"project {SURV} left out: One Codex refused it at init: "
                                        f"/api/v1/samples/init_upload: HTTP 403-like 400: no access to project {SURV}")
    assert lab.store.sample(liver).landing == record and sent[1]["metadata"]["name"] == "Liver"
