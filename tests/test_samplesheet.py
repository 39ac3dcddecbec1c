"""Illumina sample sheets v1 (MiSeq, IEM) and v2 (NovaSeq, BCL Convert): parsing, matching, bad input."""

from __future__ import annotations

import pytest

from daemon.landing import samplesheet
from daemon.landing.samplesheet import SampleSheetError

# As Illumina Experiment Manager writes it for a MiSeq: a BOM, CRLF, every line padded with commas
# to the [Data] width, a quoted description holding a comma.
MISEQ_V1 = "\ufeff" + "\r\n".join([
    "[Header],,,,,,,,,",
    "IEMFileVersion,4,,,,,,,,",
    "Investigator Name,J Doe,,,,,,,,",
    "Experiment Name,Surveillance-42,,,,,,,,",
    "Date,5/11/2023,,,,,,,,",
    "Workflow,GenerateFASTQ,,,,,,,,",
    "Application,FASTQ Only,,,,,,,,",
    "Assay,Nextera XT,,,,,,,,",
    "Chemistry,Amplicon,,,,,,,,",
    ",,,,,,,,,",
    "[Reads],,,,,,,,,",
    "151,,,,,,,,,",
    "151,,,,,,,,,",
    ",,,,,,,,,",
    "[Settings],,,,,,,,,",
    "Adapter,CTGTCTCTTATACACATCT,,,,,,,,",
    ",,,,,,,,,",
    "[Data],,,,,,,,,",
    "Sample_ID,Sample_Name,Sample_Plate,Sample_Well,I7_Index_ID,index,I5_Index_ID,index2,Sample_Project,Description",
    "LIMS-001,Liver,P1,A01,N701,TAAGGCGA,S502,CTCTCTAT,SURV,\"biopsy, left lobe\"",
    "LIMS-002,Kidney,P1,B01,N702,CGTACTAG,S502,CTCTCTAT,SURV,",
    "# LIMS-099 withdrawn by the lab,,,,,,,,,",
    "LIMS-003,Swab.3,P1,C01,N703,AGGCAGAA,S502,CTCTCTAT,ENV,environmental swab",
    "",
]) + "\r\n"

# BCL Convert v2 for a NovaSeq: one sample over two lanes, [Cloud_Data] after the data section.
NOVASEQ_V2 = "\n".join([
    "[Header]",
    "FileFormatVersion,2",
    "RunName,NS-2024-0511",
    "InstrumentPlatform,NovaSeqXSeries",
    "",
    "[Reads]",
    "Read1Cycles,151",
    "Read2Cycles,151",
    "Index1Cycles,10",
    "",
    "[BCLConvert_Settings]",
    "SoftwareVersion,4.2.7",
    "FastqCompressionFormat,gzip",
    "",
    "[BCLConvert_Data]",
    "Lane,Sample_ID,Index,Index2,Sample_Project",
    "1,Tumor-A,ACGTACGTAC,TTGGCCAATT,ONCO",
    "2,Tumor-A,ACGTACGTAC,TTGGCCAATT,ONCO",
    "1,Normal-A,GGTTCCAAGG,AACCGGTTAA,ONCO",
    "",
    "[Cloud_Settings]",
    "GeneratedVersion,1.0",
    "[Cloud_Data]",
    "Sample_ID,ProjectName,LibraryName",
    "Tumor-A,Cloud,LibX",
])


def test_miseq_v1_rows_header_and_quoting():
    """A v1 sheet gives its rows in order, numbered, with the run name and date from [Header]."""
    sheet = samplesheet.parse(MISEQ_V1)
    assert (sheet.version, sheet.run_name, sheet.date) == (1, "Surveillance-42", "5/11/2023")
    assert [(r.sample_id, r.sample_name, r.sample_project, r.number) for r in sheet.rows] == [
        ("LIMS-001", "Liver", "SURV", 1), ("LIMS-002", "Kidney", "SURV", 2), ("LIMS-003", "Swab.3", "ENV", 3)]
    assert sheet.rows[0].description == "biopsy, left lobe"
    assert sheet.rows[1].description == ""
    assert sheet.rows[2].line == 23


def test_novaseq_v2_folds_lanes_and_ignores_cloud_data():
    """A v2 sheet's sample over two lanes is one row; [Cloud_Data] is not read as samples."""
    sheet = samplesheet.parse(NOVASEQ_V2)
    assert (sheet.version, sheet.run_name, sheet.date) == (2, "NS-2024-0511", "")
    assert [(r.sample_id, r.lanes, r.number, r.sample_project) for r in sheet.rows] == [
        ("Tumor-A", (1, 2), 1, "ONCO"), ("Normal-A", (1,), 2, "ONCO")]


