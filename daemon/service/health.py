"""Is the queue's storage working? Persistent storage errors make the daemon unhealthy.

design.md ("Rules"): a failing queue disk must not leave the daemon looking alive while it records
nothing (issue 10, defect 8: EIO under the queue, the watchdog still fed). So every verb of the
store is watched (`WatchedStore`), and `StoreHealth` judges what it sees:
  - a damaged database (SQLITE_CORRUPT, SQLITE_NOTADB) never heals by waiting: unhealthy at once
    (the daemon exits non-zero; at the next start the queue is checked, set aside and rebuilt);
  - any other storage fault (EIO, a full disk, a lock held too long) is judged by how long it
    lasts: unhealthy once the store has failed for STORE_FAILURE_LIMIT_S with no write recorded
    in between. A full disk that frees up within that time costs nothing (the workers retry).
Only a write that changed something proves the store works again: reads are served from
SQLite's page cache while the disk refuses every write, and an idle claim commits nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from daemon.queue.storage import STORE_DAMAGED, storage_fault

STORE_FAILURE_LIMIT_S = 60.0     # continuous store failure before the daemon exits for systemd to restart it

# Verbs that wrote when they returned normally, and verbs that wrote if they returned something true
# (a row claimed, a row moved, a count above 0). Other verbs (reads, `note`) prove nothing.
_WRITES = frozenset({"add_seen", "touch_seen", "save_init", "save_posted", "clear_init", "mark_done",
                     "reschedule", "set_meta"})
_WRITES_IF_TRUE = frozenset({"set_state", "claim_next", "release_stale_claims", "retry", "add_sample"})
# Verbs that stored a sample id for a row (their first argument): the audit journal is told (`on_sample`).
_SAMPLE_SAVED = frozenset({"save_init", "save_posted"})


class StoreHealth:
    """What the store's recent outcomes say (thread-safe; a monotonic clock)."""

    def __init__(self, *, limit_s: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit_s = STORE_FAILURE_LIMIT_S if limit_s is None else limit_s
        self._clock = clock
        self._lock = threading.Lock()
        self._failing_since: float | None = None
        self._last_error: str | None = None
        self._damaged: str | None = None

    def failed(self, exc: BaseException) -> None:
        """A verb raised exc; only storage faults count (a bug is not the disk's fault)."""
        kind = storage_fault(exc)
        if kind is None:
            return
        with self._lock:
            self._last_error = f"{type(exc).__name__}: {exc}"
            if kind == STORE_DAMAGED and self._damaged is None:
                self._damaged = self._last_error
            if self._failing_since is None:
                self._failing_since = self._clock()

    def wrote(self) -> None:
        """A write was recorded: the storage works (a damaged database stays damaged)."""
        with self._lock:
            self._failing_since = None

    def problem(self) -> str | None:
        """Why the daemon must stop (a sentence for the log), or None while the store is usable."""
        with self._lock:
            if self._damaged is not None:
                return f"the queue database is damaged ({self._damaged})"
            if self._failing_since is None:
                return None
            failing_s = self._clock() - self._failing_since
            if failing_s < self.limit_s:
                return None
            return f"the queue has recorded nothing for {failing_s:.0f} s ({self._last_error})"

    def healthy(self) -> bool:
        return self.problem() is None


class WatchedStore:
    """A Store whose every verb tells a StoreHealth how it went; otherwise the store itself.

    A verb inside `batch()` is a savepoint, not a commit: only the batch's commit counts as a
    write (on the thread that holds the batch).

    on_sample(file_id), if set, is called after save_init or save_posted returned (the service
    journals the row's sample: daemon/service/audit.py). It must not raise."""

    def __init__(self, store: Any, health: StoreHealth,
                 on_sample: Callable[[int], None] | None = None) -> None:
        self._store, self._health = store, health
        self.on_sample = on_sample
        self._local = threading.local()

    @property
    def inner(self) -> Any:
        return self._store

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if name.startswith("_") or not callable(attr):
            return attr

        def verb(*args: Any, **kwargs: Any) -> Any:
            try:
                result = attr(*args, **kwargs)
            except BaseException as e:
                self._health.failed(e)
                raise
            if name in _WRITES or (name in _WRITES_IF_TRUE and result):
                self._wrote()
            if name in _SAMPLE_SAVED and self.on_sample is not None:
                self.on_sample(args[0] if args else kwargs["file_id"])
            return result
        return verb

    @contextmanager
    def batch(self) -> Iterator[None]:
        depth = getattr(self._local, "depth", 0)
        if depth == 0:
            self._local.wrote = False
        self._local.depth = depth + 1
        try:
            with self._store.batch():
                yield
        except BaseException as e:
            self._health.failed(e)     # the commit's own failure (the steps' were counted as they failed)
            raise
        finally:
            self._local.depth = depth
        if depth == 0 and self._local.wrote:
            self._health.wrote()

    def _wrote(self) -> None:
        if getattr(self._local, "depth", 0):
            self._local.wrote = True
        else:
            self._health.wrote()


__all__ = ["STORE_FAILURE_LIMIT_S", "StoreHealth", "WatchedStore"]
