"""The [upload] table: how many workers, how fast, how files reach S3."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from daemon.config.addresses import check_url
from daemon.config.reader import Section

# Files larger than this take One Codex's multipart route (init_multipart_upload, S3 multipart upload,
# callback): S3 refuses a single POST over 5 GiB. Lower it only to rehearse the route (tests, sandbox).
MULTIPART_THRESHOLD_BYTES = 5 * 1024**3
MIN_MULTIPART_THRESHOLD_BYTES = 1 << 20


@dataclass(frozen=True)
class UploadSettings:
    workers: int = 2
    max_mbps: float = 0.0          # 0 = no cap; megabits per second
    validate: bool = True
    max_backoff_s: float = 600.0   # longest wait between two attempts at one file
    block_size: int = 2 << 20      # bytes read from disk and sent per block
    stall_timeout_s: float = 60.0  # S3 takes no byte of the upload this long: abandoned (transient)
    allow_missing_etag: bool = False   # rehearsals against an S3 that sends no ETag (moto) only
    multipart_threshold_bytes: int = MULTIPART_THRESHOLD_BYTES   # larger files: the multipart route
    multipart_s3_endpoint: str = ""    # S3 endpoint of the multipart route; "" = AWS (tests: moto)
    multipart_s3_region: str = ""      # its region; "" = botocore's default (us-east-1, S3 redirects)


def parse_upload(s: Section) -> UploadSettings:
    workers = s.get("workers", UploadSettings.workers, int, fix="workers = 2")
    if not 1 <= workers <= 32:
        raise s.error("workers", f"must be between 1 and 32 (got {workers})", fix="workers = 2 suits most links")
    return UploadSettings(
        workers=workers,
        max_mbps=s.number("max_mbps", UploadSettings.max_mbps, minimum=0, fix="megabits per second; 0 = no cap"),
        validate=s.get("validate", True, bool, fix="validate = true"),
        max_backoff_s=s.number("max_backoff_s", UploadSettings.max_backoff_s, minimum=1, fix="seconds, e.g. 600"),
        block_size=int(s.number("block_size", UploadSettings.block_size, minimum=65536,
                                fix="bytes, e.g. 4194304")),
        stall_timeout_s=s.number("stall_timeout_s", UploadSettings.stall_timeout_s, minimum=1,
                                 fix="seconds, e.g. 60"),
        allow_missing_etag=s.get("allow_missing_etag", False, bool,
                                 fix="allow_missing_etag = false (true only to rehearse against moto)"),
        **_multipart_keys(s),
    )


def _multipart_keys(s: Section) -> dict[str, Any]:
    threshold = s.get("multipart_threshold_bytes", MULTIPART_THRESHOLD_BYTES, int,
                      fix=f"leave it out (default {MULTIPART_THRESHOLD_BYTES}, 5 GiB); lower only to rehearse")
    if not MIN_MULTIPART_THRESHOLD_BYTES <= threshold <= MULTIPART_THRESHOLD_BYTES:
        raise s.error("multipart_threshold_bytes",
                      f"must be between {MIN_MULTIPART_THRESHOLD_BYTES} and {MULTIPART_THRESHOLD_BYTES} "
                      f"(got {threshold})",
                      fix="leave it out: files over 5 GiB must take the multipart route, smaller ones "
                          "only do so to rehearse it")
    endpoint = s.get("multipart_s3_endpoint", "", str,
                     fix='leave it out (AWS), or e.g. "http://127.0.0.1:8702" for a local moto_server').rstrip("/")
    if endpoint and (reason := check_url(endpoint, what="multipart_s3_endpoint")):
        raise s.error("multipart_s3_endpoint", reason,
                      fix="use https://, or http:// only with 127.0.0.1/localhost (a local test S3)")
    region = s.get("multipart_s3_region", "", str, fix='e.g. "us-east-1"; leave it out for the default')
    return {"multipart_threshold_bytes": threshold, "multipart_s3_endpoint": endpoint,
            "multipart_s3_region": region}
