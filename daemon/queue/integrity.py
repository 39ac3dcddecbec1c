"""Queue damage: find it, set the damaged queue aside, rebuild it from the audit journal.

design.md ("Rules"): the queue is never silently replaced by an empty one. A queue truncated to
0 bytes opens as a valid empty database, a queue whose WAL was lost after a kill -9 opens as an
older one, and bytes changed in an index pass `PRAGMA quick_check`: each of those once made the
daemon upload confirmed files again (issue 10). So:

- `check(path)` reads the file's header, runs `PRAGMA integrity_check` (which, unlike quick_check,
  compares every index with its table), checks the schema, and compares the queue with the newest
  records of the audit journal (daemon/queue/journal.py): a version the journal records as done
  that the queue does not hold as done, or whose latest record is "sample.posted" (S3 holds its
  bytes, its confirm may be performed) with a sample the queue does not hold for it, means the
  queue lost committed transactions;
- `set_aside(path)` renames the queue and its -wal/-shm to `<name>.damaged-<UTC time>` (kept for
  inspection, never deleted; mode 0600);
- `rebuild(path, journal)` makes a new queue through SqliteStore's public verbs in which every
  version the journal saw end is in its final state again: `done` with its sample_id and md5, so
  nothing confirmed is uploaded again; and every version whose latest record is a sample in flight
  ("sample.initialized" / "sample.posted") `queued` at that step with that sample id and md5, so
  its upload resumes with that sample (a posted one is confirmed again, never sent as a new
  sample); the lead of a sample of several files with its members and sample row
  (daemon/queue/journal_samples.py), never alone. Rows still readable in the set-aside file can be added (`salvage_from`): ended versions
  the journal lacks (a queue older than its journal).
- `recover(path)` does the three in order and says what it did.

Versions with no sample yet are not rebuilt: the start-up scan finds their files again.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime

from daemon.queue import journal_samples
from daemon.queue.base import (
    INIT_STEPS,
    POSTED_STEPS,
    STEP_INITIALIZED,
    STEP_MP_COMPLETE,
    STEP_MP_INIT,
    STEP_NONE,
    STEP_POSTED,
    TERMINAL,
    Identity,
)
from daemon.queue.journal import (
    FILE_ENDED,
    IN_FLIGHT_EVENTS,
    SAMPLE_POSTED,
    fsync_directory,
    journal_path,
    read_records,
)
from daemon.queue.sqlite import SqliteStore
from daemon.redact import looks_like_sample_id

OK, NEW = "ok", "new"
MISSING, EMPTY, TRUNCATED, NOT_A_DATABASE, CORRUPT, NO_SCHEMA, BEHIND_JOURNAL = (
    "missing", "empty", "truncated", "not_a_database", "corrupt", "no_schema", "behind_journal")
UNREADABLE = "unreadable"
# Damage that setting aside and rebuilding repairs. UNREADABLE is not among them: a disk that
# answers EIO or a permission problem needs a person (the daemon exits non-zero, systemd retries).
DAMAGE = frozenset({MISSING, EMPTY, TRUNCATED, NOT_A_DATABASE, CORRUPT, NO_SCHEMA, BEHIND_JOURNAL})

SQLITE_MAGIC = b"SQLite format 3\x00"
RECENT_RECORDS = 2000     # journal records compared with the queue (a lost WAL loses the newest ones)
MAX_PROBLEMS = 20         # integrity_check lines kept in a Verdict
REQUIRED_COLUMNS = frozenset({"id", "path", "dev", "inode", "size", "mtime_ns", "state", "step", "sample_id",
                              "init", "md5", "attempts", "next_attempt_at", "error", "claimed_by",
                              "stable_since", "created_at", "updated_at"})

Version = journal_samples.Version
_INIT_STEP_OF = {STEP_POSTED: STEP_INITIALIZED, STEP_MP_COMPLETE: STEP_MP_INIT}
_MULTIPART_INIT_KEYS = ("sample_id", "bucket", "key", "callback_url", "filename")


@dataclass(frozen=True)
class Verdict:
    """What check() found. `detail` is a sentence for a person; `problems` SQLite's own lines."""

    kind: str
    detail: str
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.kind in (OK, NEW)

    @property
    def damaged(self) -> bool:
        """Set aside and rebuild (recover() does)."""
        return self.kind in DAMAGE


