"""Where samples land, through the real daemon (issue 12, Must show 1 and 3): a MiSeq run folder with a
v1 sample sheet and a NovaSeq/BCL Convert run with a v2 sheet, each under its own watch path with its
project and tags; the assembled paired samples land in the right project with the sheet's name,
external id and description, the tags and date_sequenced; every init body validates against the
published schema; `seqdrop report` of a run agrees with `status --json`."""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path
from typing import Any

import jsonschema
import requests
from harness import API_KEY, Daemon, cli, confirmed, write_config
from test_landing import init_schema, needs_openapi
from test_planner import ENV, MISEQ_RUN, NOVASEQ_RUN, ONCO, SURV, V1_SHEET, V2_SHEET

from daemon.sandbox import Sandbox


def fastq(names: list[str], read: int) -> bytes:
    return "".join(f"@{n} {read}:N:0:1\nACGTACGTACGT\n+\nIIIIIIIIIIII\n" for n in names).encode()


def lab_config(tmp_path: Path, sandbox: Sandbox, miseq: Path, novaseq: Path) -> Path:
    """Two instruments, two projects, sheets, tags with {date}: the README's lab, with a run marker."""
    path = write_config(tmp_path, watch=[miseq], api_url=sandbox.api_url, extra="""
[samples]
group_wait_seconds = 1
tags = ["seqdrop"]
[samples.metadata]
sample_type = "Metagenomic"
[samples.metadata.custom]
lab = "Microbiology"
run = "{run}"
[samples.projects]
ENV = "Environmental"
""")
    watch = (f'paths = [\n  {{path = "{miseq}", marker = "illumina", project = "Surveillance", '
             f'tags = ["miseq", "{{date}}"], metadata = {{platform = "Illumina MiSeq", date_sequenced = "{{date}}"}}}},\n'
             f'  {{path = "{novaseq}", marker = "illumina", project = "onco", tags = ["novaseq"], '
             f'metadata = {{platform = "Illumina NovaSeq", library_type = "WGS", date_sequenced = "{{date}}"}}}},\n]')
    text = path.read_text()
    start = text.index("paths = [")
    path.write_text(text[:start] + watch + text[text.index("\n", start):])
    return path


def write_sample(folder: Path, stem: str, lanes: tuple[int, ...], reads: int = 30) -> None:
    for lane in lanes:
        names = [f"A01:{lane}:{stem}:{i}" for i in range(reads)]
        for read in (1, 2):
            (folder / f"{stem}_L{lane:03d}_R{read}_001.fastq.gz").write_bytes(gzip.compress(fastq(names, read), mtime=0))


def shown(sandbox: Sandbox, sample_id: str) -> dict[str, Any]:
    """The sample as One Codex shows it: project, tag names, metadata."""
    auth = (API_KEY, "")
    doc = requests.get(f"{sandbox.api_url}/api/v1/samples/{sample_id}", auth=auth, timeout=5).json()
    names = {t["$uri"]: t["name"] for t in sandbox.landing.tags()}
    metadata = requests.get(f"{sandbox.api_url}{doc['metadata']['$ref']}", auth=auth, timeout=5).json()
    return {"project": (doc.get("project") or {}).get("$ref", "").rsplit("/", 1)[-1] or None,
            "tags": [names[t["$ref"]] for t in doc.get("tags") or []], "metadata": metadata}


@needs_openapi
def test_two_instruments_land_each_sample_where_the_sheets_say(tmp_path: Path, sandbox: Sandbox) -> None:
    miseq, novaseq = tmp_path / "watch" / "miseq", tmp_path / "watch" / "novaseq"
    miseq_run, novaseq_run = miseq / MISEQ_RUN, novaseq / NOVASEQ_RUN
    basecalls = miseq_run / "Data" / "Intensities" / "BaseCalls"
    fastq_dir = novaseq_run / "Analysis" / "1" / "Data" / "fastq"
    for folder in (basecalls, fastq_dir):
        folder.mkdir(parents=True)
    (miseq_run / "SampleSheet.csv").write_bytes(V1_SHEET.encode())
    (novaseq_run / "SampleSheet.csv").write_text(V2_SHEET)
    write_sample(basecalls, "Liver_S1", (1,))
    write_sample(basecalls, "Soil_S2", (1,))
    write_sample(fastq_dir, "ONC-7_S1", (1, 2))
    write_sample(fastq_dir, "ONC-8_S2", (1,))
    cfg = lab_config(tmp_path, sandbox, miseq, novaseq)
    with Daemon(cfg) as daemon:
        daemon.wait_ready()
        (miseq_run / "CopyComplete.txt").write_text("")
        (novaseq_run / "CopyComplete.txt").write_text("")
        daemon.wait_files(lambda files: files and all(f["state"] == "done" for f in files), 60, "every file done")
        doc = daemon.status()
        assert daemon.terminate() == 0
    # status names a sample by its files' stem; One Codex gets the sheet's name
    samples = {s["name"].rsplit("_S", 1)[0]: s for s in doc["samples"]}
    assert set(samples) == {"Liver", "Soil", "ONC-7", "ONC-8"}, samples
    assert all(s["paired"] and s["state"] == "done" for s in samples.values())
    want = {  # name: (project id, tags (a watch path's replace [samples]'), external id, description, run, date)
        "Liver": (SURV, ["miseq", "2023-05-11"], "LIMS-001", "biopsy, left lobe", MISEQ_RUN, "2023-05-11"),
        "Soil": (ENV, ["miseq", "2023-05-11"], "LIMS-002", "river bank", MISEQ_RUN, "2023-05-11"),
        "ONC-7": (ONCO, ["novaseq"], "ONC-7", "tumour", NOVASEQ_RUN, "2024-06-03"),
        "ONC-8": (ONCO, ["novaseq"], "ONC-8", "normal", NOVASEQ_RUN, "2024-06-03")}
    for name, (project, tags, external, description, run, date) in want.items():
        got = shown(sandbox, samples[name]["sample_id"])
        assert got["project"] == project and samples[name]["project"] == project, (name, got)
        assert sorted(got["tags"]) == sorted(tags), (name, got["tags"])
        md = got["metadata"]
        assert (md["name"], md["external_sample_id"], md["description"]) == (name, external, description), md
        assert str(md["date_sequenced"]).startswith(date) and md["custom"]["run"] == run, md
    # Every init the daemon sent validates against One Codex's published request schema.
    inits = [r for r in sandbox.requests() if r["target"] == "init_upload"]
    assert len(inits) == 4
    schema = init_schema()
    for r in inits:
        jsonschema.validate(r["json"], schema)
        assert r["json"]["paired_end_filename"].replace("_R2_", "_R1_") == r["json"]["filename"]
    # The run's report lists every file with its MD5 and sample id; its totals agree with status --json.
    report = cli(cfg, "report", MISEQ_RUN, "--format", "csv")
    assert report.returncode == 0, report.stderr
    rows = list(csv.DictReader(io.StringIO(report.stdout)))
    miseq_files = [f for f in doc["files"] if MISEQ_RUN in f["path"]]
    assert sorted(r["path"] for r in rows) == sorted(f["path"] for f in miseq_files)
    by_path = {f["path"]: f for f in miseq_files}
    assert all(r["sample_id"] == by_path[r["path"]]["sample_id"] and len(r["md5"]) == 32 for r in rows), rows
    assert len(confirmed(sandbox)) == 4
