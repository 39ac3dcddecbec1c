"""Validation of a large file in a child process: `python -m daemon.checks.validate --json FILE`,
whose one JSON line (written by validate.main()) this module reads. A sample's read made of several
lane files, or one whose read names the pair check needs, runs this module instead
(`python -m daemon.checks.child --json [--pair-digest] [--member-md5s[-after-first]] LANE...`): the lanes validated
as one stream (daemon/assembly/concat.py) and, with --pair-digest, the read-name digest
(daemon/assembly/pairs.py) computed in the same pass and carried in the JSON verdict; with
--member-md5s, each lane file's MD5 too (the audit journal's), by a reading thread beside the checks,
so that the sending process hashes a read of several lanes once, as it does a file (with
--member-md5s-after-first, every lane's but the first: the sender has that one from its own MD5 of the
read, taken after the first lane's bytes, so no byte is hashed three times).

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
import queue
import re
import subprocess
import sys
import threading
from collections.abc import Generator, Mapping, Sequence
from contextlib import closing
from typing import Any, BinaryIO

from daemon.assembly.concat import LaneStream
from daemon.assembly.pairs import NameDigest, PairDigest
from daemon.checks.validate import StreamValidator
from daemon.errors import ContentRejected, FileChanged, Transient
from daemon.upload.source import open_source

BLOCK_BYTES = 4 << 20
READ_AHEAD_BLOCKS = 1       # blocks read (and MD5'd) ahead of the checks: 4 MiB more memory at most
_FLAGS = ("--json", "--pair-digest", "--member-md5s", "--member-md5s-after-first")

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
    """One child process validating one file version of `size` bytes (started at once), or the lane
    files of one read (`path` a sequence, `size` their sum), with the pair check's digest and each
    lane file's MD5 if asked (every one's but the first with skip_first_md5)."""

    def __init__(self, path: str | Sequence[str], size: int, *, pair_digest: bool = False,
                 member_md5s: bool = False, skip_first_md5: bool = False) -> None:
        paths = [path] if isinstance(path, str) else list(path)
        self.path, self.size = paths[0], size
        if len(paths) == 1 and not pair_digest and not member_md5s:
            command = ["-P", "-m", "daemon.checks.validate", "--json", *paths]
        else:
            md5s = "--member-md5s-after-first" if skip_first_md5 else "--member-md5s"
            flags = [*(["--pair-digest"] if pair_digest else []), *([md5s] if member_md5s else [])]
            command = ["-P", "-m", "daemon.checks.child", "--json", *flags, *paths]
        # -P: `-m` would otherwise put the working directory first on sys.path, and a folder named
        # `daemon` there (the directory `seqdrop upload` was run from) would be run instead of seqdrop's.
        self.proc = subprocess.Popen([sys.executable, *command],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, close_fds=True, env=child_environment())
        self._verdict: dict[str, Any] | None = None

    @property
    def pair_digest(self) -> PairDigest | None:
        """The read-name digest the child computed (after finish(), with pair_digest=True)."""
        found = self._read_verdict().get("pair_digest")
        return digest_from_json(found) if isinstance(found, dict) else None

    @property
    def member_md5s(self) -> tuple[str, ...] | None:
        """Each lane file's hex MD5, in order (after finish(), with member_md5s=True; without the
        first lane's with skip_first_md5)."""
        found = self._read_verdict().get("member_md5s")
        return tuple(str(h) for h in found) if isinstance(found, list) else None

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


def lane_label(paths: Sequence[str]) -> str:
    """How messages name a read: its file, or its first lane file and how many more."""
    first = os.path.basename(paths[0])
    return first if len(paths) == 1 else f"{first} (+{len(paths) - 1} more lane files, read as one)"


def open_member(path: str) -> BinaryIO:
    """A lane file opened the way seqdrop opens what it uploads (daemon/upload/source.py)."""
    return os.fdopen(open_source(path), "rb", buffering=0)


def digest_to_json(d: PairDigest) -> dict[str, Any]:
    # Read names are bytes: latin-1 maps each byte to one code point, so JSON carries them exactly.
    return {"name": d.name, "records": d.records, "digest": d.digest,
            "first_names": [n.decode("latin-1") for n in d.first_names], "checkpoints": list(d.checkpoints)}


