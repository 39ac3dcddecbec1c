"""Samples in `seqdrop status` (text and --json), `seqdrop show` and `seqdrop retry`, through the real command
line against queues built with the store's own verbs (add_seen + add_sample: the assembler is not needed)."""

from __future__ import annotations

import json
import time

import pytest
from harness import cli
from pg_server import shared_queue

from daemon.queue.base import Identity
from daemon.queue.sqlite import SqliteStore

NOW = time.time()
RUN = "/srv/out/240501_M00001_0001_000000000-ABCDE"
LANDING = {"project": "0123456789abcdef", "project_name": "Liver study", "tags": ["liver", "run-240501"],
           "metadata": {"name": "Liver_S3", "platform": "Illumina MiSeq"},
           "omitted": [["metadata.external_sample_id", "longer than 60 characters"]]}


@pytest.fixture(params=["sqlite", "postgres"])
def setup(request, tmp_path):
    """A config and its queue, on each backend (postgres: the shared queue, /srv/out watched as "out")."""
    config = tmp_path / "seqdrop.toml"
    if request.param == "sqlite":
        config.write_text(f'[queue]\npath = "{tmp_path}/q.sqlite3"\n')
        store = SqliteStore(str(tmp_path / "q.sqlite3"))
    else:
        store = shared_queue(config, request.getfixturevalue("pg_url"), {"out": "/srv/out"})
    yield config, store
    store.close()


def seen(store, path, inode, size=1000):
    return store.add_seen(path, Identity(7, inode, size, 1_700_000_000_000_000_000 + inode))


def paired(store, name="Liver_S3", folder=RUN, inode=10, lanes=(1,), **kw):
    """A paired sample of R1/R2 lane files in folder; returns (sample id, [member ids, lead first])."""
    r1 = [seen(store, f"{folder}/{name}_L00{lane}_R1_001.fastq.gz", inode + lane) for lane in lanes]
    r2 = [seen(store, f"{folder}/{name}_L00{lane}_R2_001.fastq.gz", inode + 50 + lane) for lane in lanes]
    files = [(f, "R1", lane) for f, lane in zip(r1, lanes)] + [(f, "R2", lane) for f, lane in zip(r2, lanes)]
    sid = store.add_sample(key=f"{folder}|{name}", folder=folder, name=name, run=folder.rsplit("/", 1)[1],
                           paired=True, files=files, **kw)
    assert sid is not None
    return sid, [f for f, _, _ in files]


def test_json_lists_samples_beside_files_and_honours_the_filters(setup):
    """--json keeps counts and files and adds "samples": one entry per sample with design.md's keys, its
    state its lead's, project and tags from the landing record, the member ids R1 lanes first; --state,
    --run, --since and --limit select samples as they select files."""
    config, store = setup
    sid, members = paired(store, lanes=(1, 2), warnings=("R2 of lane 3 never came",))
    store.set_landing(sid, LANDING)
    store.mark_done(members[0], sample_id="28459508592a481c", md5="a" * 32)
    other, other_members = paired(store, name="Spleen_S4", folder="/srv/out/240502_M00001_0002", inode=200)
    store.set_state(other_members[0], "failed", error="HTTP 400 from One Codex: bad file")
    loose = seen(store, "/srv/out/misc/loose.fasta", 900)
    doc = json.loads(cli(config, "status", "--json").stdout)
    assert set(doc) == {"counts", "files", "samples", "paused"}
    assert doc["counts"]["done"] == 4 and doc["counts"]["failed"] == 2 and doc["counts"]["seen"] == 1
    assert len(doc["files"]) == 7
    [a, b] = doc["samples"]
    assert a == store.sample(sid).public() and b == store.sample(other).public()
    assert set(a) == {"id", "name", "run", "paired", "files", "state", "sample_id", "project", "tags", "error",
                      "updated_at"}      # design.md's keys exactly; late and warnings: `show sN --json`
    assert (a["state"], a["sample_id"], a["project"], a["tags"]) == ("done", "28459508592a481c", LANDING["project"],
                                                                     LANDING["tags"])
    assert a["files"] == members and a["paired"] is True
    shown = json.loads(cli(config, "show", f"s{sid}", "--json").stdout)
    assert shown["warnings"] == ["R2 of lane 3 never came"] and shown["late"] is False
    assert (b["state"], b["error"], b["project"], b["tags"]) == ("failed", "HTTP 400 from One Codex: bad file", None, [])
    by_file = {f["id"]: f for f in doc["files"]}
    assert [by_file[m]["role"] for m in members] == ["R1", "R1", "R2", "R2"]
    assert by_file[loose]["sample"] is None and all(by_file[m]["sample"] == sid for m in members)

    def samples(*args):
        return [s["name"] for s in json.loads(cli(config, "status", "--json", *args).stdout)["samples"]]
    assert samples("--state", "failed") == ["Spleen_S4"]
    assert samples("--run", "240501_*") == ["Liver_S3"]
    assert samples("--run", "/srv/out/240502_M00001_0002") == ["Spleen_S4"]
    assert samples("--since", "1h") == ["Liver_S3", "Spleen_S4"] and samples("--since", "2099-01-01") == []
    assert samples("--limit", "1") == ["Spleen_S4"]      # the most recently changed


