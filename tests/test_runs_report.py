"""`seqdrop runs`, the audit journal's sample records, `seqdrop report` and the run_uploaded notification.

Sample-level behaviour through the store (add_seen + add_sample) and the daemon's own audit trail
(AuditTrail, RunNotices) with a real journal in tmp_path; one test through a real `seqdrop run` against
the sandbox, with a webhook receiver on loopback (files there are one-file samples or files without a
sample, as the daemon assembles them)."""

from __future__ import annotations

import csv
import io
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from harness import Daemon, all_in, cli, fastq_bytes, status, wait_for, write_config
from test_wiring import Hook

from daemon.operations.email import compose
from daemon.operations.webhook import slack_text
from daemon.queue import integrity
from daemon.queue.base import STEP_POSTED_R1, Identity
from daemon.queue.journal import (
    FILE_ENDED,
    SAMPLE_ENDED,
    Journal,
    journal_path,
    read_records,
)
from daemon.queue.sqlite import SqliteStore
from daemon.sandbox import Sandbox
from daemon.service.audit import AuditTrail
from daemon.service.run_notice import META_PREFIX, RunNotices

ROOT = "/srv/out"
RUN = f"{ROOT}/240501_M00001_0001"
LANDING = {"project": "0123456789abcdef", "project_name": "Liver", "tags": ["liver"], "metadata": {"name": "Liver_S3"},
           "omitted": [["metadata.date_collected", "not a date: '2024-13-01'"]]}


class Log:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def _add(self, event: str, **kw: Any) -> None:
        self.events.append((event, kw))

    info = warning = error = debug = _add


@pytest.fixture
def setup(tmp_path):
    config = tmp_path / "seqdrop.toml"
    config.write_text(f'[queue]\npath = "{tmp_path}/q.sqlite3"\n')
    store = SqliteStore(str(tmp_path / "q.sqlite3"))
    yield config, store
    store.close()


def seen(store, path, inode, size=1000):
    return store.add_seen(path, Identity(7, inode, size, 1_700_000_000_000_000_000 + inode))


def paired(store, name, folder=RUN, inode=10):
    r1, r2 = seen(store, f"{folder}/{name}_R1_001.fastq.gz", inode), seen(store, f"{folder}/{name}_R2_001.fastq.gz", inode + 1)
    sid = store.add_sample(key=f"{folder}|{name}", folder=folder, name=name, run=folder.rsplit("/", 1)[1], paired=True,
                           files=[(r1, "R1", None), (r2, "R2", None)])
    return sid, r1, r2


def trail(store, tmp_path, sent, roots=(ROOT,)):
    log = Log()
    runs = RunNotices(store=store, emit=lambda kind, **f: sent.append((kind, f)), roots=roots, log=log)
    return AuditTrail(store=store, journal=Journal(journal_path(store.path), host="seq-pc"), log=log, runs=runs)


def finish(store, audit, lead, sample_id, *, r2_md5="2" * 32):
    """The paired standard route as the pipeline drives it: init, R1 posted, R2 posted, confirmed."""
    other = store.sample_of(lead).files[1].id
    store.save_init(lead, sample_id, "{}")
    audit.sample_saved(lead)
    with store.tx() as db:        # posted_r1 (the pipeline's step for it lands with helper "paired")
        db.execute("UPDATE files SET step = ?, updated_at = updated_at + 1 WHERE id = ?", (STEP_POSTED_R1, lead))
    audit.sample_saved(lead)
    store.save_posted(lead, "f" * 32)
    store.mark_done(lead, sample_id=sample_id, md5="1" * 32)
    store.save_member_md5s({lead: "1" * 32, other: r2_md5})
    audit.ended([lead])


