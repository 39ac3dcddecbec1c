"""The sandbox's memory: samples and the log of received requests (thread-safe, in memory)."""

from __future__ import annotations

import collections
import copy
import secrets
import threading
import time

from .paired import missing_objects, not_received_message
from .policy import iso_utc

SAMPLE_STATES = ("initialized", "uploaded", "confirmed", "cancelled")
REQUEST_LOG_MAX = 10_000  # oldest entries are forgotten past this, so a long-running sandbox stays small


class Samples:
    """Every sample created through init_upload, keyed by sample_id."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_id: dict[str, dict] = {}

    def create(self, *, owner: str, filename: str, size: int | None, route: str = "standard") -> dict:
        """A new sample in state "initialized"; returns a copy. A multipart sample's size is known
        only at its callback (from the S3 object)."""
        sample_id = secrets.token_hex(8)
        now = iso_utc(time.time())
        sample = {
            "sample_id": sample_id, "filename": filename, "size": size, "state": "initialized",
            "md5": None, "object_path": None, "confirm_count": 0, "created_at": now, "updated_at": now,
            "confirmed_at": None, "owner": owner, "key": None, "upload_count": 0, "route": route,
        }
        with self._lock:
            self._by_id[sample_id] = sample
            return dict(sample)

    def get(self, sample_id: str) -> dict | None:
        """A copy of the sample, or None."""
        with self._lock:
            sample = self._by_id.get(sample_id)
            return dict(sample) if sample else None

    def all(self) -> list[dict]:
        """Copies of every sample, oldest first."""
        with self._lock:
            return [dict(s) for s in self._by_id.values()]

    def mark_uploaded(self, sample_id: str, *, key: str, md5: str, object_path: str | None) -> None:
        """S3 stored the object of this sample (a re-POST overwrites; confirmed/cancelled keep their state)."""
        with self._lock:
            sample = self._by_id.get(sample_id)
            if sample is None:
                return
            sample.update(key=key, md5=md5, object_path=object_path, upload_count=sample["upload_count"] + 1,
                          updated_at=iso_utc(time.time()))
            self._uploaded_if_complete(sample)

    def mark_paired_uploaded(self, sample_id: str, *, key: str, md5: str, object_path: str | None,
                             size: int) -> None:
        """S3 stored a paired sample's R2 (docs/sandbox.md, "Paired-end"); a re-POST overwrites."""
        with self._lock:
            sample = self._by_id.get(sample_id)
            if sample is None or sample.get("paired_end_filename") is None:
                return
            sample.update(paired_key=key, paired_md5=md5, paired_object_path=object_path, paired_size=size,
                          paired_upload_count=sample.get("paired_upload_count", 0) + 1,
                          updated_at=iso_utc(time.time()))
            self._uploaded_if_complete(sample)

    @staticmethod
    def _uploaded_if_complete(sample: dict) -> None:
        """initialized → uploaded once every object of the sample (R1, and R2 if paired) is stored."""
        if sample["state"] == "initialized" and not missing_objects(sample):
            sample["state"] = "uploaded"

    def confirm(self, sample_id: str, owner: str) -> tuple[int, str]:
        """Confirm; returns (HTTP status, message). Idempotent for an already confirmed sample."""
        with self._lock:
            sample = self._by_id.get(sample_id)
            if sample is None or sample["owner"] != owner:
                return 404, f"Sample {sample_id} not found."
            if sample["state"] == "cancelled":
                return 400, f"Sample {sample_id} was cancelled and cannot be confirmed."
            if sample["state"] == "initialized":
                return 400, not_received_message(sample)
            if sample["state"] != "confirmed":
                sample.update(confirmed_at=time.time(), updated_at=iso_utc(time.time()))
            sample["state"] = "confirmed"
            sample["confirm_count"] += 1
            return 200, "Upload confirmed."

    def set_fields(self, sample_id: str, **fields: object) -> None:
        with self._lock:
            if sample_id in self._by_id:
                self._by_id[sample_id].update(fields)

    def called_back(self, sample_id: str, owner: str, *, s3_path: str, size: int, etag: str,
                    pair: tuple[int, str] | None = None) -> tuple[int, str]:
        """A multipart sample's callback: the object (and a paired sample's R2: pair, its size and ETag)
        is in S3 → confirmed. Repeats are answered the same."""
        with self._lock:
            sample = self._by_id.get(sample_id)
            if sample is None or sample["owner"] != owner or sample["route"] != "multipart":
                return 404, f"Sample {sample_id} not found."
            if sample["state"] == "cancelled":
                return 400, f"Sample {sample_id} was cancelled and cannot be imported."
            if sample["state"] != "confirmed":
                sample.update(confirmed_at=time.time(), updated_at=iso_utc(time.time()))
            sample.update(state="confirmed", size=size, etag=etag, confirm_count=sample["confirm_count"] + 1)
            if pair is not None:
                sample.update(paired_size=pair[0], paired_etag=pair[1])
            return 200, "Import started."

    def cancel(self, sample_id: str, owner: str) -> tuple[int, str]:
        """Cancel; returns (HTTP status, message). Cancelling twice is fine; a confirmed sample stays."""
        with self._lock:
            sample = self._by_id.get(sample_id)
            if sample is None or sample["owner"] != owner:
                return 404, f"Sample {sample_id} not found."
            if sample["state"] == "confirmed":
                if sample["route"] == "multipart":   # the message the official client looks for
                    return 400, "Upload already successful"
                return 400, f"Sample {sample_id} is already confirmed and cannot be cancelled."
            sample.update(state="cancelled", updated_at=iso_utc(time.time()))
            return 200, "Upload cancelled."


class RequestLog:
    """What each server received and how it answered (bounded)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: collections.deque[dict] = collections.deque(maxlen=REQUEST_LOG_MAX)

    def add(self, entry: dict) -> None:
        with self._lock:
            self._entries.append(entry)

    def all(self) -> list[dict]:
        with self._lock:
            return copy.deepcopy(list(self._entries))
