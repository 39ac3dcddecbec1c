"""The sandbox's paired-end uploads over loopback HTTP: two tickets, two objects, one confirm."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
import requests

from daemon.sandbox import Sandbox

KEY = "sandbox-key"
R1 = b"@r1/1\nACGTACGTNN\n+\nIIIIIIIIII\n@r2/1\nTTTT\n+\nIIII\n"
R2 = b"@r1/2\nGGGGCCCCAA\n+\nIIIIIIIIII\n@r2/2\nAAAA\n+\nIIII\n"


@pytest.fixture
def sb(tmp_path):
    with Sandbox(data_dir=tmp_path / "sandbox", api_keys=(KEY,)) as sandbox:
        yield sandbox


def api(sb, path: str, body: dict | None = None) -> requests.Response:
    url = f"{sb.api_url}/api/v1/samples{path}"
    if body is None:
        return requests.get(url, auth=(KEY, ""), timeout=5)
    return requests.post(url, json=body, auth=(KEY, ""), timeout=5)


def init_paired(sb, **extra) -> requests.Response:
    body = {"filename": "Liver_S3_R1_001.fastq", "size": len(R1), "upload_type": "standard",
            "paired_end_filename": "Liver_S3_R2_001.fastq", **extra}
    return api(sb, "/init_upload", body)


def post(url: str, fields: dict, data: bytes, filename: str) -> requests.Response:
    return requests.post(url, data=fields, files={"file": (filename, data)}, timeout=5)


def post_r1(t: dict, data: bytes = R1) -> requests.Response:
    return post(t["upload_url"], t["additional_fields"], data, "Liver_S3_R1_001.fastq")


def post_r2(t: dict, data: bytes = R2) -> requests.Response:
    return post(t["paired_end_upload_url"], t["paired_end_additional_fields"], data, "Liver_S3_R2_001.fastq")


def confirm(sb, sample_id: str) -> requests.Response:
    return api(sb, "/confirm_upload", {"sample_id": sample_id, "upload_type": "standard"})


def stored(sb, sample_id: str) -> dict:
    return next(s for s in sb.samples() if s["sample_id"] == sample_id)


def test_paired_init_answers_both_tickets_as_the_schema_says(sb):
    """init_upload with paired_end_filename answers paired_end_upload_url and its own signed fields."""
    answer = init_paired(sb)
    assert answer.status_code == 200, answer.text
    t = answer.json()
    assert set(t) == {"additional_fields", "sample_id", "upload_url", "paired_end_upload_url",
                      "paired_end_additional_fields"}
    r1_fields, r2_fields = t["additional_fields"], t["paired_end_additional_fields"]
    assert list(r2_fields) == list(r1_fields)
    assert r2_fields["key"].endswith(f"/file_{t['sample_id']}_paired_end/${{filename}}")
    assert r2_fields["policy"] != r1_fields["policy"]
    conditions = json.loads(base64.b64decode(r2_fields["policy"]))["conditions"]
    # the published schema has no R2 size: the R2 is bounded by one S3 POST's limit
    assert ["content-length-range", 0, 5 * 1024**3] in conditions


def test_paired_upload_stores_both_objects_and_confirms_once_both_are_there(sb):
    """R1 alone cannot be confirmed (the message names the missing R2); after both POSTs, confirm works."""
    t = init_paired(sb).json()
    assert post_r1(t).status_code == 201
    early = confirm(sb, t["sample_id"])
    assert early.status_code == 400
    assert "R2 (Liver_S3_R2_001.fastq) to paired_end_upload_url" in early.json()["message"]
    assert "R1 (" not in early.json()["message"]

    posted = post_r2(t)
    assert posted.status_code == 201 and posted.headers["ETag"] == f'"{hashlib.md5(R2).hexdigest()}"'
    assert confirm(sb, t["sample_id"]).status_code == 200
    s = stored(sb, t["sample_id"])
    assert s["state"] == "confirmed"
    assert Path(s["object_path"]).read_bytes() == R1 and Path(s["paired_object_path"]).read_bytes() == R2
    assert (s["md5"], s["paired_md5"]) == (hashlib.md5(R1).hexdigest(), hashlib.md5(R2).hexdigest())


def test_r2_alone_cannot_be_confirmed(sb):
    """R2 posted but not R1: confirm refused naming the R1 and upload_url."""
    t = init_paired(sb).json()
    assert post_r2(t).status_code == 201
    refused = confirm(sb, t["sample_id"])
    assert refused.status_code == 400 and "R1 (Liver_S3_R1_001.fastq) to upload_url" in refused.json()["message"]
    assert stored(sb, t["sample_id"])["state"] == "initialized"


def test_each_read_is_held_to_its_own_policy(sb):
    """The R1's fields cannot store under the R2's key (and vice versa): S3 refuses, nothing is stored."""
    t = init_paired(sb).json()
    swapped = dict(t["additional_fields"], key=t["paired_end_additional_fields"]["key"])
    refused = post(t["upload_url"], swapped, R2, "Liver_S3_R2_001.fastq")
    assert refused.status_code == 403 and b"Policy Condition failed" in refused.content
    swapped = dict(t["paired_end_additional_fields"], key=t["additional_fields"]["key"])
    assert post(t["paired_end_upload_url"], swapped, R1, "x.fastq").status_code == 403
    assert post_r1(t, R1 + b"@r3\nA\n+\nI\n").status_code == 400          # larger than the declared size
    s = stored(sb, t["sample_id"])
    assert (s["state"], s["md5"], s.get("paired_md5")) == ("initialized", None, None)
    assert confirm(sb, t["sample_id"]).status_code == 400


def test_get_sample_shows_the_pair(sb):
    """GET /api/v1/samples/{id} shows the R2's name and size (a sandbox extension); single samples do not."""
    t = init_paired(sb).json()
    post_r1(t), post_r2(t)
    assert confirm(sb, t["sample_id"]).status_code == 200
    shown = api(sb, f"/{t['sample_id']}").json()
    assert (shown["filename"], shown["paired_end_filename"], shown["paired_end_size"]) == (
        "Liver_S3_R1_001.fastq", "Liver_S3_R2_001.fastq", len(R2))
    single = api(sb, "/init_upload", {"filename": "one.fastq", "size": 5, "upload_type": "standard"}).json()
    assert "paired_end_filename" not in api(sb, f"/{single['sample_id']}").json()
    assert "paired_end_upload_url" not in single


