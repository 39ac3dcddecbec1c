"""S3 multipart upload of one file with temporary credentials: One Codex's route for files over 5 GiB.

The only module that imports boto3/botocore. It translates botocore's errors into the
exceptions of daemon.errors, as daemon.upload.client does for HTTP, so its callers never look at
an S3 error code.

NOT verified against the real One Codex: the route (init_multipart_upload → S3 multipart
upload with the temporary credentials it hands out → callback) follows the official client
(onecodex/onecodex, onecodex/lib/upload.py) and was only run against moto's S3 server.

Why low-level calls and not boto3's upload_file: memory and proof. A part is never held in
memory: botocore reads the part from a RangeReader over the file (pread, small blocks), and
each block passes through the part's MD5, the file's MD5 and the caller's throttle and
progress on its way out. S3's ETag of every part is compared with that MD5 at once (a part
that differs is sent again), and CompleteMultipartUpload's ETag with the expected
md5(concat(part digests))-N before anyone calls back. botocore's own retries are off: the
caller's retry policy (daemon.upload.retrying) is the only one, as for the standard route.

The temporary credentials live in memory only (S3Credentials, S3Upload): never logged, never
written to the queue. Nothing here knows the One Codex API key.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

# botocore is slow to import (start-up cost): daemon.upload.multipart_route imports this module lazily.
import botocore.exceptions
import botocore.session
from botocore.config import Config

from daemon import redact
from daemon.errors import (
    Aborted,
    FileChanged,
    Permanent,
    PolicyExpired,
    Transient,
    status_reason,
)
from daemon.upload.retrying import parse_retry_after
from daemon.upload.source import open_source

MiB = 1 << 20
# The official client's rule: the smallest of 10, 20, ... 100 MiB that gives fewer than 10,000 parts
# (S3 allows at most 10,000 parts; every part but the last must be at least 5 MiB).
PART_SIZES = tuple(n * MiB for n in range(10, 110, 10))
MAX_PARTS = 10_000
MIN_PART_BYTES = 5 * MiB
MAX_READ_BYTES = 1 * MiB         # the most a RangeReader hands out per read (botocore asks for 1 MiB or 128 KiB)

# What the caller does next, by S3 error code (decide on the code, not the status alone).
TRANSIENT_CODES = {"SlowDown", "InternalError", "RequestTimeout", "ServiceUnavailable", "RequestTimeTooSkewed",
                   "OperationAborted", "BadDigest", "IncompleteBody", "Throttling", "ThrottlingException"}
# The temporary credentials are no good (expired, revoked, never valid here) or the multipart upload
# they belong to is gone: a new init_multipart_upload, and the old sample cancelled.
RESTART_CODES = {"ExpiredToken", "TokenRefreshRequired", "InvalidToken", "InvalidAccessKeyId", "AccessDenied",
                 "SignatureDoesNotMatch", "RequestExpired", "NoSuchUpload"}
TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}


def choose_part_size(size: int) -> int:
    """The part size for a file of `size` bytes (the official client's rule)."""
    for part in PART_SIZES:
        if math.ceil(size / part) < MAX_PARTS:
            return part
    raise Permanent(f"the file is {size / 1e9:.1f} GB, more than S3's {MAX_PARTS:,} parts of "
                    f"{PART_SIZES[-1] // MiB} MiB can hold")


def multipart_etag(digests: Sequence[bytes]) -> str:
    """The ETag S3 gives a multipart object: the MD5 of the parts' binary MD5s, '-', the part count."""
    return f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(digests)}"


@dataclass(frozen=True)
class S3Credentials:
    """Temporary credentials from init_multipart_upload (repr hides the secrets)."""
    access_key_id: str = field(repr=False)
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)


class S3Connector:
    """Makes S3 clients for temporary credentials.

    One botocore session for all of them: S3's service model (~15 MB of Python objects) is loaded
    once, and each further client costs well under 1 MB. The session ignores endpoint URLs from
    the environment and ~/.aws (AWS_ENDPOINT_URL...): where the file goes is the config's choice.
    """

    def __init__(self, *, endpoint_url: str | None = None, region: str | None = None,
                 connect_timeout_s: float = 10.0, read_timeout_s: float = 60.0) -> None:
        self.endpoint_url = endpoint_url or None
        self.region = region or None
        self._session = botocore.session.Session()
        self._lock = threading.Lock()       # a botocore session is not thread-safe; its clients are
        self._session.set_config_variable("ignore_configured_endpoint_urls", True)
        self._config = Config(
            retries={"total_max_attempts": 1},          # daemon.upload.retrying is the one retry policy
            connect_timeout=connect_timeout_s, read_timeout=read_timeout_s,
            # No CRC32 body checksums (botocore >= 1.36 adds them by default, which wraps the body
            # in aws-chunked encoding) and no SHA-256 of the payload in the signature (without a
            # checksum header botocore would read every part twice to compute it, even over https):
            # TLS, and the part's MD5 against the ETag S3 returns for it, are our proof.
            request_checksum_calculation="when_required", response_checksum_validation="when_required",
            s3={"payload_signing_enabled": False},
            user_agent_extra="seqdrop",
        )

    def client(self, credentials: S3Credentials) -> Any:
        with self._lock:
            return self._session.create_client(
                "s3", region_name=self.region, endpoint_url=self.endpoint_url, verify=True, config=self._config,
                aws_access_key_id=credentials.access_key_id, aws_secret_access_key=credentials.secret_access_key,
                aws_session_token=credentials.session_token)