def test_a_sample_that_ends_leaves_file_records_for_each_member_and_one_sample_record(setup, tmp_path):
    """sample.ended: files with identity, MD5, role and lane; name, local id, sample id, run, project and
    tags from the landing; the times of init, each read's POST and the confirm; host and version. Each
    member has its file.ended record (what the rebuild reads), naming its sample."""
    _, store = setup
    sid, r1, r2 = paired(store, "Liver_S3")
    store.set_landing(sid, LANDING)
    audit = trail(store, tmp_path, [])
    finish(store, audit, r1, "28459508592a481c")
    records = list(read_records(journal_path(store.path)))
    files = [r for r in records if r["event"] == FILE_ENDED]
    [sample] = [r for r in records if r["event"] == SAMPLE_ENDED]
    assert [(f["path"], f["state"], f["md5"], f["role"], f["sample"], f["run"]) for f in files] == [
        (store.get(r1).path, "done", "1" * 32, "R1", sid, "240501_M00001_0001"),
        (store.get(r2).path, "done", "2" * 32, "R2", sid, "240501_M00001_0001")]
    assert all(f["sample_name"] == "Liver_S3" and f["project"] == LANDING["project"] for f in files)
    assert (sample["state"], sample["sample"], sample["sample_name"], sample["sample_id"], sample["run"]) == (
        "done", sid, "Liver_S3", "28459508592a481c", "240501_M00001_0001")
    assert (sample["project"], sample["tags"], sample["omitted"]) == (LANDING["project"], ["liver"], LANDING["omitted"])
    assert [(f["path"], f["device"], f["inode"], f["size"], f["md5"], f["role"]) for f in sample["files"]] == [
        (store.get(r1).path, 7, 10, 1000, "1" * 32, "R1"), (store.get(r2).path, 7, 11, 1000, "2" * 32, "R2")]
    assert all(f["mtime_ns"] == 1_700_000_000_000_000_000 + f["inode"] for f in sample["files"])
    assert sample["init_at"] and sample["confirmed_at"] and sample["host"] == "seq-pc" and sample["version"]
    assert sample["posted_at"]["R1"] and sample["posted_at"]["R2"]
    assert sample["posted_at"]["R1"] != sample["posted_at"]["R2"], "each read has its own POST time"


def test_run_uploaded_is_sent_once_per_run_across_a_restart_and_again_for_a_late_sample(setup, tmp_path):
    """Only when every sample of the run has ended; once (a new trail on a reopened queue sends nothing
    more for it); a sample of that run ending later makes one more, marked late, naming only that sample.
    A watch folder itself (files without a run folder) never gets one."""
    _, store = setup
    sent: list[tuple[str, dict[str, Any]]] = []
    audit = trail(store, tmp_path, sent)
    _, a1, _ = paired(store, "A", inode=10)
    _, b1, _ = paired(store, "B", inode=20)
    finish(store, audit, a1, "aaaaaaaaaaaaaaaa")
    assert sent == [], "B has not ended"
    store.set_state(b1, "failed", error="HTTP 400 from One Codex")
    audit.ended([b1])
    [(kind, event)] = sent
    assert kind == "run_uploaded" and event["run"] == "240501_M00001_0001" and event["path"] == RUN
    assert event["counts"] == {"done": 1, "failed": 1} and event["late"] is False
    assert [(s["name"], s["sample_id"], s["project"], s["state"], len(s["files"])) for s in event["samples"]] == [
        ("A", "aaaaaaaaaaaaaaaa", None, "done", 2), ("B", None, None, "failed", 2)]
    path = store.path
    store.close()
    store = SqliteStore(path)                    # the daemon restarted
    again = trail(store, tmp_path, sent)
    again.ended([a1, b1])
    assert len(sent) == 1, "told once"
    assert store.get_meta(META_PREFIX + RUN)["times"] == 1
    _, late1, _ = paired(store, "A_late", inode=30)
    finish(store, again, late1, "cccccccccccccccc")
    assert len(sent) == 2
    kind, event = sent[1]
    assert event["late"] is True and [s["name"] for s in event["samples"]] == ["A_late"]
    assert event["counts"] == {"done": 2, "failed": 1}
    flat = seen(store, f"{ROOT}/loose.fasta", 99)
    store.set_state(flat, "rejected", error="not FASTA")
    again.ended([flat])
    assert len(sent) == 2, "a watch folder is not a run that ends"
    store.close()


