"""Live progress: what each upload in flight is doing right now, for `seqdrop status` and `show` in
another process, within seconds and without a disk flush per update (design.md, "Operator surfaces").

Three rooms:
- the Board, in the daemon's memory: per file in flight, its phase (the step being tried, e.g.
  init_upload, s3_post, confirm_upload), the bytes sent of its total, the recent rate, the attempt of
  the step and why it is being retried. The workers feed it (the `progress` callable the pipeline
  calls per block sent; Steps.call's hook per attempt and per retry).
- the Publisher, one daemon thread: at most once per interval, and only when the board changed (or,
  while uploads are in flight, every few seconds as a heartbeat), it replaces a small JSON file
  atomically (a temporary file, then os.replace; never fsync: the page cache is enough for a reader
  on the same machine). The file lives in $RUNTIME_DIRECTORY (systemd's RuntimeDirectory=, a tmpfs)
  when set, else beside the queue; mode 0600. The daemon records its path in the queue's meta table
  once at start, so a reader with another environment finds it. Nothing secret is in it: ids,
  numbers, step names and the retried error's text, scrubbed as every server word is.
- the reader (status, show): the file counts only while fresh (written in the last STALE_S seconds)
  and written by the process that holds the queue's lock, so a dead daemon's progress never shows.

Only the standard library here: `seqdrop status` imports this module.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from daemon.redact import escape_control, server_text

META_KEY = "progress_file"      # the queue's meta entry naming the file (written once per daemon start)
INTERVAL_S = 1.0                # at most one write per this
HEARTBEAT_S = 2.0               # while uploads are in flight, rewritten at least this often
STALE_S = 6.0                   # a reader ignores a file older than this (three missed heartbeats)
RATE_WINDOW_S = 10.0            # the rate is measured over about this much recent time
MIN_RATE_SPAN_S = 0.5           # no rate from less than this
REASON_CHARS = 200
SENDING = ("s3_post", "s3_upload_part")    # the steps that carry the file's bytes
RESTARTS = ("s3_post",)         # a new attempt of these sends the file again from its first byte
PUBLIC_KEYS = ("bytes_sent", "total", "rate_bps", "eta_s", "phase", "attempt", "retry_reason")

Progress = Callable[[int], None]


class _Live:
    """One file in flight (guarded by the Board's lock)."""

    def __init__(self, total: int, now: float) -> None:
        self.total, self.phase = total, "preparing"
        self.bytes_sent, self.attempt = 0, 1
        self.retry_reason: str | None = None
        self.waiting = False                # a failed attempt's wait before the next one
        self.marks: deque[tuple[float, int]] = deque([(now, 0)])   # (when, bytes_sent): the rate's window

    def trim(self, now: float) -> None:
        """Keep the marks of the window, and the last one before it."""
        while len(self.marks) > 1 and self.marks[1][0] <= now - RATE_WINDOW_S:
            self.marks.popleft()

    def rate_bps(self, now: float) -> float | None:
        self.trim(now)
        since, sent_then = self.marks[0]
        if self.phase not in SENDING or self.waiting or now - since < MIN_RATE_SPAN_S:
            return None
        return (self.bytes_sent - sent_then) / (now - since)

    def public(self, now: float) -> dict[str, Any]:
        rate = self.rate_bps(now)
        left = max(0, self.total - self.bytes_sent)
        eta = round(left / rate) if rate else None
        return {"bytes_sent": self.bytes_sent, "total": self.total,
                "rate_bps": None if rate is None else round(rate), "eta_s": eta, "phase": self.phase,
                "attempt": self.attempt, "retry_reason": self.retry_reason}


class Board:
    """The uploads in flight, in memory; thread-safe. A worker wraps each upload in `uploading()`, which
    binds the file to its thread for the steps' hook (`step`)."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.version = 0                    # bumped at every change: the publisher's "anything new?"
        self._files: dict[int, _Live] = {}
        self._lock = threading.Lock()
        self._thread = threading.local()

    @contextmanager
    def uploading(self, file_id: int, total: int) -> Iterator[Progress]:
        """While the block runs, file_id is in flight in this thread; yields the `progress` callable
        (bytes sent per call) for Pipeline.process."""
        with self._lock:
            self._files[file_id] = _Live(total, self.clock())
            self.version += 1
        self._thread.file_id = file_id
        try:
            yield lambda nbytes: self.sent(file_id, nbytes)
        finally:
            self._thread.file_id = None
            with self._lock:
                self._files.pop(file_id, None)
                self.version += 1

    def sent(self, file_id: int, nbytes: int) -> None:
        with self._lock:
            live = self._files.get(file_id)
            if live is None:
                return
            now = self.clock()
            live.bytes_sent += nbytes
            live.marks.append((now, live.bytes_sent))
            live.trim(now)
            self.version += 1

    def step(self, what: str, attempt: int, failure: BaseException | None) -> None:
        """Steps.call's hook, in the worker's thread: attempt number `attempt` of step `what` begins
        (failure None), or it failed with `failure` and will be tried again after a wait."""
        file_id = getattr(self._thread, "file_id", None)
        if file_id is None:
            return
        reason = None if failure is None else server_text(str(failure) or type(failure).__name__,
                                                          limit=REASON_CHARS)
        with self._lock:
            live = self._files.get(file_id)
            if live is None:
                return
            if failure is not None:
                live.retry_reason, live.attempt = reason, attempt + 1   # the attempt now waited for
                live.waiting = True
            else:
                live.waiting = False
                if attempt == 1 or what != live.phase:
                    live.retry_reason = None          # a new step: an earlier step's reason is over
                live.phase, live.attempt = what, attempt
                if what in RESTARTS:
                    live.bytes_sent = 0
                    live.marks = deque([(self.clock(), 0)])
            self.version += 1

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """{file id (as text): its public progress} as of now."""
        now = self.clock()
        with self._lock:
            return {str(fid): live.public(now) for fid, live in self._files.items()}


# -- the publisher (a daemon thread of `seqdrop run`) ---------------------------------------------
def progress_path(queue_path: str, environ: dict[str, str] | None = None) -> str:
    """Where the daemon of the queue at queue_path publishes: $RUNTIME_DIRECTORY (its first entry,
    named after the queue so two daemons may share it), else beside the queue."""
    real = os.path.realpath(queue_path)
    runtime = (os.environ if environ is None else environ).get("RUNTIME_DIRECTORY", "").split(":")[0]
    if runtime:
        digest = hashlib.sha256(real.encode()).hexdigest()[:12]
        return os.path.join(runtime, f"seqdrop-progress-{digest}.json")
    return real + ".progress.json"


class Publisher:
    """Writes the board to `path` at most once per interval_s while something changes (see the module
    docstring). A write that fails is logged once and costs the uploads nothing."""

    def __init__(self, board: Board, path: str, *, queue_path: str, log: Any, interval_s: float = INTERVAL_S,
                 heartbeat_s: float = HEARTBEAT_S, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.board, self.path, self.log = board, path, log
        self.queue_path = os.path.realpath(queue_path)
        self.interval_s, self.heartbeat_s = interval_s, heartbeat_s
        self.clock, self.wall = clock, wall
        self._written_version = board.version     # an empty board is not written: idle costs nothing
        self._written_at = float("-inf")
        self._in_flight = False             # the last file written named some upload
        self._failed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def publish(self) -> bool:
        """One look at the board: write it if it changed since the last write (or the heartbeat is due
        while uploads are in flight), never sooner than interval_s after the last write."""
        now = self.clock()
        if now - self._written_at < self.interval_s:
            return False
        version = self.board.version
        if version == self._written_version and not (self._in_flight and now - self._written_at >= self.heartbeat_s):
            return False
        files = self.board.snapshot()
        doc = {"pid": os.getpid(), "queue": self.queue_path, "written_at": round(self.wall(), 3), "files": files}
        self._written_at, self._written_version, self._in_flight = now, version, bool(files)
        try:
            _replace_private(self.path, json.dumps(doc, separators=(",", ":")).encode())
        except OSError as e:
            if not self._failed:
                self._failed = True
                self.log.warning("progress.write_failed", path=self.path, error=str(e),
                                 fix="status shows no live progress until this works; check the folder "
                                     "(RuntimeDirectory= in the unit, or the queue's folder)")
            return False
        self._failed = False
        return True

    def start(self) -> None:
        """Remove what an earlier daemon left (killed: nobody removed it), then publish from a thread."""
        self._remove()
        self._thread = threading.Thread(target=self._run, name="seqdrop-progress", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.publish()
            except Exception:          # a bug here must not end live progress for good, nor anything else
                self.log.exception("progress.publish_error")

    def close(self) -> None:
        """Stop the thread and remove the file (a reader would ignore it soon anyway)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        self._remove()

    def _remove(self) -> None:
        try:
            os.unlink(self.path)
        except OSError:
            pass


def _replace_private(path: str, data: bytes) -> None:
    """path holds data, or its old bytes: written to a 0600 temporary file beside it, then renamed over
    it. No fsync: a reboot may lose it, and should (it describes uploads of a process now gone)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    os.replace(tmp, path)


# -- the readers (`seqdrop status`, `seqdrop show`) ------------------------------------------------
MAX_FILE_BYTES = 1 << 20        # a board of 32 workers is a few kilobytes; more is no board of ours
PHASE_WORDS = {"preparing": "checking the file", "init_upload": "starting the sample", "s3_post": "sending",
               "confirm_upload": "confirming", "sample_state": "asking One Codex about the sample",
               "init_multipart_upload": "starting the sample", "s3_create_multipart": "starting the S3 upload",
               "s3_upload_part": "sending", "s3_complete_multipart": "completing the S3 upload",
               "multipart_callback": "confirming"}


def read_live(store: Any, *, wall: Callable[[], float] = time.time) -> dict[int, dict[str, Any]]:
    """{file id: progress} as the running daemon of this queue last published it; empty when it
    published nothing, or when what it published is stale or not the lock holder's."""
    path = store.get_meta(META_KEY)
    if not isinstance(path, str):
        return {}
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read(MAX_FILE_BYTES))
    except (OSError, ValueError):       # none yet, removed at shutdown, not ours to read, torn: nothing
        return {}
    if not _fresh(doc, store.path, wall()):
        return {}
    return {int(k): {key: v.get(key) for key in PUBLIC_KEYS}
            for k, v in doc["files"].items() if k.isdigit() and isinstance(v, dict)}


