"""A sample of several files in the audit journal, and in a queue rebuilt from it.

The in-flight record of a sample's lead ("sample.initialized" / "sample.posted", daemon/queue/journal.py)
carries the sample it leads: its members' versions, roles and lanes, its name, run and landing. A queue
rebuilt from the journal (daemon/queue/integrity.py) must resume such a sample as one: restored as its
lead file alone, a pair whose R1 was in S3 was sent again as that one lane file, a single-end sample of
one file, and confirmed — a half sample (found 2026-12-03: a queue truncated while a paired 2-lane sample
was at `posted_r1`). Here: the record read back and checked, and the sample put back into a new queue.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from daemon.queue.base import ROLES, Identity
from daemon.queue.sqlite import SqliteStore

Version = tuple[str, int, int, int, int]     # (path, dev, inode, size, mtime_ns), as integrity.py's


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
    run, warnings, landing = value.get("run"), value.get("warnings") or [], value.get("landing")
    return JournaledSample(key=texts[0], folder=texts[1], name=texts[2], run=run if isinstance(run, str) else None,
                           paired=value.get("paired") is True, late=value.get("late") is True,
                           warnings=tuple(w for w in warnings if isinstance(w, str)) if isinstance(warnings, list) else (),
                           landing=landing if isinstance(landing, dict) else None, members=tuple(members))


def _member(f: Any) -> tuple[Version, str, int | None] | None:
    if not isinstance(f, dict):
        return None
    path, numbers = f.get("path"), [f.get(k) for k in ("device", "inode", "size", "mtime_ns")]
    role, lane = f.get("role"), f.get("lane")
    if not isinstance(path, str) or not all(isinstance(n, int) and not isinstance(n, bool) for n in numbers):
        return None
    if role not in ROLES or not (lane is None or (isinstance(lane, int) and not isinstance(lane, bool))):
        return None
    return (path, *numbers), role, lane     # type: ignore[return-value]


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
    with its landing), queued. False if the store would not take it (a member version already there)."""
    files = [(lead_id, sample.members[0][1], sample.members[0][2])]
    for (path, dev, inode, size, mtime_ns), role, lane in sample.members[1:]:
        files.append((store.add_seen(path, Identity(dev, inode, size, mtime_ns)), role, lane))
    if len({file_id for file_id, _, _ in files}) != len(files):
        return False
    local = store.add_sample(key=sample.key, folder=sample.folder, name=sample.name, run=sample.run,
                             paired=sample.paired, files=files, warnings=sample.warnings, late=sample.late)
    if local is None:
        return False
    if sample.landing:
        store.set_landing(local, sample.landing)
    return True


__all__ = ["JournaledSample", "drop_torn", "parse", "restore"]
