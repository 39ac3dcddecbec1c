"""Assembly wired into detection (daemon/detection/assembler.py through the tracker): a real SQLite queue
in tmp_path, real files, an injected monotonic clock (nothing sleeps)."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any

import pytest
import structlog
from harness import write_config

from daemon import config as config_mod
from daemon.config.samples import Assembly
from daemon.detection.assembler import Assembler, Observed
from daemon.detection.roots import WatchRoots
from daemon.detection.tracker import Tracker
from daemon.detection.watcher import Matcher
from daemon.queue.base import Identity, SampleRow
from daemon.queue.sqlite import SqliteStore
from daemon.service.service import Service

SETTLE_S = 30.0
WAIT_S = 120.0
RUN = "240501_M00123_0042_000000000-ABCDE"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def fastq(names: list[str], *, read: int = 1) -> bytes:
    return "".join(f"@{n} {read}:N:0:1\nACGT\n+\nIIII\n" for n in names).encode()


class Env:
    """One watch folder, its tracker and its queue; `restart()` is a new daemon on the same queue."""

    def __init__(self, tmp_path: Path, *, marker: str | None = None, **assembly: Any) -> None:
        self.clock = Clock()
        self.folder = tmp_path / "watch"
        self.folder.mkdir()
        self.store = SqliteStore(str(tmp_path / "queue.sqlite3"), clock=self.clock)
        self.marker, self.assembly = marker, Assembly(group_wait_s=WAIT_S, **assembly)
        self.tracker = self._tracker()

    def _tracker(self) -> Tracker:
        roots = WatchRoots([(str(self.folder), self.marker)], clock=self.clock,
                           assembly={str(self.folder): self.assembly})
        return Tracker(store=self.store, settle_s=SETTLE_S, log=structlog.get_logger(), clock=self.clock, roots=roots)

    def restart(self) -> None:
        """kill -9 and start again: only the queue survives (resume, then the start-up scan)."""
        self.tracker = self._tracker()
        self.tracker.resume()
        self.tracker.full_scan(Matcher())

    def write(self, name: str, data: bytes = b"@r\nACGT\n+\nIIII\n") -> str:
        path = self.folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return str(path)

    def see(self, *paths: str):
        return self.tracker.observe_batch([(p, None) for p in paths])

    def advance(self, seconds: float):
        """Let time pass and run the due checks; what they committed."""
        self.clock.now += seconds
        return self.tracker.run_due()

    def row(self, path: str):
        return self.store.latest_for_path(path)

    def samples(self) -> list[SampleRow]:
        return self.store.samples()

    def members(self, sample: SampleRow) -> list[tuple[str, str | None, int | None]]:
        return [(os.path.basename(f.path), f.role, f.lane) for f in sample.files]


@pytest.fixture
def env(tmp_path: Path):
    e = Env(tmp_path)
    yield e
    e.store.close()


def make_env(tmp_path: Path, **kwargs: Any) -> Env:
    return Env(tmp_path, **kwargs)


def illumina_run(env: Env, names: tuple[str, ...] = ("Liver", "Kidney", "Gut"), lanes: int = 4,
                 where: str = RUN) -> list[str]:
    paths = []
    for n, name in enumerate(names, start=1):
        for lane in range(1, lanes + 1):
            for read in (1, 2):
                data = gzip.compress(fastq([f"{name}:{lane}:{i}" for i in range(3)], read=read), mtime=0)
                paths.append(env.write(f"{where}/{name}_S{n}_L00{lane}_R{read}_001.fastq.gz", data))
    return paths


def test_an_illumina_run_with_its_marker_makes_3_paired_samples_in_lane_order(tmp_path: Path) -> None:
    env = make_env(tmp_path, marker="illumina")
    paths = illumina_run(env)
    index = env.write(f"{RUN}/Undetermined_S0_L001_I1_001.fastq.gz", gzip.compress(b"@i\nACGT\n+\nIIII\n"))
    env.see(*paths, index)
    assert env.advance(SETTLE_S + 1).queued == []                  # no marker yet: every file waits
    assert "waiting for run marker" in (env.row(paths[0]).error or "")
    env.write(f"{RUN}/CopyComplete.txt", b"")
    found = env.advance(10)
    assert sorted(found.queued) == sorted(paths)
    samples = env.samples()
    assert [(s.name, s.paired, s.run) for s in samples] == [("Gut_S3", True, RUN), ("Kidney_S2", True, RUN),
                                                            ("Liver_S1", True, RUN)]
    liver = samples[2]
    assert env.members(liver) == [(f"Liver_S1_L00{lane}_R1_001.fastq.gz", "R1", lane) for lane in range(1, 5)] + \
                                 [(f"Liver_S1_L00{lane}_R2_001.fastq.gz", "R2", lane) for lane in range(1, 5)]
    assert liver.lead == liver.files[0].id and not liver.warnings and not liver.late
    assert {f.state for s in samples for f in s.files} == {"queued"}
    ignored = env.row(index)        # an index read is no sample: ended by rule, never waiting
    assert ignored.state == "rejected" and ignored.sample is None and ignored.flags == "ignored"
    assert "index read" in ignored.error and "--no-pairing" in ignored.error
    assert ignored.id in found.ended


def test_a_generic_1_2_pair_waits_for_the_group_wait_then_pairs_after_the_name_check(env: Env) -> None:
    names = [f"SRR1.{i}" for i in range(5)]
    r1, r2 = env.write("x_1.fastq", fastq(names, read=1)), env.write("x_2.fastq", fastq(names, read=2))
    env.see(r1, r2)
    assert env.advance(SETTLE_S + 1).queued == []
    assert "group_wait_seconds" in env.row(r1).error and env.row(r1).state == "seen"
    assert env.advance(WAIT_S - 10).queued == []                  # not yet
    assert sorted(env.advance(10).queued) == sorted([r1, r2])
    [sample] = env.samples()
    assert sample.paired and env.members(sample) == [("x_1.fastq", "R1", None), ("x_2.fastq", "R2", None)]


def test_a_1_2_guess_whose_read_names_disagree_is_two_single_end_samples(env: Env) -> None:
    r1 = env.write("run_1.fastq", fastq(["a", "b"]))
    r2 = env.write("run_2.fastq", fastq(["c", "d"]))
    env.see(r1, r2)
    env.advance(SETTLE_S + 1)
    assert sorted(env.advance(WAIT_S).queued) == sorted([r1, r2])
    samples = env.samples()
    assert [(s.paired, env.members(s)) for s in samples] == [(False, [("run_1.fastq", "single", None)]),
                                                             (False, [("run_2.fastq", "single", None)])]
    assert all("not one" in s.warnings[0] and "two single-end samples" in s.warnings[0] for s in samples)


def test_an_orphan_r1_goes_single_end_after_the_wait_with_a_warning(env: Env) -> None:
    r1 = env.write("Blood_R1.fastq")
    env.see(r1)
    env.advance(SETTLE_S + 1)
    assert env.row(r1).state == "seen"
    assert env.advance(WAIT_S).queued == [r1]
    [sample] = env.samples()
    assert not sample.paired and env.members(sample) == [("Blood_R1.fastq", "single", None)]
    assert sample.warnings == (("Blood: the R2 of Blood_R1.fastq never came; uploaded as a single-end sample "
                                "from its R1 alone."),)


def test_a_late_lane_after_the_sample_was_queued_is_a_sample_of_its_own(tmp_path: Path) -> None:
    env = make_env(tmp_path, marker="illumina")
    paths = illumina_run(env, names=("Liver",), lanes=2)
    env.write(f"{RUN}/CopyComplete.txt", b"")
    env.see(*paths)
    assert len(env.advance(SETTLE_S + 1).queued) == 4
    late = env.write(f"{RUN}/Liver_S1_L003_R1_001.fastq.gz", gzip.compress(fastq(["l"])))
    env.see(late)
    found = env.advance(SETTLE_S + 1)
    assert found.queued == [late]
    first, second = env.samples()
    assert len(first.files) == 4 and not first.late
    assert second.late and env.members(second) == [("Liver_S1_L003_R1_001.fastq.gz", "single", 3)]
    assert found.late == [second.id]
    assert "arrived after its sample Liver_S1 was uploaded" in second.warnings[0]
    assert "late" in (env.row(late).flags or "")


def test_pairing_off_makes_every_file_its_own_sample_at_once(tmp_path: Path) -> None:
    env = make_env(tmp_path, pairing="off")
    r1, r2 = env.write("A_R1.fastq"), env.write("A_R2.fastq")
    index = env.write("A_S1_L001_I1_001.fastq")
    env.see(r1, r2, index)
    assert sorted(env.advance(SETTLE_S + 1).queued) == sorted([r1, r2, index])   # no group wait
    assert [(s.paired, env.members(s)) for s in env.samples()] == [
        (False, [("A_R1.fastq", "single", None)]), (False, [("A_R2.fastq", "single", None)]),
        (False, [("A_S1_L001_I1_001.fastq", "single", 1)])]


def test_merge_lanes_off_makes_each_lane_a_pair_of_its_own(tmp_path: Path) -> None:
    env = make_env(tmp_path, marker="illumina", merge_lanes=False)
    paths = illumina_run(env, names=("Liver",), lanes=2)
    env.write(f"{RUN}/CopyComplete.txt", b"")
    env.see(*paths)
    assert len(env.advance(SETTLE_S + 1).queued) == 4
    one, two = env.samples()
    assert (one.name, two.name) == ("Liver_S1_L001", "Liver_S1_L002")
    assert env.members(one) == [("Liver_S1_L001_R1_001.fastq.gz", "R1", 1), ("Liver_S1_L001_R2_001.fastq.gz", "R2", 1)]
    assert env.members(two) == [("Liver_S1_L002_R1_001.fastq.gz", "R1", 2), ("Liver_S1_L002_R2_001.fastq.gz", "R2", 2)]
    assert one.paired and two.paired and not two.late


def test_mixed_compression_is_rejected_with_the_sentence(env: Env) -> None:
    r1, r2 = env.write("M_R1.fastq.gz", gzip.compress(fastq(["a"]))), env.write("M_R2.fastq", fastq(["a"]))
    env.see(r1, r2)
    found = env.advance(SETTLE_S + 1)               # refused as soon as both have settled: no wait
    assert found.queued == [] and sorted(found.ended) == sorted([env.row(r1).id, env.row(r2).id])
    [sample] = env.samples()
    assert {f.state for f in sample.files} == {"rejected"}
    assert env.row(r2).error == ("the files of sample M mix compressions: M_R1.fastq.gz (gz), M_R2.fastq (none); "
                                 "convert them to one.")


def test_two_files_claiming_the_same_role_and_lane_are_rejected(env: Env) -> None:
    a, b = env.write("D_S1_L001_R1_001.fastq"), env.write("D_S1_L001_R1.fastq")
    env.see(a, b)
    env.advance(SETTLE_S + 1)
    env.advance(WAIT_S)
    assert env.row(a).state == env.row(b).state == "rejected"
    assert "both claim R1, lane 1: remove one of them" in env.row(a).error


def test_a_lane_gap_after_the_marker_is_rejected(tmp_path: Path) -> None:
    env = make_env(tmp_path, marker="illumina")
    paths = [env.write(f"{RUN}/G_S1_L00{lane}_R{read}_001.fastq") for lane in (1, 3) for read in (1, 2)]
    env.write(f"{RUN}/CopyComplete.txt", b"")
    env.see(*paths)
    found = env.advance(SETTLE_S + 1)     # the marker is there: no group wait
    assert found.queued == [] and len(found.ended) == 4
    assert env.row(paths[0]).error == "G_S1: R1 has lanes L001, L003 but not L002."


def test_a_restart_before_assembly_assembles_once_and_one_after_it_starts_no_second_sample(env: Env) -> None:
    r1, r2 = env.write("P_R1.fastq"), env.write("P_R2.fastq")
    env.see(r1, r2)
    env.advance(SETTLE_S + 1)                       # settled, waiting for the group wait
    assert env.samples() == [] and env.row(r1).state == "seen"
    env.restart()                                   # killed between settle and assembly
    env.advance(SETTLE_S + 1)
    assert env.samples() == []                      # settles again, then waits again: nothing lost
    assert sorted(env.advance(WAIT_S).queued) == sorted([r1, r2])
    env.restart()                                   # killed after add_sample
    env.advance(SETTLE_S + WAIT_S + 1)
    [sample] = env.samples()
    assert sample.paired and {env.row(r1).state, env.row(r2).state} == {"queued"}
    assert len(env.store.files()) == 2              # no second version, no second sample


def test_a_restart_mid_batch_leaves_no_half_sample(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """The crash lands inside add_sample's transaction: nothing of the sample is recorded."""
    r1, r2 = env.write("Q_R1.fastq"), env.write("Q_R2.fastq")
    env.see(r1, r2)
    env.advance(SETTLE_S + 1)
    real = env.store.add_sample

    def crash(**kwargs: Any) -> int | None:
        raise KeyboardInterrupt   # stands for kill -9: the batch's transaction is never committed

    monkeypatch.setattr(env.store, "add_sample", crash)
    with pytest.raises(KeyboardInterrupt):
        env.advance(WAIT_S)
    monkeypatch.setattr(env.store, "add_sample", real)
    assert env.samples() == [] and env.row(r1).state == env.row(r2).state == "seen"
    env.restart()
    env.advance(SETTLE_S + 1)
    env.advance(WAIT_S)
    assert len(env.samples()) == 1


