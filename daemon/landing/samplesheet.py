"""Illumina sample sheets: SampleSheet.csv v1 (`[Data]`) and v2 / BCL Convert (`[BCLConvert_Data]`).

Parsed with the csv module, as instrument software writes them: a UTF-8 BOM, CRLF, quoted cells,
trailing empty columns (`Sample_ID,Sample_Name,,,,`), blank lines, `#` comment lines. Sections other
than `[Header]` and the data section (`[Reads]`, `[Settings]`, `[BCLConvert_Settings]`, `[Cloud_Data]`,
…) are read past and ignored.

A sample's files are named after its row: bcl2fastq uses Sample_Name (else Sample_ID), BCL Convert
Sample_ID, followed by `_S<n>`, where n numbers the sheet's distinct samples in row order (1-based;
`Undetermined_S0` holds the reads of no row). `SampleSheet.match` finds the row of a sample stem.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

# A sample sheet is a few kilobytes; anything bigger than this is not one (read nothing more).
MAX_SHEET_BYTES = 4 * 1024 * 1024
DATA_SECTIONS = {"data": 1, "bclconvert_data": 2}
SECTION_TITLES = {"data": "Data", "bclconvert_data": "BCLConvert_Data"}
SECTION_RE = re.compile(r"^\[(?P<name>[^\]]+)\]$")
NUMBERED_RE = re.compile(r"^(?P<base>.+)_S(?P<n>\d+)$")
# bcl2fastq and BCL Convert write a character outside these as "_" in file names.
UNSAFE_NAME_RE = re.compile(r"[^A-Za-z0-9_-]")
# Column names, compared without case, spaces and underscores (old sheets write SampleID).
COLUMNS = {"sampleid": "sample_id", "samplename": "sample_name", "sampleproject": "sample_project",
           "description": "description", "lane": "lane"}


class SampleSheetError(ValueError):
    """A sample sheet that cannot be read; str() is a sentence naming the file, the line and the fix."""


@dataclass(frozen=True)
class SheetRow:
    """One sample of the sheet (its lanes folded into one row); `number` is its `_S<n>`."""

    sample_id: str
    sample_name: str
    sample_project: str
    description: str
    lanes: tuple[int, ...]
    number: int
    line: int


@dataclass(frozen=True)
class Match:
    """The row of a sample stem; `by` is "sample_id", "sample_name" or "number" (only its `_S<n>`)."""

    row: SheetRow
    by: str


@dataclass(frozen=True)
class Reconciliation:
    """The sheet against the samples that appeared: matches, and each disagreement as a sentence."""

    matches: dict[str, Match]
    problems: tuple[str, ...]


@dataclass(frozen=True)
class SampleSheet:
    source: str
    version: int
    run_name: str
    date: str
    rows: tuple[SheetRow, ...]

    def match(self, stem: str) -> Match | None:
        """The row of a sample named `stem` (e.g. `Liver_S3`): by Sample_ID, else Sample_Name (exact,
        then as the instrument writes it in file names), an `_S<n>` choosing among several; else the
        n-th sample alone (a name edited in the sheet after the run)."""
        numbered = NUMBERED_RE.match(stem)
        bases = [(stem, None)]
        if numbered:
            bases.insert(0, (numbered["base"], int(numbered["n"])))
        for base, number in bases:
            for by in ("sample_id", "sample_name"):
                found = self._pick(base, by, number)
                if found is not None:
                    return Match(found, by)
        if numbered:
            by_number = [row for row in self.rows if row.number == int(numbered["n"])]
            if by_number:
                return Match(by_number[0], "number")
        return None

    def _pick(self, base: str, by: str, number: int | None) -> SheetRow | None:
        for same in (lambda v: v == base, lambda v: UNSAFE_NAME_RE.sub("_", v) == base):
            rows = [row for row in self.rows if getattr(row, by) and same(getattr(row, by))]
            if len(rows) > 1 and number is not None:
                rows = [row for row in rows if row.number == number]
            if len(rows) == 1:
                return rows[0]
        return None

    def reconcile(self, stems: Iterable[str]) -> Reconciliation:
        """Match every sample stem of the run; name the samples without a row and the rows without
        a sample (call it once the run is complete, or rows are merely not there yet)."""
        matches: dict[str, Match] = {}
        problems: list[str] = []
        for stem in stems:
            found = self.match(stem)
            if found is not None:
                matches[stem] = found
            elif NUMBERED_RE.match(stem) and NUMBERED_RE.match(stem)["n"] == "0":
                problems.append(f"{stem} holds the reads that matched no index (sample number 0): "
                                f"it has no row in {self.source}, as expected.")
            else:
                problems.append(f"sample {stem} has no row in {self.source}: it goes without the sheet's "
                                f"name, project and description; add a row with Sample_ID {stem!r} if it belongs.")
        used = {m.row.sample_id for m in matches.values()}
        for row in self.rows:
            if row.sample_id not in used:
                problems.append(f"{self.source} line {row.line}: Sample_ID {row.sample_id!r} names a sample "
                                f"that never appeared in the run folder; check the sheet is this run's.")
        return Reconciliation(matches, tuple(problems))


def read(path: Path) -> SampleSheet:
    """Parse the sample sheet at `path` (opened read-only: never written)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_SHEET_BYTES + 1)
    except OSError as exc:
        raise SampleSheetError(f"{path}: cannot be read ({exc.strerror or exc}).") from None
    if len(data) > MAX_SHEET_BYTES:
        raise SampleSheetError(f"{path}: over {MAX_SHEET_BYTES // 1024 // 1024} MiB, too big to be a sample "
                               "sheet; rename it if it is something else.")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise SampleSheetError(f"{path} line {line}: not UTF-8 text; save the sheet as UTF-8 (CSV).") from None
    return parse(text, source=str(path))


