"""`seqdrop upload FILE...`: the daemon's pipeline, run once over named files.

A private temporary queue (not the daemon's) holds the files, so every step is
the daemon's own code path: validation, init → POST → confirm, retries, the
policy-expiry dance. A progress bar on a terminal; periodic `upload.progress` log
events otherwise. Exit 0 only if every file was confirmed.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from typing import Any

from daemon.config import Settings
from daemon.errors import AuthError
from daemon.operations import logs
from daemon.queue.base import Identity
from daemon.queue.sqlite import SqliteStore
from daemon.upload.build import make_client, make_pipeline
from daemon.upload.client import OneCodexClient

PROGRESS_LOG_S = 5.0
EXIT_INTERRUPTED = 1     # design.md: `upload` exits 0 only if every file was confirmed, 1 otherwise (also Ctrl-C)


class _Progress:
    """tqdm on a terminal, a structured log line every few seconds elsewhere."""

    def __init__(self, path: str, size: int, log: Any) -> None:
        self.path, self.size, self.log = path, size, log
        self.done = 0
        self.started = self.last_log = time.monotonic()
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024,
                            desc=os.path.basename(path)[:40], file=sys.stderr, leave=True)

    def __call__(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        if now - self.last_log >= PROGRESS_LOG_S:
            self.last_log = now
            rate = self.done / max(now - self.started, 1e-6)
            self.log.info("upload.progress", path=self.path, bytes=self.done, total=self.size,
                          mb_s=round(rate / 1e6, 1),
                          eta_s=round((self.size - self.done) / rate, 0) if rate else None)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def upload_files(settings: Settings, api_key: str, files: list[str], *, max_wait_s: float = 900.0,
                 client: OneCodexClient | None = None, out: Any = None) -> int:
    out = out or sys.stdout
    log = logs.get("seqdrop")
    client = client or make_client(settings, api_key)
    throttle = None
    if settings.upload.max_mbps:
        from daemon.upload.throttle import TokenBucket
        bucket = TokenBucket.from_mbps(settings.upload.max_mbps)
        throttle = bucket.consume
    ok = True
    with tempfile.TemporaryDirectory(prefix="seqdrop-upload-") as tmp:
        store = SqliteStore(os.path.join(tmp, "queue.sqlite3"))
        stop = threading.Event()
        pipeline = make_pipeline(settings, store=store, client=client, log=log, stop=stop, throttle=throttle)
        ids: dict[int, str] = {}
        for path in files:
            full = os.path.abspath(path)
            try:
                st = os.stat(full)
            except OSError as e:
                print(f"{path}: cannot read it ({e.strerror})", file=out)
                ok = False
                continue
            if not os.path.isfile(full):
                print(f"{path}: not a regular file", file=out)
                ok = False
                continue
            try:   # the daemon's words for this (`seqdrop retry --failed`) do not apply to a one-shot upload
                open(full, "rb").close()
            except OSError as e:
                print(f"{path}: cannot read it ({e.strerror}); make it readable by this user, or run "
                      f"seqdrop upload as a user who can read it", file=out)
                ok = False
                continue
            file_id = store.add_seen(full, Identity.of(st))
            store.set_state(file_id, "queued", only_from=("seen",))
            ids[file_id] = path
        deadline = {i: time.monotonic() + max_wait_s for i in ids}
        try:
            while True:
                row = store.claim_next("oneshot")
                if row is None:
                    pending = [r for r in store.files(states=("queued",)) if r.id in ids]
                    if not pending:
                        break
                    expired = [r for r in pending if time.monotonic() > deadline[r.id]]
                    for r in expired:
                        store.set_state(r.id, "failed", error=f"gave up after {max_wait_s:.0f} s of "
                                        f"retries; last error: {r.error}")
                    if expired:
                        continue
                    wake = min(r.next_attempt_at for r in pending)
                    time.sleep(min(max(0.0, wake - time.time()), 5.0))
                    continue
                progress = _Progress(row.path, row.size, log)
                try:
                    state = pipeline.process(row, progress=progress)
                finally:
                    progress.close()
                if state == "queued":
                    current = store.get(row.id)
                    print(f"{ids[row.id]}: retrying later: {current.error if current else ''}", file=out)
        except AuthError as e:
            print(f"seqdrop: {e}\n  fix: check the key (ONE_CODEX_API_KEY, api.api_key_file) with "
                  f"`seqdrop check`", file=out)
            pipeline.close()
            store.close()
            return 1
        except KeyboardInterrupt:
            # Ctrl-C: a sample begun for a file that will not be confirmed now is cancelled, not left
            # dangling in the account (a second Ctrl-C stops even that).
            for file_id, path in ids.items():
                row = store.get(file_id)
                if row is not None and row.state == "done":
                    print(f"{path}: confirmed as sample {row.sample_id}", file=out)
                elif pipeline.abandon(file_id):
                    print(f"{path}: interrupted, but One Codex had already received it "
                          f"(sample {row.sample_id})", file=out)
                else:
                    print(f"{path}: interrupted; not uploaded", file=out)
            pipeline.close()
            store.close()
            print("seqdrop: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        for file_id, path in ids.items():
            row = store.get(file_id)
            assert row is not None
            if row.state == "done":
                print(f"{path}: confirmed as sample {row.sample_id}"
                      + (f" ({row.error})" if row.error else ""), file=out)
            else:
                ok = False
                print(f"{path}: {row.state}: {row.error}", file=out)
        pipeline.close()
        store.close()
    return 0 if ok else 1
