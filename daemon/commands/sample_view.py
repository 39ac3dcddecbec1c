"""Samples as `seqdrop status`, `show` and `retry` tell them to a person (design.md, "Samples").

A sample of several files (R1 and R2, lanes) is what the user means by "my sample": `status` gives it
one line where its members would have had one each; `show s12` tells its whole story (members with
role, lane and MD5, where it landed, what was left out and why). A file without a sample, and a sample
of one file, keep the file's line. Times are local, as on the other text views.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from typing import Any, TextIO

from daemon.operations import progress
from daemon.queue.base import FileRow, Listed, SampleBrief, SampleRow, iso_utc
from daemon.redact import escape_control

# `seqdrop show s12` (or S12): the local sample 12, as the first column of `status` shows it.
SAMPLE_REF = re.compile(r"[sS](\d{1,18})")
_STEP_WORDS = {"initialized": "sample begun, bytes not yet in S3", "posted": "bytes in S3, confirmation pending",
               "mp_initialized": "multipart upload begun", "mp_complete": "bytes in S3, confirmation pending",
               "posted_r1": "R1 in S3, R2 next", "mp_r2_complete": "R2 in S3, R1 next"}


def local_time(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def step_words(step: str) -> str:
    return _STEP_WORDS.get(step, step)


def sample_ref(text: str) -> int | None:
    """The local sample id `text` names (`s12`), or None."""
    m = SAMPLE_REF.fullmatch(text.strip())
    return int(m[1]) if m else None


def lead_of(sample: SampleRow) -> FileRow | None:
    return next((f for f in sample.files if f.id == sample.lead), None)


def roles_text(members: Iterable[tuple[str | None, int | None]]) -> str:
    """(role, lane) of each member → `2 files: R1; R2` / `4 files: R1 L1,2; R2 L1,2` / `1 file: single`."""
    members = list(members)
    parts = []
    for role in ("R1", "single", "R2"):
        lanes = [lane for r, lane in members if (r or "single") == role]
        if lanes:
            known = ",".join(str(lane) for lane in lanes if lane is not None)
            parts.append(f"{role} L{known}" if known and len(lanes) > 1 else role)
    n = len(members)
    return f"{n} file{'s' if n != 1 else ''}: {'; '.join(parts)}"


def _roles(sample: SampleRow) -> str:
    return roles_text((f.role, f.lane) for f in sample.files)


def notes(*, flags: Iterable[str | None] = (), late: bool = False, warnings: Iterable[str] = ()) -> list[str]:
    """What a person should know beside the state: [partial], [late], warnings (e.g. "R2 never came")."""
    marks = [f for text in flags for f in (text or "").split(",") if f] + (["late"] if late else [])
    return [f"[{m}]" for m in dict.fromkeys(marks)] + [escape_control(w) for w in warnings]


def _tail(said: list[str], error: str | None, r: Listed | None = None,
          live: dict[str, Any] | None = None) -> str:
    """The notes, then what its upload is doing now (live, from the daemon) or else the last error."""
    if live and r is not None and r.state == "uploading":
        return ("  " + "  ".join(said) if said else "") + f"  — {progress.describe(live)}"
    return ("  " + "  ".join(said) if said else "") + (f"  — {escape_control(error)}" if error else "")


def sample_line(brief: SampleBrief, r: Listed, live: dict[str, Any] | None = None) -> str:
    """A sample's line in `status`: its local id (s12), its state, attempts and sample id (a member's
    listed row r: the lead's, mirrored), then folder/name, the members, flags and warnings, the last error."""
    said = notes(flags=(m[2] for m in brief.members), late=brief.late, warnings=brief.warnings)
    name = f"{brief.folder.rstrip('/')}/{brief.name}"
    return (f"{'s' + str(brief.id):>5}  {local_time(r.updated_at)}  {r.state:<9} {r.attempts:>5}  "
            f"{escape_control(r.sample_id or '-'):<16}  {escape_control(name)} "
            f"({roles_text((m[0], m[1]) for m in brief.members)}){_tail(said, r.error, r, live)}\n")


