"""The S3 behind the sandbox's multipart route: an external S3-compatible server (moto's, in tests).

The sandbox does not emulate S3's multipart API itself; init_multipart_upload hands out a bucket on
this server and its callback checks the object there. Plain unsigned HTTP (urllib), which moto
accepts by default: this is a rehearsal stand-in, never a client of a real S3. The object is looked
up by listing the bucket (which the sandbox created, so an unsigned request may list it): moto
refuses an unsigned HEAD of objects some clients create.
"""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from urllib.parse import quote
from xml.etree import ElementTree

_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"

TIMEOUT_S = 10.0


class ExternalS3Error(Exception):
    """The server could not be reached, or answered something unexpected."""


class ExternalS3:
    def __init__(self, endpoint: str, bucket: str) -> None:
        self.endpoint, self.bucket = endpoint.rstrip("/"), bucket
        self._bucket_ready = False
        self._lock = threading.Lock()

    def _request(self, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(self.endpoint + path, method=method, data=b"" if method == "PUT" else None)
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
                return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, {k.lower(): v for k, v in e.headers.items()}, b""
        except (urllib.error.URLError, OSError) as e:
            raise ExternalS3Error(f"{self.endpoint} cannot be reached ({e})") from None

    def ensure_bucket(self) -> None:
        """Create the bucket once (an existing one is fine)."""
        with self._lock:
            if self._bucket_ready:
                return
            status, _, _ = self._request("PUT", f"/{self.bucket}")
            if status not in (200, 409):
                raise ExternalS3Error(f"creating bucket {self.bucket} at {self.endpoint} answered HTTP {status}")
            self._bucket_ready = True

    def head(self, key: str) -> tuple[int, str] | None:
        """(size, ETag without quotes) of the object, None if there is none."""
        status, _, body = self._request("GET", f"/{self.bucket}?list-type=2&prefix={quote(key, safe='')}")
        if status != 200:
            raise ExternalS3Error(f"listing {self.bucket} at {self.endpoint} answered HTTP {status}")
        try:
            root = ElementTree.fromstring(body)
        except ElementTree.ParseError:
            raise ExternalS3Error(f"listing {self.bucket} at {self.endpoint} answered something that is not XML") \
                from None
        for item in root.iter(f"{_NS}Contents"):
            if item.findtext(f"{_NS}Key") == key:
                return int(item.findtext(f"{_NS}Size") or 0), (item.findtext(f"{_NS}ETag") or "").strip('"')
        return None