def translate(exc: BaseException, what: str) -> BaseException:
    """A botocore error as the exception of daemon.errors that says what to do next.

    Anything that is not botocore's is returned unchanged (the caller re-raises it)."""
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {}) or {}
        meta = exc.response.get("ResponseMetadata", {}) or {}
        # S3's words pass the one door for server text (secrets scrubbed, control characters escaped).
        code = redact.server_text(str(error.get("Code", "")), limit=60)
        message = redact.server_text(str(error.get("Message", "")).strip(), limit=200)
        status = int(meta.get("HTTPStatusCode") or 0)
        text = f"S3 {what}: HTTP {status} {code}: {message}".replace(" :", ":").strip()
        if code in RESTART_CODES:
            return PolicyExpired(text)
        if code in TRANSIENT_CODES or status in TRANSIENT_STATUS or status >= 500:
            return Transient(text, reason=status_reason(status, code),
                             retry_after_s=parse_retry_after((meta.get("HTTPHeaders") or {}).get("retry-after")))
        return Permanent(text)
    if isinstance(exc, (botocore.exceptions.ConnectTimeoutError, botocore.exceptions.ReadTimeoutError)):
        return Transient(f"S3 {what}: {_short(exc)}", reason="timeout")
    if isinstance(exc, (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError,
                        botocore.exceptions.IncompleteReadError)):
        return Transient(f"S3 {what}: {_short(exc)}", reason="connection")
    if isinstance(exc, botocore.exceptions.BotoCoreError):
        return Permanent(f"S3 {what}: {_short(exc)}")
    return exc


def _short(exc: BaseException) -> str:
    return redact.server_text(str(exc), limit=200)


class Members:
    """The files of one object in order, read as one by offset: a read of lane files is one S3 object
    (design.md, "Samples"), sent in parts that may span member boundaries, never copied to disk.

    Each member is opened once (daemon.upload.source: read-only, no links, no FIFOs) and read with
    pread at its queued size: a member already shorter than that, or found shorter while read, is
    FileChanged naming it. A member that grew, or was rewritten in place, is for the caller's
    identity check before the upload completes (the bytes read are those of the queued sizes)."""

    def __init__(self, paths: Sequence[str], sizes: Sequence[int]) -> None:
        if not paths or len(paths) != len(sizes):
            raise ValueError("Members needs one size per path")
        self.paths, self.sizes = tuple(paths), tuple(sizes)
        self.starts = tuple(sum(self.sizes[:i]) for i in range(len(self.sizes)))
        self.size = sum(self.sizes)
        self.fds: list[int] = []
        try:
            for path, size in zip(self.paths, self.sizes):
                fd = open_source(path)
                self.fds.append(fd)
                if os.fstat(fd).st_size < size:
                    raise FileChanged(f"{os.path.basename(path)} is shorter than the {size:,} bytes queued")
        except BaseException:
            self.close()
            raise

    def pread(self, n: int, offset: int) -> bytes:
        """Up to n bytes at `offset` of the object, from one member (a read stops at a member's end)."""
        i = bisect.bisect_right(self.starts, offset) - 1     # the last member starting at or before it
        local = offset - self.starts[i]
        want = min(n, self.sizes[i] - local)
        if want <= 0:
            return b""
        data = os.pread(self.fds[i], want, local)
        if len(data) < want:
            raise FileChanged(f"{os.path.basename(self.paths[i])} became shorter while it was being sent "
                              f"(a read at its byte {local + len(data):,} found its end)")
        return data

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []


class RangeReader:
    """A seekable, read-only view of bytes [start, start + length) of a file (an fd) or of several
    read as one (Members), for botocore's Body.

    Reads with pread (no shared file position) in blocks of at most MAX_READ_BYTES. The first time a
    byte of the range is read it goes through the part's MD5 and `on_new` (the file's MD5, throttle,
    progress); should botocore read the range twice (it does to sign the payload's SHA-256, which
    S3Connector turns off), the second pass is only read. Errors of our own (shutdown, a file
    that got shorter) are kept in `error`, since botocore wraps whatever a body raises.
    """

    def __init__(self, source: int | Members, start: int, length: int, *, on_new: Callable[[int, bytes], None],
                 should_abort: Callable[[], bool] | None = None) -> None:
        self.source, self.start, self.length = source, start, length
        self.on_new, self.should_abort = on_new, should_abort
        self.pos = 0
        self.hashed = 0                 # bytes of the range already through the MD5
        self.md5 = hashlib.md5()
        self.error: BaseException | None = None
        self.largest_read = 0

    def __len__(self) -> int:
        return self.length

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.pos, os.SEEK_END: self.length}[whence]
        self.pos = max(0, min(self.length, base + offset))
        return self.pos

    def read(self, n: int | None = -1) -> bytes:
        try:
            return self._read(n)
        except BaseException as e:
            self.error = e
            raise

    def _read(self, n: int | None) -> bytes:
        if self.should_abort is not None and self.should_abort():
            raise Aborted("shutdown requested during the upload")
        want = self.length - self.pos
        if n is not None and n >= 0:
            want = min(want, n)
        want = min(want, MAX_READ_BYTES)
        if want <= 0:
            return b""
        try:
            if isinstance(self.source, Members):      # may stop short at a member's end: read on next time
                data = self.source.pread(want, self.start + self.pos)
            else:
                data = os.pread(self.source, want, self.start + self.pos)
        except OSError as e:   # EIO and friends on a flaky share: try again later
            raise Transient(f"reading the file failed ({e.strerror or e})", reason="file_read") from None
        if not data or (len(data) < want and not isinstance(self.source, Members)):
            raise FileChanged(f"became shorter while it was being sent (a read at byte "
                              f"{self.start + self.pos + len(data):,} found its end)")
        self.largest_read = max(self.largest_read, len(data))
        end = self.pos + len(data)
        if end > self.hashed and self.pos <= self.hashed:
            new = data[self.hashed - self.pos:]
            self.md5.update(new)
            self.on_new(self.start + self.hashed, new)
            self.hashed = end
        self.pos = end
        return data