def test_read_from_disk(tmp_path):
    """read() takes the file's bytes as written (BOM, CRLF) and names the file in its results."""
    path = tmp_path / "SampleSheet.csv"
    path.write_bytes(MISEQ_V1.encode("utf-8"))
    sheet = samplesheet.read(path)
    assert sheet.source == str(path) and len(sheet.rows) == 3


@pytest.mark.parametrize("stem, sample_id, by", [
    ("Liver_S1", "LIMS-001", "sample_name"),       # bcl2fastq names files after Sample_Name
    ("LIMS-002_S2", "LIMS-002", "sample_id"),
    ("LIMS-002", "LIMS-002", "sample_id"),          # generic names carry no _S<n>
    ("Swab_3_S3", "LIMS-003", "sample_name"),       # "." written as "_" in file names
    ("Renamed_S2", "LIMS-002", "number"),           # the sheet was edited after the run
])
def test_match_v1(stem, sample_id, by):
    """A stem finds its row by Sample_ID, else Sample_Name, else its _S<n> number."""
    found = samplesheet.parse(MISEQ_V1).match(stem)
    assert found is not None and (found.row.sample_id, found.by) == (sample_id, by)


def test_match_v2_by_sample_id_and_number_chooses_between_equal_names():
    """BCL Convert names files after Sample_ID; an _S<n> picks among rows sharing a Sample_Name."""
    sheet = samplesheet.parse(NOVASEQ_V2)
    assert sheet.match("Normal-A_S2").row.sample_id == "Normal-A"
    twins = samplesheet.parse("[Data]\nSample_ID,Sample_Name\nA1,Gut\nA2,Gut\n")
    assert twins.match("Gut_S2").row.sample_id == "A2"
    assert twins.match("Gut") is None        # two rows, nothing to choose by
    assert twins.match("Other") is None


def test_reconcile_names_missing_rows_and_missing_samples():
    """Samples without a row and rows without a sample are each named with a sentence."""
    sheet = samplesheet.parse(MISEQ_V1, source="/runs/230511_M01/SampleSheet.csv")
    result = sheet.reconcile(["Liver_S1", "Kidney_S2", "Stray_run", "Undetermined_S0"])
    assert set(result.matches) == {"Liver_S1", "Kidney_S2"}
    text = "\n".join(result.problems)
    assert "sample Stray_run has no row in /runs/230511_M01/SampleSheet.csv" in text
    assert "Undetermined_S0 holds the reads that matched no index" in text
    assert "line 23: Sample_ID 'LIMS-003' names a sample that never appeared in the run folder" in text
    assert len(result.problems) == 3


@pytest.mark.parametrize("text, message", [
    ("[Header]\nRunName,x\n", "no [Data] (v1) or [BCLConvert_Data] (v2) section"),
    ("[Data]\nSample_ID,Sample_Name\nA,x\nB,y\nA,z\n", "line 5: Sample_ID 'A' appears twice (first on line 3)"),
    ("[BCLConvert_Data]\nLane,Sample_ID\n1,A\n1,A\n", "Sample_ID 'A' appears twice in lane 1"),
    ("[Data]\nSample_Name,index\nx,ACGT\n", "line 2: the [Data] header has no Sample_ID column"),
    ("[Data]\nSample_ID,Sample_Name\nA,x,extra\n", "line 3: 3 values but the [Data] header has 2 columns"),
    ("[Data]\nSample_ID,Sample_Name\n,x\n", "line 3: no Sample_ID"),
    ('[Data]\nSample_ID,Description\nA,"open quote\n', "not valid CSV"),
    ("Sample_ID\nA\n", "line 1: text before the first [Section]"),
    ("[Data]\nSample_ID\nA\n[Data]\nSample_ID\nB\n", "line 4: a second [Data] section"),
    ("[Data]\n", "the [Data] section is empty"),
    ("[BCLConvert_Data]\nLane,Sample_ID\nx,A\n", "Lane 'x' is not a lane number"),
    ("[BCLConvert_Data]\nLane,Sample_ID,Sample_Project\n1,A,P\n2,A,Q\n", "different sample_project than on line 3"),
])
def test_malformed_sheets_are_named(text, message):
    """Each malformed sheet is refused with a sentence naming the file, line and problem."""
    with pytest.raises(SampleSheetError) as caught:
        samplesheet.parse(text, source="S.csv")
    assert message in str(caught.value) and str(caught.value).startswith("S.csv")


def test_not_utf8_names_the_line(tmp_path):
    """A sheet saved in another encoding is refused naming the line and the fix."""
    path = tmp_path / "SampleSheet.csv"
    path.write_bytes(b"[Data]\nSample_ID,Description\nA,caf\xe9\n")
    with pytest.raises(SampleSheetError, match=r"line 3: not UTF-8 text; save the sheet as UTF-8"):
        samplesheet.read(path)