def test_a_member_deleted_before_upload_vanishes_its_sample_naming_it_and_the_rest_reassembles(env: Env) -> None:
    r1, r2 = env.write("V_R1.fastq"), env.write("V_R2.fastq")
    env.see(r1, r2)
    env.advance(SETTLE_S + 1)
    env.advance(WAIT_S)
    [first] = env.samples()
    os.remove(r2)
    found = env.see(r2)
    ids = {f.id for f in first.files}
    assert set(found.ended) == ids
    assert {env.store.get(i).state for i in ids} == {"vanished"}
    assert env.store.get(first.lead).error == ("V_R2.fastq, a file of this sample, was deleted before it was "
                                               "uploaded; its other files are assembled again")
    env.advance(0)                                  # R1 looked at again: a new version
    assert env.row(r1).state == "seen" and env.row(r1).id not in ids
    env.advance(SETTLE_S + 1)
    assert env.advance(WAIT_S).queued == [r1]
    second = env.samples()[-1]
    assert second.id != first.id and not second.late and not second.paired
    assert "never came" in second.warnings[0]


def test_a_lone_file_is_a_sample_of_one_at_once(env: Env) -> None:
    """Today's behaviour: a name without a pair pattern is queued once settled, as a one-member sample."""
    path = env.write("a.fastq")
    env.see(path)
    assert env.advance(SETTLE_S + 1).queued == [path]
    [sample] = env.samples()
    assert env.members(sample) == [("a.fastq", "single", None)] and sample.run == "watch"
    assert json.loads(sample.key)[2] == "none"


