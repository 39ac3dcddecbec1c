"""The S3 browser-POST emulator: as strict as S3 about headers, field order, policy and signature."""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from pathlib import Path
from urllib.parse import quote
from xml.sax.saxutils import escape

from .base import BaseHandler
from .faults import Fault
from .hostile import signature_echo
from .multipart import (
    BodyIncomplete,
    BodyReader,
    FieldsTooLarge,
    Form,
    MalformedBody,
    boundary_from_content_type,
    read_form,
)
from .paired import PAIRED_KEY_RE
from .policy import BUCKET, S3_POST_MAX_BYTES, PolicyError, check_post

_SAMPLE_KEY_RE = re.compile(r"^user_[0-9a-f]{16}/file_([0-9a-f]{16})/")
MAX_CHUNKED_DRAIN_BYTES = 64 * 1024 * 1024


class S3Error(Exception):
    def __init__(self, status: int, code: str, message: str, *, close: bool = False, **extra: object) -> None:
        super().__init__(f"{code}: {message}")
        self.status, self.code, self.message, self.close, self.extra = status, code, message, close, extra


class ObjectSink:
    """Receives the file part: hashes it and, if storing, writes it to a temporary file. With
    `alter_at` (an "alter" fault) the byte at that offset is changed on the way in, so what is
    stored and hashed differs from what was sent."""

    def __init__(self, tmp_dir: Path | None, alter_at: int | None = None) -> None:
        self.md5 = hashlib.md5()
        self.size = 0
        self.altered = False
        self._alter_at = alter_at
        self.path = tmp_dir / f"{secrets.token_hex(8)}.part" if tmp_dir is not None else None
        self._file = open(self.path, "wb", buffering=0) if self.path is not None else None

    def write(self, data: bytes) -> None:
        at = self._alter_at
        if at is not None and self.size <= at < self.size + len(data):
            changed = bytearray(data)
            changed[at - self.size] ^= 0x01      # '@' → 'A', 'A' → '@': one bit of one byte
            data, self.altered = bytes(changed), True
        self.md5.update(data)
        self.size += len(data)
        if self._file is not None:
            if self.size > S3_POST_MAX_BYTES:  # will be refused: stop filling the disk
                self.discard()
            else:
                self._file.write(data)

    def discard(self) -> None:
        """Forget the stored bytes (the hash goes on)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path = None

    def commit(self, destination: Path) -> None:
        """Move the stored bytes to `destination` atomically (a later POST to the key overwrites)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.path, destination)
        self.path = None


