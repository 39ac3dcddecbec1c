"""Assembly in the daemon: settled `seen` versions become sample rows in the queue (design.md, "Samples").

The tracker offers each version that has settled (and whose run marker, if any, is there); the
assembler gathers the versions of its sample (same folder, stem and name family) — the settled ones
not yet given to a sample (members), the ones still settling (pending) — with the run marker, the
keys of the samples already recorded there (a member of one is late) and the folder's [samples]
settings, and asks the pure daemon/assembly/group.py what they make. A name that pairs with nothing
is a sample by itself at once, with no gathering. Then:
  complete → `add_sample` (lead first: R1 lanes in lane order, then R2's), members `queued`;
  rejected → `add_sample(state="rejected")` with group's sentence, members ended;
  waiting  → each member's status line says why, and its paths are looked at again at the deadline;
  late     → a sample of its own, flagged, returned in `Observed.late` for the notification.
Nothing here is remembered that the queue does not hold: members stay `seen` until `add_sample`
moves them all in one transaction, so a restart (resume() settles them again) assembles them again,
and a sample is never recorded twice (add_sample refuses a member that is no longer `seen`).

Index reads (`_I1`/`_I2`) are not samples (design.md: "ignored by default"). They end `rejected`,
flagged "ignored", with a sentence saying why and how to send one anyway: a terminal state, so
`status` never shows them waiting, and "rejected" is the honest one among the queue's states (they
are refused by rule; "done" would claim an upload and "vanished" a deletion). `seqdrop upload
--no-pairing FILE` uploads one if a lab needs it.

A generic `_1/_2` pair is only a guess: the first read names of both files must agree before it is
recorded as a pair (pairs.names_agree), else the two files are two single-end samples. Reading the
heads is cheap but is file I/O, so it is not done inside the tracker's store batch (which holds the
store's lock): the pair is noted, `run_pair_checks()` reads both heads after the batch's commit, and
the tracker offers the two versions again, now with a verdict.
"""

from __future__ import annotations

import functools
import json
import os
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from daemon.assembly.group import (
    Grouping,
    Member,
    Sample,
    SampleKey,
    group,
    key_of,
    split_guess,
)
from daemon.assembly.names import FileName, parse
from daemon.assembly.pairs import head_digest, names_agree
from daemon.config.samples import Assembly
from daemon.detection.roots import WatchRoots
from daemon.queue.base import FileRow, Store

RECHECK_S = 5.0            # a waiting sample whose deadline has passed (a member still settling) looks again
VERDICTS_MAX = 4096        # pair-check verdicts kept for versions not (yet) recorded; a bound, not a cache policy
IGNORED_FLAG = "ignored"   # the flag on an index read's row (status can tell "by rule" from "broken")
_UNKNOWN = object()        # no pair-check verdict yet


@dataclass
class Observed:
    """What a batch of observations committed: the paths queued, the ids of the rows that ended and
    the local ids of the late samples recorded (each is worth a notification)."""
    queued: list[str] = field(default_factory=list)
    ended: list[int] = field(default_factory=list)
    late: list[int] = field(default_factory=list)

    def add(self, other: Observed) -> None:
        self.queued += other.queued
        self.ended += other.ended
        self.late += other.late