@dataclass(frozen=True)
class Recovery:
    """What recover() did: the verdict, where the damaged files went (None if there were none),
    and how many versions the new queue holds."""

    verdict: Verdict
    set_aside_as: str | None
    restored: int


def check(path: str, *, journal: str | None = None, recent: int = RECENT_RECORDS) -> Verdict:
    """Is the queue at `path` whole and as new as its journal (default: journal_path(path))?
    Read-only; safe while a daemon uses the queue."""
    journal = journal if journal is not None else journal_path(path)
    try:
        verdict = _check_file(path, journal)
        if verdict is None:
            verdict = _check_database(path, journal, recent)
    except OSError as exc:
        return Verdict(UNREADABLE, f"the queue {path} cannot be read ({exc.strerror or exc}): check the disk "
                                   "and the file's permissions")
    return verdict


def set_aside(path: str, *, clock: Callable[[], float] = time.time) -> str:
    """Rename the queue and its -wal/-shm to `<path>.damaged-<UTC time>[-n]`; return the new name
    of the queue file. Raises FileNotFoundError if there is nothing to set aside."""
    present = [suffix for suffix in ("", "-wal", "-shm") if os.path.lexists(path + suffix)]
    if not present:
        raise FileNotFoundError(f"no queue at {path} to set aside")
    base = f"{path}.damaged-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(clock()))}"
    target, n = base, 1
    while any(os.path.lexists(target + suffix) for suffix in ("", "-wal", "-shm")):
        n += 1
        target = f"{base}-{n}"
    for suffix in present:
        os.rename(path + suffix, target + suffix)
        if not os.path.islink(target + suffix):
            os.chmod(target + suffix, 0o600)   # kept for inspection, and it holds S3 POST policies
    fsync_directory(os.path.dirname(os.path.abspath(path)))
    return target


def rebuild(path: str, journal: str, *, salvage_from: str | None = None, batch_size: int = 5000) -> int:
    """Create a new queue at `path` holding, in its final state, every version that ended
    according to the journal (and, if `salvage_from` names a set-aside queue, every ended version
    still readable there that the journal lacks). Returns how many versions it holds.
    Raises FileExistsError if a queue is still at `path` (set it aside first)."""
    if any(os.path.lexists(path + suffix) for suffix in ("", "-wal", "-shm")):
        raise FileExistsError(f"a queue is still at {path}: set it aside before rebuilding")
    ended = _latest_in_journal(journal)
    if salvage_from is not None:
        for version, row in _salvage(salvage_from):
            known = ended.get(version)
            # The queue commits an ending before the journal hears of it: an ending the journal lost
            # may be newer than the sample record it holds.
            if known is None or (known.state == "queued" and (row.state == "done" or row.at >= known.at)):
                ended[version] = row
    journal_samples.drop_torn(ended)
    rows = sorted(ended.items(), key=lambda item: item[1].at)     # by time: ids follow history
    now = [time.time()]
    store = SqliteStore(path, clock=lambda: now[0])
    restored: dict[Version, int] = {}
    try:
        for start in range(0, len(rows), batch_size):
            with store.batch():
                for version, entry in rows[start:start + batch_size]:
                    now[0] = entry.at
                    restored[version] = file_id = store.add_seen(version[0], Identity(*version[1:]))
                    if entry.sample is None or journal_samples.restore(store, file_id, entry.sample):
                        _restore(store, file_id, entry)
        now[0] = time.time()
        with store.batch():
            journal_samples.restore_ended(store, journal, restored)
        store.set_meta("rebuilt", {"at": now[0], "from_journal": journal, "salvaged_from": salvage_from,
                                   "versions": len(rows)})
    finally:
        store.close()
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.chmod(path + suffix, 0o600)
    return len(rows)


