"""The audit journal: an append-only, fsynced JSON-lines record of every file version that ends.

design.md ("Runs, the audit journal and reports"): the chain-of-custody record a lab under
accreditation needs, and the second copy from which a damaged queue is rebuilt
(daemon/queue/integrity.py). It lives in the state directory beside the queue
(`journal_path(queue_path)` → `<queue dir>/journal.jsonl`), mode 0600.

One line per record, one record per file version that ends (done, rejected, failed, vanished):

    {"v": 1, "event": "file.ended", "time": "2030-01-02T03:04:05.678Z", "state": "done",
     "path": "/srv/run1/a_R1.fastq.gz", "device": 2049, "inode": 1234, "size": 5678,
     "mtime_ns": 1700000000000000000, "md5": "…", "sample_id": "0123456789abcdef", "error": null,
     "init_at": "…Z", "posted_at": "…Z", "confirmed_at": "…Z",
     "sample_name": null, "project": null, "tags": [], "run": null,
     "host": "sequencer-pc", "version": "0.1.0"}

On a shared queue (PostgreSQL) a version's row carries no device (each host numbers its mounts): the
record names the device (and inode) this host sees at `path` when the file there is still that version
(same size and mtime_ns), else device -1.

Readers must ignore fields they do not know. `append` writes any event the same way (e.g.
"queue.rebuilt"). A file.ended record of a version that belongs to an assembled sample also carries
`sample` (the local sample id), `role` and `lane`, and its sample's name, run, project and tags; a
version without a sample carries its parent folder's name as `run`.

When a sample ends (its lead reached done, rejected, failed or vanished), one more record follows its
members' file.ended records:

    {"v": 1, "event": "sample.ended", "time": "…Z", "state": "done", "sample": 12,
     "sample_name": "Liver_S3", "sample_id": "0123456789abcdef", "run": "240501_M00001_0001",
     "paired": true, "project": "…16 hex… or null", "project_name": null, "tags": ["liver"],
     "metadata": {…as sent}, "omitted": [["field", "reason"]], "late": false, "warnings": [],
     "files": [{"path", "device", "inode", "size", "mtime_ns", "md5", "role", "lane"}, …],
     "init_at": "…Z", "posted_at": {"R1": "…Z", "R2": "…Z"}, "confirmed_at": "…Z", "error": null,
     "host": "sequencer-pc", "version": "0.1.0"}

It also carries the sample's `key`, `folder` and `lead` (the lead member's path), from which a rebuilt
queue holds the sample again. `posted_at` names the time of each read's POST (a one-read sample: {"R1": …}, or {"single": …}); a time
the daemon did not see (a restart between the two reads' POSTs) is null. The queue rebuild
(integrity.py) reads only file.ended and the in-flight records.

A version in flight also leaves a record each time a sample id is stored for it ("sample.initialized"
after init, "sample.posted" once S3 holds the bytes), with `step`, `sample_id`, `md5` and, for the
multipart route, `init` (bucket, key, callback; never credentials). A confirm whose answer is lost
leaves the version at `posted` with no ending: without this record a queue rebuilt after a lost WAL
would not know the sample and would upload the file again (design.md: "nothing already confirmed is
uploaded again"). The standard route's init (a signed S3 POST policy) is never journaled. The record
of the lead of a sample of several files (lanes, a pair) also carries that sample, so that a rebuilt
queue resumes it as one and never as its lead file alone (a half sample):

    "sample": {"key", "folder", "name", "run", "paired", "late", "warnings", "landing",
               "files": [{"path", "device", "inode", "size", "mtime_ns", "role", "lane"}, …]}

with the lead first in `files`.

Durability: each record is one write(2) to a descriptor opened O_APPEND, then fsync(2); the
directory is fsynced when the file is created, so a record that `append` returned survives a
power cut. A power cut mid-write can leave a torn last line: the reader skips it, and the next
append first ends it with a newline so that it never swallows a whole record. Every string value
goes through daemon.redact (a server's echo of the API key in `error` is never written).

Order of writes for the daemon: commit the queue's transition first, then append here. A crash
between the two then loses a journal line (the queue is right), never makes the queue look older
than the journal (which integrity.check would treat as damage).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

import daemon
from daemon import redact
from daemon.queue.base import SHARED_DEV, Identity

JOURNAL_NAME = "journal.jsonl"
RECORD_VERSION = 1
FILE_ENDED = "file.ended"
ENDED_STATES = ("done", "rejected", "failed", "vanished")
SAMPLE_INITIALIZED = "sample.initialized"    # a sample id stored for a version, nothing confirmable yet
SAMPLE_POSTED = "sample.posted"              # S3 holds the version's bytes: confirm this sample, never another
IN_FLIGHT_EVENTS = (SAMPLE_INITIALIZED, SAMPLE_POSTED)
SAMPLE_ENDED = "sample.ended"                # a sample's record of custody, after its members' file.ended
# Names a local file system chose, which the rebuild must get back exactly: only registered
# secrets are masked in them, never the shape heuristics that could mangle an odd file name.
_LOCAL_NAME_FIELDS = frozenset({"path", "run", "sample_name"})

When = datetime | float | str


def journal_path(queue_path: str) -> str:
    """Where the journal of the queue at `queue_path` lives."""
    return os.path.join(os.path.dirname(os.path.abspath(queue_path)), JOURNAL_NAME)


def iso_utc(ts: float) -> str:
    """An epoch time as ISO 8601 UTC with milliseconds and a `Z`."""
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Journal:
    """Appends records to one journal file (thread-safe; other processes may append too)."""

    def __init__(self, path: str, *, host: str | None = None, version: str = daemon.__version__,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.host = host if host is not None else socket.gethostname()
        self.version = version
        self.clock = clock
        self._lock = threading.Lock()

    def file_ended(self, *, path: str, identity: Identity, state: str, md5: str | None = None,
                   sample_id: str | None = None, error: str | None = None, init_at: float | None = None,
                   posted_at: float | None = None, confirmed_at: float | None = None,
                   sample_name: str | None = None, project: str | None = None, tags: list[str] | None = None,
                   run: str | None = None, **later: Any) -> dict[str, Any]:
        """Record that this file version ended in `state`; returns the record as written.
        Times are epoch seconds (None: not known). Raises OSError if it could not be made durable."""
        return self.files_ended([dict(path=path, identity=identity, state=state, md5=md5, sample_id=sample_id,
                                      error=error, init_at=init_at, posted_at=posted_at,
                                      confirmed_at=confirmed_at, sample_name=sample_name, project=project,
                                      tags=tags, run=run, **later)])[0]

    def files_ended(self, versions: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """file_ended() for many versions (each a dict of its arguments), made durable by one write
        and one fsync (a sweep that finds 10,000 files deleted must not cost 10,000 disk flushes).
        Raises ValueError before writing anything if one of them is not a valid ending."""
        records = [self._file_record(**version) for version in versions]
        if records:
            with self._lock:
                self._write(b"".join(_line(record) for record in records))
        return records

    def _file_record(self, *, path: str, identity: Identity, state: str, md5: str | None = None,
                     sample_id: str | None = None, error: str | None = None, init_at: float | None = None,
                     posted_at: float | None = None, confirmed_at: float | None = None,
                     sample_name: str | None = None, project: str | None = None, tags: list[str] | None = None,
                     run: str | None = None, **later: Any) -> dict[str, Any]:
        if state not in ENDED_STATES:
            raise ValueError(f"a journal record is for a version that ended ({', '.join(ENDED_STATES)}), "
                             f"not {state!r}")
        if state == "done" and not sample_id:
            raise ValueError("a done version's record needs its sample_id")
        identity = local_identity(path, identity)
        return self._record(
            FILE_ENDED, state=state, path=path, device=identity.dev, inode=identity.inode, size=identity.size,
            mtime_ns=identity.mtime_ns, md5=md5, sample_id=sample_id, error=error,
            init_at=_iso_or_none(init_at), posted_at=_iso_or_none(posted_at),
            confirmed_at=_iso_or_none(confirmed_at), sample_name=sample_name, project=project,
            tags=list(tags or []), run=run, **later)

    def sample_saved(self, *, path: str, identity: Identity, step: str, sample_id: str, posted: bool,
                     md5: str | None = None, init: dict[str, Any] | None = None,
                     sample: dict[str, Any] | None = None) -> dict[str, Any]:
        """Record that a sample id was stored for this version at `step` (posted: S3 holds its bytes);
        init: the multipart route's stored init, as an object (it holds no credentials); sample: the
        local sample this version leads, if it has several files (see the module docstring). Raises
        OSError if it could not be made durable."""
        if not sample_id:
            raise ValueError("a sample record needs its sample_id")
        identity = local_identity(path, identity)
        extra = {} if sample is None else {"sample": sample}
        return self.append(SAMPLE_POSTED if posted else SAMPLE_INITIALIZED, path=path, device=identity.dev,
                           inode=identity.inode, size=identity.size, mtime_ns=identity.mtime_ns, step=step,
                           sample_id=sample_id, md5=md5, init=init, **extra)

    def sample_ended(self, *, sample: int, state: str, name: str, run: str | None, paired: bool,
                     files: list[dict[str, Any]], sample_id: str | None, landing: dict[str, Any] | None,
                     init_at: float | None, posted_at: dict[str, float | None], confirmed_at: float | None,
                     error: str | None = None, late: bool = False, warnings: tuple[str, ...] = (),
                     key: str | None = None, folder: str | None = None, lead: str | None = None) -> dict[str, Any]:
        """Record that a sample ended in `state` (see the module docstring). files: each member's path,
        identity (as an Identity under "identity"), md5, role and lane; key, folder and lead (its lead
        member's path): what a queue rebuilt from the journal needs to hold the sample again. Raises
        OSError if it could not be made durable."""
        if state not in ENDED_STATES:
            raise ValueError(f"a sample record is for a sample that ended ({', '.join(ENDED_STATES)}), not {state!r}")
        landing = landing or {}
        members = [{"path": f["path"], "device": i.dev, "inode": i.inode, "size": i.size, "mtime_ns": i.mtime_ns,
                    "md5": f.get("md5"), "role": f.get("role"), "lane": f.get("lane")}
                   for f in files for i in [local_identity(f["path"], f["identity"])]]
        return self.append(SAMPLE_ENDED, state=state, sample=sample, sample_name=name, sample_id=sample_id, run=run,
                           paired=paired, project=landing.get("project"), project_name=landing.get("project_name"),
                           tags=list(landing.get("tags") or []), metadata=landing.get("metadata") or {},
                           omitted=landing.get("omitted") or [], late=late, warnings=list(warnings), files=members,
                           init_at=_iso_or_none(init_at),
                           posted_at={read: _iso_or_none(t) for read, t in posted_at.items()},
                           confirmed_at=_iso_or_none(confirmed_at), error=error,
                           **{k: v for k, v in (("key", key), ("folder", folder), ("lead", lead)) if v is not None})

    def append(self, event: str, **fields: Any) -> dict[str, Any]:
        """Write one record (`v`, `event`, `time`, the fields, `host`, `version`) durably."""
        record = self._record(event, **fields)
        with self._lock:
            self._write(_line(record))
        return record

    def _record(self, event: str, **fields: Any) -> dict[str, Any]:
        record: dict[str, Any] = {"v": RECORD_VERSION, "event": event, "time": iso_utc(self.clock())}
        for name, value in fields.items():
            record[name] = _scrubbed(name, value)
        record.setdefault("host", self.host)
        record.setdefault("version", self.version)
        return record

    def records(self, **filters: Any) -> Iterator[dict[str, Any]]:
        """read_records(self.path, **filters)."""
        return read_records(self.path, **filters)

    def _write(self, line: bytes) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, mode=0o700, exist_ok=True)
        flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags | os.O_CREAT | os.O_EXCL, 0o600)
            created = True
        except FileExistsError:
            fd = os.open(self.path, flags)
            created = False
        try:
            st = os.fstat(fd)
            if st.st_mode & 0o077:
                os.fchmod(fd, 0o600)   # state files are private, whoever created this one
            if st.st_size and os.pread(fd, 1, st.st_size - 1) != b"\n":
                line = b"\n" + line    # end a torn last line; it stays a skipped line of its own
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            fsync_directory(directory)


def _scrubbed(name: str, value: Any) -> Any:
    """Registered secrets masked everywhere; secret shapes too, except in the names a local file system
    chose (at any depth: the paths of a sample's files), which the rebuild must get back exactly."""
    if name in _LOCAL_NAME_FIELDS and isinstance(value, str):
        return redact.scrub(value, shapes=False)
    if isinstance(value, dict):
        return {redact.scrub_data(k): _scrubbed(k, v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and any(isinstance(v, dict) for v in value):
        return [_scrubbed(name, v) for v in value]
    return redact.scrub_data(value)


def _line(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, ensure_ascii=True, allow_nan=False) + "\n").encode("ascii")


def read_records(path: str, *, since: When | None = None, until: When | None = None,
                 event: str | None = None,
                 on_bad_line: Callable[[int, bytes], None] | None = None) -> Iterator[dict[str, Any]]:
    """The journal's records, oldest first, with `since <= time < until` and of `event` if given.
    A line that is not a JSON object with a valid `time` (a torn last line after a power cut) is
    skipped and passed to on_bad_line(line_number, raw). A missing journal has no records."""
    low, high = _when(since), _when(until)
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        return
    with handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            record = _parse(raw)
            if record is None:
                if on_bad_line is not None:
                    on_bad_line(number, raw)
                continue
            if event is not None and record.get("event") != event:
                continue
            at = record["_at"]
            if (low is not None and at < low) or (high is not None and at >= high):
                continue
            del record["_at"]
            yield record


def _parse(raw: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(raw)
        at = datetime.fromisoformat(record["time"])
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(record, dict) or at.tzinfo is None:
        return None
    record["_at"] = at
    return record


def _when(value: When | None) -> datetime | None:
    if value is None or isinstance(value, datetime):
        if isinstance(value, datetime) and value.tzinfo is None:
            raise ValueError("give since/until with a time zone (or as epoch seconds)")
        return value
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, timezone.utc)
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=timezone.utc)


def _iso_or_none(ts: float | None) -> str | None:
    return None if ts is None else iso_utc(ts)


def fsync_directory(directory: str) -> None:
    """Make a new file's directory entry durable (a fsynced file can still vanish without it)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def local_identity(path: str, identity: Identity) -> Identity:
    """A shared queue's version (device SHARED_DEV) as this host sees it: the device and inode of the
    file at `path` if it is still that version (same size and mtime_ns), else unchanged."""
    if identity.dev != SHARED_DEV:
        return identity
    try:
        st = os.stat(path)
    except OSError:
        return identity
    if (st.st_size, st.st_mtime_ns) != (identity.size, identity.mtime_ns):
        return identity
    return Identity(st.st_dev, st.st_ino, identity.size, identity.mtime_ns)


__all__ = ["ENDED_STATES", "FILE_ENDED", "IN_FLIGHT_EVENTS", "JOURNAL_NAME", "SAMPLE_ENDED", "SAMPLE_INITIALIZED",
           "SAMPLE_POSTED",
           "Journal", "iso_utc", "journal_path", "read_records"]