@pytest.mark.parametrize("paired_end_filename", ["../etc/passwd", "bad name!.fq", 7, "Liver_S3_R1_001.fastq"])
def test_invalid_paired_end_filename_is_refused(sb, paired_end_filename):
    """A paired_end_filename that breaks the filename rule (or repeats filename) is a 400; no sample made."""
    refused = init_paired(sb, paired_end_filename=paired_end_filename)
    assert refused.status_code == 400 and "paired_end_filename" in refused.json()["message"]
    assert sb.samples() == []


def test_null_paired_end_filename_is_a_single_end_upload(sb):
    """paired_end_filename: null (the schema's default) is an ordinary single-end sample."""
    t = init_paired(sb, paired_end_filename=None).json()
    assert "paired_end_upload_url" not in t
    assert post_r1(t).status_code == 201 and confirm(sb, t["sample_id"]).status_code == 200


def test_repost_of_r2_overwrites_and_counts(sb):
    """A second POST of the R2 (a retry) overwrites it, like S3, and the sandbox counts both."""
    t = init_paired(sb).json()
    post_r1(t)
    post_r2(t, b"@r1/2\nA\n+\nI\n")
    post_r2(t)
    s = stored(sb, t["sample_id"])
    assert s["paired_upload_count"] == 2 and Path(s["paired_object_path"]).read_bytes() == R2