def _restore(store: SqliteStore, file_id: int, entry: _Entry) -> None:
    """Put a new row into the entry's state (a version in flight: queued at its step, with its sample)."""
    if entry.state == "done":
        store.mark_done(file_id, sample_id=entry.sample_id or "", md5=entry.md5, error=entry.error)
    elif entry.state != "queued":
        store.set_state(file_id, entry.state, error=entry.error, sample_id=entry.sample_id, md5=entry.md5)
    else:
        init_step = _INIT_STEP_OF.get(entry.step, entry.step)
        store.save_init(file_id, entry.sample_id or "", entry.init or "", step=init_step)
        if entry.step in POSTED_STEPS and entry.md5:
            store.save_posted(file_id, entry.md5, step=entry.step)
        store.set_state(file_id, "queued")


def recover(path: str, *, journal: str | None = None, clock: Callable[[], float] = time.time) -> Recovery:
    """check(); if the queue is damaged, set_aside() and rebuild() (salvaging what the damaged
    file still holds). An undamaged queue is left alone (restored = 0)."""
    journal = journal if journal is not None else journal_path(path)
    verdict = check(path, journal=journal)
    if not verdict.damaged:
        return Recovery(verdict, None, 0)
    aside = None
    if any(os.path.lexists(path + suffix) for suffix in ("", "-wal", "-shm")):
        aside = set_aside(path, clock=clock)
    salvage = aside if aside is not None and os.path.exists(aside) else None
    return Recovery(verdict, aside, rebuild(path, journal, salvage_from=salvage))


# -- checking -------------------------------------------------------------------------------------

def _check_file(path: str, journal: str) -> Verdict | None:
    """What the file's size and header say, before SQLite opens it; None if they look right."""
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        if journal_has_records(journal):
            return Verdict(MISSING, f"the queue {path} is gone but the audit journal {journal} records uploads: "
                                    "it will be rebuilt from the journal")
        return Verdict(NEW, f"no queue at {path} yet: it will be created")
    if size == 0:
        return Verdict(EMPTY, f"the queue {path} is empty (0 bytes): it was truncated or replaced")
    with open(path, "rb") as handle:
        header = handle.read(100)
    if len(header) < 100 or not header.startswith(SQLITE_MAGIC):
        return Verdict(NOT_A_DATABASE, f"the queue {path} is not an SQLite database (it was overwritten)")
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    header_size_valid = header[24:28] == header[92:96]    # SQLite's "version-valid-for" rule
    if size % page_size or (header_size_valid and size < pages * page_size):
        return Verdict(TRUNCATED, f"the queue {path} is truncated ({size} bytes; its header says "
                                  f"{pages * page_size})")
    return None


def _check_database(path: str, journal: str, recent: int) -> Verdict:
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    except sqlite3.Error as exc:
        return _sqlite_verdict(path, exc)
    try:
        db.execute("PRAGMA busy_timeout = 30000")
        lines = [row[0] for row in db.execute(f"PRAGMA integrity_check({MAX_PROBLEMS})")]
        if lines != ["ok"]:
            return Verdict(CORRUPT, f"the queue {path} is damaged: {lines[0]}", tuple(lines))
        columns = {row[1] for row in db.execute("PRAGMA table_info(files)")}
        meta = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone()
        if not columns or meta is None:
            return Verdict(NO_SCHEMA, f"the queue {path} has no seqdrop tables (its contents were lost, e.g. "
                                      "a WAL removed before it was ever checkpointed)")
        if not REQUIRED_COLUMNS <= columns:
            missing = ", ".join(sorted(REQUIRED_COLUMNS - columns))
            return Verdict(NO_SCHEMA, f"the queue {path} lacks the columns {missing}")
        return _compare_with_journal(db, path, journal, recent)
    except sqlite3.Error as exc:
        return _sqlite_verdict(path, exc)
    finally:
        db.close()


def _sqlite_verdict(path: str, exc: sqlite3.Error) -> Verdict:
    text = str(exc)
    if "not a database" in text:
        return Verdict(NOT_A_DATABASE, f"the queue {path} is not an SQLite database ({text})")
    if "malformed" in text or "corrupt" in text:
        return Verdict(CORRUPT, f"the queue {path} is damaged ({text})", (text,))
    return Verdict(UNREADABLE, f"the queue {path} cannot be read ({text}): check the disk and the file's "
                               "permissions")