def test_the_run_is_the_folder_holding_a_sample_sheet(env: Env) -> None:
    path = env.write("MyRun/Data/fastq/a.fastq")
    env.write("MyRun/SampleSheet.csv", b"[Data]\n")
    env.see(path)
    env.advance(SETTLE_S + 1)
    assert env.samples()[0].run == "MyRun"


def given(tmp_path: Path, names: dict[str, bytes], **kwargs: Any) -> tuple[SqliteStore, list[SampleRow]]:
    """`seqdrop upload`'s assembly: the given files into a private queue, assembled at once."""
    folder = tmp_path / "given"
    folder.mkdir()
    store = SqliteStore(str(tmp_path / "private.sqlite3"))
    for name, data in names.items():
        (folder / name).write_bytes(data)
        store.add_seen(str(folder / name), Identity.of(os.stat(folder / name)))
    roots = WatchRoots([(str(folder), "illumina")])       # a marker rule: `upload` does not wait for it
    Assembler(store=store, roots=lambda: roots, log=structlog.get_logger(), immediate=True,
              **kwargs).assemble_given(store.rows_in("seen"))
    return store, store.samples()


def test_upload_assembles_given_files_at_once_pairs_lanes_and_guesses(tmp_path: Path) -> None:
    names = {f"L_S1_L00{lane}_R{read}_001.fastq": fastq([f"{lane}"], read=read) for lane in (2, 1) for read in (1, 2)}
    names |= {"g_1.fastq": fastq(["q"]), "g_2.fastq": fastq(["q"], read=2), "O_R1.fastq": fastq(["o"])}
    store, samples = given(tmp_path, names)
    by_name = {s.name: [(os.path.basename(f.path), f.role) for f in s.files] for s in samples}
    assert by_name == {
        "L_S1": [("L_S1_L001_R1_001.fastq", "R1"), ("L_S1_L002_R1_001.fastq", "R1"),
                 ("L_S1_L001_R2_001.fastq", "R2"), ("L_S1_L002_R2_001.fastq", "R2")],
        "g": [("g_1.fastq", "R1"), ("g_2.fastq", "R2")],          # the pair check agreed
        "O": [("O_R1.fastq", "single")]}
    assert store.counts()["queued"] == 7 and store.counts()["seen"] == 0
    store.close()


