"""The queue's contract: what every queue backend stores and the verbs the rest of seqdrop uses.

The database is the truth. A row is one file version; it is *claimed* (state 'uploading'),
never popped, so a crash leaves it claimed and the next start-up releases it. Every verb is one
short transaction; none is held across a network call. `batch()` groups many transitions under
one commit (one disk flush). SQLite (daemon/queue/sqlite.py) is the first implementation; a
second backend implements the same verbs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from daemon.errors import ConfigError

STATES = ("seen", "queued", "uploading", "done", "rejected", "failed", "vanished")
TERMINAL = frozenset({"done", "rejected", "failed", "vanished"})

# The step within queued/uploading: how far a row's upload got (persisted before the next step).
STEP_NONE = ""                      # nothing sent (or nothing that can be confirmed)
STEP_INITIALIZED = "initialized"    # standard route: sample_id and the POST form stored
STEP_POSTED = "posted"              # standard route: S3 holds the validated bytes (md5 == ETag)
STEP_MP_INIT = "mp_initialized"     # multipart route: sample_id, bucket, key, callback stored
STEP_MP_COMPLETE = "mp_complete"    # multipart route: CompleteMultipartUpload's ETag checked
# A paired sample (design.md, "Samples") is sent as two reads under one sample_id; each read's upload is
# persisted before the next, so a crash between them resends only the read S3 does not hold yet.
STEP_POSTED_R1 = "posted_r1"        # paired standard route: R1's POST verified (md5 == ETag); R2 next
STEP_MP_R2_COMPLETE = "mp_r2_complete"   # paired multipart route: R2 completed and checked; R1 next
INIT_STEPS = (STEP_INITIALIZED, STEP_MP_INIT)
POSTED_STEPS = (STEP_POSTED, STEP_MP_COMPLETE)
HALF_POSTED_STEPS = (STEP_POSTED_R1, STEP_MP_R2_COMPLETE)   # one read of a pair held by S3: never confirmable
ROLES = ("R1", "R2", "single")


SHARED_DEV = -1     # the device of a version read from a shared queue: device and inode are not compared


@dataclass(frozen=True, eq=False)
class Identity:
    """A file version: (device, inode, size, mtime_ns) at one path.

    On a shared queue (PostgreSQL, several hosts mounting one share at different places) a version is
    (watch id, relative path, size, mtime_ns): device numbers differ between hosts, inode numbers may. Its
    rows come back with dev = SHARED_DEV, and such an identity equals any with the same size and mtime_ns
    (so one host does not take another host's record of a file for a new version)."""
    dev: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> "Identity":
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Identity):
            return NotImplemented
        if (self.size, self.mtime_ns) != (other.size, other.mtime_ns):
            return False
        return SHARED_DEV in (self.dev, other.dev) or (self.dev, self.inode) == (other.dev, other.inode)

    def __hash__(self) -> int:      # equal identities hash alike: only what every comparison uses
        return hash((self.size, self.mtime_ns))


@dataclass(frozen=True)
class FileRow:
    id: int
    path: str
    identity: Identity
    state: str
    step: str
    sample_id: str | None
    init: str | None
    md5: str | None
    attempts: int
    next_attempt_at: float
    error: str | None
    stable_since: float
    updated_at: float
    init_at: float | None = None      # when the current sample was initialised (for the audit journal)
    posted_at: float | None = None    # when S3 last accepted its bytes
    sample: int | None = None         # the local sample (SampleRow.id) it belongs to, once assembled
    role: str | None = None           # "R1", "R2" or "single" within that sample
    lane: int | None = None           # its lane number, if its name has one
    follower: bool = False            # a member other than the sample's lead: its state mirrors the lead's
    flags: str | None = None          # comma-separated marks for people: "partial", "late"

    @property
    def size(self) -> int:
        return self.identity.size

    def public(self) -> dict[str, Any]:
        """The row as `status --json` shows it (nothing secret: no upload fields)."""
        return {"id": self.id, "path": self.path, "state": self.state, "size": self.size,
                "sample_id": self.sample_id, "attempts": self.attempts, "error": self.error,
                "updated_at": iso_utc(self.updated_at), "sample": self.sample,
                "role": self.role or ("single" if self.sample is not None else None), "lane": self.lane}


