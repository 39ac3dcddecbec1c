"""What the multipart route needs to send a sample of several files (design.md, "Samples"): its reads
(each read's lane files, in lane order, sent as one S3 object: daemon/upload/s3multipart.py Members),
the checks before anything is sent, and the validation of a read's lane files.

The route itself is daemon/upload/multipart_route.py (MultipartRoute.send_sample).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import BinaryIO

from daemon.assembly.concat import LaneStream
from daemon.assembly.names import parse
from daemon.checks.child import ChildValidator
from daemon.checks.validate import sniff
from daemon.errors import ContentRejected
from daemon.queue.base import FileRow, SampleRow
from daemon.upload.records import sanitize_filename
from daemon.upload.source import open_source
from daemon.upload.steps import Steps, unreadable

SNIFF_BYTES = 64 * 1024


@dataclass(frozen=True)
class Read:
    """One read of a sample: its lane files in lane order, uploaded as one object under one name."""
    role: str                         # "R1", "single" or "R2"
    members: tuple[FileRow, ...]
    name: str                         # the first lane's name, lane token removed, sanitised

    @property
    def paths(self) -> list[str]:
        return [m.path for m in self.members]

    @property
    def sizes(self) -> list[int]:
        return [m.size for m in self.members]

    @property
    def size(self) -> int:
        return sum(self.sizes)


def reads_of(sample: SampleRow) -> tuple[Read, Read | None]:
    """The R1 (or single-end) read and the R2 (None unless the sample has one)."""
    found = []
    for members in (sample.r1, sample.r2):
        if members:
            name = sanitize_filename(parse(os.path.basename(members[0].path)).upload_name)
            found.append(Read(members[0].role or "single", members, name))
    if not found or found[0].role == "R2":
        raise ValueError(f"sample {sample.id} has no R1 or single-end member")
    return found[0], (found[1] if len(found) > 1 else None)


def _open_member(path: str) -> BinaryIO:
    return os.fdopen(open_source(path), "rb", buffering=0)


def admit(steps: Steps, reads: list[Read], *, validate: bool) -> None:
    """The checks before anything is sent: every member still the version queued and not empty, the
    lanes of each read joinable (one compression; a plain lane ends with a newline), and, when
    validating, each member's first bytes."""
    for read in reads:
        for member in read.members:
            steps.check_identity(member)
            if member.size == 0:
                raise ContentRejected(f"{os.path.basename(member.path)} is empty (0 bytes); a sample's "
                                      f"files must all hold reads.")
        try:
            LaneStream(read.paths, opener=_open_member).close()    # refuses lanes that cannot be joined
            if validate:
                for member in read.members:
                    with _open_member(member.path) as f:
                        sniff(f.read(SNIFF_BYTES), os.path.basename(member.path))
        except PermissionError as e:
            raise unreadable(e.filename or read.paths[0]) from None


class LaneValidators:
    """A read's lane files validated in lane order, one validator child at a time.

    daemon/checks/child.py validates one file per child today, so each lane is validated by itself:
    the same verdict as the read validated as one stream, as long as the lanes join (admit checks
    that: one compression, a plain lane ending with a newline). The interface is ChildValidator's:
    check() between parts, finish() before the object may be completed, close()."""

    def __init__(self, paths: list[str], sizes: list[int]) -> None:
        self._pending = list(zip(paths, sizes))
        self._child: ChildValidator | None = None
        self._next()

    def _next(self) -> None:
        path, size = self._pending.pop(0)
        self._child = ChildValidator(path, size)

    def check(self) -> None:
        """The current lane's child refused it: raise now; it accepted it: start on the next lane."""
        child = self._child
        if child is None:
            return
        child.check()
        if child.proc.poll() == 0 and self._pending:
            child.finish()
            child.close()
            self._next()

    def finish(self) -> None:
        """Every lane's verdict: returns if all are valid and of the size queued, else raises."""
        while self._child is not None:
            self._child.finish()
            self._child.close()
            self._child = None
            if self._pending:
                self._next()

    def close(self) -> None:
        if self._child is not None:
            self._child.close()
            self._child = None
