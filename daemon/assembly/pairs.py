"""The pair check: R1 and R2 hold the same number of records and the same sequence of read names.

A read name is the first word of a FASTQ header with a trailing `/1` or `/2` removed (design.md,
"Pair check"). `NameDigest` is fed the same decompressed text blocks the validator sees, cut
anywhere, and keeps a SHA-256 of the names, the record count, the first 1,000 names (the `_1/_2`
guess check, and the exact first difference when it is early) and a digest at every power-of-two
record count (so a later difference can still be placed between two record numbers). Memory is
bounded: a partial line, 1,000 names and ~40 checkpoints.

Proposed hook (daemon/checks/validate.py is owned elsewhere): `StreamValidator(name, on_text=...)`,
called with each decompressed block in `_text`, so that one pass validates and digests.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import os
from dataclasses import dataclass
from typing import BinaryIO

GUESS_NAMES = 1000          # design.md: the `_1/_2` guess needs the first 1,000 read names to agree
_READ_BLOCK = 1 << 20


@dataclass(frozen=True)
class PairDigest:
    """What one read's stream says about its records, for comparing with its mate."""

    name: str                                   # the file (or read) name, for messages
    records: int
    digest: str                                 # SHA-256 of the read names, one per line
    first_names: tuple[bytes, ...]              # the first GUESS_NAMES names
    checkpoints: tuple[tuple[int, str], ...]    # (records so far, digest so far) at 1, 2, 4, 8...


class NameDigest:
    """Streaming digest of a FASTQ's read names; `feed` decompressed text, then `finish`."""

    def __init__(self, name: str, *, keep_names: int = GUESS_NAMES) -> None:
        self.name = name
        self._keep = keep_names
        self._hash = hashlib.sha256()
        self._carry = b""
        self._records = 0
        self._first: list[bytes] = []
        self._checkpoints: list[tuple[int, str]] = []
        self._next_checkpoint = 1
        self._phase = "header"      # header → sequence → quality → header
        self._seq_len = 0
        self._qual_len = 0

    @property
    def records(self) -> int:
        return self._records

    def feed(self, text: bytes) -> None:
        """The next decompressed bytes, cut anywhere."""
        lines = (self._carry + text).split(b"\n")
        self._carry = lines.pop()
        i = 0
        while i < len(lines) and self._phase != "header":
            self._line(lines[i])
            i += 1
        i += self._four_line_records(lines, i)
        for line in lines[i:]:
            self._line(line)

    def _four_line_records(self, lines: list[bytes], start: int) -> int:
        """Digest `lines[start:]`'s whole four-line records at once if they all are plain
        (unwrapped) records; return how many lines were taken (0: the per-line path does it all).
        The per-line path is ~4x slower; most FASTQ is unwrapped."""
        usable = (len(lines) - start) // 4 * 4
        end = start + usable
        heads, seqs, pluses, quals = (lines[start + k:end:4] for k in range(4))
        if not (all(h[:1] == b"@" for h in heads) and all(p[:1] == b"+" for p in pluses)
                and all(map(_same_length, seqs, quals))):
            return 0
        self._add([_read_name(h.rstrip(b"\r")) for h in heads])
        return usable

    def finish(self) -> PairDigest:
        """The digest of everything fed (a last line without a newline counts)."""
        if self._carry:
            self._line(self._carry)
            self._carry = b""
        return PairDigest(name=self.name, records=self._records, digest=self._hash.hexdigest(),
                          first_names=tuple(self._first), checkpoints=tuple(self._checkpoints))

    def _line(self, line: bytes) -> None:
        # Records may wrap their sequence and quality over several lines (valid FASTQ): the
        # quality ends once it is as long as the sequence, so a quality line starting with '@'
        # is not mistaken for a header.
        if line.endswith(b"\r"):
            line = line[:-1]
        if self._phase == "header":
            if line.startswith(b"@"):
                self._record(line)
                self._phase, self._seq_len, self._qual_len = "sequence", 0, 0
        elif self._phase == "sequence":
            if line.startswith(b"+"):
                self._phase = "quality"
            else:
                self._seq_len += len(line)
        else:
            self._qual_len += len(line)
            if self._qual_len >= self._seq_len:
                self._phase = "header"

    def _record(self, header: bytes) -> None:
        self._add([_read_name(header)])

    def _add(self, names: list[bytes]) -> None:
        """Digest these read names, in order, stopping at each checkpoint to snapshot the digest."""
        i = 0
        while i < len(names):
            part = names[i:i + self._next_checkpoint - self._records]
            self._hash.update(b"\n".join(part) + b"\n")
            if len(self._first) < self._keep:
                self._first.extend(part[:self._keep - len(self._first)])
            self._records += len(part)
            i += len(part)
            if self._records == self._next_checkpoint:
                self._checkpoints.append((self._records, self._hash.hexdigest()))
                self._next_checkpoint *= 2


