"""`seqdrop check`: is everything in place for the daemon? Says what is wrong and how to fix it.

Works before the daemon has ever run. Exit 2 for a configuration error, 1 if any
other check failed, 0 if all passed (warnings do not fail the check).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from daemon import config as config_mod
from daemon.commands.queue_owner import ownership_problem
from daemon.config.api_key import key_file_exposure
from daemon.detection.files import DepthLimit, sub_folders
from daemon.detection.mounts import network_mount_type
from daemon.errors import AuthError, ConfigError, Permanent, SeqdropError, Transient
from daemon.landing.survey import survey
from daemon.operations import logs
from daemon.queue import integrity
from daemon.queue.journal import journal_path
from daemon.queue.open import open_shared
from daemon.upload.build import make_client
from daemon.upload.client import OneCodexClient

CLOCK_SKEW_WARN_S = 60.0
MAX_DIRS_COUNTED = 200_000


class _Report:
    def __init__(self, out: Any) -> None:
        self.out, self.problems, self.warnings = out, 0, 0

    def ok(self, what: str, detail: str = "") -> None:
        print(f"  ok       {what}" + (f": {detail}" if detail else ""), file=self.out)

    def warn(self, what: str, detail: str, fix: str) -> None:
        self.warnings += 1
        print(f"  warning  {what}: {detail}\n           fix: {fix}", file=self.out)

    def bad(self, what: str, detail: str, fix: str) -> None:
        self.problems += 1
        print(f"  PROBLEM  {what}: {detail}\n           fix: {fix}", file=self.out)


def run_checks(config_path: str, *, out: Any = None, env: dict[str, str] | None = None) -> int:
    out = out or sys.stdout
    r = _Report(out)
    print(f"seqdrop check — {config_path}", file=out)
    try:
        settings = config_mod.load(config_path)
    except ConfigError as e:
        r.bad("config", e.problem, e.fix or "correct the config file")
        return 2
    if not settings.watch.folders:   # `seqdrop run` refuses this config: say so before it is started
        r.bad("config", f"{settings.source}: [watch.paths] no watch folders configured",
              'add paths = ["/srv/sequencer/output"] under [watch]')
        return 2
    r.ok("config", f"{len(settings.watch.folders)} watch folder(s), queue {settings.queue.path}")
    _check_queue(settings, r)
    _check_folders(settings, r)
    client = _check_api(settings, r, env)
    _check_landing(settings, r, client)
    verdict = "all good" if not r.problems else f"{r.problems} problem(s)"
    print(f"\n{verdict}" + (f", {r.warnings} warning(s)" if r.warnings else ""), file=out)
    return 0 if not r.problems else 1


def _check_shared_queue(settings: Any, r: _Report) -> None:
    """[queue] url: the database reached with this host's credentials, its server version, the queue's format."""
    try:
        store = open_shared(settings, readonly=True)
    except SeqdropError as e:
        r.bad("queue", str(e).split(" — fix: ")[0], str(e).partition(" — fix: ")[2] or "check [queue] url")
        return
    try:
        info = store.server()
    finally:
        store.close()
    found = info["schema_version"]
    schema = f"queue format {found}" if found is not None else "no queue yet (the first daemon creates it)"
    r.ok("queue", f"PostgreSQL {info['server_version']}, database {info['database']} at {info['url']}, {schema}, "
                  f"this host claims as {info['host']!r}")


def _check_queue(settings: Any, r: _Report) -> None:
    if settings.queue.shared:
        _check_shared_queue(settings, r)
        return
    """A real integrity check (integrity_check compares every index with its table, unlike quick_check),
    and the queue compared with its audit journal (a queue that lost its newest transactions)."""
    path = settings.queue.path
    folder = os.path.dirname(path) or "."
    if trap := ownership_problem(path):      # root ran seqdrop by hand once: the files are root's
        r.bad("queue", *trap)
        return
    verdict = integrity.check(path)
    records = integrity.journal_has_records(journal_path(path))
    if verdict.kind == integrity.NOT_A_DATABASE and not records:
        r.bad("queue", f"{path} is not a seqdrop queue ({verdict.detail})",
              "correct queue.path (it names some other file)")
        return
    first_start = verdict.kind == integrity.EMPTY and not records     # the daemon opens it as new
    if verdict.damaged and verdict.kind != integrity.MISSING and not first_start:
        r.bad("queue", verdict.detail,
              f"restart the daemon (systemctl restart seqdrop): it sets the damaged queue aside (kept as "
              f"{os.path.basename(path)}.damaged-<time>) and rebuilds it from the audit journal "
              f"{journal_path(path)}; nothing already uploaded is uploaded again")
        return
    if verdict.kind == integrity.UNREADABLE:
        r.bad("queue", verdict.detail, "run as the seqdrop user, or fix the disk or the file's ownership")
        return
    if verdict.kind == integrity.OK:
        if not os.access(path, os.W_OK):
            r.bad("queue", f"{path} is not writable by this user", "run as the seqdrop user, or fix ownership")
            return
        r.ok("queue", f"{path} readable, writable, intact, as new as its audit journal")
        return
    existing = folder
    while not os.path.exists(existing):
        existing = os.path.dirname(existing) or "/"
    if not os.access(existing, os.W_OK):
        r.bad("queue", f"cannot create {path}: {existing} is not writable by this user",
              "create the folder and give it to the seqdrop user (the unit's StateDirectory= does this)")
    elif verdict.kind == integrity.MISSING:
        r.warn("queue", verdict.detail, "nothing to do: the daemon rebuilds it at its next start")
    else:
        r.ok("queue", f"{path} will be created at first start")


def _check_folders(settings: Any, r: _Report) -> None:
    dirs = 0
    for folder in settings.watch.folders:
        p = folder.path
        if not os.path.exists(p):
            r.bad("watch folder", f"{p} does not exist (the daemon waits for it, and uploads nothing from it "
                                  f"until it appears)",
                  "create it, mount the share (the unit orders itself after mounts with RequiresMountsFor=), "
                  "or correct the path")
            continue
        if not os.access(p, os.R_OK | os.X_OK):
            r.bad("watch folder", f"{p} is not readable by this user",
                  "give the seqdrop user read access (e.g. add it to the instrument's group)")
            continue
        if os.access(p, os.W_OK) and os.geteuid() != 0:
            r.warn("watch folder", f"{p} is writable by this user",
                   "seqdrop never writes there, but read-only access is safer (ReadOnlyPaths= in the unit)")
        fstype = network_mount_type(p)
        if fstype and not folder.polling:
            r.warn("watch folder", f"{p} is on a {fstype} network share, which delivers no inotify events",
                   f'set polling = true for it: paths = [{{path = "{p}", polling = true}}]')
        else:
            r.ok("watch folder", p + (f" ({fstype}, polling)" if fstype else ""))
        unreadable: list[str] = []
        if not folder.polling:
            # The daemon's own walk (no recursion, down to watch.max_depth): os.walk recurses, and a
            # 1,500-deep tree would end this check in a RecursionError.
            too_deep = _TooDeep()
            for _sub, _depth in sub_folders(p, DepthLimit(settings.watch.max_depth), log=too_deep,
                                            unreadable=unreadable):
                dirs += 1
                if dirs > MAX_DIRS_COUNTED:
                    break
            if too_deep.folders:
                r.warn("watch folder", f"{len(too_deep.folders)} folder(s) of {p} lie more than "
                                       f"{settings.watch.max_depth} levels deep, e.g. {too_deep.folders[0]}; "
                                       f"nothing in them is uploaded",
                       "move the files higher up, or raise [watch] max_depth")
        if unreadable:   # the daemon skips these (watcher.scan_permission_denied): their files wait unseen
            r.warn("watch folder", f"{len(unreadable)} subfolder(s) of {p} cannot be read by this user, "
                                   f"e.g. {unreadable[0]}; their files are not uploaded",
                   "give the seqdrop user read access to them (e.g. add it to the instrument's group)")
    limit = _read_int("/proc/sys/fs/inotify/max_user_watches")
    if limit is not None and dirs:
        if dirs > limit * 0.8:
            r.bad("inotify", f"{dirs} folders to watch, limit fs.inotify.max_user_watches = {limit}",
                  "install systemd/99-seqdrop-inotify.conf in /etc/sysctl.d/ and run `sysctl --system`")
        else:
            r.ok("inotify", f"{dirs} folder(s) to watch, limit {limit}")


def _check_api(settings: Any, r: _Report, env: dict[str, str] | None) -> OneCodexClient | None:
    """The client, if One Codex accepts the key (the landing check asks it for projects)."""
    try:
        key = config_mod.load_api_key(settings, env=env)
    except ConfigError as e:
        r.bad("API key", e.problem, e.fix or "provide the key")
        return None
    logs.register_secret(key)
    if exposed := key_file_exposure(settings):
        r.warn("API key", *exposed)
    else:
        r.ok("API key", "found")
    client = make_client(settings, key, read_timeout_s=min(settings.api.read_timeout_s, 30))
    try:
        client.probe()
    except AuthError as e:
        r.bad("API key", f"rejected by {settings.api.base_url}: {e}",
              "copy the key again from your One Codex account settings")
        return None
    except Transient as e:
        r.bad("API", f"{settings.api.base_url} is unreachable: {e}",
              "check the network, proxy and api.base_url; seqdrop retries by itself when it runs")
        return None
    except Permanent as e:
        r.bad("API", f"{settings.api.base_url} answered unexpectedly: {e}", "check api.base_url")
        return None
    r.ok("API", f"{settings.api.base_url} accepts the key")
    if client.last_server_date is not None:
        skew = time.time() - client.last_server_date
        if abs(skew) > CLOCK_SKEW_WARN_S:
            r.warn("clock", f"this machine's clock is {skew:+.0f} s off the API server's",
                   "enable time sync (timedatectl set-ntp true); upload policies expire by the clock")
        else:
            r.ok("clock", f"within {abs(skew):.0f} s of the API server")
    return client


def _check_landing(settings: Any, r: _Report, client: OneCodexClient | None) -> None:
    """Where samples will land: sample sheets, project names, placeholders (daemon/landing/survey.py)."""
    for finding in survey(settings, projects=client.projects if client is not None else None):
        if finding.level == "ok":
            r.ok(finding.what, finding.detail)
        elif finding.level == "warn":
            r.warn(finding.what, finding.detail, finding.fix)
        else:
            r.bad(finding.what, finding.detail, finding.fix)


class _TooDeep:
    """Stands in for the log of the walk: collects the folders it skips for being too deep."""

    def __init__(self) -> None:
        self.folders: list[str] = []

    def warning(self, event: str, **fields: Any) -> None:
        if event == "watch.too_deep":
            self.folders.append(str(fields.get("folder")))


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None
