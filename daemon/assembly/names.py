"""What a sequencing file's name says about the sample it belongs to.

Patterns (design.md, "Samples"; all case-insensitive):
- Illumina / BCL Convert / bcl2fastq: `<name>_S<n>_L<lane>_R<1|2>_001.<ext>`, with `_S<n>`, `_L<lane>`
  and `_001` each optional (at least one present, otherwise the name is the generic `_R1` form);
  index reads `_I1`/`_I2` are recognised (role "index") so that assembly can ignore them;
- generic: `<name>_R1.<ext>`, `<name>.R1.<ext>` (certain enough), `<name>_1.<ext>` (a guess: SRA
  writes it for pairs, but `run_1`/`run_2` may be two samples, so the pair check must agree first);
- Oxford Nanopore (MinKNOW `<flowcell>_pass_<barcode>_<run id>_<n>`, `fastq_runid_<id>_<n>`): never
  pairs, whatever its trailing number.
Pairs are FASTQ only: a FASTA named `_R1` is a single-end sample.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Role = Literal["R1", "R2", "single", "index"]
Family = Literal["illumina", "generic_r", "generic_dot", "generic_12", "ont", "none"]
# How far a family's R1/R2 can be trusted: certain pairs are paired on the name alone; a guess
# needs the pair check on the first read names (design.md: "Generic _1/_2 names are only a guess").
CERTAIN_FAMILIES = frozenset({"illumina", "generic_r", "generic_dot"})

_COMPRESSIONS = {"gz": "gz", "gzip": "gz", "bz2": "bz2"}
_FORMATS = {"fastq": "fastq", "fq": "fastq", "fasta": "fasta", "fa": "fasta", "fna": "fasta",
            "fas": "fasta", "ffn": "fasta", "faa": "fasta", "seq": "fasta"}
_EXT_RE = re.compile(r"\.(?P<fmt>[a-z]+)(?:\.(?P<comp>gz|gzip|bz2))?$", re.IGNORECASE)
_ILLUMINA_RE = re.compile(
    r"^(?P<stem>.+?(?:_S(?P<snum>\d+))?)(?P<lane>_L(?P<lnum>\d{3}))?_(?P<read>[RI][12])(?:_(?P<chunk>\d{3}))?$",
    re.IGNORECASE)
_DOT_RE = re.compile(r"^(?P<stem>.+)\.R(?P<read>[12])$", re.IGNORECASE)
_UNDERSCORE_12_RE = re.compile(r"^(?P<stem>.+)_(?P<read>[12])$")
# MinKNOW output names: numbered chunks of one run, never mates.
_ONT_RE = re.compile(r"(^|_)(pass|fail|skip)(_barcode\d+|_unclassified)?_[0-9a-f]{8}(_[0-9a-f]{8})?_\d+$"
                     r"|^fastq_runid_[0-9a-f]+_\d+$", re.IGNORECASE)


@dataclass(frozen=True)
class FileName:
    """What assembly needs to know from one file name."""

    name: str                  # the file's base name, as found
    stem: str                  # the sample's name (e.g. "Liver_S3"); the whole base for a lone file
    role: Role
    lane: int | None
    chunk: int                 # bcl2fastq's `_001`, `_002` split of one lane (1 when absent)
    format: str | None         # "fastq" | "fasta" | None (an extension seqdrop does not know)
    compression: str           # "none" | "gz" | "bz2"
    family: Family
    upload_name: str           # the name with the lane token removed

    @property
    def certain(self) -> bool:
        """Is an R1/R2 role sure enough to pair on the name alone?"""
        return self.family in CERTAIN_FAMILIES

    @property
    def pairable(self) -> bool:
        return self.role in ("R1", "R2")


def parse(name: str) -> FileName:
    """Parse a base name (no folder). Never raises: a name matching no pattern is a lone file."""
    match = _EXT_RE.search(name)
    fmt = _FORMATS.get(match.group("fmt").lower()) if match else None
    compression = _COMPRESSIONS.get((match.group("comp") or "").lower(), "none") if match else "none"
    base = name[:match.start()] if match and fmt else name
    lone = FileName(name=name, stem=base, role="single", lane=None, chunk=1, format=fmt,
                    compression=compression, family="none", upload_name=name)
    if not base or fmt is None:
        return lone
    if _ONT_RE.search(base):
        return FileName(**{**lone.__dict__, "family": "ont"})
    parsed = _illumina(name, base) or _generic(base)
    if parsed is None:
        return lone
    stem, role, lane, chunk, family, upload_name = parsed
    if role != "index" and fmt != "fastq":
        return lone   # pairs and lanes are FASTQ only
    return FileName(name=name, stem=stem, role=role, lane=lane, chunk=chunk, format=fmt,
                    compression=compression, family=family, upload_name=upload_name or name)


def _illumina(name: str, base: str) -> tuple[str, Role, int | None, int, Family, str] | None:
    match = _ILLUMINA_RE.match(base)
    if match is None or not match.group("stem"):
        return None
    read = match.group("read").upper()
    # Without `_S<n>`, `_L<lane>` or `_001` it is the generic `<name>_R1` form.
    has_illumina_token = any(match.group(g) for g in ("snum", "lane", "chunk"))
    role: Role = "index" if read.startswith("I") else read  # type: ignore[assignment]
    lane = int(match.group("lnum")) if match.group("lnum") else None
    chunk = int(match.group("chunk")) if match.group("chunk") else 1
    upload_name = name
    if match.group("lane"):
        start, end = match.span("lane")
        upload_name = name[:start] + name[end:]
    family: Family = "illumina" if has_illumina_token else "generic_r"
    return match.group("stem"), role, lane, chunk, family, upload_name


def _generic(base: str) -> tuple[str, Role, int | None, int, Family, str] | None:
    for pattern, family in ((_DOT_RE, "generic_dot"), (_UNDERSCORE_12_RE, "generic_12")):
        match = pattern.match(base)
        if match and match.group("stem"):
            role: Role = "R1" if match.group("read") == "1" else "R2"
            return match.group("stem"), role, None, 1, family, ""  # no lane token: name unchanged
    return None
