"""The prefix check: an earlier confirmed version of a path that was only the start of a later one.

design.md, "Finished-file detection" and "Operator surfaces": where only settle time can tell that
a file is finished (a polled share, a file found by a scan), a writer that pauses longer than
``settle_seconds`` at a record boundary has its first half uploaded and confirmed as a sample, then
the whole file as a second one. Both are valid FASTQ; nothing else would tell them apart. When a new
version of a path is sent and the path's last confirmed version is shorter, the body notes the MD5 of
its first bytes on the way past (FormDataBody's ``md5_at``: no second read); once the new version is
confirmed, an equal MD5 means the earlier sample was partial. It is flagged ``partial`` in the queue
(status and show print the sentence) and a ``sample_partial`` notification names both samples: the
lab deletes the partial one in One Codex (seqdrop never deletes a confirmed sample).

Not checked: a version confirmed after a restart between its POST and its confirm (the MD5 of its
first bytes was not kept), the multipart route (over 5 GiB), and samples of several files (lanes,
pairs): their bytes on S3 are not one file's.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from daemon.queue.base import FileRow, Store
from daemon.upload.formdata import FormDataBody
from daemon.upload.steps import Emit, no_emit

FLAG = "partial"
EVENT = "sample_partial"
MAX_PENDING = 64        # bodies of uploads not (yet) confirmed; more than there are workers


class PrefixCheck:
    """Shared by a pipeline's workers: ``watch`` the body of each standard-route POST, then call
    ``confirmed`` once that version is confirmed."""

    def __init__(self, store: Store, *, emit: Emit = no_emit) -> None:
        self.store, self.emit = store, emit
        self._pending: OrderedDict[int, tuple[FileRow, FormDataBody]] = OrderedDict()
        self._lock = threading.Lock()

    def watch(self, row: FileRow, body: FormDataBody) -> FormDataBody:
        """Have body note the MD5 of the first bytes of row's file, as many as the path's last
        confirmed version holds, if that one is shorter; returns body."""
        prev = self.store.last_done_for_path(row.path, before_id=row.id)
        with self._lock:
            self._pending.pop(row.id, None)
        if prev is None or not prev.md5 or not 0 < prev.size < row.size or not (
                self._alone(row) and self._alone(prev)):
            return body
        body.md5_at = prev.size
        with self._lock:
            self._pending[row.id] = (prev, body)
            while len(self._pending) > MAX_PENDING:
                self._pending.popitem(last=False)
        return body

    def confirmed(self, row: FileRow, sample_id: str, log: Any) -> bool:
        """row's version is confirmed as sample_id: flag the earlier version if it was a prefix of
        it, and tell the observers. True if it did."""
        with self._lock:
            pending = self._pending.pop(row.id, None)
        if pending is None:
            return False
        try:
            return self._check(row, sample_id, *pending, log)
        except Exception as e:     # the upload is confirmed and recorded: a failed check must not undo that
            log.error("upload.prefix_check_failed", error=repr(e), exc_info=True)
            return False

    def _check(self, row: FileRow, sample_id: str, prev: FileRow, body: FormDataBody, log: Any) -> bool:
        if body.md5_at_hex is None or body.md5_at_hex != prev.md5:
            return False
        note = (f"partial: its {prev.size} bytes were the start of a later version of this file (id {row.id}, "
                f"{row.size} bytes: the writer paused longer than settle_seconds), uploaded again whole as "
                f"sample {sample_id}; delete sample {prev.sample_id} in One Codex")
        self.store.add_flag(prev.id, FLAG, note=note)
        log.warning("upload.partial_sample", partial_id=prev.id, partial_sample_id=prev.sample_id,
                    whole_sample_id=sample_id, partial_bytes=prev.size, size=row.size)
        self.emit(EVENT, path=row.path, sample_id=prev.sample_id, whole_sample_id=sample_id,
                  error=note)
        return True

    def _alone(self, row: FileRow) -> bool:
        """A one-file sample (or a row from before samples): its bytes on S3 are this file's."""
        if row.sample is None:
            return True
        sample = self.store.sample_of(row.id)
        return sample is None or len(sample.files) == 1