def test_upload_without_pairing_sends_every_file_alone(tmp_path: Path) -> None:
    store, samples = given(tmp_path, {"A_R1.fastq": fastq(["a"]), "A_R2.fastq": fastq(["a"], read=2),
                                      "U_S0_L001_I1_001.fastq": fastq(["i"])}, pairing="off")
    assert [(s.paired, len(s.files)) for s in samples] == [(False, 1)] * 3
    store.close()


def test_a_member_replaced_before_upload_vanishes_its_sample_and_both_files_reassemble(env: Env) -> None:
    r1, r2 = env.write("W_R1.fastq", fastq(["a"])), env.write("W_R2.fastq", fastq(["a"], read=2))
    env.see(r1, r2)
    env.advance(SETTLE_S + 1)
    env.advance(WAIT_S)
    [first] = env.samples()
    env.write("W_R2.fastq", fastq(["a", "b"], read=2))      # rewritten while queued
    env.see(r2)
    assert {f.state for f in env.store.sample(first.id).files} == {"vanished"}
    assert env.store.get(first.lead).error == ("W_R2.fastq, a file of this sample, was replaced by a newer version "
                                               "before it was uploaded; its other files are assembled again")
    env.advance(0)                                            # R1 looked at again: a new version too
    assert env.row(r1).state == env.row(r2).state == "seen"
    env.advance(SETTLE_S + 1)
    assert sorted(env.advance(WAIT_S).queued) == sorted([r1, r2])
    second = env.samples()[-1]
    assert second.paired and not second.late and {f.id for f in second.files}.isdisjoint(f.id for f in first.files)


