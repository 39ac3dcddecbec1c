"""Finished file versions → samples, and when each sample is complete (design.md, "Samples").

Pure functions: the caller hands in the finished members it has not yet given to a sample, what it
knows about each folder's run marker, the paths still settling, the keys of samples already started,
and the time from its own (monotonic) clock; nothing here sleeps, stats or remembers.

A sample's `state`:
- "waiting": not complete yet; `reason` says for what (the marker, a member still settling, the
  group wait);
- "complete": ready for upload (a `_1/_2` guess still needs the pair check: `needs_pair_check`);
- "rejected": complete but not uploadable as named; `reason` is the sentence for `status`.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Literal

from .names import FileName, parse

State = Literal["waiting", "complete", "rejected"]
Kind = Literal["single", "paired"]
# The key that names one sample in one folder: (folder, lower-case stem, name family).
SampleKey = tuple[str, str, str]
DEFAULT_GROUP_WAIT_S = 120.0


@dataclass(frozen=True)
class Member:
    """One finished file version."""

    path: str
    size: int
    identity: Hashable        # the queue's identity of the version (opaque here)
    settled_at_s: float       # when it settled, on the caller's monotonic clock

    @property
    def folder(self) -> str:
        return os.path.dirname(self.path)

    @cached_property
    def name(self) -> FileName:
        """What the file's name says (parsed once per member)."""
        return parse(os.path.basename(self.path))


@dataclass(frozen=True)
class Sample:
    """A sample as assembled: R1 (or the single read) and R2, each a tuple of members in lane order."""

    key: SampleKey
    name: str
    kind: Kind
    r1: tuple[Member, ...]
    r2: tuple[Member, ...] = ()
    state: State = "complete"
    reason: str | None = None
    warnings: tuple[str, ...] = ()
    needs_pair_check: bool = False     # generic `_1/_2`: pair only once the first read names agree
    late: bool = False
    # A file that is a sample by itself (no pattern, pairing off, late, a failed guess) keeps its
    # own name: dropping its lane token could give a late lane its first sample's name.
    own_name: bool = False

    @property
    def members(self) -> tuple[Member, ...]:
        return self.r1 + self.r2

    @property
    def upload_names(self) -> tuple[str, ...]:
        """The names sent to One Codex: the first member's of each read, lane token removed."""
        if self.own_name:
            return (self.r1[0].name.name,)
        return tuple(part[0].name.upload_name for part in (self.r1, self.r2) if part)

    @property
    def sizes(self) -> tuple[int, ...]:
        """Bytes of each read as uploaded (the sum of its lanes)."""
        return tuple(sum(m.size for m in part) for part in (self.r1, self.r2) if part)


@dataclass(frozen=True)
class Grouping:
    samples: tuple[Sample, ...]
    ignored: tuple[Member, ...] = field(default=())   # index reads (`_I1`/`_I2`)


def group(members: Iterable[Member], *, now_s: float, group_wait_s: float = DEFAULT_GROUP_WAIT_S,
          pairing: Literal["auto", "off"] = "auto", marker: Callable[[str], bool | None] = lambda folder: None,
          pending: Iterable[str] = (), started: Iterable[SampleKey] = ()) -> Grouping:
    """Group `members` into samples.

    `marker(folder)`: True if the folder's run marker is there, False if it is configured but absent,
    None if the folder has none. `pending`: paths seen but not yet settled (they keep their sample
    waiting). `started`: keys of samples already uploading or uploaded; a member of one is late.
    """
    members = sorted(members, key=lambda m: m.path)
    if pairing == "off":
        return Grouping(tuple(_lone(m) for m in members))
    started_keys, ignored = set(started), []
    buckets: dict[SampleKey, list[Member]] = defaultdict(list)
    lone: list[Sample] = []
    for member in members:
        parsed = member.name
        if parsed.role == "index":
            ignored.append(member)
        elif not parsed.pairable:
            lone.append(_lone(member))
        elif key_of(member) in started_keys:
            warning = (f"{parsed.name} arrived after its sample {parsed.stem} was uploaded: sent as a "
                       f"sample of its own.")
            lone.append(replace(_lone(member), late=True, warnings=(warning,)))
        else:
            buckets[key_of(member)].append(member)
    pending_by_key: dict[SampleKey, list[str]] = defaultdict(list)
    for path in pending:
        parsed = parse(os.path.basename(path))
        if parsed.pairable:
            pending_by_key[_key(os.path.dirname(path), parsed)].append(os.path.basename(path))
    samples = [_assemble(key, group_members, now_s=now_s, group_wait_s=group_wait_s,
                         marker=marker(key[0]), pending=sorted(pending_by_key.get(key, ())))
               for key, group_members in sorted(buckets.items())]
    return Grouping(tuple(lone + samples), tuple(ignored))


def key_of(member: Member) -> SampleKey:
    """The key of the sample a member belongs to (what `started` holds)."""
    return _key(member.folder, member.name)