def test_runs_lists_runs_with_their_samples_by_state(setup):
    config, store = setup
    _, a1, _ = paired(store, "A")
    store.mark_done(a1, sample_id="aaaaaaaaaaaaaaaa", md5="0" * 32)
    paired(store, "B", inode=20)
    loose = seen(store, "/srv/out/misc/loose.fasta", 99)
    store.set_state(loose, "failed", error="HTTP 400")
    doc = json.loads(cli(config, "runs", "--json").stdout)
    runs = {r["run"]: r for r in doc["runs"]}
    assert set(runs) == {"240501_M00001_0001", "misc"}
    assert runs["240501_M00001_0001"]["counts"]["done"] == 1 and runs["240501_M00001_0001"]["counts"]["queued"] == 1
    assert runs["240501_M00001_0001"]["samples"] == 2 and runs["240501_M00001_0001"]["files"] == 4
    assert runs["misc"]["ended"] is True and runs["240501_M00001_0001"]["ended"] is False
    assert [s["name"] for s in runs["misc"]["sample_list"]] == ["loose.fasta"]
    text = cli(config, "runs").stdout
    assert "240501_M00001_0001  2 samples: queued 1, done 1  (in progress;" in text
    assert "    queued    B (s2)" in text and "misc  1 sample: failed 1  (all ended;" in text


def test_runs_on_an_empty_queue_says_so(setup, tmp_path):
    config, store = setup
    elsewhere = tmp_path / "other.toml"
    elsewhere.write_text(f'[queue]\npath = "{tmp_path}/none.sqlite3"\n')
    r = cli(elsewhere, "runs")
    assert r.returncode == 0 and r.stdout.startswith("No queue yet") and "no runs" in r.stdout
    store.set_meta("x", 1)
    r = cli(config, "runs")
    assert r.returncode == 0 and r.stdout.startswith("No runs yet")
    assert json.loads(cli(config, "runs", "--json").stdout) == {"runs": []}


def test_report_prints_the_journal_as_csv_and_json_with_totals(setup, tmp_path):
    """Every file that ended, with MD5, sample id, sample name, run, project and times; a version that
    ended twice (failed, retried, done) once, as it ended last; RUN and --since select."""
    config, store = setup
    audit = trail(store, tmp_path, [])
    a, a1, a2 = paired(store, "A")
    store.set_landing(a, LANDING)
    store.set_state(a1, "failed", error="HTTP 503")
    audit.ended([a1])
    store.retry(states=("failed",), ids=(a1,))
    finish(store, audit, a1, "aaaaaaaaaaaaaaaa")
    other = seen(store, "/srv/out/240502_X/b.fasta", 77, size=5)
    store.mark_done(other, sample_id="bbbbbbbbbbbbbbbb", md5="b" * 32)
    audit.ended([other])
    r = cli(config, "report", "240501_*")
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert [(x["path"], x["state"], x["md5"], x["sample_id"], x["sample_name"], x["run"], x["project"], x["tags"])
            for x in rows] == [
        (store.get(a1).path, "done", "1" * 32, "aaaaaaaaaaaaaaaa", "A", "240501_M00001_0001", LANDING["project"], "liver"),
        (store.get(a2).path, "done", "2" * 32, "aaaaaaaaaaaaaaaa", "A", "240501_M00001_0001", LANDING["project"], "liver")]
    assert all(x["init_at"] and x["confirmed_at"] for x in rows)
    assert "2 files (done 2) in 1 samples, 2,000 bytes uploaded (run 240501_*)" in r.stderr
    doc = json.loads(cli(config, "report", "--format", "json").stdout)
    assert doc["totals"]["files"] == 3 and doc["totals"]["samples"] == 2 and doc["totals"]["bytes_done"] == 2005
    assert doc["totals"]["files_by_state"]["done"] == 3 and doc["totals"]["files_by_state"]["failed"] == 0
    assert doc["totals"]["runs"] == ["240501_M00001_0001", "240502_X"]
    assert json.loads(cli(config, "report", "--since", "2099-01-01", "--format", "json").stdout)["files"] == []


