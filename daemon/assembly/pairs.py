"""The pair check: R1 and R2 hold the same number of records and the same sequence of read names.

A read name is the first word of a FASTQ header with a trailing `/1` or `/2` removed (design.md,
"Pair check"). `NameDigest` is fed the same decompressed text blocks the validator sees, cut
anywhere, and keeps a SHA-256 of the names, the record count, the first 1,000 names (the `_1/_2`
guess check, and the exact first difference when it is early) and a digest at every power-of-two
record count (so a later difference can still be placed between two record numbers). Memory is
bounded: a partial line, 1,000 names and ~40 checkpoints.

The digest rides the validator's pass: `StreamValidator(name, on_text=digest.feed)` hands it every
decompressed block. Plain four-line FASTQ is digested whole blocks at a time (no Python step per
record); in the validator child with numpy (daemon/assembly/name_blocks.py).
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import operator
import os
import re
from dataclasses import dataclass
from itertools import repeat
from types import ModuleType
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:   # numpy's: imported only by the validator child (see _name_blocks)
    from daemon.checks.fastq_blocks import Newlines

GUESS_NAMES = 1000          # design.md: the `_1/_2` guess needs the first 1,000 read names to agree
_READ_BLOCK = 1 << 20
_COMMENT = re.compile(rb"[ \t\r\x0b\x0c][^\n]*")     # a title line from its first blank on
_SPACE_COMMENT = re.compile(rb" [^\n]*")              # the same where ' ' is the only blank (faster)
_MATE = re.compile(rb"/[12]\n")                       # a name's trailing /1 or /2


def _name_blocks() -> ModuleType:
    # Lazy: numpy costs ~0.1 s and ~16 MiB at import, which only the validator child (that has it
    # loaded for its own checks) should pay; the daemon digests small reads without it.
    from daemon.assembly import name_blocks
    return name_blocks


@dataclass(frozen=True)
class PairDigest:
    """What one read's stream says about its records, for comparing with its mate."""

    name: str                                   # the file (or read) name, for messages
    records: int
    digest: str                                 # SHA-256 of the read names, one per line
    first_names: tuple[bytes, ...]              # the first GUESS_NAMES names
    checkpoints: tuple[tuple[int, str], ...]    # (records so far, digest so far) at 1, 2, 4, 8...


class NameDigest:
    """Streaming digest of a FASTQ's read names; `feed` decompressed text, then `finish`.

    Plain four-line records are taken a block at a time with C-speed primitives (vectorised: numpy,
    daemon/assembly/name_blocks.py, which the validator child has loaded anyway; otherwise bytes.split
    and re); anything else (wrapped records, a block's first partial record) line by line. Both give
    the same names, so the digest does not depend on how the text was cut."""

    def __init__(self, name: str, *, keep_names: int = GUESS_NAMES, vectorised: bool = False,
                 newlines: Newlines | None = None) -> None:
        """newlines (vectorised only): the '\\n' positions of each block, shared with the validator that
        feeds this digest (StreamValidator(newlines=...), the same object), so they are found once."""
        self.name = name
        self._keep = keep_names
        self._blocks = _name_blocks() if vectorised else None
        self._newlines = newlines
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
        start = self._end_record(text)
        if start < 0:
            return
        start = self._whole_records(text, start)
        lines = text[start:].split(b"\n")
        self._carry = lines.pop()
        for line in lines:
            self._line(line)

    def _end_record(self, text: bytes) -> int:
        """Read, line by line, to the end of a record (or line) begun in an earlier block: where the
        rest of text starts, or -1 if text ended first."""
        start = 0
        while self._carry or self._phase != "header":
            end = text.find(b"\n", start)
            if end < 0:
                self._carry += text[start:]
                return -1
            self._line(self._carry + text[start:end])
            self._carry, start = b"", end + 1
        return start

    def _whole_records(self, text: bytes, start: int) -> int:
        """Digest the plain four-line records at text[start:] (start begins a line, in the header
        phase); return where the records taken end (start: none)."""
        if self._blocks is not None:
            end = start
            for end, names, count in self._blocks.scan(text, start, self._newlines):
                self._add(names, count)
            return end
        lines = text[start:].split(b"\n")
        partial = lines.pop()                           # a partial line, or b"" after the last '\n'
        usable = len(lines) // 4 * 4
        heads, seqs, pluses, quals = (lines[k:usable:4] for k in range(4))
        titles = b"\n".join(heads)
        # What the line-by-line reader needs to see these lines as len(heads) records: titles starting
        # with '@', sequences not starting with '+', '+' lines, each quality line as long as its
        # sequence at least (no '\r' anywhere: the line reader would not count it).
        if not (heads and titles[:1] == b"@" and titles.count(b"\n@") == len(heads) - 1 and b"\r" not in text
                and not any(map(bytes.startswith, seqs, repeat(b"+")))
                and all(map(bytes.startswith, pluses, repeat(b"+")))
                and all(map(operator.ge, map(len, quals), map(len, seqs)))):
            return start
        tabs = b"\t" in titles or b"\x0b" in titles or b"\x0c" in titles
        names = (_COMMENT if tabs else _SPACE_COMMENT).sub(b"", titles) + b"\n"
        if names.startswith(b"@\n") or b"\n@\n" in names:
            return start        # an empty first word: a title may start with a blank (the line reader skips it)
        names = names.replace(b"\n@", b"\n")[1:]
        if b"/1\n" in names or b"/2\n" in names:
            names = _MATE.sub(b"\n", names)
        self._add(names, len(heads))
        return len(text) - sum(map(len, lines[usable:])) - (len(lines) - usable) - len(partial)

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
                self._add(_read_name(line) + b"\n", 1)
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

    def _add(self, names: bytes, count: int) -> None:
        """Digest `count` read names, each followed by '\\n' in `names`, snapshotting the digest at
        each checkpoint; keep the first ones."""
        if len(self._first) < self._keep:
            wanted = min(count, self._keep - len(self._first))
            self._first.extend(names.split(b"\n", wanted)[:wanted])
        base, view, cut = self._records, memoryview(names), 0
        while base + count >= self._next_checkpoint:
            taken = self._next_checkpoint - base
            end = len(names) - len(names.split(b"\n", taken)[-1])     # just after the taken-th name
            self._hash.update(view[cut:end])
            cut = end
            self._checkpoints.append((self._next_checkpoint, self._hash.hexdigest()))
            self._next_checkpoint *= 2
        self._hash.update(view[cut:])
        self._records = base + count


def _read_name(header: bytes) -> bytes:
    """The first word of a header line (without its '@'), a trailing /1 or /2 removed."""
    words = header[1:].split(None, 1)
    name = words[0] if words else b""
    return name[:-2] if name.endswith((b"/1", b"/2")) else name


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