class S3Upload:
    """One multipart upload of one file, or of several read as one (lanes: `path` a sequence, `sizes`
    their queued sizes), to (bucket, key), parts sent in order.

    Lives in memory only (it holds the temporary credentials and the parts' digests), so a
    transient error between parts resumes at the next part within one process; a new process
    starts again with new credentials. Not thread-safe: one worker owns it at a time.
    """

    def __init__(self, client: Any, *, bucket: str, key: str, path: str | Sequence[str], size: int, part_size: int,
                 sizes: Sequence[int] | None = None) -> None:
        if part_size < MIN_PART_BYTES:
            raise ValueError(f"part_size must be at least {MIN_PART_BYTES} bytes")
        self.client, self.bucket, self.key = client, bucket, key
        self.path, self.size, self.part_size = path, size, part_size
        self.part_count = max(1, math.ceil(size / part_size))
        self.upload_id: str | None = None
        self.etags: list[str] = []
        self.digests: list[bytes] = []
        # The whole file's MD5, in order, each byte once. Not for several files read as one: their own
        # MD5s (member_md5s, the audit journal's) see every byte instead, S3 checks the parts' MD5s, and
        # nothing needs the concatenation's — a third MD5 of every byte would be CPU for nothing.
        self.file_md5 = hashlib.md5()
        self.hashed = 0
        self.completed_etag: str | None = None
        self._complete_tried = False
        self.members: Members | None = None
        self._member_md5s: list[Any] = []
        if isinstance(path, str):
            self.fd = open_source(path)    # read-only, no atime, never a FIFO or a link (daemon.upload.source)
        else:
            if sizes is None or sum(sizes) != size:
                raise ValueError("the sizes of the members must add up to size")
            self.members = Members(path, sizes)
            self.fd = -1
            self._member_md5s = [hashlib.md5() for _ in sizes]

    @property
    def member_md5s(self) -> tuple[str, ...]:
        """Each member's MD5, in order (several files read as one; complete once every part is sent)."""
        return tuple(h.hexdigest() for h in self._member_md5s)

    def _hash_members(self, offset: int, data: bytes) -> None:
        # a read never spans two members (Members.pread): the one holding `offset` takes it all
        assert self.members is not None
        self._member_md5s[bisect.bisect_right(self.members.starts, offset) - 1].update(data)

    @property
    def all_sent(self) -> bool:
        return len(self.etags) == self.part_count

    @property
    def expected_etag(self) -> str:
        return multipart_etag(self.digests)

    @property
    def md5(self) -> str:
        """The MD5 of the whole file as sent (valid once every part is sent); for several files read
        as one, the first file's (each file's own is in member_md5s)."""
        if self.hashed != self.size:
            raise Transient(f"internal: {self.hashed} of {self.size} bytes hashed; starting the file again",
                            reason="internal")
        return self.file_md5.hexdigest() if self.members is None else self.member_md5s[0]

    def _s3(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as e:
            translated = translate(e, what)
            if translated is e:
                raise
            raise translated from None

    def create(self) -> None:
        if self.upload_id is not None:
            return
        answer = self._s3("CreateMultipartUpload", lambda: self.client.create_multipart_upload(
            Bucket=self.bucket, Key=self.key, ServerSideEncryption="AES256"))
        upload_id = answer.get("UploadId")
        if not upload_id:
            raise Transient("S3 CreateMultipartUpload answered without an UploadId", reason="bad_answer")
        self.upload_id = str(upload_id)

    def send_part(self, *, should_abort: Callable[[], bool] | None = None,
                  on_new: Callable[[int], None] | None = None) -> int:
        """Send the next part; returns its size. A part whose ETag is not its MD5 is not kept (Transient)."""
        assert self.upload_id is not None and not self.all_sent
        number = len(self.etags) + 1
        start = (number - 1) * self.part_size
        length = min(self.part_size, self.size - start)

        def new_bytes(offset: int, data: bytes) -> None:
            if offset == self.hashed:      # the file's MD5 sees every byte once, in order
                if self.members is None:
                    self.file_md5.update(data)
                else:
                    self._hash_members(offset, data)
                self.hashed += len(data)
                if on_new is not None:
                    on_new(len(data))

        reader = RangeReader(self.members or self.fd, start, length, on_new=new_bytes, should_abort=should_abort)
        try:
            answer = self.client.upload_part(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id,
                                             PartNumber=number, Body=reader, ContentLength=length)
        except Exception as e:
            if reader.error is not None:       # ours (shutdown, file shorter, unreadable), wrapped by botocore
                raise reader.error from None
            translated = translate(e, f"UploadPart {number}/{self.part_count}")
            if translated is e:
                raise
            raise translated from None
        if reader.hashed != length:
            raise Transient(f"S3 UploadPart {number}: answered before the whole part was read; sending it again",
                            reason="connection")
        etag = redact.server_text(str(answer.get("ETag", "")).strip().strip('"').lower(), limit=80)
        md5 = reader.md5.hexdigest()
        if not etag:
            raise Permanent(f"S3 UploadPart {number} answered without an ETag; cannot complete the upload")
        if etag != md5:
            raise Transient(f"S3's ETag {etag!r} for part {number} differs from the MD5 of the bytes sent "
                            f"({md5}); sending the part again", reason="etag_mismatch")
        self.etags.append(etag)
        self.digests.append(reader.md5.digest())
        return length

    def complete(self) -> str:
        """CompleteMultipartUpload; returns the ETag S3 gives the object (the caller compares it).

        A repeat after a lost answer may find the upload gone (NoSuchUpload): then the object's own
        ETag tells whether the first attempt completed it."""
        assert self.all_sent and self.upload_id is not None
        parts = [{"PartNumber": i + 1, "ETag": f'"{etag}"'} for i, etag in enumerate(self.etags)]
        tried_before, self._complete_tried = self._complete_tried, True
        try:
            answer = self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=self.key, UploadId=self.upload_id, MultipartUpload={"Parts": parts})
        except Exception as e:
            code = (e.response.get("Error") or {}).get("Code") if isinstance(e, botocore.exceptions.ClientError) \
                else None
            if code == "NoSuchUpload" and tried_before and self.head_etag() == self.expected_etag:
                answer = {"ETag": self.expected_etag}
            else:
                translated = translate(e, "CompleteMultipartUpload")
                if translated is e:
                    raise
                raise translated from None
        self.completed_etag = redact.server_text(str(answer.get("ETag", "")).strip().strip('"').lower(), limit=80)
        return self.completed_etag

    def head_etag(self) -> str | None:
        try:
            return str(self.client.head_object(Bucket=self.bucket, Key=self.key).get("ETag", "")
                       ).strip().strip('"').lower()
        except Exception:   # best effort: only used to interpret a NoSuchUpload
            return None

    def abort(self) -> str | None:
        """Best effort AbortMultipartUpload (S3 frees the parts); returns None, or why it failed."""
        if self.upload_id is None or self.completed_etag is not None:
            return None
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id)
            return None
        except Exception as e:
            return str(translate(e, "AbortMultipartUpload"))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.members is not None:
            self.members.close()
        close = getattr(self.client, "close", None)
        if close is not None:
            close()