class S3Handler(BaseHandler):
    server_version = "AmazonS3"

    def idle_timeout(self) -> float:
        return self.sb.s3_idle_timeout_s

    def do_POST(self) -> None:
        fault = self.sb._faults.take("s3")
        kind = fault.kind if fault is not None else None
        extra = self.begin("s3")
        extra["fault"] = kind
        sink: ObjectSink | None = None
        try:
            if kind == "status":
                self._drain_known_length()
                self._fault_answer(fault)
            elif kind == "drop" and not fault.after_body:
                self._read_part_then_drop()
            elif kind == "stall":
                self._stall(fault)
            else:
                form, sink = self._receive(alter_at=fault.byte_offset if kind == "alter" else None)
                extra.update(fields=[name for name, _ in form.fields], filename=form.filename,
                             file_size=form.file_size)
                if sink is not None and sink.altered:
                    extra["altered_at"] = fault.byte_offset
                self._answer(fault, form, sink)
        except S3Error as exc:
            self._error(exc.status, exc.code, exc.message, close=exc.close, **exc.extra)
        except BodyIncomplete:
            extra["incomplete"] = True
            self.drop()  # the client went away: nothing stored, nobody to answer
        except TimeoutError:
            self._error(400, "RequestTimeout", "Your socket connection to the server was not read from or "
                        "written to within the timeout period. Idle connections will be closed.", close=True)
        finally:
            if sink is not None:
                sink.discard()
            self.flush_record()

    def _answer(self, fault: Fault | None, form: Form, sink: ObjectSink | None) -> None:
        """Check and store a received form, then answer, suffering `fault` (docs/sandbox.md)."""
        kind = fault.kind if fault is not None else None
        if kind == "echo_secret":
            raise S3Error(fault.status, "SignatureDoesNotMatch", "The request signature we calculated does not "
                          "match the signature you provided. Check your key and signing method.",
                          **signature_echo(form))
        if kind == "delay":
            self.wait(fault.delay_s)
        success = fault.success_status if kind in ("no_etag", "alter") else None
        status, body, headers = self._finish(form, sink, etag=kind != "no_etag", success_status=success)
        if kind == "drop":
            self.drop()  # after_body: the object is stored, the answer is lost
        elif kind == "endless":
            self.send_endless(status, "application/xml",
                              b'<?xml version="1.0" encoding="UTF-8"?>\n<PostResponse><Location>')
        else:
            if kind == "trickle":
                self.trickle_s = fault.interval_s
            self.send_body(status, body, "application/xml", headers)

    def _stall(self, fault: Fault) -> None:
        """Read `byte_offset` bytes of the body, then nothing more for `delay_s` (0: until the
        sandbox stops), then hang up: an upload that makes no progress."""
        length = self._content_length() or 0
        try:
            BodyReader(self.rfile, min(fault.byte_offset, length)).drain()
        except BodyIncomplete:
            pass
        if fault.delay_s > 0:
            self.wait(fault.delay_s)
        else:
            self.sb._stopping.wait()
        self.drop()

    def do_GET(self) -> None:
        self._other()

    def do_PUT(self) -> None:
        self._other()

    def do_DELETE(self) -> None:
        self._other()

    def _other(self) -> None:
        self.begin("other")
        self._drain_known_length()
        self._error(405, "MethodNotAllowed", "The specified method is not allowed against this resource.",
                    Method=self.command, ResourceType="BUCKET" if self.path.startswith("/?") or self.path == "/"
                    else "OBJECT")

    # -- receiving --------------------------------------------------------------------------------

    def _receive(self, alter_at: int | None = None) -> tuple[Form, ObjectSink | None]:
        """Check the headers, then stream the body; the file goes to a sink (returned, not committed)."""
        if self.headers.get("Authorization") is not None:
            self._drain_known_length()
            raise S3Error(400, "InvalidArgument", "Only one auth mechanism allowed; only the X-Amz-Algorithm "
                          "query parameter, Signature query string parameter or the Authorization header "
                          "should be specified", ArgumentName="Authorization",
                          ArgumentValue=self.headers.get("Authorization", "").split(" ", 1)[0] + " <redacted>")
        length = self._content_length()
        if length is None:
            self._drain_chunked()
            raise S3Error(411, "MissingContentLength", "You must provide the Content-Length HTTP header.",
                          close=True)
        reader = BodyReader(self.rfile, length)
        boundary = boundary_from_content_type(self.headers.get("Content-Type", ""))
        if boundary is None:
            reader.drain()
            raise S3Error(412, "PreconditionFailed", "At least one of the pre-conditions you specified did not "
                          "hold", Condition="Bucket POST must be of the enclosure-type multipart/form-data")
        sinks: list[ObjectSink] = []

        def open_sink(filename: str | None) -> ObjectSink:
            sinks.append(ObjectSink(self.sb._tmp_dir if self.sb.store_objects else None, alter_at))
            return sinks[-1]

        try:
            form = read_form(reader, boundary, open_sink)
        except (MalformedBody, FieldsTooLarge) as exc:
            for sink in sinks:
                sink.discard()
            reader.drain()
            if isinstance(exc, FieldsTooLarge):
                raise S3Error(400, "MaxPostPreDataLengthExceeded", "Your POST request fields preceding the "
                              "upload file were too large.") from None
            raise S3Error(400, "MalformedPOSTRequest", "The body of your POST request is not well-formed "
                          "multipart/form-data.") from None
        except BaseException:
            for sink in sinks:
                sink.discard()
            raise
        return form, (sinks[0] if sinks else None)

    def _finish(self, form: Form, sink: ObjectSink | None, *, etag: bool = True,
                success_status: int | None = None) -> tuple[int, bytes, list]:
        """Apply S3's checks to a received form; store the object; build the success answer
        (without any ETag if `etag` is False; with `success_status` instead of the form's if given)."""
        if form.field_after_file is not None:
            raise S3Error(400, "InvalidArgument", f"Bucket POST must contain a field named "
                          f"'{form.field_after_file}'.  If it is specified, please check the order of the "
                          "fields.", ArgumentName=form.field_after_file)
        if not form.has_file or sink is None:
            raise S3Error(400, "InvalidArgument", "POST requires exactly one file upload per request.",
                          ArgumentName="file", ArgumentValue="0")
        values: dict[str, str] = {}
        for name, value in form.fields:
            values.setdefault(name.lower(), value)
        try:
            check_post(self.sb._secret, values, file_size=form.file_size)
        except PolicyError as exc:
            raise S3Error(exc.status, exc.code, exc.message, **exc.extra) from None
        key = values["key"].replace("${filename}", form.filename or "")
        object_path = self._object_path(key)
        md5 = sink.md5.hexdigest()
        stored = None
        if self.sb.store_objects:
            sink.commit(object_path)
            stored = str(object_path)
        match = _SAMPLE_KEY_RE.match(key)
        if match:
            self.sb._samples.mark_uploaded(match.group(1), key=key, md5=md5, object_path=stored)
        elif paired := PAIRED_KEY_RE.match(key):
            self.sb._samples.mark_paired_uploaded(paired.group(1), key=key, md5=md5, object_path=stored,
                                                  size=form.file_size)
        quoted_md5 = f'"{md5}"'
        location = f"{self.sb.s3_url}/{quote(key)}"
        headers = [("ETag", quoted_md5), ("Location", location)] if etag else [("Location", location)]
        success = str(success_status) if success_status is not None else values.get("success_action_status")
        if success == "201":
            etag_xml = f"<ETag>{escape(quoted_md5)}</ETag>" if etag else ""
            xml = (f'<?xml version="1.0" encoding="UTF-8"?>\n<PostResponse><Location>{escape(location)}'
                   f"</Location><Bucket>{BUCKET}</Bucket><Key>{escape(key)}</Key>"
                   f"{etag_xml}</PostResponse>").encode()
            return 201, xml, headers
        return (200 if success == "200" else 204), b"", headers

    def _object_path(self, key: str) -> Path:
        root = self.sb._objects_dir
        path = (root / key).resolve()
        if not key or key.endswith("/") or not path.is_relative_to(root.resolve()):
            raise S3Error(400, "InvalidArgument", "The key does not name an object this sandbox can store.",
                          ArgumentName="key", ArgumentValue=key)
        return path

    # -- helpers ----------------------------------------------------------------------------------

    def _content_length(self) -> int | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return None
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            return None
        return length if length >= 0 else None

    def _drain_known_length(self) -> None:
        length = self._content_length()
        if length is not None:
            BodyReader(self.rfile, length).drain()
        elif "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self._drain_chunked()

    def _drain_chunked(self) -> None:
        """Read a chunked body to its end (bounded) so the error answer reaches the client."""
        total = 0
        while total <= MAX_CHUNKED_DRAIN_BYTES:
            line = self.rfile.readline(1024)
            if not line:
                return
            try:
                size = int(line.split(b";")[0].strip() or b"0", 16)
            except ValueError:
                return
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return
            total += size
            BodyReader(self.rfile, size + 2).drain()
        self.close_connection = True

    def _read_part_then_drop(self) -> None:
        length = self._content_length() or 0
        try:
            BodyReader(self.rfile, length // 2).drain()
        except BodyIncomplete:
            pass
        self.drop()

    def _fault_answer(self, fault: Fault) -> None:
        headers = {}
        if fault.retry_after_s is not None:
            whole = int(fault.retry_after_s)
            headers["Retry-After"] = str(whole if whole == fault.retry_after_s else whole + 1)
        self._error(fault.status, fault.s3_code(), fault.message or _DEFAULT_MESSAGES.get(
            fault.s3_code(), "Injected fault."), headers=headers)

    def _error(self, status: int, code: str, message: str, *, close: bool = False,
               headers: dict[str, str] | None = None, **extra: object) -> None:
        request_id = secrets.token_hex(8).upper()
        details = "".join(f"<{name}>{escape(str(value))}</{name}>" for name, value in extra.items())
        xml = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{escape(message)}'
               f"</Message>{details}<RequestId>{request_id}</RequestId><HostId>sandbox</HostId></Error>")
        self.send_body(status, xml.encode(), "application/xml",
                       [("x-amz-request-id", request_id), *(headers or {}).items()], close=close)


_DEFAULT_MESSAGES = {
    "SlowDown": "Please reduce your request rate.",
    "InternalError": "We encountered an internal error. Please try again.",
    "ServiceUnavailable": "Service is unable to handle request.",
    "AccessDenied": "Access Denied",
    "RequestTimeout": "Your socket connection to the server was not read from or written to within the "
                      "timeout period. Idle connections will be closed.",
}