def test_report_without_a_journal_says_so(setup):
    config, _ = setup
    r = cli(config, "report")
    assert r.returncode == 0 and r.stdout.startswith("path,state,size,md5") and "no audit journal yet" in r.stderr


def test_through_the_daemon_report_and_status_agree_and_run_uploaded_is_told_once(
        tmp_path: Path, sandbox: Sandbox, watch_dir: Path) -> None:
    """`seqdrop run` uploads a run folder's files; run_uploaded reaches the webhook naming the run, its
    counts and samples; `report RUN` agrees with `status --json --run RUN`; `runs` lists it; after a
    restart, another run's notification arrives and the first run's is not sent again."""
    hook = Hook()
    try:
        run1 = watch_dir / "run1"
        run1.mkdir()
        for i in range(2):
            (run1 / f"s{i}.fastq").write_bytes(fastq_bytes(20_000, seed=i))
        cfg = write_config(tmp_path, watch=[watch_dir], api_url=sandbox.api_url, workers=1,
                           extra=f'\n[notify]\nwebhook_url = "{hook.url()}"\nformat = "json"\n')
        with Daemon(cfg) as d:
            d.wait_files(all_in("done", ["s0.fastq", "s1.fastq"]), 60, "both done")
            wait_for(lambda: [b for b in hook.bodies if b["event"] == "run_uploaded"], 20,
                     lambda: f"run_uploaded; got {hook.bodies}\n{d.log_tail()}")
            listed = json.loads(cli(cfg, "runs", "--json").stdout)["runs"]
            assert d.terminate() == 0
        [told] = [b for b in hook.bodies if b["event"] == "run_uploaded"]
        assert told["run"] == "run1" and told["counts"] == {"done": 2} and told["late"] is False
        # a file without a sample is named by its file name; an assembled one-file sample by its stem
        assert sorted(s["name"].split(".")[0] for s in told["samples"]) == ["s0", "s1"]
        assert all(len(s["sample_id"]) == 16 and len(s["files"]) == 1 for s in told["samples"])
        assert [(r["run"], r["counts"]["done"], r["ended"]) for r in listed] == [("run1", 2, True)]
        doc = status(cfg)
        in_run = json.loads(cli(cfg, "status", "--json", "--run", "run1").stdout)
        report = json.loads(cli(cfg, "report", "run1", "--format", "json").stdout)
        by_state: dict[str, int] = {}
        for f in in_run["files"]:
            by_state[f["state"]] = by_state.get(f["state"], 0) + 1
        assert {k: v for k, v in report["totals"]["files_by_state"].items() if v} == by_state == {"done": 2}
        assert sorted((f["path"], f["sample_id"]) for f in report["files"]) == sorted(
            (f["path"], f["sample_id"]) for f in doc["files"])
        assert report["totals"]["samples"] == 2 and {f["run"] for f in report["files"]} == {"run1"}
        rows = list(csv.DictReader(io.StringIO(cli(cfg, "report", "run1").stdout)))
        assert len(rows) == 2 and all(len(r["md5"]) == 32 and r["confirmed_at"] for r in rows)
        run2 = watch_dir / "run2"
        run2.mkdir()
        (run2 / "t.fastq").write_bytes(fastq_bytes(20_000, seed=9))
        with Daemon(cfg) as d:
            wait_for(lambda: [b for b in hook.bodies if b.get("run") == "run2"], 60,
                     lambda: f"run2's run_uploaded; got {hook.bodies}\n{d.log_tail()}")
            assert d.terminate() == 0
        assert [b["run"] for b in hook.bodies if b["event"] == "run_uploaded"] == ["run1", "run2"]
    finally:
        hook.server.shutdown()
        hook.server.server_close()


def test_a_queue_rebuilt_from_a_journal_with_sample_records_holds_each_member(setup, tmp_path):
    """sample.ended records beside file.ended ones do not disturb the rebuild: each member comes back done
    with its sample id and MD5."""
    _, store = setup
    _, r1, r2 = paired(store, "Liver_S3")
    finish(store, trail(store, tmp_path, []), r1, "28459508592a481c")
    paths = {store.get(r1).path: "1" * 32, store.get(r2).path: "2" * 32}
    rebuilt = tmp_path / "rebuilt.sqlite3"
    assert integrity.rebuild(str(rebuilt), journal_path(store.path)) == 2
    again = SqliteStore(str(rebuilt))
    assert {(r.path, r.state, r.sample_id, r.md5) for r in again.files()} == {
        (p, "done", "28459508592a481c", md5) for p, md5 in paths.items()}
    again.close()


