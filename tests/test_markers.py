"""Run-completion markers on real folder layouts of each instrument family."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from daemon.detection.markers import PRESETS, MarkerRule


def touch(path: Path, text: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def rule_for(spec: str | None, root: Path, **kwargs) -> MarkerRule:
    # ttl_s=0: every call looks at the disk (the cache has its own test).
    kwargs.setdefault("ttl_s", 0.0)
    return MarkerRule.parse(spec, str(root), **kwargs)


def illumina_run(root: Path, name: str = "230101_M00123_0001_000000000-ABCDE") -> Path:
    run = root / name
    touch(run / "RunInfo.xml", "<RunInfo/>")
    touch(run / "RunParameters.xml", "<RunParameters/>")
    touch(run / "InterOp" / "QMetricsOut.bin")
    touch(run / "Data" / "Intensities" / "BaseCalls" / "L001" / "C1.1" / "L001_1.cbcl")
    return run


def test_illumina_waits_for_copycomplete_even_with_rtacomplete(tmp_path: Path) -> None:
    """An Illumina run with RTAComplete.txt but no CopyComplete.txt waits, naming the run folder."""
    run = illumina_run(tmp_path)
    fq = touch(run / "Data" / "Intensities" / "BaseCalls" / "S1_S1_L001_R1_001.fastq.gz")
    touch(run / "RTAComplete.txt")
    reason = rule_for("illumina", tmp_path).waiting_for(str(fq))
    assert reason == f"waiting for run marker CopyComplete.txt in {run} (Illumina)"


def test_illumina_goes_once_copycomplete_appears(tmp_path: Path) -> None:
    """CopyComplete.txt in the run folder releases the FASTQ files deep below it."""
    run = illumina_run(tmp_path, "231005_A01234_0042_BHXXXXXXX")
    fq = touch(run / "Data" / "Intensities" / "BaseCalls" / "S1_L001_R1_001.fastq.gz")
    rule = rule_for("illumina", tmp_path)
    assert rule.waiting_for(str(fq)) is not None
    touch(run / "CopyComplete.txt")
    assert rule.waiting_for(str(fq)) is None


def test_illumina_marker_of_another_run_does_not_release(tmp_path: Path) -> None:
    """A finished sibling run does not release the files of a run still being copied."""
    done = illumina_run(tmp_path, "230101_M00123_0001_000000000-AAAAA")
    touch(done / "CopyComplete.txt")
    busy = illumina_run(tmp_path, "230102_M00123_0002_000000000-BBBBB")
    fq = touch(busy / "Data" / "Intensities" / "BaseCalls" / "x_R1.fastq.gz")
    assert str(busy) in rule_for("illumina", tmp_path).waiting_for(str(fq))


def test_bclconvert_waits_then_goes_for_top_level_and_project_fastqs(tmp_path: Path) -> None:
    """BCL Convert output: files in <out>/ and <out>/<project>/ wait for Logs/FastqComplete.txt."""
    out = tmp_path / "bclconvert_230101"
    touch(out / "Reports" / "Demultiplex_Stats.csv", "Lane,SampleID\n")
    touch(out / "Logs" / "Info.log")
    top = touch(out / "Undetermined_S0_L001_R1_001.fastq.gz")
    proj = touch(out / "ProjectA" / "S1_S1_L001_R1_001.fastq.gz")
    rule = rule_for("bclconvert", tmp_path)
    expected = f"waiting for run marker Logs/FastqComplete.txt in {out} (BCL Convert)"
    assert rule.waiting_for(str(top)) == expected
    assert rule.waiting_for(str(proj)) == expected
    touch(out / "Logs" / "FastqComplete.txt")
    assert rule.waiting_for(str(top)) is None
    assert rule.waiting_for(str(proj)) is None


def test_nanopore_waits_for_final_summary_in_flowcell_run_folder(tmp_path: Path) -> None:
    """MinKNOW: barcode FASTQs wait for final_summary_*.txt in the flow cell run folder."""
    flowcell_run = tmp_path / "exp_2023" / "sample_01" / "20230101_1200_MN12345_FAQ12345_abcdef12"
    touch(flowcell_run / "report_FAQ12345_20230101_1200_abcdef12.json", "{}")
    fq = touch(flowcell_run / "fastq_pass" / "barcode01" / "FAQ12345_pass_barcode01_abcdef12_0.fastq.gz")
    rule = rule_for("nanopore", tmp_path)
    assert rule.waiting_for(str(fq)) == (
        f"waiting for run marker final_summary_*.txt in {flowcell_run} (Nanopore MinKNOW)")
    touch(flowcell_run / "final_summary_FAQ12345_abcdef12.txt", "instrument=MN12345\n")
    assert rule.waiting_for(str(fq)) is None


def test_nanopore_summary_of_other_flowcell_does_not_release(tmp_path: Path) -> None:
    """A final summary in a sibling flow cell run folder does not release this run's files."""
    sample = tmp_path / "exp" / "sample_01"
    touch(sample / "run_A" / "final_summary_FAQ00001_11111111.txt")
    fq = touch(sample / "run_B" / "fastq_pass" / "x.fastq")
    assert rule_for("nanopore", tmp_path).waiting_for(str(fq)) is not None


