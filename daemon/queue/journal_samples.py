"""A sample of several files in the audit journal, and in a queue rebuilt from it.

The in-flight record of a sample's lead ("sample.initialized" / "sample.posted", daemon/queue/journal.py)
carries the sample it leads: its members' versions, roles and lanes, its name, run and landing. A queue
rebuilt from the journal (daemon/queue/integrity.py) must resume such a sample as one: restored as its
lead file alone, a pair whose R1 was in S3 was sent again as that one lane file, a single-end sample of
one file, and confirmed — a half sample (found 2026-12-03: a queue truncated while a paired 2-lane sample
was at `posted_r1`). Here: the record read back and checked, and the sample put back into a new queue.

A sample that ended is held again too (`restore_ended`, from its "sample.ended" record: key, folder,
lead, members), around its members' rows already restored in their final state, so that `status` and
`runs` still speak of samples after a rebuild, and a lane that comes late is still flagged late.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from daemon.queue.base import ROLES, Identity
from daemon.queue.journal import SAMPLE_ENDED, read_records
from daemon.queue.sqlite import SqliteStore

Version = tuple[str, int, int, int, int]     # (path, dev, inode, size, mtime_ns): a file version in the journal


@dataclass(frozen=True)
class JournaledSample:
    """A sample as its lead's in-flight record holds it; members[0] is the lead."""

    key: str
    folder: str
    name: str
    run: str | None
    paired: bool
    late: bool
    warnings: tuple[str, ...]
    landing: dict[str, Any] | None
    members: tuple[tuple[Version, str, int | None], ...]     # (version, role, lane)

    @property
    def versions(self) -> tuple[Version, ...]:
        return tuple(version for version, _, _ in self.members)


def parse(value: Any) -> JournaledSample | None:
    """The record's "sample" object, or None if there is none or it is not whole (a torn or foreign
    record: its lead is then not resumed as a sample, see integrity.py)."""
    if not isinstance(value, dict):
        return None
    texts = [value.get(k) for k in ("key", "folder", "name")]
    files = value.get("files")
    if not all(isinstance(t, str) and t for t in texts) or not isinstance(files, list) or len(files) < 2:
        return None
    members = []
    for f in files:
        member = _member(f)
        if member is None:
            return None
        members.append(member)
    run, landing = value.get("run"), value.get("landing")
    return JournaledSample(key=texts[0], folder=texts[1], name=texts[2], run=run if isinstance(run, str) else None,
                           paired=value.get("paired") is True, late=value.get("late") is True,
                           warnings=_strings(value.get("warnings")),
                           landing=landing if isinstance(landing, dict) else None, members=tuple(members))


def _strings(value: Any) -> tuple[str, ...]:
    """A record's list of sentences (a sample's warnings), without anything that is not one."""
    return tuple(w for w in value if isinstance(w, str)) if isinstance(value, list) else ()


def version_of(record: Any) -> Version | None:
    """The file version a record (or a sample's member in one) names, or None if it names none whole."""
    if not isinstance(record, dict):
        return None
    values = (record.get("path"), record.get("device"), record.get("inode"), record.get("size"),
              record.get("mtime_ns"))
    if not isinstance(values[0], str) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                 for v in values[1:]):
        return None
    return values  # type: ignore[return-value]


def _member(f: Any) -> tuple[Version, str, int | None] | None:
    version = version_of(f)
    if version is None:
        return None
    role, lane = f.get("role"), f.get("lane")
    if role not in ROLES or not (lane is None or (isinstance(lane, int) and not isinstance(lane, bool))):
        return None
    return version, role, lane


def drop_torn(latest: dict[Version, Any]) -> None:
    """Of each version's latest entry (integrity.py's: `.sample` set on a sample's lead in flight), drop
    the leads whose sample's other members have entries of their own, or that are not their sample's
    lead: a journal that does not hold together (a sample's members end with it). Such a lead is not
    resumed, since alone it would be sent as a half sample; the start-up scan finds its file again."""
    for version, entry in list(latest.items()):
        sample = entry.sample
        if sample is not None and (sample.versions[0] != version or any(v in latest for v in sample.versions[1:])):
            del latest[version]


def restore(store: SqliteStore, lead_id: int, sample: JournaledSample) -> bool:
    """Put the sample back around its lead's new row (the other members as new rows, the sample row
    with its landing), queued. False if the store would not take it."""
    files = [(lead_id, sample.members[0][1], sample.members[0][2])]
    for (path, dev, inode, size, mtime_ns), role, lane in sample.members[1:]:
        files.append((store.add_seen(path, Identity(dev, inode, size, mtime_ns)), role, lane))
    local = store.add_sample(key=sample.key, folder=sample.folder, name=sample.name, run=sample.run,
                             paired=sample.paired, files=files, warnings=sample.warnings, late=sample.late)
    if local is None:
        return False
    if sample.landing:
        store.set_landing(local, sample.landing)
    return True


def restore_ended(store: SqliteStore, journal: str, restored: dict[Version, int]) -> int:
    """The sample rows of the samples whose "sample.ended" record is the latest for its lead and whose
    members were all restored (`restored`: version → new file id) in the sample's final state and in no
    other sample. Returns how many were restored; a record that does not fit is left (its files stay)."""
    latest: dict[Version, tuple[dict[str, Any], list[tuple[Version, str, int | None]]]] = {}
    for record in read_records(journal):
        if record.get("event") != SAMPLE_ENDED:
            continue
        members = [m for m in map(_member, record.get("files") or []) if m is not None]
        lead = next((m for m in members if m[0][0] == record.get("lead")), None)
        if lead is None or len(members) != len(record.get("files") or []):
            continue
        latest[lead[0]] = (record, [lead] + [m for m in members if m is not lead])
    count = 0
    for record, members in latest.values():
        count += _restore_one(store, record, members, restored)
    return count


def _restore_one(store: SqliteStore, record: dict[str, Any], members: list[tuple[Version, str, int | None]],
                 restored: dict[Version, int]) -> bool:
    key, folder, name = (record.get(k) for k in ("key", "folder", "sample_name"))
    ids = [restored.get(version) for version, _, _ in members]
    if not all(isinstance(t, str) and t for t in (key, folder, name)) or None in ids:
        return False
    rows = [store.get(i) for i in ids]       # type: ignore[arg-type]
    if any(r is None or r.state != record.get("state") or r.sample is not None for r in rows):
        return False
    landing = {k: record[k] for k in ("project", "project_name", "tags", "metadata", "omitted") if record.get(k)}
    return store.restore_ended_sample(
        key=key, folder=folder, name=name, run=record.get("run") if isinstance(record.get("run"), str) else None,
        paired=record.get("paired") is True, late=record.get("late") is True, warnings=_strings(record.get("warnings")),
        landing=landing or None, created_at=datetime.fromisoformat(record["time"]).timestamp(),
        files=[(i, role, lane) for i, (_, role, lane) in zip(ids, members)]) is not None   # type: ignore[misc]


__all__ = ["JournaledSample", "Version", "drop_torn", "parse", "restore", "restore_ended", "version_of"]
