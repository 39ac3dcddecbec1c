"""Several lane files read as one stream, in lane order, without a copy on disk.

Concatenation keeps the data valid: gzip files are members of one multi-member gzip (RFC 1952,
2.2), bzip2 files streams of one multi-stream bzip2, and plain FASTQ files join at line ends — so
a plain member (but the last) must end with a newline, or the next file's first header would be
glued to its last line: such a member is refused up front, naming the file (design.md, "Samples").

The total size is known before the first byte is read (the sum of the members' sizes when opened),
as the S3 POST's exact Content-Length needs; the MD5 of the whole stream is computed as it is read.
Memory is bounded by the caller's read size. Each member is opened once, at construction, so a
rename after that does not change what is read; one that grows or shrinks raises FileChanged.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from typing import BinaryIO, Self

from ..errors import ContentRejected, FileChanged

_GZIP_MAGIC = b"\x1f\x8b"
_BZIP2_MAGIC = b"BZh"


def _open_read_only(path: str) -> BinaryIO:
    return open(path, "rb", buffering=0)


class LaneStream:
    """Read `paths` (in the order given: the caller's lane order) as one file."""

    def __init__(self, paths: Sequence[str], *, opener: Callable[[str], BinaryIO] = _open_read_only,
                 whole_md5: bool = True, member_md5s: bool = False, member_md5s_from: int = 0) -> None:
        """whole_md5: keep the stream's MD5 (`md5`; off when the caller hashes the bytes itself);
        member_md5s: also one MD5 per member (`member_md5s`, the audit journal's per-file MD5s), from
        member `member_md5s_from` on (1 where the caller has the first one already: the MD5 of a
        read's first lane is the read's MD5 after that many bytes, which the sender takes anyway)."""
        if not paths:
            raise ValueError("LaneStream needs at least one file")
        self.paths = tuple(os.fspath(p) for p in paths)
        self._files: list[BinaryIO] = []
        try:
            for path in self.paths:
                self._files.append(opener(path))
            self.sizes = tuple(os.fstat(f.fileno()).st_size for f in self._files)
            self._check_joins()
        except BaseException:
            self.close()
            raise
        self.size = sum(self.sizes)
        self._md5 = hashlib.md5() if whole_md5 else None
        self._member_md5s = ([hashlib.md5() if i >= member_md5s_from else None for i in range(len(self.paths))]
                             if member_md5s else None)
        self._index = 0
        self._read_in_member = 0
        self.position = 0

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for f in self._files:
            f.close()

    @property
    def md5(self) -> str:
        """The hex MD5 of the bytes read so far (of the whole stream once `read` returned b"")."""
        if self._md5 is None:
            raise ValueError("this LaneStream keeps no MD5 of the whole stream (whole_md5=False)")
        return self._md5.hexdigest()

    @property
    def member_md5s(self) -> tuple[str, ...]:
        """The hex MD5 of each member's bytes read so far, in order (member_md5s=True), from member
        `member_md5s_from` on."""
        if self._member_md5s is None:
            raise ValueError("this LaneStream keeps no per-member MD5s (member_md5s=False)")
        return tuple(h.hexdigest() for h in self._member_md5s if h is not None)

    @property
    def current_path(self) -> str:
        """The member being read (for messages)."""
        return self.paths[min(self._index, len(self.paths) - 1)]

    def read(self, size: int = 1 << 20) -> bytes:
        """Up to `size` bytes (never more, never from two members at once); b"" at the end."""
        while self._index < len(self._files):
            expected = self.sizes[self._index]
            left = expected - self._read_in_member
            data = self._files[self._index].read(min(size, left)) if left > 0 else b""
            if data:
                self._read_in_member += len(data)
                self.position += len(data)
                if self._md5 is not None:
                    self._md5.update(data)
                if self._member_md5s is not None and (h := self._member_md5s[self._index]) is not None:
                    h.update(data)
                return data
            self._end_member(left)
        return b""

    def _end_member(self, left: int) -> None:
        """Move to the next member, once this one gave exactly its size at opening."""
        path, f = self.paths[self._index], self._files[self._index]
        if left > 0 or f.read(1):
            raise FileChanged(f"{path} changed while it was being read (it is "
                              f"{'shorter' if left > 0 else 'longer'} than {self.sizes[self._index]:,} bytes).")
        self._index += 1
        self._read_in_member = 0

    def _check_joins(self) -> None:
        """Refuse members that cannot be joined: different compressions, or a plain member (not
        the last) whose last byte is not a newline."""
        kinds = []
        for path, f, size in zip(self.paths, self._files, self.sizes):
            head = os.pread(f.fileno(), 3, 0)
            kinds.append("gzip" if head[:2] == _GZIP_MAGIC else "bzip2" if head == _BZIP2_MAGIC else "plain")
            if len(set(kinds)) > 1:
                raise ContentRejected(f"{os.path.basename(path)} is {kinds[-1]} but "
                                      f"{os.path.basename(self.paths[0])} is {kinds[0]}: lanes of one read "
                                      f"must share one compression.")
        if kinds[0] != "plain":
            return
        for path, f, size in list(zip(self.paths, self._files, self.sizes))[:-1]:
            if size and os.pread(f.fileno(), 1, size - 1) != b"\n":
                raise ContentRejected(f"{os.path.basename(path)} does not end with a newline, so it cannot "
                                      f"be joined with the next lane file: add the final newline.")