def _compare_with_journal(db: sqlite3.Connection, path: str, journal: str, recent: int) -> Verdict:
    """The queue is behind if it does not hold as done a version the journal's newest records saw
    done, or does not hold with its sample a version whose latest record is "sample.posted" (its
    confirm may be performed). A version is matched by path and identity, or by identity alone (a
    file moved)."""
    unmatched: dict[tuple[int, int, int, int], str | None] = {}    # identity → the sample it must have
    first_missing = None
    for (vpath, *identity), sample_id in _expected(journal, recent).items():
        # "+state": look the path up in files_path; by the state index SQLite would walk every done row
        # (2,000 look-ups in a 100,000-row queue: 43 s instead of 0.1 s at each start)
        if sample_id is None:
            rows = db.execute("SELECT dev, inode, size, mtime_ns FROM files WHERE path = ? AND +state = 'done'",
                              (vpath,)).fetchall()
        else:
            rows = db.execute("SELECT dev, inode, size, mtime_ns FROM files WHERE path = ? AND +sample_id = ?",
                              (vpath, sample_id)).fetchall()
        if tuple(identity) not in {tuple(r) for r in rows}:
            unmatched[tuple(identity)] = sample_id
            first_missing = first_missing or vpath
    if unmatched:
        for *identity, state, sample_id in db.execute(
                "SELECT dev, inode, size, mtime_ns, state, sample_id FROM files WHERE state = 'done' OR "
                "sample_id IS NOT NULL"):
            wanted = unmatched.get(tuple(identity), "")
            if (wanted is None and state == "done") or (wanted and wanted == sample_id):
                del unmatched[tuple(identity)]
    if unmatched:
        return Verdict(BEHIND_JOURNAL, f"the queue {path} is older than its audit journal: {len(unmatched)} "
                                       f"uploaded version(s) are missing from it (e.g. {first_missing}); "
                                       "its newest transactions were lost")
    return Verdict(OK, f"the queue {path} is whole")


def _expected(journal: str, recent: int) -> dict[Version, str | None]:
    """Among the journal's newest `recent` endings and posted samples, each version's latest: None
    if it ended done, its sample id if it is posted (a version ended otherwise expects nothing)."""
    newest: deque[tuple[Version, dict]] = deque(maxlen=recent)
    for record in read_records(journal):
        if record.get("event") in (FILE_ENDED, SAMPLE_POSTED):
            version = journal_samples.version_of(record)
            if version is not None:
                newest.append((version, record))
    latest = dict(newest)           # a later record replaces an earlier one
    expected: dict[Version, str | None] = {}
    for version, record in latest.items():
        if record.get("event") == FILE_ENDED and record.get("state") == "done":
            expected[version] = None
        elif record.get("event") == SAMPLE_POSTED and looks_like_sample_id(record.get("sample_id")):
            expected[version] = record["sample_id"]
    return expected


def journal_has_records(journal: str) -> bool:
    """Does the audit journal record any version that ended or has a sample (is there anything to lose)?"""
    kinds = (FILE_ENDED, *IN_FLIGHT_EVENTS)
    return next((r for r in read_records(journal) if r.get("event") in kinds), None) is not None


# -- rebuilding -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Entry:
    """What a rebuilt row holds: a final state, or `queued` for a version whose sample is in flight
    (then `step`, and for the multipart route `init`, say where its upload resumes)."""

    state: str
    sample_id: str | None
    md5: str | None
    error: str | None
    at: float                       # when it ended (or its sample was recorded): rows follow history
    step: str = STEP_NONE
    init: str | None = None
    sample: journal_samples.JournaledSample | None = None    # the sample of several files it leads


