"""Sandbox: the API server and the S3 server on loopback, their shared state, start and stop."""

from __future__ import annotations

import logging
import secrets
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Iterable

from .api import ApiHandler
from .base import SandboxServer
from .external_s3 import ExternalS3
from .faults import Fault, FaultBook
from .landing import Landing
from .state import RequestLog, Samples

log = logging.getLogger("seqdrop.sandbox")


class Sandbox:
    """A strict local One Codex API + S3 browser-POST endpoint with injectable faults.

    The API and S3 listen on separate ports (separate "hosts"); `api_url` is the config's base_url,
    `s3_url` is what init_upload hands out as upload_url. The multipart route's S3 is an external
    server (`multipart_s3_endpoint`, e.g. moto's), where init_multipart_upload hands out a bucket.
    """

    def __init__(self, host: str = "127.0.0.1", api_port: int = 0, s3_port: int = 0,
                 data_dir: str | Path | None = None, api_keys: Iterable[str] = ("sandbox-key",),
                 policy_lifetime_s: float = 3600.0, store_objects: bool = True,
                 multipart_s3_endpoint: str | None = None,
                 multipart_bucket: str = "seqdrop-sandbox-multipart", import_delay_s: float = 0.0) -> None:
        self.host, self._api_port, self._s3_port = host, api_port, s3_port
        # GET /api/v1/samples/<id> says "importing" this long after a confirm, then "available".
        self.import_delay_s = float(import_delay_s)
        self._data_dir_arg = Path(data_dir) if data_dir is not None else None
        self.policy_lifetime_s = float(policy_lifetime_s)
        self.store_objects = store_objects
        self.multipart_s3 = ExternalS3(multipart_s3_endpoint, multipart_bucket) if multipart_s3_endpoint else None
        # S3 answers 400 RequestTimeout when a client sends nothing for about 20 s; settable.
        self.s3_idle_timeout_s = 20.0
        self._api_keys: tuple[str, ...] = ()
        self.set_api_keys(api_keys)
        self._secret = secrets.token_bytes(32)  # the "AWS secret key": only the sandbox knows it
        self._faults = FaultBook()
        self._samples = Samples()
        self.landing = Landing()   # projects and tags (init_upload's landing fields)
        self._log = RequestLog()
        self._granted: list[tuple[str, str]] = []   # (policy, signature) of every S3 form init_upload gave
        self._stopping = threading.Event()
        self._servers: list[SandboxServer] = []
        self._threads: list[threading.Thread] = []
        self._owned_dir: str | None = None
        self.data_dir: Path | None = None
        self.api_url = self.s3_url = ""

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> "Sandbox":
        """Bind both ports and serve in background threads; returns self."""
        from .s3 import S3Handler  # here, so that importing the package stays cheap

        if self._servers:
            raise RuntimeError("sandbox already started")
        if self._data_dir_arg is None:
            self._owned_dir = tempfile.mkdtemp(prefix="seqdrop-sandbox-")
            self.data_dir = Path(self._owned_dir)
        else:
            self.data_dir = self._data_dir_arg
        self._objects_dir = self.data_dir / "objects"
        self._tmp_dir = self.data_dir / "incoming"
        self._objects_dir.mkdir(parents=True, exist_ok=True)
        self._tmp_dir.mkdir(parents=True, exist_ok=True)
        self._stopping.clear()
        try:
            api = SandboxServer((self.host, self._api_port), ApiHandler, self)
            self._servers.append(api)
            s3 = SandboxServer((self.host, self._s3_port), S3Handler, self)
            self._servers.append(s3)
        except OSError:
            self.stop()
            raise
        self.api_url = f"http://{self.host}:{api.server_address[1]}"
        self.s3_url = f"http://{self.host}:{s3.server_address[1]}"
        for server, name in ((api, "api"), (s3, "s3")):
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                      name=f"sandbox-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("sandbox.started api_url=%s s3_url=%s data_dir=%s", self.api_url, self.s3_url, self.data_dir)
        return self

    def stop(self) -> None:
        """Stop serving, wake delayed answers, remove the data_dir if the sandbox created it."""
        self._stopping.set()
        for server in self._servers:
            if self._threads:
                server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._servers.clear()
        self._threads.clear()
        if self._owned_dir is not None:
            shutil.rmtree(self._owned_dir, ignore_errors=True)
            self._owned_dir = None
        log.info("sandbox.stopped")

    def __enter__(self) -> "Sandbox":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- driving it -------------------------------------------------------------------------------

    def add_fault(self, fault: Fault) -> None:
        """Inject a fault (see Fault)."""
        self._faults.add(fault)
        log.info("sandbox.fault_added %s", fault)

    def clear_faults(self) -> int:
        """Remove every fault; returns how many were active."""
        return self._faults.clear()

    def faults(self) -> list[Fault]:
        """The faults that can still apply."""
        return self._faults.active()

    def set_api_keys(self, keys: Iterable[str]) -> None:
        """Accept exactly these API keys from now on (an empty list refuses everyone)."""
        if isinstance(keys, str):
            raise TypeError("api_keys must be a list of strings, not a string")
        keys = tuple(keys)
        if not all(isinstance(k, str) and k and ":" not in k for k in keys):
            raise ValueError("api_keys must be non-empty strings without ':'")
        self._api_keys = keys

    def samples(self) -> list[dict]:
        """Every sample, oldest first (copies)."""
        return [{k: v for k, v in s.items() if k != "owner"} for s in self._samples.all()]

    def granted_forms(self) -> list[tuple[str, str]]:
        """The (policy, signature) of every S3 POST form init_upload answered, R2 forms included,
        oldest first: what a test looks for where a client must never keep or show it."""
        return list(self._granted)

    def requests(self) -> list[dict]:
        """Every request received by either server, oldest first (copies; Authorization redacted)."""
        return self._log.all()

    def _config_view(self) -> dict:
        return {"policy_lifetime_s": self.policy_lifetime_s, "api_keys_count": len(self._api_keys),
                "import_delay_s": self.import_delay_s,
                "api_url": self.api_url, "s3_url": self.s3_url,
                "multipart_s3_endpoint": self.multipart_s3.endpoint if self.multipart_s3 else None}
