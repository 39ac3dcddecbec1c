"""`seqdrop status` and `seqdrop show`: what the queue holds, filtered, and one file's whole story.

Both read the daemon's queue through a read-only connection (WAL: they never block the daemon). With no
filter, `status` shows the counts, every file that is not done and the last few done: the whole queue of
a busy instrument is tens of thousands of lines nobody reads (`--json` still gives all of them to
scripts). Times on the text lines are local; `--json` keeps UTC (design.md's shape). Samples of several
files are told as one line, one story (daemon/commands/sample_view.py); counts stay per file (the
contract) with the samples' counts beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TextIO

from daemon.commands import sample_view as view
from daemon.commands.queue_owner import ownership_problem
from daemon.config import Settings
from daemon.errors import ConfigError
from daemon.operations import progress
from daemon.queue.base import STATES, FileRow, Identity, Listed, SampleBrief, SampleRow, Version, iso_utc
from daemon.redact import escape_control, looks_like_sample_id

EXIT_OK, EXIT_NOT_FOUND = 0, 1
DONE_SHOWN = 10                      # the last few done files the default view shows
NOT_DONE = tuple(s for s in STATES if s != "done")
_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


# -- argument types (argparse turns their errors into a usage message and exit 2) ----------------
def parse_since(text: str, *, now: float | None = None) -> float:
    """`30m`, `2h`, `3d`, `1w` ago, or an ISO date/time (local unless it names a zone): epoch seconds."""
    if m := _RELATIVE.fullmatch(text.strip().lower()):
        return (time.time() if now is None else now) - float(m[1]) * _UNIT_S[m[2]]
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a time; use e.g. 2h, 3d, 2026-11-25 or "
                                         f"2026-11-25T14:00") from None
    return (moment.astimezone() if moment.tzinfo is None else moment).timestamp()


def parse_states(text: str) -> list[str]:
    """One state or several, comma-separated."""
    states = [s.strip().lower() for s in text.split(",") if s.strip()]
    unknown = [s for s in states if s not in STATES]
    if unknown or not states:
        raise argparse.ArgumentTypeError(f"{text!r} is not a state; the states are {', '.join(STATES)}")
    return states


def require_config(path: str) -> None:
    """status, show and retry read the queue a config names: without the config there is no queue to
    read, and "no queue yet" would be a wrong answer (the daemon may well have one elsewhere)."""
    if not os.path.exists(path):
        raise ConfigError(f"no config at {path}", fix="pass --config PATH (or set SEQDROP_CONFIG) naming the "
                                                      "daemon's config, e.g. /etc/seqdrop/config.toml")


# -- status ----------------------------------------------------------------------------------------
def status(settings: Settings, store: Any, args: argparse.Namespace, *, out: TextIO | None = None) -> int:
    """`seqdrop status`: counts, then one line per file of the selection; store None = no queue yet."""
    out = out or sys.stdout
    try:
        counts = store.counts() if store else {s: 0 for s in STATES}
        paused = store.get_meta("paused") if store else None
        filtered = bool(args.state or args.run or args.since is not None)
        live = progress.read_live(store) if store else {}     # the uploads in flight, from the daemon
        if args.json:   # all files, unless filtered (the contract)
            entries = store.public_json(**_filter_args(args), limit=args.limit) if store else []
            samples = store.samples_json(**_filter_args(args), limit=args.limit) if store else []
            _write_json(out, counts, progress.merge_json(entries, live), paused, samples)
            return EXIT_OK
        if store is None:
            print(f"No queue yet at {settings.queue.path} (the daemon has not run with this config).", file=out)
            return EXIT_OK
        if filtered:
            rows, total = _filtered(store, args)
            left_out = (f"{total - len(rows)} more matching files not shown (raise --limit)"
                        if total > len(rows) else "")
        else:
            rows, left_out = _default_view(store, counts, args.limit)
        samples, sample_counts = _samples_of(store, rows), store.sample_counts()
    finally:
        if store:
            store.close()
    if trap := ownership_problem(settings.queue.path):   # readable here, but the daemon cannot write it
        print(f"WARNING: {trap[0]}\n  fix: {trap[1]}\n", file=out)
    _write_text(out, counts, view.lines(rows, samples, live), paused, left_out, filtered, sample_counts)
    return EXIT_OK


def _samples_of(store: Any, rows: list[Listed]) -> dict[int, SampleBrief]:
    """What the lines say of the samples the listed files belong to, by local id."""
    return store.sample_briefs({r.sample for r in rows if r.sample is not None})


def _filter_args(args: argparse.Namespace) -> dict[str, Any]:
    """The store's filters from --state, --since and --run (a value with a "/" is a folder, and all
    below it; any other is a run folder's name, or a glob of it)."""
    where: dict[str, Any] = {"states": tuple(args.state or ()), "since": args.since}
    if args.run and "/" in args.run:
        where["under"] = os.path.abspath(args.run)
    elif args.run:
        where["run"] = args.run
    return where