def _fresh(doc: Any, queue_path: str, now: float) -> bool:
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), dict):
        return False
    written, pid = doc.get("written_at"), doc.get("pid")
    if not isinstance(written, (int, float)) or not isinstance(pid, int) or isinstance(pid, bool):
        return False
    if not -1.0 <= now - written <= STALE_S:      # the same machine's clock: 1 s of slack either way
        return False
    return doc.get("queue") == os.path.realpath(queue_path) and holds_lock(pid, queue_path)


def holds_lock(pid: int, queue_path: str) -> bool:
    """Does process pid hold the queue's one-daemon lock (an flock on `<real path>.lock`,
    daemon/queue/storage.take_lock)? Read from /proc/locks, which leaves the lock alone: probing it
    with flock could make a daemon starting at that instant believe the queue taken."""
    try:
        inode = os.stat(os.path.realpath(queue_path) + ".lock").st_ino
    except OSError:
        return False
    try:
        with open("/proc/locks") as f:
            text = f.read()
    except OSError:
        return _alive(pid)              # no /proc: freshness alone decides
    for line in text.splitlines():
        # "3: FLOCK  ADVISORY  WRITE 1234 fe:00:5417198 0 EOF"; "3: -> FLOCK ..." is a waiter
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[4] == str(pid) \
                and fields[5].rsplit(":", 1)[-1] == str(inode):
            return True
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:             # another user's process: alive
        return True
    return True