@dataclass(frozen=True)
class SampleRow:
    """A sample as the queue holds it (design.md, "Samples"): its members and what it lands with.

    The upload's state lives on the lead member (the first R1 lane, or the only file): the lead is
    claimed, stepped and confirmed like any file row, and the store mirrors its state, step, sample_id,
    error and attempts onto the other members in the same transaction. A write aimed at a follower
    (a member deleted, replaced) is applied to the lead, so a sample always moves as one."""
    id: int
    key: str                          # folder + stem + name family: a later member of it is "late"
    folder: str
    name: str
    run: str | None                   # the run folder's name (design.md, "Runs")
    paired: bool
    lead: int                         # the file id that carries the upload's state
    late: bool
    warnings: tuple[str, ...]
    landing: dict[str, Any] | None    # project, tags, metadata as sent, and what was left out (issue 12)
    created_at: float
    files: tuple[FileRow, ...] = ()   # the members: R1 (or single) lanes in lane order, then R2's

    @property
    def r1(self) -> tuple[FileRow, ...]:
        return tuple(f for f in self.files if f.role in ("R1", "single"))

    @property
    def r2(self) -> tuple[FileRow, ...]:
        return tuple(f for f in self.files if f.role == "R2")

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def public(self, lead: FileRow | None = None) -> dict[str, Any]:
        """The sample as `status --json`'s "samples" list shows it (design.md): its state is its lead's."""
        lead = lead or next((f for f in self.files if f.id == self.lead), None)
        landing = self.landing or {}
        return {"id": self.id, "name": self.name, "run": self.run, "paired": self.paired,
                "files": [f.id for f in self.files], "state": lead.state if lead else None,
                "sample_id": lead.sample_id if lead else None, "project": landing.get("project"),
                "tags": landing.get("tags") or [], "error": lead.error if lead else None,
                "updated_at": iso_utc(lead.updated_at if lead else self.created_at)}