def _filtered(store: Any, args: argparse.Namespace) -> tuple[list[Listed], int]:
    """The files the filters select (all with none), at most --limit of them, and how many matched."""
    return store.find_files(**_filter_args(args), limit=args.limit)


def _default_view(store: Any, counts: dict[str, int], limit: int | None) -> tuple[list[Listed], str]:
    """Everything not done, and the last DONE_SHOWN done (the most recent `limit` of these with --limit)."""
    done_shown = DONE_SHOWN if limit is None else min(DONE_SHOWN, limit)
    busy, _ = store.find_files(states=NOT_DONE, limit=limit)
    done, _ = store.find_files(states=("done",), limit=done_shown)
    rows = sorted(busy + done, key=lambda r: r.id)
    if limit is not None and len(rows) > limit:
        keep = {r.id for r in sorted(rows, key=lambda r: (r.updated_at, r.id))[-limit:]}
        rows = [r for r in rows if r.id in keep]
    hidden_done = counts["done"] - sum(r.state == "done" for r in rows)
    hidden_other = sum(counts[s] for s in NOT_DONE) - sum(r.state != "done" for r in rows)
    parts = ([f"{hidden_done} done"] if hidden_done else []) + ([f"{hidden_other} other"] if hidden_other else [])
    if not parts:
        return rows, ""
    return rows, (f"{' and '.join(parts)} files not shown: `seqdrop status --state done` lists them; "
                  f"--since 1d, --run NAME or --limit N narrow it")


def _local(ts: float) -> str:
    return view.local_time(ts)


def _write_text(out: TextIO, counts: dict[str, int], lines: list[str], paused: Any, left_out: str,
                filtered: bool, sample_counts: dict[str, int]) -> None:
    if paused:
        print(f"UPLOADS PAUSED: {paused.get('reason')}\n  fix: check the API key with `seqdrop check`; "
              f"uploads resume by themselves once it works.\n", file=out)
    print("  ".join(f"{s} {counts[s]}" for s in STATES), file=out)
    if sample_counts:
        print(view.counts_line(sample_counts), file=out)
    if lines:
        print(file=out)
        print(f"{'ID':>5}  {'UPDATED (local)':<19}  {'STATE':<9} {'TRIES':>5}  {'SAMPLE':<16}  PATH", file=out)
        out.write("".join(lines))
    elif filtered:
        print("\nNo file matches.", file=out)
    if left_out:
        print(f"\n({left_out})", file=out)


def _write_json(out: TextIO, counts: dict[str, int], entries: list[str], paused: Any,
                samples: list[str]) -> None:
    """design.md's document, one file (and one sample) per line (each entry already encoded by the store)."""
    out.write('{\n  "counts": ' + json.dumps(counts) + ',\n  "files": [')
    out.write(",".join("\n    " + e for e in entries))
    out.write(("\n  " if entries else "") + '],\n  "samples": [')
    out.write(",".join("\n    " + e for e in samples))
    out.write(("\n  " if samples else "") + '],\n  "paused": '
              + json.dumps(paused.get("reason") if paused else None) + "\n}\n")


def retried_text(uploads: int, files: int) -> str:
    """`3 files put back in the queue`, or `2 samples (5 files) put back …` when some held several files."""
    if files > uploads:
        return f"{uploads} sample{'s' if uploads != 1 else ''} ({files} files) put back in the queue"
    return f"{uploads} file{'s' if uploads != 1 else ''} put back in the queue"


# -- show ------------------------------------------------------------------------------------------
def show(settings: Settings, store: Any, what: str, *, as_json: bool = False, out: TextIO | None = None) -> int:
    """`seqdrop show PATH|SAMPLE_ID|ID|sN`: every version of the file's path with its sample and siblings;
    a One Codex sample id or `s12` (a local sample, as `status` lists it): the whole sample's story."""
    out = out or sys.stdout
    if store is None:
        print(f"seqdrop: no queue yet at {settings.queue.path}; nothing to show", file=sys.stderr)
        return EXIT_NOT_FOUND
    try:
        found = _lookup(store, what)
        found.live = progress.read_live(store)
    finally:
        store.close()
    if not found.stories and not found.whole:
        print(f"seqdrop: no file or sample {escape_control(what)!r} in the queue {settings.queue.path} — give a "
              f"path, a sample id, a file ID or a local sample (s12) as `seqdrop status` shows them", file=sys.stderr)
        return EXIT_NOT_FOUND
    if as_json:
        print(json.dumps(_show_json(found), indent=2, ensure_ascii=False), file=out)
        return EXIT_OK
    if found.note:
        print(found.note, file=out)
    for sample in found.whole:
        view.write_sample_story(out, sample, found.live)
    for path, versions in found.stories.items():
        _write_story(out, path, versions, found.samples, found.live)
    return EXIT_OK