def test_custom_glob_marker(tmp_path: Path) -> None:
    """glob:<pattern> is matched inside each candidate folder, sub-folders allowed."""
    run = tmp_path / "run7"
    fq = touch(run / "reads" / "a.fq")
    rule = rule_for("glob:status/*.done", tmp_path)
    assert rule.waiting_for(str(fq)) == f"waiting for run marker status/*.done in {run}"
    touch(run / "status" / "transfer.done")
    assert rule.waiting_for(str(fq)) is None


def test_unknown_preset_lists_presets_and_glob_syntax() -> None:
    """An unknown marker name is a ValueError naming every preset and the glob: syntax."""
    with pytest.raises(ValueError) as err:
        MarkerRule.parse("minion", "/srv/out")
    message = str(err.value)
    assert "'minion'" in message and "glob:" in message
    for name in PRESETS:
        assert name in message


@pytest.mark.parametrize("spec", ["glob:", "glob:/abs/done.txt", "glob:../done.txt"])
def test_bad_custom_glob_is_refused(spec: str) -> None:
    """An empty, absolute or escaping custom glob is a ValueError."""
    with pytest.raises(ValueError, match="relative pattern"):
        MarkerRule.parse(spec, "/srv/out")


@pytest.mark.parametrize("spec", [None, "none", "None", ""])
def test_no_marker_lets_everything_go(tmp_path: Path, spec: str | None) -> None:
    """No marker rule (None, 'none', empty) never holds a file back."""
    fq = touch(tmp_path / "run" / "a.fastq")
    assert rule_for(spec, tmp_path).waiting_for(str(fq)) is None


def test_file_directly_in_root(tmp_path: Path) -> None:
    """A file directly in the root waits for a marker in the root itself, and names the root."""
    fq = touch(tmp_path / "reads.fastq.gz")
    rule = rule_for("illumina", tmp_path)
    assert rule.waiting_for(str(fq)) == f"waiting for run marker CopyComplete.txt in {tmp_path} (Illumina)"
    touch(tmp_path / "CopyComplete.txt")
    assert rule.waiting_for(str(fq)) is None


def test_marker_above_the_root_does_not_count(tmp_path: Path) -> None:
    """Only folders up to and including the watch root are looked at."""
    root = tmp_path / "watched"
    touch(tmp_path / "CopyComplete.txt")
    fq = touch(root / "run" / "a.fastq")
    assert rule_for("illumina", root).waiting_for(str(fq)) is not None


def test_plain_folder_guess_is_top_level_folder_under_root(tmp_path: Path) -> None:
    """Without run-folder landmarks the message names the top-level folder holding the file."""
    fq = touch(tmp_path / "batch1" / "deep" / "er" / "a.fastq")
    reason = rule_for("illumina", tmp_path).waiting_for(str(fq))
    assert reason == f"waiting for run marker CopyComplete.txt in {tmp_path / 'batch1'} (Illumina)"


def test_marker_answers_are_cached_briefly(tmp_path: Path) -> None:
    """A folder's answer is reused for the TTL, then the disk is asked again."""
    clock = FakeClock()
    run = illumina_run(tmp_path)
    fq = touch(run / "a.fastq")
    rule = MarkerRule.parse("illumina", str(tmp_path), clock=clock, ttl_s=2.0)
    assert rule.waiting_for(str(fq)) is not None
    touch(run / "CopyComplete.txt")
    clock.now += 1.0
    assert rule.waiting_for(str(fq)) is not None  # still the cached answer
    clock.now += 1.5
    assert rule.waiting_for(str(fq)) is None


def test_relative_root_and_path_are_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Relative paths are resolved against the working directory."""
    monkeypatch.chdir(tmp_path)
    touch(tmp_path / "out" / "run" / "CopyComplete.txt")
    touch(tmp_path / "out" / "run" / "a.fastq")
    rule = rule_for("illumina", Path("out"))
    assert rule.waiting_for(os.path.join("out", "run", "a.fastq")) is None
