"""Finished members → samples and when they are complete (assembly/group.py); an injected clock, no sleeping."""

from __future__ import annotations

import pytest

from daemon.assembly.group import Member, group, key_of, split_guess

RUN = "/data/run42"
WAIT_S = 120.0


def member(name: str, *, settled_at_s: float = 0.0, size: int = 100, folder: str = RUN) -> Member:
    path = f"{folder}/{name}"
    return Member(path=path, size=size, identity=(path, size), settled_at_s=settled_at_s)


def illumina_run(samples=("Liver_S1", "Gut_S2", "Skin_S3"), lanes=4, reads=("R1", "R2")) -> list[Member]:
    return [member(f"{s}_L{lane:03d}_{r}_001.fastq.gz", size=1000 * lane + (r == "R2"))
            for s in samples for lane in range(1, lanes + 1) for r in reads]


def names(part) -> list[str]:
    return [m.name.name for m in part]


def only(grouping):
    assert len(grouping.samples) == 1, grouping.samples
    return grouping.samples[0]


def test_illumina_run_with_marker_gives_paired_samples_in_lane_order():
    """3 samples × 4 lanes × R1/R2 with the marker → 3 complete paired samples, lanes in order."""
    members = illumina_run()
    members.reverse()                                   # arrival order must not matter
    grouping = group(members, now_s=1.0, marker=lambda folder: True)
    assert sorted(s.name for s in grouping.samples) == ["Gut_S2", "Liver_S1", "Skin_S3"]
    for sample in grouping.samples:
        assert (sample.kind, sample.state, sample.warnings, sample.needs_pair_check) == ("paired", "complete", (),
                                                                                          False)
        assert names(sample.r1) == [f"{sample.name}_L{lane:03d}_R1_001.fastq.gz" for lane in range(1, 5)]
        assert names(sample.r2) == [f"{sample.name}_L{lane:03d}_R2_001.fastq.gz" for lane in range(1, 5)]
        assert sample.upload_names == (f"{sample.name}_R1_001.fastq.gz", f"{sample.name}_R2_001.fastq.gz")
        assert sample.sizes == (10_000, 10_004)


def test_marker_absent_keeps_the_run_waiting_whatever_the_time():
    """With a marker configured but absent, every paired sample waits for it, even long after settling."""
    grouping = group(illumina_run(), now_s=10 * WAIT_S, marker=lambda folder: False)
    assert {s.state for s in grouping.samples} == {"waiting"}
    assert all("completion marker" in s.reason for s in grouping.samples)


def test_marker_present_but_a_member_still_settling_waits_for_it():
    """The marker is there but one lane file is still being written: its sample waits, naming it."""
    members = [m for m in illumina_run(samples=("Liver_S1",)) if "L004_R2" not in m.path]
    grouping = group(members, now_s=1.0, marker=lambda folder: True,
                     pending=[f"{RUN}/Liver_S1_L004_R2_001.fastq.gz"])
    sample = only(grouping)
    assert sample.state == "waiting" and "Liver_S1_L004_R2_001.fastq.gz" in sample.reason


def test_without_marker_complete_after_group_wait_from_the_last_member():
    """No marker: complete once group_wait_s has passed since the last member settled (not the first)."""
    members = [member("soil_R1.fastq", settled_at_s=0.0), member("soil_R2.fastq", settled_at_s=50.0)]
    before = only(group(members, now_s=50.0 + WAIT_S - 1, group_wait_s=WAIT_S))
    assert before.state == "waiting" and "group_wait_seconds" in before.reason
    after = only(group(members, now_s=50.0 + WAIT_S, group_wait_s=WAIT_S))
    assert (after.state, after.kind, names(after.r1), names(after.r2)) == (
        "complete", "paired", ["soil_R1.fastq"], ["soil_R2.fastq"])