def _read_name(header: bytes) -> bytes:
    """The first word of a header line (without its '@'), a trailing /1 or /2 removed."""
    words = header[1:].split(None, 1)
    name = words[0] if words else b""
    return name[:-2] if name.endswith((b"/1", b"/2")) else name


def _same_length(sequence: bytes, quality: bytes) -> bool:
    return len(sequence) == len(quality)


def compare(r1: PairDigest, r2: PairDigest) -> str | None:
    """None if the two reads are mates; otherwise a sentence with both counts and, where known, the
    first differing record."""
    if r1.records == r2.records and r1.digest == r2.digest:
        return None
    counts = (f"{r1.name} has {r1.records:,} records and {r2.name} has {r2.records:,}"
              if r1.records != r2.records else f"both have {r1.records:,} records")
    where = _first_difference(r1, r2)
    return f"R1 and R2 are not mates: {counts}; {where}."


def _first_difference(r1: PairDigest, r2: PairDigest) -> str:
    for index, (a, b) in enumerate(zip(r1.first_names, r2.first_names)):
        if a != b:
            return (f"the first differing record is #{index + 1} ({_show(a)} in R1, {_show(b)} in R2)")
    common = min(r1.records, r2.records)
    if common <= len(r1.first_names) and common <= len(r2.first_names):
        return f"the first {common:,} read names agree, then one file ends"
    checks2 = dict(r2.checkpoints)
    agreed = 0
    for count, digest in r1.checkpoints:
        if count not in checks2:
            break
        if checks2[count] != digest:
            return f"the first differing record is between #{agreed + 1:,} and #{count:,}"
        agreed = count
    if r1.records == r2.records:
        return f"the first differing record is after #{agreed:,}"
    return f"the read names agree up to at least #{agreed:,}, then they differ or one file ends"


def _show(name: bytes) -> str:
    return repr(name[:60].decode("utf-8", "replace"))


def names_agree(r1: PairDigest, r2: PairDigest, *, count: int = GUESS_NAMES) -> str | None:
    """The `_1/_2` guess check on two digests of (at least) the first `count` records: None if
    their first read names agree, otherwise a sentence."""
    a, b = r1.first_names[:count], r2.first_names[:count]
    if len(a) != len(b):
        return (f"among the first {count:,} records, {r1.name} has {len(a):,} records and {r2.name} "
                f"{len(b):,} records: not a pair.")
    for index, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"read #{index + 1} is {_show(x)} in {r1.name} and {_show(y)} in {r2.name}: not a pair."
    return None


def head_digest(path: str | os.PathLike, *, records: int = GUESS_NAMES) -> PairDigest:
    """The digest of a file's first `records` records, read (and decompressed) from the start;
    what the `_1/_2` guess check compares before init_upload."""
    name = os.path.basename(os.fspath(path))
    digest = NameDigest(name, keep_names=records)
    with _open_text(path) as stream:
        while digest.records <= records and (block := stream.read(_READ_BLOCK // 16)):
            digest.feed(block)
    whole = digest.finish()
    kept = whole.first_names[:records]
    return PairDigest(name=name, records=len(kept), digest="", first_names=kept, checkpoints=())


def digest_path(path: str | os.PathLike) -> PairDigest:
    """The digest of a whole file (plain, gzip incl. multi-member, bzip2 incl. multi-stream)."""
    digest = NameDigest(os.path.basename(os.fspath(path)))
    with _open_text(path) as stream:
        while block := stream.read(_READ_BLOCK):
            digest.feed(block)
    return digest.finish()


def _open_text(path: str | os.PathLike) -> BinaryIO:
    """The decompressed bytes of a file, chosen by its magic bytes (never its name)."""
    with open(path, "rb") as probe:
        magic = probe.read(3)
    if magic[:2] == b"\x1f\x8b":
        return gzip.open(path, "rb")
    if magic == b"BZh":
        return bz2.open(path, "rb")
    return open(path, "rb")