def test_text_gives_a_paired_sample_one_line_with_its_warnings(setup):
    """A sample of four files is one line (s<id>, state, sample id, name, its members by role and lane,
    late and warnings); a file without a sample keeps its line; sample counts follow the file counts."""
    config, store = setup
    sid, members = paired(store, lanes=(1, 2), late=True, warnings=("R2 of lane 3 never came",))
    store.set_state(members[0], "failed", error="HTTP 400 from One Codex: bad file")
    loose = seen(store, "/srv/out/misc/loose.fasta", 900)
    out = cli(config, "status").stdout
    lines = out.splitlines()
    assert lines[0].startswith("seen 1  queued 0") and "failed 4" in lines[0]
    assert lines[1] == "samples: failed 1"
    [line] = [ln for ln in lines if ln.lstrip().startswith(f"s{sid} ")]
    assert "failed" in line and f"{RUN}/Liver_S3 (4 files: R1 L1,2; R2 L1,2)" in line
    assert "[late]" in line and "R2 of lane 3 never came" in line and line.endswith("— HTTP 400 from One Codex: bad file")
    assert not any("_L001_R1_001" in ln for ln in lines), "members are not listed one by one"
    assert any(ln.lstrip().startswith(f"{loose} ") and "loose.fasta" in ln for ln in lines)


def test_show_tells_a_whole_sample_by_local_id_or_sample_id_and_a_member_names_its_siblings(setup):
    """`show s<id>` and `show <sample id>`: the sample's story — members with role, lane and MD5, project,
    tags, metadata and what was left out and why; `show <member path>`: the file's versions, with its
    sample and its siblings."""
    config, store = setup
    sid, members = paired(store)
    store.set_landing(sid, LANDING)
    store.mark_done(members[0], sample_id="28459508592a481c", md5="a" * 32)
    store.save_member_md5s({members[0]: "1" * 32, members[1]: "2" * 32})
    for what in (f"s{sid}", "28459508592a481c"):
        r = cli(config, "show", what)
        assert r.returncode == 0, r.stderr
        text = r.stdout
        assert text.startswith(f"sample s{sid} Liver_S3 — done — confirmed as sample 28459508592a481c")
        assert "project       0123456789abcdef (Liver study)" in text and "tags          liver, run-240501" in text
        assert "left out      metadata.external_sample_id: longer than 60 characters" in text
        assert "paired-end, 2 files: R1; R2" in text
        [r1_line] = [ln for ln in text.splitlines() if "_R1_001" in ln]
        assert r1_line.split()[:4] == ["R1", "lane", "1", "file"] and "1" * 32 in r1_line
    doc = json.loads(cli(config, "show", f"s{sid}", "--json").stdout)
    assert doc["id"] == sid and doc["landing"] == LANDING
    assert [(m["role"], m["lane"], m["md5"]) for m in doc["members"]] == [("R1", 1, "1" * 32), ("R2", 1, "2" * 32)]
    r2_path = store.get(members[1]).path
    text = cli(config, "show", r2_path).stdout
    assert f"sample        s{sid} Liver_S3 (2 files: R1; R2); this file is R2 lane 1" in text
    assert f"sibling     R1 L1 file {members[0]}: {store.get(members[0]).path}" in text
    [entry] = json.loads(cli(config, "show", r2_path, "--json").stdout)
    assert entry["sample_name"] == "Liver_S3" and entry["siblings"] == [members[0]]
    r = cli(config, "show", "s999")
    assert r.returncode == 1 and "local sample (s12)" in r.stderr


def test_retry_of_any_member_puts_the_whole_sample_back(setup):
    """`retry ID` with the R2 member's id: the sample (both files) is queued again, and the message says so."""
    config, store = setup
    sid, members = paired(store)
    store.set_state(members[0], "failed", error="HTTP 400 from One Codex")
    r = cli(config, "retry", str(members[1]))
    assert r.returncode == 0, r.stderr
    assert "1 sample (2 files) put back in the queue" in r.stdout
    assert f"sample Liver_S3 (2 files, s{sid}) put back in the queue" in r.stdout
    assert [store.get(m).state for m in members] == ["queued", "queued"]
    r = cli(config, "retry", str(members[1]))
    assert "0 files put back" in r.stdout and f"sample Liver_S3 (2 files, s{sid}) is queued" in r.stdout


def test_samples_json_is_one_query_fast_enough_for_a_big_queue(tmp_path):
    """20,000 paired samples (40,000 files): the samples list is encoded by SQLite in well under a second
    (bench/status.py measures the whole command on 100,000 files)."""
    store = SqliteStore(str(tmp_path / "q.sqlite3"))
    with store.batch():
        for i in range(20_000):
            a, b = seen(store, f"/r/run{i % 50}/s{i}_R1.fastq", 2 * i), seen(store, f"/r/run{i % 50}/s{i}_R2.fastq", 2 * i + 1)
            store.add_sample(key=f"k{i}", folder=f"/r/run{i % 50}", name=f"s{i}", run=f"run{i % 50}", paired=True,
                             files=[(a, "R1", None), (b, "R2", None)])
    started = time.perf_counter()
    entries = store.samples_json()
    took_s = time.perf_counter() - started
    assert len(entries) == 20_000 and json.loads(entries[-1])["files"] == [39_999, 40_000]
    assert took_s < 2.0, f"{took_s:.2f} s"
    store.close()