@dataclass
class _Found:
    """What `show` tells: whole samples (asked by sample id or sN), file stories, their samples, a note."""
    stories: dict[str, list[Version]] = field(default_factory=dict)
    whole: list[SampleRow] = field(default_factory=list)
    samples: dict[int, SampleRow] = field(default_factory=dict)
    note: str = ""
    live: dict[int, dict[str, Any]] = field(default_factory=dict)   # the uploads in flight, by file id


def _show_json(found: _Found) -> Any:
    """A sample asked for: its document (a list of them if a sample id names several); a file: its
    versions as before, each with its sample's name and siblings."""
    if found.whole:
        docs = [view.sample_json(s, found.live) for s in found.whole]
        return docs[0] if len(docs) == 1 else docs
    doc = []
    for v in (v for versions in found.stories.values() for v in versions):
        entry = {**v.row.public(), "created_at": iso_utc(v.created_at), "md5": v.row.md5, "step": v.row.step,
                 "mtime_ns": v.row.identity.mtime_ns, "device": v.row.identity.dev, "inode": v.row.identity.inode,
                 "claimed_by": v.claimed_by, **_live_of(v.row, found.live)}
        if (sample := found.samples.get(v.row.sample or -1)) is not None:
            entry["sample_name"] = sample.name
            entry["siblings"] = [m.id for m in sample.files if m.id != v.row.id]
        doc.append(entry)
    return doc


def _lookup(store: Any, what: str) -> _Found:
    """The sample (sN, or a sample id held by an assembled sample) or the file versions `what` names."""
    if (ref := view.sample_ref(what)) is not None and (sample := store.sample(ref)) is not None:
        return _Found(whole=[sample])
    found: list[Version] = []
    if looks_like_sample_id(what):          # before the ID: a sample id may be all decimal digits
        found = store.versions(sample_id=what)
        wanted = {v.row.sample for v in found if v.row.sample is not None}
        if wanted and all(v.row.sample is not None for v in found):
            return _Found(whole=list(store.samples_by_id(wanted).values()))
    if not found and what.isdigit() and int(what) < 2**63:
        found = store.versions(file_id=int(what))
    note = ""
    if not found:
        path = os.path.abspath(what)
        found = store.versions(path=path)
        if not found and os.path.isfile(path):      # moved or renamed since: the same version elsewhere?
            match = store.confirmed_matches([(path, Identity.of(os.stat(path)))]).get(path)
            if match is not None:
                found = [v for v in store.versions(path=match.path) if v.row.id == match.id]
                note = (f"{escape_control(path)} is the file version recorded at {escape_control(match.path)} "
                        f"(moved or renamed since).\n")
    paths = list(dict.fromkeys(v.row.path for v in found))
    stories = {p: store.versions(path=p) for p in paths}
    samples = store.samples_by_id({v.row.sample for vs in stories.values() for v in vs if v.row.sample is not None})
    return _Found(stories=stories, samples=samples, note=note)


def _live_of(row: FileRow, live: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """{"progress": ...} for a file the daemon is uploading now, else nothing."""
    return {"progress": live[row.id]} if row.state == "uploading" and row.id in live else {}


def _write_story(out: TextIO, path: str, versions: list[Version], samples: dict[int, SampleRow],
                 live: dict[int, dict[str, Any]]) -> None:
    count = f"{len(versions)} version{'s' if len(versions) != 1 else ''}"
    print(f"{escape_control(path)} — {count} (times are local)", file=out)
    for n, v in enumerate(versions, 1):
        r, ident = v.row, v.row.identity
        print(f"\n  version {n} (file ID {r.id}): {view.headline(r.state, r.sample_id)}", file=out)
        print(f"    first seen    {_local(v.created_at)}", file=out)
        print(f"    file          {ident.size:,} bytes, modified {_local(ident.mtime_ns / 1e9)} "
              f"(device {ident.dev}, inode {ident.inode})", file=out)
        print(f"    last change   {_local(r.updated_at)}", file=out)
        if r.sample_id:
            print(f"    sample id     {escape_control(r.sample_id)}", file=out)
        if (sample := samples.get(r.sample or -1)) is not None:
            view.write_membership(out, r, sample)
        if r.md5:
            print(f"    md5           {r.md5}", file=out)
        print(f"    attempts      {r.attempts}", file=out)
        if r.step and r.state != "done":
            print(f"    upload step   {view.step_words(r.step)}", file=out)
        if doing := _live_of(r, live).get("progress"):
            print(f"    right now     {progress.describe(doing)}", file=out)
        if v.claimed_by:      # a shared queue (PostgreSQL): which host is sending it
            print(f"    held by       {escape_control(v.claimed_by)}", file=out)
        if r.state == "queued" and r.next_attempt_at > time.time():
            print(f"    next attempt  {_local(r.next_attempt_at)}", file=out)
        if r.flags:
            print(f"    flags         {escape_control(r.flags)}", file=out)
        if r.error:
            print(f"    {'note' if r.state == 'done' else 'last error':<13} {escape_control(r.error)}", file=out)
    print(file=out)