def split_guess(sample: Sample) -> tuple[Sample, Sample]:
    """A `_1/_2` guess whose pair check failed: two single-end samples, one per file."""
    return _lone(sample.r1[0]), _lone(sample.r2[0])


def _key(folder: str, parsed: FileName) -> SampleKey:
    return folder, parsed.stem.lower(), parsed.family


def _lone(member: Member) -> Sample:
    """A file that is a sample by itself, complete at once."""
    parsed = member.name
    return Sample(key=(member.folder, parsed.name, "none"), name=parsed.stem, kind="single", r1=(member,),
                  own_name=True)


def _assemble(key: SampleKey, members: list[Member], *, now_s: float, group_wait_s: float,
              marker: bool | None, pending: list[str]) -> Sample:
    """One bucket of same-stem members → its sample."""
    by_role: dict[str, list[Member]] = {"R1": [], "R2": []}
    for member in members:
        by_role[member.name.role].append(member)
    for part in by_role.values():
        part.sort(key=lambda m: (m.name.lane or 0, m.name.chunk))
    r1, r2 = tuple(by_role["R1"]), tuple(by_role["R2"])
    name = members[0].name.stem
    paired = bool(r1 and r2)
    sample = Sample(key=key, name=name, kind="paired" if paired else "single", r1=r1 or r2,
                    r2=r2 if paired else (), needs_pair_check=paired and not members[0].name.certain)
    refusal = _mixed(members) or _duplicates(r1) or _duplicates(r2)
    if refusal:
        return replace(sample, state="rejected", reason=refusal)
    waiting = _waiting(members, now_s=now_s, group_wait_s=group_wait_s, marker=marker, pending=pending)
    if waiting:
        return replace(sample, state="waiting", reason=waiting)
    refusal = _lane_gap(r1) or _lane_gap(r2) or (_lanes_differ(r1, r2) if paired else None)
    if refusal:
        return replace(sample, state="rejected", reason=refusal)
    if not paired:
        have, missing = ("R1", "R2") if r1 else ("R2", "R1")
        warning = (f"{name}: the {missing} of {sample.r1[0].name.name} never came; uploaded as a "
                   f"single-end sample from its {have} alone.")
        return replace(sample, warnings=(warning,))
    return sample


def _waiting(members: list[Member], *, now_s: float, group_wait_s: float, marker: bool | None,
             pending: list[str]) -> str | None:
    """Why the sample is not complete yet, or None."""
    if pending:
        return f"waiting for {', '.join(pending)} to finish."
    if marker is False:
        return "waiting for the run's completion marker."
    if marker is True:
        return None
    last_s = max(m.settled_at_s for m in members)
    left_s = last_s + group_wait_s - now_s
    if left_s > 0:
        return f"waiting {left_s:.0f} s more for other files of this sample (group_wait_seconds)."
    return None


def _mixed(members: list[Member]) -> str | None:
    for attribute, what in (("compression", "compression"), ("format", "format")):
        values = {getattr(m.name, attribute) for m in members}
        if len(values) > 1:
            listing = ", ".join(f"{m.name.name} ({getattr(m.name, attribute)})" for m in members)
            return f"the files of sample {members[0].name.stem} mix {what}s: {listing}; convert them to one."
    return None


def _duplicates(part: tuple[Member, ...]) -> str | None:
    seen: dict[tuple[int | None, int], Member] = {}
    for member in part:
        slot = (member.name.lane, member.name.chunk)
        if slot in seen:
            lane = f"lane {slot[0]}" if slot[0] is not None else "no lane"
            return (f"{seen[slot].name.name} and {member.name.name} both claim {member.name.role}, {lane}: "
                    f"remove one of them.")
        seen[slot] = member
    return None


def _lanes(part: tuple[Member, ...]) -> list[int]:
    return sorted({m.name.lane for m in part if m.name.lane is not None})


def _lane_gap(part: tuple[Member, ...]) -> str | None:
    lanes = _lanes(part)
    if lanes and len(part) > 1 and any(m.name.lane is None for m in part):
        return f"{part[0].name.stem}: some {part[0].name.role} files name a lane and some do not."
    missing = sorted(set(range(lanes[0], lanes[-1] + 1)) - set(lanes)) if lanes else []
    if missing:
        named = ", ".join(f"L{lane:03d}" for lane in missing)
        return (f"{part[0].name.stem}: {part[0].name.role} has lanes "
                f"{', '.join(f'L{lane:03d}' for lane in lanes)} but not {named}.")
    return None


def _lanes_differ(r1: tuple[Member, ...], r2: tuple[Member, ...]) -> str | None:
    if _lanes(r1) != _lanes(r2) or len(r1) != len(r2):
        lanes1 = ", ".join(m.name.name for m in r1)
        lanes2 = ", ".join(m.name.name for m in r2)
        return f"{r1[0].name.stem}: R1 ({lanes1}) and R2 ({lanes2}) do not have the same lanes."
    return None
