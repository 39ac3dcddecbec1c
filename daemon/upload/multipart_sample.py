"""What the multipart route needs to send a sample of several files (design.md, "Samples"): its reads
(each read's lane files, in lane order, sent as one S3 object: daemon/upload/s3multipart.py Members),
the checks before anything is sent, and the validation of a read's lane files with the pair check.

The route itself is daemon/upload/multipart_route.py (MultipartRoute.send_sample).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from daemon.assembly.concat import LaneStream
from daemon.assembly.names import parse
from daemon.assembly.pairs import PairDigest, compare
from daemon.checks.child import ChildValidator
from daemon.checks.validate import sniff
from daemon.errors import ContentRejected, Transient
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


class ReadValidator:
    """A read's lane files validated as one stream by one validator child (daemon/checks/child.py joins
    them as the upload does), with the pair check's read-name digest computed in the same pass when the
    sample is paired (design.md, "Pair check").

    The interface is ChildValidator's: check() between parts, finish() before the object may be
    completed, close(). An R1's finish() also compares its digest with its R2's (mate()): the R2 is
    sent first, so a mismatch is known before the R1's object is completed, and never called back."""

    def __init__(self, read: Read, *, paired: bool, mate: Callable[[], PairDigest] | None = None) -> None:
        self.paired, self.mate = paired, mate
        self.digest: PairDigest | None = None       # the read's, once finish() has returned
        self._child = ChildValidator(read.paths, read.size, pair_digest=paired)

    def check(self) -> None:
        """The child has already refused the read: raise now (stop sending)."""
        self._child.check()

    def finish(self) -> None:
        """Returns if the read is valid, of the size queued and (an R1) the mate of its R2, else raises."""
        self._child.finish()
        if not self.paired:
            return
        self.digest = self._child.pair_digest
        if self.digest is None:
            raise Transient("the validator process gave no read-name digest", reason="validator")
        if self.mate is not None and (problem := compare(self.digest, self.mate())):
            raise ContentRejected(problem)

    def close(self) -> None:
        self._child.close()


def digest_again(steps: Steps, read: Read) -> PairDigest:
    """A read's read-name digest, read again here (never sent) by a validator child that also checks it
    is still valid and of the size S3 holds: for an R2 completed without its digest in memory."""
    child = ChildValidator(read.paths, read.size, pair_digest=True)
    try:
        child.finish()
        found = child.pair_digest
    finally:
        child.close()
    if found is None:
        raise Transient("the validator process gave no read-name digest", reason="validator")
    for member in read.members:
        steps.check_identity(member)
    return found
