"""File names → sample stem, role, lane, format, compression, family and uploaded name (assembly/names.py)."""

from __future__ import annotations

import pytest

from daemon.assembly.names import parse

# name, stem, role, lane, format, compression, family, uploaded name
CASES = [
    # BCL Convert / bcl2fastq (NextSeq, NovaSeq, MiSeq): sample number, lane, read, chunk
    ("Liver_S3_L001_R1_001.fastq.gz", "Liver_S3", "R1", 1, "fastq", "gz", "illumina", "Liver_S3_R1_001.fastq.gz"),
    ("Liver_S3_L004_R2_001.fastq.gz", "Liver_S3", "R2", 4, "fastq", "gz", "illumina", "Liver_S3_R2_001.fastq.gz"),
    ("ZymoMock-1_S12_L002_R2_001.fastq.gz", "ZymoMock-1_S12", "R2", 2, "fastq", "gz", "illumina",
     "ZymoMock-1_S12_R2_001.fastq.gz"),
    # MiSeq without lane splitting (--no-lane-splitting): no lane token
    ("Sample1_S1_R1_001.fastq.gz", "Sample1_S1", "R1", None, "fastq", "gz", "illumina", "Sample1_S1_R1_001.fastq.gz"),
    # a sample name with underscores and digits
    ("Patient_07_day_2_S5_L001_R1_001.fastq", "Patient_07_day_2_S5", "R1", 1, "fastq", "none", "illumina",
     "Patient_07_day_2_S5_R1_001.fastq"),
    # lane without a sample number (older bcl2fastq with --no-sample-number style names)
    ("Gut_L003_R1_001.fq.gz", "Gut", "R1", 3, "fastq", "gz", "illumina", "Gut_R1_001.fq.gz"),
    # bcl2fastq's second chunk of one lane
    ("Liver_S3_L001_R1_002.fastq.gz", "Liver_S3", "R1", 1, "fastq", "gz", "illumina", "Liver_S3_R1_002.fastq.gz"),
    # index reads: recognised so that assembly ignores them
    ("Undetermined_S0_L001_I1_001.fastq.gz", "Undetermined_S0", "index", 1, "fastq", "gz", "illumina",
     "Undetermined_S0_I1_001.fastq.gz"),
    ("Liver_S3_L001_I2_001.fastq.gz", "Liver_S3", "index", 1, "fastq", "gz", "illumina", "Liver_S3_I2_001.fastq.gz"),
    # case-insensitive, original case kept in the uploaded name
    ("liver_s3_l001_r1_001.FASTQ.GZ", "liver_s3", "R1", 1, "fastq", "gz", "illumina", "liver_s3_r1_001.FASTQ.GZ"),
    # generic _R1/_R2 and .R1/.R2
    ("soil_R1.fastq.gz", "soil", "R1", None, "fastq", "gz", "generic_r", "soil_R1.fastq.gz"),
    ("soil_r2.fq", "soil", "R2", None, "fastq", "none", "generic_r", "soil_r2.fq"),
    ("soil.R1.fastq.bz2", "soil", "R1", None, "fastq", "bz2", "generic_dot", "soil.R1.fastq.bz2"),
    ("soil.r2.fq.gzip", "soil", "R2", None, "fastq", "gz", "generic_dot", "soil.r2.fq.gzip"),
    # SRA (fasterq-dump --split-files): _1/_2, a guess
    ("SRR1553425_1.fastq.gz", "SRR1553425", "R1", None, "fastq", "gz", "generic_12", "SRR1553425_1.fastq.gz"),
    ("SRR1553425_2.fastq", "SRR1553425", "R2", None, "fastq", "none", "generic_12", "SRR1553425_2.fastq"),
    ("run_1.fastq", "run", "R1", None, "fastq", "none", "generic_12", "run_1.fastq"),
]

# names that must NOT pair: role "single"
LONE = [
    # ONT MinKNOW chunks numbered _0, _1, _2: one run, never mates
    ("PAK12345_pass_barcode01_a1b2c3d4_0.fastq.gz", "ont"),
    ("PAK12345_pass_barcode01_a1b2c3d4_1.fastq.gz", "ont"),
    ("FAQ12345_fail_unclassified_a1b2c3d4_2.fastq.gz", "ont"),
    ("FAQ12345_pass_a1b2c3d4_e5f6a7b8_1.fastq", "ont"),
    ("fastq_runid_0123abcd_1.fastq", "ont"),
    # pairs are FASTQ only
    ("run_1.fasta", "none"),
    ("contigs_R1.fa", "none"),
    ("Liver_S3_L001_R1_001.fna.gz", "none"),
    # R1 not at the end of the stem, other numbers, no stem
    ("sample_R1_trimmed.fastq.gz", "none"),
    ("sample_R12.fastq", "none"),
    ("sample_10.fastq", "none"),
    ("sample_3.fastq", "none"),
    ("R1.fastq", "none"),
    ("_1.fastq", "none"),
    ("reads.fastq", "none"),
    ("demo_contigs.fasta", "none"),
    ("notes.txt", "none"),
]


@pytest.mark.parametrize("name,stem,role,lane,fmt,compression,family,uploaded", CASES)
def test_pair_patterns(name, stem, role, lane, fmt, compression, family, uploaded):
    """Each real-world name gives its stem, role, lane, format, compression, family and uploaded name."""
    parsed = parse(name)
    assert (parsed.stem, parsed.role, parsed.lane, parsed.format, parsed.compression, parsed.family,
            parsed.upload_name) == (stem, role, lane, fmt, compression, family, uploaded)


@pytest.mark.parametrize("name,family", LONE)
def test_names_that_must_not_pair(name, family):
    """ONT chunks, FASTA files and odd names are single-end files, uploaded under their own name."""
    parsed = parse(name)
    assert (parsed.role, parsed.lane, parsed.family, parsed.upload_name) == ("single", None, family, name)
    assert not parsed.pairable


def test_certainty_by_family():
    """Illumina and _R1/.R1 names pair on the name; _1/_2 is a guess that needs the pair check."""
    assert parse("Liver_S3_L001_R1_001.fastq.gz").certain
    assert parse("soil_R1.fastq").certain and parse("soil.R2.fastq").certain
    assert not parse("SRR1553425_1.fastq.gz").certain


def test_chunk_is_read_for_ordering():
    """bcl2fastq's _001/_002 split of a lane is kept for ordering."""
    assert parse("Liver_S3_L001_R1_002.fastq.gz").chunk == 2
    assert parse("Liver_S3_L001_R1_001.fastq.gz").chunk == 1
    assert parse("soil_R1.fastq").chunk == 1


def test_unknown_extension_has_no_format():
    """An extension seqdrop does not know gives format None (the caller decides)."""
    assert parse("x_R1.bam").format is None and parse("x_R1.bam").role == "single"