class Assembler:
    def __init__(self, *, store: Store, roots: Callable[[], WatchRoots], log: Any,
                 clock: Callable[[], float] = time.monotonic,
                 schedule: Callable[[str, float], None] = lambda path, at: None,
                 assigned: Callable[[str], None] = lambda path: None, immediate: bool = False,
                 pairing: str | None = None) -> None:
        """roots: the tracker's WatchRoots (asked each time: a test may replace them); clock: the
        tracker's monotonic clock; schedule(path, at): look at path again at `at`; assigned(path):
        told once path's version has left `seen` (the tracker drops its settle clock).
        immediate: `seqdrop upload`'s mode — every given file is finished, nothing waits (no group
        wait, no marker); pairing: "off" overrides the settings (`--no-pairing`)."""
        self.store, self.log, self.clock = store, log, clock
        self._roots, self._schedule, self._assigned = roots, schedule, assigned
        self.immediate, self.pairing = immediate, pairing
        self._settled: dict[str, Member] = {}                 # path → its settled, unassigned version
        self._verdicts: dict[tuple[int, int], str | None] = {}
        self._checks: dict[tuple[int, int], tuple[str, str]] = {}

    # -- what the tracker tells ----------------------------------------------------------------
    def forget(self, path: str) -> None:
        """path's version changed, vanished or restarted its settle clock: no longer a member."""
        self._settled.pop(path, None)

    def offer(self, row: FileRow, settled_at_s: float, found: Observed) -> bool:
        """A `seen` version has settled: assemble what its folder now makes. True if row was queued."""
        member = Member(path=row.path, size=row.size, identity=row.id, settled_at_s=settled_at_s)
        self._settled[row.path] = member
        already = len(found.queued)
        settings = self._settings(row.path)
        if settings.pairing == "off" or not member.name.pairable:     # a lone file or an index read
            self._decide_all(group([member], now_s=self.clock(), pairing=settings.pairing), settings, None, found,
                             member)
        else:
            self._assemble_folder(member, settings, found)
        return row.path in found.queued[already:]

    def assemble_given(self, rows: Iterable[FileRow]) -> Observed:
        """`seqdrop upload`: these `seen` versions are all finished; assemble them at once."""
        rows = list(rows)
        found = Observed()
        for row in rows:
            self._settled[row.path] = Member(path=row.path, size=row.size, identity=row.id, settled_at_s=0.0)
        for row in rows:
            if row.path in self._settled:
                self.offer(row, 0.0, found)
        for path in self.run_pair_checks():
            row = self.store.latest_for_path(path)
            if row is not None and row.state == "seen" and row.path in self._settled:
                self.offer(row, 0.0, found)
        return found

    # -- the folder ----------------------------------------------------------------------------
    def _settings(self, path: str) -> Assembly:
        settings = self._roots().assembly_for(path)
        if self.pairing == "off":
            settings = replace(settings, pairing="off")
        return replace(settings, group_wait_s=0.0) if self.immediate else settings

    def _assemble_folder(self, offered: Member, settings: Assembly, found: Observed) -> None:
        """Group the offered member with the folder's versions of its sample (same key): recorded if
        complete or refused, else its members say why. Other samples of the folder are decided when
        their own members are offered (each member is, once settled, and again at its deadline), so a
        run of n files costs n groupings of one sample each, not n of the whole folder."""
        folder = offered.folder
        members, pending = self._gather(offered)
        keys = self._started(folder)
        marker = (lambda _folder: None) if self.immediate else self._roots().marker_state
        lanes: dict[int | None, list[Member]] = {}
        if settings.merge_lanes:
            lanes[None] = members
        else:     # each lane its own sample (a lane's R1 and R2 still pair): one grouping per lane
            for m in members:
                lanes.setdefault(m.name.lane, []).append(m)
        for lane, part in sorted(lanes.items(), key=lambda item: item[0] or 0):
            split = not settings.merge_lanes and lane is not None
            started = {k[:3] for k in keys if not settings.merge_lanes and len(k) == 4 and k[3] == lane} \
                if split else {k[:3] for k in keys if settings.merge_lanes or len(k) == 3}
            waiting_on = [p for p in pending if not split or parse(os.path.basename(p)).lane == lane]
            grouping = group(part, now_s=self.clock(), group_wait_s=settings.group_wait_s,
                             pairing=settings.pairing, marker=marker, pending=waiting_on, started=started)
            self._decide_all(grouping, settings, lane if split else None, found, offered)

    def _gather(self, offered: Member) -> tuple[list[Member], list[str]]:
        """The settled unassigned versions of the offered member's sample (its folder, same key), and
        the paths of its versions still settling. (A version leaves `_settled` through forget() or
        _record(); an entry whose row is no longer this `seen` version is no member: its id differs.)"""
        folder, key = offered.folder, key_of(offered)
        prefix = folder.rstrip("/") + "/"
        listed, _ = self.store.find_files(states=("seen",), under=folder)
        members, pending = [], []
        for item in listed:
            name = item.path[len(prefix):]
            if "/" in name or _key(folder, name) != key:
                continue                     # a sub-folder's file, or another sample's
            member = self._settled.get(item.path)
            if member is not None and member.identity == item.id:
                members.append(member)
            else:
                pending.append(item.path)
        return members, pending

    def _started(self, folder: str) -> set[tuple[Any, ...]]:
        """The keys of the folder's samples that stand: (folder, stem, family[, lane])."""
        keys = set()
        for text in self.store.sample_keys(folder):
            try:
                keys.add(tuple(json.loads(text)))
            except (ValueError, TypeError):
                continue                       # not a key this module wrote
        return keys

    # -- decisions -----------------------------------------------------------------------------
    def _decide_all(self, grouping: Grouping, settings: Assembly, lane: int | None, found: Observed,
                    offered: Member) -> None:
        for member in grouping.ignored:
            self._ignore(member, found)
        for sample in grouping.samples:
            if sample.state == "waiting":
                # Only the offered member's sample: the others said why when their members were offered,
                # and are re-checked at their deadlines (a run of 768 files would otherwise write 768² notes).
                if offered in sample.members:
                    self._wait(sample, settings)
            elif sample.state == "rejected":
                self._record(sample, lane, found, state="rejected", error=sample.reason)
            elif sample.needs_pair_check:
                self._pair_checked(sample, lane, found)
            else:
                self._record(sample, lane, found)

    def _wait(self, sample: Sample, settings: Assembly) -> None:
        """Not complete yet: say why on each member, and look again at the group wait's deadline."""
        now = self.clock()
        deadline = max(m.settled_at_s for m in sample.members) + settings.group_wait_s
        at = deadline if deadline > now else now + RECHECK_S
        for m in sample.members:
            self.store.note(m.identity, sample.reason)
            self._schedule(m.path, at)

    def _pair_checked(self, sample: Sample, lane: int | None, found: Observed) -> None:
        """A `_1/_2` guess: recorded as a pair once the first read names agree, else as two singles."""
        pair = (sample.r1[0].identity, sample.r2[0].identity)
        verdict = self._verdicts.get(pair, _UNKNOWN)
        if verdict is _UNKNOWN:
            self._checks[pair] = (sample.r1[0].path, sample.r2[0].path)
            return
        if verdict is None:
            if self._record(sample, lane, found) is not None:
                self._verdicts.pop(pair, None)
            return
        self.log.info("sample.pair_guess_refused", r1=sample.r1[0].path, r2=sample.r2[0].path, reason=verdict)
        warning = (f"{sample.r1[0].name.name} and {sample.r2[0].name.name} are named like a pair (_1/_2) but "
                   f"are not one ({verdict.rstrip('.')}): uploaded as two single-end samples.")
        recorded = [self._record(replace(half, warnings=(warning,)), lane, found) for half in split_guess(sample)]
        if all(r is not None for r in recorded):
            self._verdicts.pop(pair, None)

    def run_pair_checks(self) -> list[str]:
        """Read the heads of the pairs noted since the last call (outside any store batch); returns
        their paths, to be offered again."""
        paths: list[str] = []
        for pair, (r1, r2) in list(self._checks.items()):
            try:
                verdict = names_agree(head_digest(r1), head_digest(r2))
            except (OSError, EOFError, ValueError, zlib.error) as e:
                verdict = f"their first read names could not be read: {e}"
            if len(self._verdicts) >= VERDICTS_MAX:
                self._verdicts.clear()       # verdicts of versions that changed since: recomputed if asked
            self._verdicts[pair] = verdict
            paths += [r1, r2]
        self._checks.clear()
        return paths

    def _record(self, sample: Sample, lane: int | None, found: Observed, *, state: str = "queued",
                error: str | None = None) -> int | None:
        """add_sample; the local sample id, or None if a member moved on meanwhile (assembled again)."""
        paired = sample.kind == "paired"
        files = [(m.identity, ("R1" if part == 0 else "R2") if paired else "single", m.name.lane)
                 for part, members in enumerate((sample.r1, sample.r2)) for m in members]
        key = list(sample.key) + ([lane] if lane is not None else [])
        name = sample.name if lane is None or sample.own_name else f"{sample.name}_L{lane:03d}"
        lead = sample.r1[0]
        sample_id = self.store.add_sample(
            key=json.dumps(key), folder=lead.folder, name=name, run=self._run_of(lead.path), paired=paired,
            files=files, warnings=sample.warnings, late=sample.late, state=state, error=error)
        if sample_id is None:
            self.log.info("sample.not_recorded", path=lead.path, note="a member changed meanwhile; assembled again")
            for m in sample.members:
                self._schedule(m.path, self.clock() + RECHECK_S)
            return None
        for m in sample.members:
            self._settled.pop(m.path, None)
            self._assigned(m.path)
        if state == "queued":
            found.queued += [m.path for m in sample.members]
        else:
            found.ended += [m.identity for m in sample.members]
        if sample.late:
            self.store.add_flag(lead.identity, "late")
            found.late.append(sample_id)
        self.log.info(f"sample.{state}", sample=sample_id, name=name, paired=paired, files=len(files),
                      path=lead.path, late=sample.late or None, error=error,
                      warnings=list(sample.warnings) or None)
        return sample_id

    def _ignore(self, member: Member, found: Observed) -> None:
        """An index read: not a sample; ended `rejected` by rule, with the way to send it anyway."""
        reason = (f"{member.name.name} is an index read (_I1/_I2): index reads are not samples, so it is not "
                  f"uploaded; `seqdrop upload --no-pairing {member.path}` sends it if you need it")
        if self.store.set_state(member.identity, "rejected", error=reason, only_from=("seen",)):
            self.store.add_flag(member.identity, IGNORED_FLAG)
            found.ended.append(member.identity)
            self.log.info("file.ignored", path=member.path, reason="index read")
        self._settled.pop(member.path, None)
        self._assigned(member.path)

    def _run_of(self, path: str) -> str | None:
        try:
            return self._roots().run_of(path)
        except OSError:
            return None


@functools.lru_cache(maxsize=65536)
def _parsed(name: str) -> FileName:
    """parse(), remembered: a folder's names are looked at again at each offer."""
    return parse(name)


def _key(folder: str, name: str) -> SampleKey | None:
    """The key of the sample a file of this name in folder would belong to (None: it pairs with nothing)."""
    parsed = _parsed(name)
    return (folder, parsed.stem.lower(), parsed.family) if parsed.pairable else None