def parse(text: str, *, source: str = "SampleSheet.csv") -> SampleSheet:
    """Parse a sample sheet's text (a BOM, if any, is dropped)."""
    sections = _sections(text.removeprefix("\ufeff"), source)
    names = [name for name in sections if name in DATA_SECTIONS]
    if not names:
        raise SampleSheetError(f"{source}: no [Data] (v1) or [BCLConvert_Data] (v2) section; "
                               "is this an Illumina sample sheet?")
    data_name = "bclconvert_data" if "bclconvert_data" in names else "data"
    header = {row[0].strip(): (row[1].strip() if len(row) > 1 else "") for _, row in sections.get("header", [])}
    version = DATA_SECTIONS[data_name]
    if header.get("FileFormatVersion") == "2":
        version = 2
    rows = _rows(sections[data_name], source, SECTION_TITLES[data_name])
    return SampleSheet(source=source, version=version, run_name=header.get("RunName") or header.get(
        "Experiment Name", ""), date=header.get("Date", ""), rows=rows)


def _sections(text: str, source: str) -> dict[str, list[tuple[int, list[str]]]]:
    """Each section's non-blank, non-comment rows with their line numbers, trailing empty cells cut."""
    sections: dict[str, list[tuple[int, list[str]]]] = {}
    current: list[tuple[int, list[str]]] | None = None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        for line, cells in _numbered(reader):
            while cells and not cells[-1].strip():
                cells.pop()
            if not cells or cells[0].lstrip().startswith("#"):
                continue
            section = SECTION_RE.match(cells[0].strip())
            if section and len(cells) == 1:
                name = section["name"].strip().lower()
                if name in sections:
                    raise SampleSheetError(f"{source} line {line}: a second [{section['name']}] section; "
                                           "keep one.")
                current = sections[name] = []
            elif current is None:
                raise SampleSheetError(f"{source} line {line}: text before the first [Section]; "
                                       "a sample sheet starts with [Header].")
            else:
                current.append((line, cells))
    except csv.Error as exc:
        raise SampleSheetError(f"{source} line {reader.line_num}: not valid CSV ({exc}); "
                               "check the quotes on that line.") from None
    return sections


def _numbered(reader: Iterator[list[str]]) -> Iterator[tuple[int, list[str]]]:
    start = 1
    for cells in reader:
        yield start, cells
        start = reader.line_num + 1  # type: ignore[attr-defined]


def _rows(lines: list[tuple[int, list[str]]], source: str, section: str) -> tuple[SheetRow, ...]:
    if not lines:
        raise SampleSheetError(f"{source}: the [{section}] section is empty; it needs a header line "
                               "(Sample_ID,…) and one line per sample.")
    head_line, head = lines[0]
    columns = [COLUMNS.get(re.sub(r"[\s_]", "", name).lower(), "") for name in head]
    if "sample_id" not in columns:
        raise SampleSheetError(f"{source} line {head_line}: the [{section}] header has no Sample_ID column.")
    folded: dict[str, SheetRow] = {}
    seen: dict[tuple[str, int | None], int] = {}
    for line, cells in lines[1:]:
        if len(cells) > len(head):
            raise SampleSheetError(f"{source} line {line}: {len(cells)} values but the [{section}] header "
                                   f"has {len(head)} columns; remove the extra values or name the column.")
        values = {name: cells[i].strip() for i, name in enumerate(columns) if name and i < len(cells)}
        row = _row(values, source, line, len(folded) + 1)
        lane = row.lanes[0] if row.lanes else None
        if (row.sample_id, lane) in seen:
            where = f" in lane {lane}" if lane is not None else ""
            raise SampleSheetError(f"{source} line {line}: Sample_ID {row.sample_id!r} appears twice{where} "
                                   f"(first on line {seen[(row.sample_id, lane)]}); each sample needs its own ID.")
        seen[(row.sample_id, lane)] = line
        folded[row.sample_id] = _fold(folded.get(row.sample_id), row, source)
    return tuple(folded.values())


def _row(values: dict[str, str], source: str, line: int, number: int) -> SheetRow:
    sample_id = values.get("sample_id", "")
    if not sample_id:
        raise SampleSheetError(f"{source} line {line}: no Sample_ID; give every sample line one.")
    lane_text = values.get("lane", "")
    if lane_text and not lane_text.isdigit():
        raise SampleSheetError(f"{source} line {line}: Lane {lane_text!r} is not a lane number.")
    return SheetRow(sample_id=sample_id, sample_name=values.get("sample_name", ""),
                    sample_project=values.get("sample_project", ""), description=values.get("description", ""),
                    lanes=(int(lane_text),) if lane_text else (), number=number, line=line)


def _fold(first: SheetRow | None, row: SheetRow, source: str) -> SheetRow:
    """One sample over several lanes is one row; its lanes must agree on what it is."""
    if first is None:
        return row
    for field in ("sample_name", "sample_project", "description"):
        if getattr(first, field) != getattr(row, field):
            raise SampleSheetError(f"{source} line {row.line}: Sample_ID {row.sample_id!r} has a different "
                                   f"{field} than on line {first.line}; one sample must agree in every lane.")
    return SheetRow(first.sample_id, first.sample_name, first.sample_project, first.description,
                    first.lanes + row.lanes, first.number, first.line)
