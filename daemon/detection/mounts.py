"""Is a folder on a network share? (SMB/NFS mounts deliver no inotify events for other machines'
writes: such a folder must be polled, and start-up and `seqdrop check` say so.)"""

from __future__ import annotations

import os
import re

from daemon.paths import is_within

NETWORK_FS_TYPES = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "afs", "ceph", "glusterfs", "lustre",
    "gpfs", "beegfs", "9p", "virtiofs", "vboxsf", "davfs", "fuse.sshfs", "sshfs", "fuse.rclone",
    "fuse.s3fs", "fuse.gcsfuse", "fuse.glusterfs", "fuse.cephfs", "fuse.davfs2",
    "fuse.vmhgfs-fuse", "fuse.smbnetfs",
})


def network_mount_type(path: str, *, mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """The file system type if ``path`` is on a network (or VM-shared) mount, else None."""
    target = os.path.realpath(path)
    best_point, best_type = "", None
    try:
        with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                fields = line.split()
                try:
                    sep = fields.index("-")
                    point = _unescape_mount(fields[4])
                    fstype = fields[sep + 1]
                except (ValueError, IndexError):
                    continue
                if is_within(target, point) and len(point) >= len(best_point):
                    best_point, best_type = point, fstype
    except OSError:
        return None
    if best_type is None:
        return None
    if best_type in NETWORK_FS_TYPES or best_type.startswith(("nfs", "fuse.sshfs", "fuse.rclone")):
        return best_type
    return None


def _unescape_mount(text: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes (\\040...)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)