def _latest_in_journal(journal: str) -> dict[Version, _Entry]:
    """Each version's latest ending or sample in flight in the journal (a failed version retried and
    then done: done; a version whose confirm's answer was lost: queued at `posted` with its sample)."""
    latest: dict[Version, _Entry] = {}
    for record in read_records(journal):
        version = journal_samples.version_of(record)
        if version is None:
            continue
        at = datetime.fromisoformat(record["time"]).timestamp()
        if record.get("event") == FILE_ENDED:
            entry = _ending(record.get("state"), record.get("sample_id"), record.get("md5"), record.get("error"), at)
        elif record.get("event") in IN_FLIGHT_EVENTS:
            entry = _in_flight(record, at)
        else:
            continue
        if entry is not None:
            latest[version] = entry        # a later line replaces an earlier one
    return latest


def _in_flight(record: dict, at: float) -> _Entry | None:
    """A sample record as a row to resume, or None if it is not a valid one. A multipart step without
    a usable init resumes at mp_initialized (its sample is cancelled, or found done, never called
    back blind); a posted step without its MD5 at its init step."""
    step, sample_id, md5, init = (record.get(k) for k in ("step", "sample_id", "md5", "init"))
    if step not in INIT_STEPS + POSTED_STEPS or not looks_like_sample_id(sample_id):
        return None
    md5 = md5 if isinstance(md5, str) and md5 else None
    init_json = None
    if step in (STEP_MP_INIT, STEP_MP_COMPLETE):
        if isinstance(init, dict) and all(isinstance(init.get(k), str) for k in _MULTIPART_INIT_KEYS) \
                and init["sample_id"] == sample_id:
            init_json = json.dumps(init)
        else:
            step = STEP_MP_INIT
    if step in POSTED_STEPS and md5 is None:
        step = _INIT_STEP_OF[step]
    sample = journal_samples.parse(record.get("sample"))
    if "sample" in record and sample is None:
        return None       # a sample's lead whose sample cannot be read: never resumed alone (a half sample)
    return _Entry("queued", sample_id, md5 if step in POSTED_STEPS else None, None, at, step, init_json, sample)


def _salvage(aside: str) -> Iterator[tuple[Version, _Entry]]:
    """Ended rows still readable in a damaged queue, one row at a time (a bad page costs only the
    rows on it). Ids come from the state index if it can be read, else from a table scan."""
    try:
        db = sqlite3.connect(f"file:{aside}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return
    try:
        for file_id in _salvage_ids(db):
            try:
                r = db.execute("SELECT path, dev, inode, size, mtime_ns, state, sample_id, md5, error, updated_at"
                               " FROM files WHERE id = ?", (file_id,)).fetchone()
            except sqlite3.Error:
                continue
            if r is None or not isinstance(r[0], str) or not all(isinstance(v, int) for v in r[1:5]):
                continue
            ending = _ending(r[5], r[6], r[7], r[8], r[9] if isinstance(r[9], float) else 0.0)
            if ending is not None:
                yield (r[0], r[1], r[2], r[3], r[4]), ending
    finally:
        db.close()


def _salvage_ids(db: sqlite3.Connection) -> list[int]:
    ids: list[int] = []
    for sql in ("SELECT id FROM files INDEXED BY files_state_updated WHERE state IN (%s)",
                "SELECT id FROM files NOT INDEXED WHERE state IN (%s)"):
        found: list[int] = []
        try:
            for row in db.execute(sql % ",".join("?" * len(TERMINAL)), tuple(TERMINAL)):
                found.append(row[0])
        except sqlite3.Error:
            pass                  # keep the ids read before the bad page
        ids = sorted(set(ids) | set(found))
    return ids


def _ending(state: object, sample_id: object, md5: object, error: object, ended_at: float) -> _Entry | None:
    """A valid final state, or None (a done version must carry a real sample id)."""
    if state not in TERMINAL:
        return None
    if state == "done" and not looks_like_sample_id(sample_id):
        return None
    text = [v if isinstance(v, str) else None for v in (sample_id, md5, error)]
    return _Entry(str(state), text[0], text[1], text[2], ended_at)


__all__ = ["DAMAGE", "Recovery", "Verdict", "check", "journal_has_records", "rebuild", "recover", "set_aside"]