def merge_json(entries: list[str], live: dict[int, dict[str, Any]]) -> list[str]:
    """`status --json` entries (each a JSON object the store encoded, id first) with "progress" added
    to those of uploading files in flight; the others are passed through unparsed (100,000 stay fast)."""
    if not live:
        return entries
    by_prefix = {f'{{"id":{fid},': fid for fid in live}
    out = []
    for entry in entries:
        fid = by_prefix.get(entry[:entry.find(",") + 1])
        if fid is not None:
            doc = json.loads(entry)
            if doc.get("state") == "uploading":
                doc["progress"] = live[fid]
                entry = json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
        out.append(entry)
    return out


def describe(p: dict[str, Any]) -> str:
    """One upload in flight for a person: what it is doing, how far, how fast, and any retry."""
    phase = str(p.get("phase") or "")
    words = escape_control(PHASE_WORDS.get(phase, phase))
    sent, total, rate, eta = p.get("bytes_sent"), p.get("total"), p.get("rate_bps"), p.get("eta_s")
    parts = [words]
    if phase in SENDING and isinstance(sent, int) and isinstance(total, int) and total > 0:
        parts = [f"{words} {sent / 1e6:,.1f} of {total / 1e6:,.1f} MB ({100 * sent // total} %)"]
        if isinstance(rate, (int, float)):
            parts.append(f"{rate / 1e6:,.2f} MB/s")
        if isinstance(eta, (int, float)):
            parts.append(f"about {_duration(eta)} left")
    attempt, reason = p.get("attempt"), p.get("retry_reason")
    if isinstance(attempt, int) and attempt > 1 or reason:
        parts.append(f"{escape_control(phase)} attempt {attempt}"
                     + (f", retrying after: {escape_control(str(reason))}" if reason else ""))
    return ", ".join(parts)


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 90:
        return f"{s} s"
    if s < 5400:
        return f"{round(s / 60)} min"
    return f"{s // 3600} h {s % 3600 // 60} min"