def test_a_lone_file_is_complete_at_once():
    """A name matching no pair pattern is a sample by itself with no wait; index reads are ignored."""
    lone = member("contigs.fasta", settled_at_s=5.0)
    index = member("Liver_S1_L001_I1_001.fastq.gz", settled_at_s=5.0)
    grouping = group([lone, index], now_s=5.0, marker=lambda folder: False)
    sample = only(grouping)
    assert (sample.state, sample.kind, names(sample.r1), sample.upload_names) == (
        "complete", "single", ["contigs.fasta"], ("contigs.fasta",))
    assert grouping.ignored == (index,)


def test_orphan_r1_goes_single_end_with_a_warning_naming_the_missing_mate():
    """An R1 whose R2 never came is a single-end sample once the wait is over, with a warning."""
    sample = only(group([member("soil_R1.fastq.gz")], now_s=WAIT_S, group_wait_s=WAIT_S))
    assert (sample.state, sample.kind, names(sample.r1), sample.r2) == ("complete", "single", ["soil_R1.fastq.gz"], ())
    assert len(sample.warnings) == 1 and "R2" in sample.warnings[0] and "soil_R1.fastq.gz" in sample.warnings[0]


def test_orphan_r1_waits_before_the_wait_is_over():
    """The same R1 is only waiting while its mate may still come."""
    assert only(group([member("soil_R1.fastq.gz")], now_s=WAIT_S - 1, group_wait_s=WAIT_S)).state == "waiting"


def test_r2_without_r1_waits_then_goes_single_end_naming_the_missing_r1():
    """An R2 alone waits for its R1, then (design.md: "an R1 or R2 whose mate never came") goes single-end."""
    waiting = only(group([member("soil_R2.fastq")], now_s=1.0, group_wait_s=WAIT_S))
    assert waiting.state == "waiting"
    done = only(group([member("soil_R2.fastq")], now_s=WAIT_S, group_wait_s=WAIT_S))
    assert done.state == "complete" and done.kind == "single" and "the R1 of soil_R2.fastq" in done.warnings[0]


@pytest.mark.parametrize("files,word", [
    (["soil_R1.fastq.gz", "soil_R2.fastq"], "compressions"),
    (["soil_R1.fastq.gz", "soil_R2.fastq.bz2"], "compressions"),
    (["Liver_S1_L001_R1_001.fastq.gz", "Liver_S1_L002_R1_001.fastq"], "compressions"),
])
def test_mixed_compression_is_rejected_naming_the_files(files, word):
    """Members of one sample that mix compressions are rejected, each file named, even before completion."""
    sample = only(group([member(f) for f in files], now_s=0.0))
    assert sample.state == "rejected" and word in sample.reason
    assert all(f in sample.reason for f in files)


def test_two_files_claiming_the_same_role_and_lane_are_rejected():
    """`x_R1.fastq` and `x.r1.fastq`-like duplicates of one slot: two files claim R1 lane 1."""
    members = [member("Liver_S1_L001_R1_001.fastq.gz"), member("liver_s1_L001_R1_001.fastq.gz"),
               member("Liver_S1_L001_R2_001.fastq.gz")]
    sample = only(group(members, now_s=0.0, marker=lambda folder: True))
    assert sample.state == "rejected" and "both claim R1, lane 1" in sample.reason


def test_lane_gap_is_rejected_once_complete_but_only_waits_before():
    """L001 and L003 without L002: waiting while the run is not done, rejected once the marker is there."""
    members = [member(f"Liver_S1_L00{lane}_{r}_001.fastq.gz") for lane in (1, 3) for r in ("R1", "R2")]
    assert only(group(members, now_s=0.0, marker=lambda folder: False)).state == "waiting"
    sample = only(group(members, now_s=0.0, marker=lambda folder: True))
    assert sample.state == "rejected" and "not L002" in sample.reason


def test_r1_and_r2_with_different_lanes_are_rejected():
    """R1 on lanes 1–2 but R2 on lane 1 only: rejected naming the files."""
    members = [member("Liver_S1_L001_R1_001.fastq.gz"), member("Liver_S1_L002_R1_001.fastq.gz"),
               member("Liver_S1_L001_R2_001.fastq.gz")]
    sample = only(group(members, now_s=0.0, marker=lambda folder: True))
    assert sample.state == "rejected" and "same lanes" in sample.reason