def iso_utc(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


class QueueTooNew(ConfigError):
    """The queue was written by a newer seqdrop: refused (exit 2) rather than misread."""


class StoreLocked(Exception):
    """Another seqdrop daemon already uses this queue (judged by the real file, not the path string)."""


class Store(Protocol):
    """The verbs of a queue backend (see the module docstring for the rules they keep)."""

    path: str

    # lifetime
    def close(self) -> None: ...
    def lock_exclusive(self) -> None: ...
    def batch(self) -> AbstractContextManager[None]: ...
    def has_schema(self) -> bool: ...

    # reading
    def get(self, file_id: int) -> FileRow | None: ...
    def latest_for_path(self, path: str) -> FileRow | None: ...
    def settled_in(self, folder: str) -> dict[str, Identity]: ...
    def last_done_for_path(self, path: str, *, before_id: int) -> FileRow | None: ...
    def with_identity(self, ident: Identity, *, states: tuple[str, ...]) -> FileRow | None: ...
    def rows_in(self, *states: str) -> list[FileRow]: ...
    def counts(self) -> dict[str, int]: ...
    def files(self, *, states: tuple[str, ...] | None = None, limit: int | None = None) -> list[FileRow]: ...
    def next_due_at(self) -> float | None: ...
    def done_since(self, ts: float) -> int: ...
    def oldest_waiting_since(self) -> float | None: ...

    # writing: detection
    def add_seen(self, path: str, ident: Identity) -> int: ...
    def add_moved(self, path: str, ident: Identity, *, source: FileRow, note: str) -> int: ...
    def touch_seen(self, file_id: int, ident: Identity) -> None: ...
    def set_state(self, file_id: int, state: str, *, error: str | None = None,
                  only_from: tuple[str, ...] | None = None, **cols: Any) -> bool: ...
    def note(self, file_id: int, error: str | None) -> None: ...

    # writing: upload
    def claim_next(self, worker: str) -> FileRow | None: ...
    def save_init(self, file_id: int, sample_id: str, init_json: str, *, step: str = STEP_INITIALIZED) -> None: ...
    def save_posted(self, file_id: int, md5: str, *, step: str = STEP_POSTED) -> None: ...
    def clear_init(self, file_id: int) -> None: ...
    def mark_done(self, file_id: int, *, sample_id: str, md5: str | None, error: str | None = None) -> None: ...
    def reschedule(self, file_id: int, *, delay_s: float, error: str, count_attempt: bool = True) -> None: ...
    def release_stale_claims(self) -> int: ...
    def retry(self, *, states: tuple[str, ...], ids: tuple[int, ...] = ()) -> int: ...

    # samples (sqlite_samples.py; design.md, "Samples")
    def add_sample(self, *, key: str, folder: str, name: str, run: str | None, paired: bool,
                   files: list[tuple[int, str, int | None]], warnings: tuple[str, ...] = (), late: bool = False,
                   state: str = "queued", error: str | None = None) -> int | None: ...
    def sample(self, sample: int) -> SampleRow | None: ...
    def sample_of(self, file_id: int) -> SampleRow | None: ...
    def sample_keys(self, folder: str) -> set[str]: ...
    def samples(self, *, states: tuple[str, ...] = (), limit: int | None = None) -> list[SampleRow]: ...
    def save_member_md5s(self, md5s: dict[int, str]) -> None: ...
    def set_landing(self, sample: int, landing: dict[str, Any]) -> None: ...
    def add_flag(self, file_id: int, flag: str, *, note: str | None = None) -> None: ...

    # meta (small JSON values: the pause, the schema version)
    def get_meta(self, key: str) -> Any: ...
    def set_meta(self, key: str, value: Any) -> None: ...

    # reading for the operator's commands: `status` filters, `show`, `upload`'s look-up (sqlite_reads.py)
    def find_files(self, *, states: tuple[str, ...] = (), under: str | None = None, run: str | None = None,
                   since: float | None = None, limit: int | None = None) -> tuple[list[Listed], int]: ...
    def public_json(self, *, states: tuple[str, ...] = (), under: str | None = None, run: str | None = None,
                    since: float | None = None, limit: int | None = None) -> list[str]: ...
    def versions(self, *, path: str | None = None, sample_id: str | None = None,
                 file_id: int | None = None) -> list[Version]: ...
    def confirmed_matches(self, files: list[tuple[str, Identity]]) -> dict[str, FileRow]: ...
    def samples_json(self, *, states: tuple[str, ...] = (), under: str | None = None, run: str | None = None,
                     since: float | None = None, limit: int | None = None) -> list[str]: ...
    def sample_counts(self) -> dict[str, int]: ...
    def samples_by_id(self, ids: Iterable[int]) -> dict[int, SampleRow]: ...
    def sample_briefs(self, ids: Iterable[int]) -> dict[int, SampleBrief]: ...
    def files_under(self, folder: str) -> list[FileRow]: ...
    def unended_under(self, folder: str) -> int: ...
    def run_rows(self) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]: ...


class Listed(NamedTuple):
    """A file version as a `status` line shows it (a plain tuple: 100,000 of them are cheap to make)."""
    id: int
    path: str
    state: str
    attempts: int
    sample_id: str | None
    error: str | None
    updated_at: float
    sample: int | None = None       # its local sample, once assembled
    flags: str | None = None        # "partial", "late" (FileRow.flags)


class SampleBrief(NamedTuple):
    """A sample as a `status` line shows it (its state is on its members' Listed rows, mirrored)."""
    id: int
    folder: str
    name: str
    late: bool
    warnings: tuple[str, ...]
    members: tuple[tuple[str | None, int | None, str | None], ...]    # (role, lane, flags), SampleRow.files' order


@dataclass(frozen=True)
class Version:
    """One file version as `seqdrop show` tells it: its row and when it was first seen."""
    row: FileRow
    created_at: float
    claimed_by: str | None = None     # on a shared queue: the host/worker holding it while it uploads


__all__ = ["STATES", "TERMINAL", "STEP_NONE", "STEP_INITIALIZED", "STEP_POSTED", "STEP_MP_INIT",
           "STEP_MP_COMPLETE", "INIT_STEPS", "POSTED_STEPS", "STEP_POSTED_R1", "STEP_MP_R2_COMPLETE",
           "HALF_POSTED_STEPS", "ROLES", "SHARED_DEV", "SampleRow", "Identity", "FileRow", "StoreLocked", "Store",
           "iso_utc", "Iterator", "Listed", "SampleBrief", "Version"]