def test_run_uploaded_reads_well_by_mail_and_in_slack():
    """The mail names the run, the counts and each sample with its files; the Slack line the run, the
    counts and the samples; a late one says so."""
    payload = {"event": "run_uploaded", "host": "seq-pc", "time": "t", "version": "1.2.3", "run": "240501_M00001",
               "path": "/srv/out/240501_M00001", "counts": {"done": 1, "failed": 1}, "late": False,
               "samples": [{"sample": 1, "name": "Liver_S3", "sample_id": "0123456789abcdef", "project": "fedcba9876543210",
                            "state": "done", "files": ["/srv/out/240501_M00001/Liver_S3_R1_001.fastq.gz",
                                                       "/srv/out/240501_M00001/Liver_S3_R2_001.fastq.gz"]},
                           {"sample": 2, "name": "Spleen", "sample_id": None, "project": None, "state": "failed",
                            "files": ["/srv/out/240501_M00001/Spleen.fastq"]}]}
    mail = compose(payload, sender="seqdrop@lab.example.org", recipients=["a@lab.example.org"])
    body = mail.get_content()
    assert mail["Subject"] == "[seqdrop seq-pc] Run uploaded: 240501_M00001"
    assert "Every sample of the run 240501_M00001 has ended" in body and "Folder:  /srv/out/240501_M00001" in body
    assert "done:      1" in body and "failed:    1" in body
    assert "- Liver_S3: done, sample id 0123456789abcdef, project fedcba9876543210" in body
    assert "    /srv/out/240501_M00001/Liver_S3_R2_001.fastq.gz" in body and "- Spleen: failed, sample id -" in body
    line = slack_text(payload)
    assert line.startswith(":white_check_mark: seqdrop 1.2.3@seq-pc: run 240501_M00001 uploaded: 1 done, 1 failed")
    assert "Liver_S3 done 0123456789abcdef; Spleen failed" in line and "\n" not in line
    late = slack_text({**payload, "late": True})
    assert "more samples ended after it was reported as uploaded" in late
    assert "ended after it was reported" in compose({**payload, "late": True}, sender="s@l.org", recipients=["a@l.org"]
                                                    ).get_content()


class Racing:
    """The store, but a read of the run's meta waits (up to a deadline) for the other thread's read: two
    judgements of one run that are not kept apart both read "nothing told yet"."""

    def __init__(self, store: SqliteStore) -> None:
        self.store, self.reads, self.both = store, 0, threading.Event()
        self.lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def get_meta(self, key: str) -> Any:
        value = self.store.get_meta(key)
        with self.lock:
            self.reads += 1
            if self.reads >= 2:
                self.both.set()
        self.both.wait(timeout=1.0)     # kept apart, the other read never comes while this one waits
        return value


def test_two_workers_ending_a_run_at_once_tell_it_once(setup, tmp_path):
    """Both samples' endings judged on two threads at the same moment: one run_uploaded."""
    _, store = setup
    sent: list[tuple[str, dict[str, Any]]] = []
    notices = RunNotices(store=Racing(store), emit=lambda kind, **f: sent.append((kind, f)), roots=(ROOT,), log=Log())
    _, a1, _ = paired(store, "A", inode=10)
    _, b1, _ = paired(store, "B", inode=20)
    store.mark_done(a1, sample_id="aaaaaaaaaaaaaaaa", md5="1" * 32)
    store.mark_done(b1, sample_id="bbbbbbbbbbbbbbbb", md5="1" * 32)
    threads = [threading.Thread(target=notices.ended, args=([store.get(lead)], {})) for lead in (a1, b1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [kind for kind, _ in sent] == ["run_uploaded"], (sent, notices.log.events)