def test_lanes_split_into_chunks_keep_lane_then_chunk_order():
    """bcl2fastq chunks (_001, _002) of each lane are members in (lane, chunk) order, not duplicates."""
    files = ["X_S1_L002_R1_001.fastq.gz", "X_S1_L001_R1_002.fastq.gz", "X_S1_L001_R1_001.fastq.gz"]
    sample = only(group([member(f) for f in files], now_s=WAIT_S))
    assert names(sample.r1) == ["X_S1_L001_R1_001.fastq.gz", "X_S1_L001_R1_002.fastq.gz", "X_S1_L002_R1_001.fastq.gz"]


def test_late_member_after_upload_is_a_sample_of_its_own_flagged_late():
    """A lane that appears after its sample was uploaded is never merged: its own sample, flagged late."""
    first = illumina_run(samples=("Liver_S1",), lanes=2)
    late = member("Liver_S1_L003_R1_001.fastq.gz", settled_at_s=500.0)
    started = [key_of(first[0])]
    sample = only(group([late], now_s=500.0, marker=lambda folder: True, started=started))
    assert (sample.late, sample.state, sample.kind, names(sample.r1)) == (
        True, "complete", "single", ["Liver_S1_L003_R1_001.fastq.gz"])
    assert "after its sample" in sample.warnings[0]


def test_pairing_off_gives_one_sample_per_file_at_once():
    """pairing = "off": today's one-file samples, complete at once, lane names unchanged."""
    members = illumina_run(samples=("Liver_S1",), lanes=2)
    grouping = group(members, now_s=0.0, pairing="off", marker=lambda folder: False)
    assert len(grouping.samples) == 4
    assert all(s.kind == "single" and s.state == "complete" and len(s.r1) == 1 for s in grouping.samples)
    assert sorted(s.upload_names[0] for s in grouping.samples) == sorted(names(members))


def test_generic_12_pair_needs_the_pair_check_and_splits_into_two_singles():
    """`_1/_2` is paired as a guess; if the check fails, split_guess gives two single-end samples."""
    members = [member("SRR1553425_1.fastq.gz"), member("SRR1553425_2.fastq.gz")]
    sample = only(group(members, now_s=WAIT_S, group_wait_s=WAIT_S))
    assert sample.kind == "paired" and sample.needs_pair_check
    one, two = split_guess(sample)
    assert (one.kind, names(one.r1), two.kind, names(two.r1)) == (
        "single", ["SRR1553425_1.fastq.gz"], "single", ["SRR1553425_2.fastq.gz"])
    assert not one.warnings and not two.warnings


def test_samples_are_per_folder():
    """The same names in two folders are two samples; one folder's marker does not complete the other."""
    members = [member("soil_R1.fastq", folder="/a"), member("soil_R2.fastq", folder="/a"),
               member("soil_R1.fastq", folder="/b"), member("soil_R2.fastq", folder="/b")]
    grouping = group(members, now_s=0.0, marker=lambda folder: folder == "/a")
    states = {s.key[0]: s.state for s in grouping.samples}
    assert states == {"/a": "complete", "/b": "waiting"}


def test_different_separators_do_not_pair():
    """`soil_R1` and `soil.R2` follow different patterns: not mates (each goes single-end)."""
    grouping = group([member("soil_R1.fastq"), member("soil.R2.fastq")], now_s=WAIT_S)
    assert sorted(s.kind for s in grouping.samples) == ["single", "single"]
    assert all(s.warnings for s in grouping.samples)


def test_late_lane_keeps_its_own_name():
    """A late lane is uploaded under its file's own name, never the name its first sample used."""
    late = member("Liver_S1_L003_R1_001.fastq.gz")
    sample = only(group([late], now_s=0.0, started=[key_of(late)]))
    assert sample.upload_names == ("Liver_S1_L003_R1_001.fastq.gz",)
