"""Validation of a large file in a child process: `python -m daemon.checks.validate --json FILE`,
whose one JSON line (written by validate.main()) this module reads.

In one process the validator and the sending thread take turns on the GIL, and validation made a
large upload 1.4-1.9x slower (docs/benchmarks.md). The child reads the same file from the page
cache on its own core. The upload cannot complete without it: the standard route's form-data body
only sends its closing boundary after finish() has the child's verdict, and the multipart route only
completes the S3 upload after it; a refusal seen mid-stream stops the sending; and the verdict must
cover exactly the size being sent (the file is stat'ed again after the upload, as for every upload).
The child runs with a scrubbed environment: it reads one file and needs no secret.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

from daemon.errors import ContentRejected, FileChanged, Transient

# What the child must not inherit (design.md, "Rules": child processes do not inherit the key): the
# key's variable and systemd's credentials folder by name, and anything named like a secret.
WITHHELD_NAMES = frozenset({"ONE_CODEX_API_KEY", "CREDENTIALS_DIRECTORY"})
SECRET_NAME_RE = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH", re.IGNORECASE)


def child_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a validator child: this process's, without any secret."""
    source = os.environ if environ is None else environ
    return {name: value for name, value in source.items()
            if name.upper() not in WITHHELD_NAMES and not SECRET_NAME_RE.search(name)}


class ChildValidator:
    """One child process validating one file version of `size` bytes (started at once)."""

    def __init__(self, path: str, size: int) -> None:
        self.path, self.size = path, size
        # -P: `-m` would otherwise put the working directory first on sys.path, and a folder named
        # `daemon` there (the directory `seqdrop upload` was run from) would be run instead of seqdrop's.
        self.proc = subprocess.Popen([sys.executable, "-P", "-m", "daemon.checks.validate", "--json", path],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, close_fds=True, env=child_environment())
        self._verdict: dict[str, Any] | None = None

    def _read_verdict(self) -> dict[str, Any]:
        if self._verdict is None:
            out, err = self.proc.communicate()
            try:
                self._verdict = json.loads(out.decode().strip().splitlines()[-1])
            except (ValueError, IndexError):
                raise Transient(f"the validator process failed (exit {self.proc.returncode}): "
                                f"{err.decode(errors='replace').strip()[-300:]}", reason="validator") from None
        return self._verdict

    def _judge(self) -> None:
        verdict = self._read_verdict()
        if verdict.get("io_error"):
            raise FileChanged(verdict.get("error", "could not be read while it was being sent"))
        if not verdict.get("ok"):
            raise ContentRejected(verdict.get("error") or f"{os.path.basename(self.path)} is not valid")
        if verdict.get("raw_bytes") != self.size:
            raise FileChanged(f"changed while it was being validated ({verdict.get('raw_bytes')} bytes "
                              f"validated, {self.size} expected)")

    def check(self) -> None:
        """Per block: if the child has already refused the file, stop sending now."""
        if self.proc.poll() is not None and self.proc.returncode != 0:
            self._judge()

    def finish(self) -> None:
        """Wait for the verdict: returns if the file is valid and of the size expected, else raises."""
        self._judge()

    def close(self) -> None:
        """Kill the child if it still runs (the upload ended without it), release its pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