def file_line(r: Listed, brief: SampleBrief | None, live: dict[str, Any] | None = None) -> str:
    """One file's line; the last error, if any, ends it. Control characters in a name are shown escaped
    (a newline in a file name must not make two lines)."""
    said = notes(flags=(r.flags,), late=brief.late, warnings=brief.warnings) if brief else notes(flags=(r.flags,))
    return (f"{r.id:>5}  {local_time(r.updated_at)}  {r.state:<9} {r.attempts:>5}  "
            f"{escape_control(r.sample_id or '-'):<16}  {escape_control(r.path)}{_tail(said, r.error, r, live)}\n")


def lines(rows: list[Listed], briefs: dict[int, SampleBrief],
          live: dict[int, dict[str, Any]] | None = None) -> list[str]:
    """The lines of `status` for these file rows: a sample of several files once, where its first member
    listed stands; other files as themselves. live: the uploads in flight by file id (the claimed lead's)."""
    live = live or {}
    sample_live = {r.sample: live[r.id] for r in rows if r.sample is not None and r.id in live}
    out: list[str] = []
    shown: set[int] = set()
    for r in rows:
        brief = briefs.get(r.sample) if r.sample is not None else None
        if brief is not None and len(brief.members) > 1:
            if brief.id not in shown:
                shown.add(brief.id)
                out.append(sample_line(brief, r, sample_live.get(brief.id)))
            continue
        out.append(file_line(r, brief, live.get(r.id)))
    return out


def counts_line(counts: dict[str, int]) -> str:
    """`samples: done 3  failed 1` (only the states some sample is in)."""
    return "samples: " + "  ".join(f"{s} {n}" for s, n in counts.items() if n)


# -- show ------------------------------------------------------------------------------------------
def headline(state: str, sample_id: str | None) -> str:
    if state == "done":
        return f"done — confirmed as sample {escape_control(sample_id or '?')}"
    return {"seen": "seen — waiting until it is finished", "queued": "queued — waiting for a worker",
            "uploading": "uploading now", "rejected": "rejected by seqdrop's checks",
            "failed": "failed — refused by One Codex or S3", "vanished": "vanished — deleted or replaced "
            "before it was uploaded"}.get(state, state)


def write_sample_story(out: TextIO, sample: SampleRow, live: dict[int, dict[str, Any]] | None = None) -> None:
    """`seqdrop show s12`: the sample, how it is going (live: the uploads in flight by file id), where
    it lands, and each member."""
    lead = lead_of(sample) or sample.files[0]
    say = _sayer(out)
    print(f"sample s{sample.id} {escape_control(sample.name)} — {headline(lead.state, lead.sample_id)} "
          f"(times are local)", file=out)
    say("run", sample.run or "-")
    say("folder", sample.folder)
    say("kind", f"{'paired-end' if sample.paired else 'single-end'}, {_roles(sample)}, {sample.size:,} bytes")
    say("assembled", local_time(sample.created_at))
    say("last change", local_time(lead.updated_at))
    say("attempts", str(lead.attempts))
    if lead.step and lead.state != "done":
        say("upload step", step_words(lead.step))
    if lead.state == "uploading" and (doing := (live or {}).get(lead.id)):
        say("right now", progress.describe(doing))
    if lead.state == "queued" and lead.next_attempt_at > time.time():
        say("next attempt", local_time(lead.next_attempt_at))
    _write_landing(say, sample.landing)
    for note in notes(flags=(m.flags for m in sample.files), late=sample.late, warnings=sample.warnings):
        say("note", note)
    if lead.error:
        say("note" if lead.state == "done" else "last error", lead.error)
    print("  members", file=out)
    for m in sample.files:
        lane = f"lane {m.lane}" if m.lane is not None else "      "
        print(f"    {m.role or 'single':<6} {lane:<7} file {m.id:<6} {m.size:>14,} bytes  md5 {m.md5 or '-':<32}  "
              f"{escape_control(m.path)}", file=out)
    print(file=out)