def test_the_service_gives_each_folder_its_settings_and_tells_of_a_late_sample(tmp_path: Path) -> None:
    watch = tmp_path / "watch"
    (watch / "off").mkdir(parents=True)
    cfg = write_config(tmp_path, watch=[watch, {"path": watch / "off", "pairing": "off"}], api_url="http://127.0.0.1:9",
                       extra="\n[samples]\ngroup_wait_seconds = 7\n")
    service = Service(config_mod.load(str(cfg)), api_key="test-key", log=structlog.get_logger("seqdrop"))
    emitted: list[tuple[str, dict]] = []
    service.emit = lambda event, **fields: emitted.append((event, fields))   # type: ignore[method-assign]
    try:
        roots = service.tracker.roots
        assert roots.assembly_for(str(watch / "a.fastq")) == Assembly(group_wait_s=7)
        assert roots.assembly_for(str(watch / "off" / "a.fastq")) == Assembly(pairing="off", group_wait_s=7)
        path = str(watch / "L_S1_L002_R1_001.fastq")
        file_id = service.store.add_seen(path, Identity(1, 2, 3, 4))
        late = service.store.add_sample(key="k", folder=str(watch), name="L_S1", run="watch", paired=False,
                                        files=[(file_id, "single", 2)], warnings=("came late",), late=True)
        service._committed(Observed(late=[late]))
        assert emitted == [("sample_late", {"path": path, "sample": "L_S1", "run": "watch", "error": "came late"})]
    finally:
        service.store.close()


def test_a_mate_still_being_written_keeps_its_sample_waiting_past_the_group_wait(env: Env) -> None:
    r1 = env.write("Slow_R1.fastq", fastq(["a"]))
    env.see(r1)
    env.advance(SETTLE_S + 1)                       # R1 settled: its group wait runs
    r2 = env.write("Slow_R2.fastq", fastq(["a"], read=2))
    env.see(r2)
    for i in range(5):                              # R2 keeps growing past R1's deadline
        env.advance(SETTLE_S - 1)
        env.write("Slow_R2.fastq", fastq(["a"] * (2 + i), read=2))
        env.see(r2)
    assert env.row(r1).state == "seen" and env.row(r1).error == "waiting for Slow_R2.fastq to finish."
    env.advance(SETTLE_S + 1)                       # R2 settles: the wait restarts from it
    assert env.samples() == []
    assert sorted(env.advance(WAIT_S).queued) == sorted([r1, r2])
    assert env.samples()[0].paired