def digest_from_json(doc: dict[str, Any]) -> PairDigest:
    return PairDigest(name=str(doc["name"]), records=int(doc["records"]), digest=str(doc["digest"]),
                      first_names=tuple(n.encode("latin-1") for n in doc["first_names"]),
                      checkpoints=tuple((int(c), str(h)) for c, h in doc["checkpoints"]))


def validate_lanes(paths: Sequence[str], *, pair_digest: bool = False, member_md5s: bool = False,
                   member_md5s_from: int = 0) -> dict[str, Any]:
    """Validate the lane files of one read as one stream: the verdict main() prints."""
    label = lane_label(paths)
    # Lazy: fastq_blocks loads numpy, and the sending process imports this module for ChildValidator.
    from daemon.checks.fastq_blocks import Newlines
    # One Newlines for both scanners of each block: its '\n' are found once, not once by each.
    newlines = Newlines() if pair_digest else None
    names = NameDigest(label, vectorised=True, newlines=newlines) if pair_digest else None
    validator = StreamValidator(label, on_text=names.feed if names is not None else None, vectorised=True,
                                newlines=newlines)
    try:
        with (LaneStream(paths, opener=open_member, whole_md5=False, member_md5s=member_md5s,
                         member_md5s_from=member_md5s_from) as stream,
              closing(_read_ahead(stream) if member_md5s else _read(stream)) as chunks):
            for chunk in chunks:
                validator.feed(chunk)
        summary = validator.finish()
    except ContentRejected as e:
        return {"path": paths[0], "ok": False, "error": str(e)}
    except (OSError, FileChanged) as e:
        return {"path": paths[0], "ok": False, "io_error": True, "error": f"cannot read {label}: {e}"}
    result = {"path": paths[0], "ok": True, "format": summary.format, "compression": summary.compression,
              "records": summary.records, "bases": summary.bases, "raw_bytes": summary.raw_bytes}
    if names is not None:
        result["pair_digest"] = digest_to_json(names.finish())
    if member_md5s:
        result["member_md5s"] = list(stream.member_md5s)
    return result


def _read(stream: LaneStream) -> Generator[bytes, None, None]:
    while chunk := stream.read(BLOCK_BYTES):
        yield chunk


def _read_ahead(stream: LaneStream) -> Generator[bytes, None, None]:
    """The stream's blocks, read (and so MD5'd, by LaneStream) in a thread of their own: hashlib and
    file reads let go of the GIL, so the MD5s run beside the checks instead of after them. A read
    error is raised here, in the reading order."""
    blocks: queue.Queue[bytes | BaseException] = queue.Queue(maxsize=READ_AHEAD_BLOCKS)
    stop = threading.Event()

    def read() -> None:
        try:
            while not stop.is_set() and (chunk := stream.read(BLOCK_BYTES)):
                blocks.put(chunk)
            blocks.put(b"")
        except BaseException as e:  # noqa: BLE001 - handed to the checking thread, which raises it
            blocks.put(e)

    reader = threading.Thread(target=read, name="seqdrop-lanes", daemon=True)
    reader.start()
    try:
        while (item := blocks.get()) != b"":
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while reader.is_alive():        # a reader blocked on a full queue: make room until it sees stop
            try:
                blocks.get(timeout=0.1)
            except queue.Empty:
                pass
        reader.join()


def main(argv: list[str] | None = None) -> int:
    """`python -m daemon.checks.child --json [--pair-digest] [--member-md5s[-after-first]] LANE...`: one JSON verdict
    line; exit 0 if valid."""
    args = list(sys.argv[1:] if argv is None else argv)
    paths = [a for a in args if a not in _FLAGS]
    if not paths:
        print("usage: python -m daemon.checks.child --json [--pair-digest] [--member-md5s[-after-first]] LANE...", file=sys.stderr)
        return 2
    after_first = "--member-md5s-after-first" in args
    result = validate_lanes(paths, pair_digest="--pair-digest" in args,
                            member_md5s=after_first or "--member-md5s" in args, member_md5s_from=int(after_first))
    print(json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