def _sayer(out: TextIO) -> Any:
    def say(label: str, value: str) -> None:
        print(f"  {label:<13} {escape_control(value)}", file=out)
    return say


def _write_landing(say: Any, landing: dict[str, Any] | None) -> None:
    """Where it lands (project, tags, metadata as sent) and what was left out, and why."""
    if landing is None:
        say("landing", "not planned yet (no project, tags or metadata recorded)")
        return
    project, name = landing.get("project"), landing.get("project_name")
    say("project", f"{project}{f' ({name})' if name else ''}" if project else "none (the sample stays private)")
    say("tags", ", ".join(map(str, landing.get("tags") or [])) or "none")
    metadata = landing.get("metadata") or {}
    if metadata:
        say("metadata", ", ".join(f"{k}={v}" for k, v in metadata.items()))
    for field, reason in landing.get("omitted") or []:
        say("left out", f"{field}: {reason}")


def sample_json(sample: SampleRow, live: dict[int, dict[str, Any]] | None = None) -> dict[str, Any]:
    """`seqdrop show s12 --json`: status --json's sample entry, and its members and landing in full
    (and "progress" while its upload is in flight)."""
    lead = lead_of(sample) or sample.files[0]
    doing = (live or {}).get(lead.id) if lead.state == "uploading" else None
    return {**sample.public(), "late": sample.late, "warnings": list(sample.warnings),
            **({"progress": doing} if doing else {}), "folder": sample.folder, "key": sample.key, "created_at": iso_utc(sample.created_at),
            "landing": sample.landing,
            "members": [{**m.public(), "md5": m.md5, "step": m.step, "flags": m.flags, "mtime_ns": m.identity.mtime_ns,
                         "device": m.identity.dev, "inode": m.identity.inode} for m in sample.files]}


def write_membership(out: TextIO, row: FileRow, sample: SampleRow) -> None:
    """In a file's story: the sample it belongs to and its siblings."""
    others = [m for m in sample.files if m.id != row.id]
    print(f"    sample        s{sample.id} {escape_control(sample.name)} ({_roles(sample)}); this file is "
          f"{row.role or 'single'}{f' lane {row.lane}' if row.lane is not None else ''}"
          f"{'; `seqdrop show s' + str(sample.id) + '` tells the whole sample' if others else ''}", file=out)
    for m in others:
        print(f"      sibling     {m.role or 'single'}{f' L{m.lane}' if m.lane is not None else ''} file {m.id}: "
              f"{escape_control(m.path)}", file=out)


# -- retry -----------------------------------------------------------------------------------------
def retry_lines(asked: dict[int, FileRow | None], samples: dict[int, SampleRow], states: tuple[str, ...]) -> list[str]:
    """What `seqdrop retry ID...` did for each id named: a member's id retries its whole sample."""
    said: list[str] = []
    seen_samples: set[int] = set()
    for i, row in asked.items():
        if row is None:
            continue
        sample = samples.get(row.sample) if row.sample is not None else None
        if sample is not None and len(sample.files) > 1:
            if sample.id in seen_samples:
                continue
            seen_samples.add(sample.id)
            lead = lead_of(sample) or row
            what = f"sample {escape_control(sample.name)} ({len(sample.files)} files, s{sample.id})"
            if lead.state in states:
                said.append(f"{what} put back in the queue")
            else:
                said.append(f"{what} is {lead.state}, not {' or '.join(states)}: left as it is")
        elif row.state not in states:
            said.append(f"file {i} is {row.state}, not {' or '.join(states)}: left as it is "
                        f"({escape_control(row.path)})")
    return said
