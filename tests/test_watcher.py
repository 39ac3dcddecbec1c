"""The watcher: name matching, scans, network mounts, and real inotify/polling on tmp_path."""

from __future__ import annotations

import errno
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from deep_tree import make_chain, remove_chain
from harness import wait_for
from structlog.testing import capture_logs
from watchdog.observers import inotify_c

from daemon.detection.watcher import (
    DEFAULT_INCLUDE,
    Matcher,
    Watcher,
    network_mount_type,
    scan,
)

TIMEOUT_S = 5.0


def write(path: Path, text: str = "@r1\nACGT\n+\nIIII\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


class Recorder:
    """Collects hints and root-state calls from the watcher's threads."""

    def __init__(self) -> None:
        self.hints: list[str] = []
        self.states: list[tuple[str, bool]] = []
        self._lock = threading.Lock()

    def on_hint(self, path: str) -> None:
        with self._lock:
            self.hints.append(path)

    def on_root_state(self, root: str, present: bool) -> None:
        with self._lock:
            self.states.append((root, present))

    def hinted(self, path: Path | str) -> bool:
        with self._lock:
            return str(path) in self.hints

    def seen(self) -> set[str]:
        with self._lock:
            return set(self.hints)


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.fixture
def make_watcher(rec: Recorder) -> Iterator[Callable[..., Watcher]]:
    started: list[Watcher] = []

    def make(roots: list[Path], **kwargs) -> Watcher:
        kwargs.setdefault("matcher", Matcher())
        kwargs.setdefault("on_hint", rec.on_hint)
        kwargs.setdefault("on_root_state", rec.on_root_state)
        w = Watcher([str(r) for r in roots], **kwargs)
        w.start()
        started.append(w)
        return w

    yield make
    for w in started:
        w.stop()


def sentinel(root: Path, rec: Recorder, name: str = "zz_sentinel.fastq") -> None:
    """Write a matching file and wait for its hint: every earlier event has been handled by then."""
    path = write(root / name)
    assert wait_for(lambda: rec.hinted(path)), f"no hint for sentinel {path}"


# -- Matcher -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", [
    "a.fastq", "a.fq", "a.fasta", "a.fa", "a.fna", "a.fastq.gz", "a.fq.bz2", "a.fna.gz",
    "S1_S1_L001_R1_001.fastq.gz", "READS.FASTQ.GZ", "x.Fa",
])
def test_matcher_accepts_default_patterns_case_insensitively(name: str) -> None:
    """Every default extension, with .gz/.bz2 and in any case, is accepted."""
    assert Matcher().matches(f"/srv/out/run/{name}")


@pytest.mark.parametrize("name", [
    ".a.fastq", ".a.fastq.gz.Xy12Ab", ".#a.fastq", "a.fastq.tmp", "a.fastq.part", "a.fq.partial",
    "a.fastq.filepart", "a.fastq~", "a.fastq.swp", "~$a.fastq", "#a.fastq#",
    "a.fastq.gz.crdownload", "a.bam", "a.fastq.zip", "a.txt", "fastq", "",
])
def test_matcher_refuses_hidden_temporary_and_other_names(name: str) -> None:
    """Hidden names, temporary names and anything not included are refused."""
    assert not Matcher().matches(f"/srv/out/{name}")


def test_matcher_exclude_wins_over_include() -> None:
    """An exclude pattern refuses a name the include patterns accept."""
    m = Matcher(include=DEFAULT_INCLUDE, exclude=("Undetermined_*",))
    assert not m.matches("/x/Undetermined_S0_L001_R1_001.fastq.gz")
    assert m.matches("/x/S1_S1_L001_R1_001.fastq.gz")


def test_matcher_custom_include_still_refuses_temp_names() -> None:
    """A catch-all include still never accepts temporary names."""
    m = Matcher(include=("*",))
    assert m.matches("/x/anything.dat")
    assert not m.matches("/x/anything.dat.part")


def test_matcher_looks_at_the_name_only() -> None:
    """Folder names do not matter to the matcher (hidden folders are handled by scan/watcher)."""
    assert Matcher().matches("/srv/run.fastq/reads.txt") is False
    assert Matcher().matches("/srv/.cache/reads.fq") is True


# -- scan (pyfakefs) -----------------------------------------------------------------------------

def test_scan_finds_matching_regular_files_in_nested_folders(fs) -> None:
    """Scan yields absolute paths and stats of matching files at any depth, nothing else."""
    fs.create_file("/out/a.fastq", contents="@r\nA\n+\nI\n")
    fs.create_file("/out/run1/Data/BaseCalls/b.fastq.gz", contents="x")
    fs.create_file("/out/run1/Data/BaseCalls/L001/C1.1/L001_1.cbcl")
    fs.create_file("/out/run1/notes.txt")
    fs.create_file("/out/run1/c.fq.tmp")
    fs.create_dir("/out/empty")
    found = {path: st.st_size for path, st in scan("/out", Matcher())}
    assert found == {"/out/a.fastq": 9, "/out/run1/Data/BaseCalls/b.fastq.gz": 1}


def test_scan_skips_hidden_folders_and_files(fs) -> None:
    """Files in hidden folders (writers' staging areas) and hidden files are not yielded."""
    fs.create_file("/out/.staging/run/a.fastq")
    fs.create_file("/out/run/.b.fastq.XyZ123")
    fs.create_file("/out/run/c.fastq")
    assert [p for p, _ in scan("/out", Matcher())] == ["/out/run/c.fastq"]


def test_scan_does_not_follow_symlinks(fs) -> None:
    """Symlinked folders and files are not followed (loops, files outside the share)."""
    fs.create_file("/elsewhere/secret.fastq")
    fs.create_file("/out/run/a.fastq")
    fs.create_symlink("/out/link_dir", "/elsewhere")
    fs.create_symlink("/out/run/loop", "/out")
    fs.create_symlink("/out/run/link.fastq", "/elsewhere/secret.fastq")
    assert [p for p, _ in scan("/out", Matcher())] == ["/out/run/a.fastq"]


# pyfakefs Patcher(additional_skip_names, modules_to_reload, modules_to_patch, allow_root_user)
@pytest.mark.parametrize("fs", [[None, None, None, False]], indirect=True)
def test_scan_survives_unreadable_folders(fs) -> None:
    """A folder that cannot be read is logged with the fix and skipped; the rest is scanned."""
    fs.create_file("/out/locked/a.fastq")
    fs.create_file("/out/open/b.fastq")
    os.chmod("/out/locked", 0o311)  # can be entered, cannot be listed
    with capture_logs() as logs:
        found = [p for p, _ in scan("/out", Matcher())]
    assert found == ["/out/open/b.fastq"]
    assert any(e["event"] == "watcher.scan_permission_denied" and e["path"] == "/out/locked"
               and "read access" in e.get("fix", "") for e in logs), logs


def test_scan_survives_files_vanishing_mid_scan(fs) -> None:
    """Files deleted while the scan runs are skipped without an error."""
    for i in range(5):
        fs.create_file(f"/out/run/{i}.fastq")
    it = scan("/out", Matcher())
    first, _ = next(it)
    for i in range(5):
        path = f"/out/run/{i}.fastq"
        if path != first:
            os.remove(path)
    rest = list(it)
    assert all(os.path.exists(p) for p, _ in rest)


def test_scan_through_a_symlinked_root_keeps_the_given_prefix(fs) -> None:
    """A root given as a symlink is entered, and paths keep the configured prefix."""
    fs.create_file("/mnt/nas/out/run/a.fastq")
    fs.create_symlink("/srv/out", "/mnt/nas/out")
    assert [p for p, _ in scan("/srv/out", Matcher())] == ["/srv/out/run/a.fastq"]


def test_scan_of_missing_root_yields_nothing(fs) -> None:
    """A missing root is logged, not raised."""
    with capture_logs() as logs:
        assert list(scan("/nowhere", Matcher())) == []
    assert logs[0]["event"] == "watcher.scan_folder_vanished"


def test_scan_stops_at_the_depth_limit_and_names_the_folder_once(tmp_path: Path) -> None:
    """Folders deeper than max_depth are not entered; the first one is named in one warning, not again."""
    root = tmp_path / "out"
    bottom = make_chain(root, 40)
    shallow = write(root / "d" / "d" / "a.fastq")
    write(bottom / "deep.fastq")
    at_limit = write(Path(str(root) + "/d" * 3) / "three.fastq")
    matcher = Matcher(max_depth=3)
    with capture_logs() as logs:
        first = {p for p, _ in scan(str(root), matcher)}
        again = {p for p, _ in scan(str(root), matcher)}
    assert first == again == {str(shallow), str(at_limit)}
    warned = [e for e in logs if e["event"] == "watch.too_deep"]
    assert [e["folder"] for e in warned] == [str(root) + "/d" * 4]
    assert warned[0]["log_level"] == "warning" and "max_depth" in warned[0]["fix"]
    remove_chain(root)


def test_scan_of_a_1500_deep_chain_is_no_recursion(tmp_path: Path) -> None:
    """A 1,500-deep chain is scanned to the default depth (32) without RecursionError."""
    root = tmp_path / "out"
    bottom = make_chain(root)
    write(bottom / "deep.fastq")
    ok = write(Path(str(root) + "/d" * 32) / "ok.fastq")
    try:
        assert [p for p, _ in scan(str(root), Matcher())] == [str(ok)]
    finally:
        remove_chain(root)


# -- network_mount_type --------------------------------------------------------------------------

MOUNTINFO = """\
22 1 0:21 / / rw,relatime - ext4 /dev/sda1 rw
30 22 0:40 / /mnt/nas rw,relatime - nfs4 nas:/export rw,vers=4.2
31 30 0:41 / /mnt/nas/local rw,relatime - ext4 /dev/sdb1 rw
32 22 0:42 / /mnt/smb\\040share rw,relatime - cifs //srv/share rw
33 22 0:43 / /srv/fuse rw - fuse.sshfs user@host:/data rw
"""


@pytest.mark.parametrize("path, expected", [
    ("/mnt/nas/run1", "nfs4"),
    ("/mnt/nas", "nfs4"),
    ("/mnt/nas/local/run", None),       # a local disk mounted inside the share
    ("/mnt/smb share/out", "cifs"),    # mount points with spaces are octal-escaped
    ("/srv/fuse/out", "fuse.sshfs"),
    ("/mnt/nasty", None),              # a name prefix is not a path prefix
    ("/home/lab", None),
])
def test_network_mount_type(tmp_path: Path, path: str, expected: str | None) -> None:
    """The longest mount point containing the path decides; only network types are returned."""
    info = tmp_path / "mountinfo"
    info.write_text(MOUNTINFO)
    assert network_mount_type(path, mountinfo=str(info)) == expected


def test_network_mount_type_of_local_tmp_is_none() -> None:
    """A local pseudo file system (/proc on the test machine) is not a network mount."""
    assert network_mount_type("/proc") is None


# -- Watcher on real inotify ---------------------------------------------------------------------

def test_create_and_close_gives_a_hint(tmp_path: Path, rec: Recorder, make_watcher) -> None:
    """Writing a new matching file hints its absolute path."""
    w = make_watcher([tmp_path])
    assert w.is_alive()
    path = write(tmp_path / "run" / "a.fastq")
    assert wait_for(lambda: rec.hinted(path))


def test_rename_from_temp_name_hints_final_name(tmp_path: Path, rec: Recorder, make_watcher) -> None:
    """Write under a temporary/hidden name then rename: the final name is hinted, the temp never."""
    make_watcher([tmp_path])
    for tmp_name in (".a.fastq.gz.AbC123", "b.fastq.gz.part"):
        tmp = write(tmp_path / tmp_name)
        final = tmp_path / (tmp_name.lstrip(".").split(".fastq")[0] + ".fastq.gz")
        os.rename(tmp, final)
        assert wait_for(lambda: rec.hinted(final))
    assert not any(".part" in h or "/." in h for h in rec.seen())


def test_run_folder_moved_in_hints_files_inside(tmp_path: Path, rec: Recorder, make_watcher) -> None:
    """A run folder renamed into the root gets a hint for every matching file inside it."""
    root = tmp_path / "root"
    root.mkdir()
    make_watcher([root])
    staging = tmp_path / "staging" / "run1"
    files = [write(staging / "Data" / "BaseCalls" / f"S{i}_R1.fastq.gz") for i in range(3)]
    write(staging / "RunInfo.xml", "<RunInfo/>")
    os.rename(staging, root / "run1")
    moved = [root / "run1" / f.relative_to(staging) for f in files]
    assert wait_for(lambda: all(rec.hinted(p) for p in moved))
    assert not any(h.endswith("RunInfo.xml") for h in rec.seen())


def test_folder_moved_within_root_hints_old_and_new_paths(tmp_path: Path, rec: Recorder,
                                                           make_watcher) -> None:
    """A folder renamed inside the root hints the new paths and the old ones (now gone)."""
    old = write(tmp_path / "run_tmp" / "a.fq")
    make_watcher([tmp_path])
    os.rename(tmp_path / "run_tmp", tmp_path / "run")
    assert wait_for(lambda: rec.hinted(tmp_path / "run" / "a.fq") and rec.hinted(old))


def test_folder_renamed_to_hidden_name_hints_old_paths_only(tmp_path: Path, rec: Recorder,
                                                              make_watcher) -> None:
    """A folder renamed to a hidden name hints its files' old paths, never the hidden ones."""
    old = write(tmp_path / "run" / "a.fq")
    make_watcher([tmp_path])
    os.rename(tmp_path / "run", tmp_path / ".trash")
    sentinel(tmp_path, rec)
    assert rec.seen() == {str(old), str(tmp_path / "zz_sentinel.fastq")}


def test_delete_gives_a_hint(tmp_path: Path, rec: Recorder, make_watcher) -> None:
    """Deleting a matching file hints its path so the tracker can find it gone."""
    path = write(tmp_path / "a.fa", ">s\nACGT\n")
    make_watcher([tmp_path])
    path.unlink()
    assert wait_for(lambda: rec.hinted(path))


def test_move_out_of_root_hints_source(tmp_path: Path, rec: Recorder, make_watcher) -> None:
    """A file moved out of the root hints its old path."""
    root = tmp_path / "root"
    path = write(root / "a.fq")
    make_watcher([root])
    os.rename(path, tmp_path / "a.fq")
    assert wait_for(lambda: rec.hinted(path))


def test_non_matching_hidden_and_read_only_activity_gives_no_hints(tmp_path: Path, rec: Recorder,
                                                                     make_watcher) -> None:
    """Other files, hidden folders, and reading a file (our own uploads) give no hints."""
    existing = write(tmp_path / "done.fastq")
    make_watcher([tmp_path])
    write(tmp_path / "run" / "RunInfo.xml", "<x/>")
    write(tmp_path / "run" / "L001_1.cbcl", "x")
    write(tmp_path / ".staging" / "a.fastq")
    os.rename(tmp_path / "run" / "L001_1.cbcl", tmp_path / "run" / "L001_2.cbcl")
    with open(existing, "rb") as f:
        f.read()
    sentinel(tmp_path, rec)
    assert rec.seen() == {str(tmp_path / "zz_sentinel.fastq")}


def test_handler_exception_does_not_kill_the_watcher(tmp_path: Path, rec: Recorder, make_watcher) -> None:
    """An on_hint that raises is logged as watcher.handler_error and later events still arrive."""
    calls: list[str] = []

    def flaky(path: str) -> None:
        calls.append(path)
        if len(calls) == 1:
            raise RuntimeError("tracker bug")
        rec.on_hint(path)

    with capture_logs() as logs:
        w = make_watcher([tmp_path], on_hint=flaky)
        write(tmp_path / "a.fastq")
        assert wait_for(lambda: len(calls) >= 1)
        later = write(tmp_path / "b.fastq")
        assert wait_for(lambda: rec.hinted(later))
    assert w.is_alive()
    assert any(e["event"] == "watcher.handler_error" and "tracker bug" in e["error"] for e in logs)


def test_root_deleted_and_recreated(tmp_path: Path, rec: Recorder, make_watcher) -> None:
    """A vanished root is reported absent, then present once back, and events flow again."""
    root = tmp_path / "share"
    write(root / "a.fastq")
    w = make_watcher([root])
    shutil.rmtree(root)
    with capture_logs() as logs:
        assert wait_for(lambda: (w.ensure_alive() or True) and (str(root), False) in rec.states)
    assert any(e["event"] == "watcher.root_missing" and e["log_level"] == "warning" for e in logs)
    assert not w.ensure_alive()  # still missing: nothing to restart
    root.mkdir()
    assert w.ensure_alive()
    assert rec.states[-1] == (str(root), True)
    assert w.is_alive()
    path = write(root / "sub" / "b.fastq")
    assert wait_for(lambda: rec.hinted(path))


def test_root_replaced_by_another_folder_is_rewatched(tmp_path: Path, rec: Recorder,
                                                     make_watcher) -> None:
    """A root renamed away and replaced (like a share remounted) is detected by its identity."""
    root = tmp_path / "share"
    root.mkdir()
    w = make_watcher([root])
    os.rename(root, tmp_path / "old_share")  # inotify keeps following the renamed folder
    root.mkdir()
    assert w.ensure_alive()
    assert rec.states == [(str(root), False), (str(root), True)]
    write(tmp_path / "old_share" / "stale.fastq")
    path = write(root / "a.fastq")
    assert wait_for(lambda: rec.hinted(path))
    assert not any("stale" in h for h in rec.seen())


def test_missing_root_at_start_is_waited_for(tmp_path: Path, rec: Recorder, make_watcher) -> None:
    """A root absent at start is reported absent and watched once it appears."""
    root = tmp_path / "later"
    w = make_watcher([root])
    assert rec.states == [(str(root), False)]
    root.mkdir()
    assert w.ensure_alive()
    path = write(root / "a.fq")
    assert wait_for(lambda: rec.hinted(path))


def test_dead_observer_is_detected_and_restarted(tmp_path: Path, rec: Recorder, make_watcher) -> None:
    """If the observer thread dies, is_alive says so and ensure_alive restarts it (rescan asked)."""
    w = make_watcher([tmp_path])
    w._inotify.stop()  # simulate the reader thread dying
    w._inotify.join(TIMEOUT_S)
    assert not w.is_alive()
    assert w.ensure_alive()
    assert w.is_alive()
    assert rec.states[-1] == (str(tmp_path), True)
    path = write(tmp_path / "a.fastq")
    assert wait_for(lambda: rec.hinted(path))
    assert not w.ensure_alive()


def test_queue_overflow_asks_for_a_rescan(tmp_path: Path, rec: Recorder, make_watcher) -> None:
    """A kernel queue overflow (events lost) makes ensure_alive ask for a rescan of the root."""
    w = make_watcher([tmp_path])
    overflow = inotify_c.InotifyEvent(-1, inotify_c.InotifyConstants.IN_Q_OVERFLOW, 0, b"")
    with capture_logs() as logs:
        w._inotify.handle_event(overflow)
        w.ensure_alive()
    assert rec.states == [(str(tmp_path), True)]
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["watcher.events_lost"]
    path = write(tmp_path / "a.fastq")
    assert wait_for(lambda: rec.hinted(path))


def test_symlinked_root_hints_use_configured_path(tmp_path: Path, rec: Recorder, make_watcher) -> None:
    """A root given through a symlink is watched, and hints use the configured (link) path."""
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    make_watcher([link])
    write(real / "run" / "a.fastq")
    assert wait_for(lambda: rec.hinted(link / "run" / "a.fastq"))
    assert not any(h.startswith(str(real)) for h in rec.seen())


def test_a_1500_deep_chain_at_start_is_watched_to_the_depth_limit(tmp_path: Path, rec: Recorder,
                                                                  make_watcher) -> None:
    """A root holding a 1,500-deep chain starts (no RecursionError), watches 32 levels, and hints as usual."""
    root = tmp_path / "root"
    make_chain(root)
    try:
        with capture_logs() as logs:
            w = make_watcher([root])
        assert w.is_alive()
        assert w._roots[0].tree.watched() == 33       # the root and 32 levels below it
        deep = write(Path(str(root) + "/d" * 40) / "deep.fastq")
        near = write(root / "d" / "a.fastq")
        assert wait_for(lambda: rec.hinted(near))
        sentinel(root, rec)
        assert not rec.hinted(deep)
        assert [e["folder"] for e in logs if e["event"] == "watch.too_deep"] == [str(root) + "/d" * 33]
    finally:
        remove_chain(root)


def test_a_1500_deep_chain_moved_in_keeps_the_watcher_alive(tmp_path: Path, rec: Recorder,
                                                             make_watcher) -> None:
    """The same chain moved into a watched root while running: its shallow files are hinted, the
    watcher lives on, later events still arrive, the too-deep folder is named once."""
    root, outside = tmp_path / "root", tmp_path / "staging"
    root.mkdir()
    w = make_watcher([root])
    make_chain(outside)
    inside = write(outside / "d" / "d" / "a.fastq")
    try:
        with capture_logs() as logs:
            os.rename(outside, root / "run")
            moved = root / "run" / inside.relative_to(outside)
            assert wait_for(lambda: rec.hinted(moved))
            later = write(root / "run" / "d" / "b.fastq")
            assert wait_for(lambda: rec.hinted(later))
        assert w.is_alive() and not w.ensure_alive()
        assert [e["folder"] for e in logs if e["event"] == "watch.too_deep"] == [str(root / "run") + "/d" * 32]
        assert not any(e["event"] == "watcher.handler_error" for e in logs)
    finally:
        remove_chain(root)


def test_a_folder_renamed_inside_the_root_is_watched_under_its_new_name(tmp_path: Path, rec: Recorder,
                                                                         make_watcher) -> None:
    """After a folder is renamed, files written into it are hinted under the new path, never the old."""
    (tmp_path / "run_tmp" / "sub").mkdir(parents=True)
    w = make_watcher([tmp_path])
    os.rename(tmp_path / "run_tmp", tmp_path / "run")
    sentinel(tmp_path, rec)
    path = write(tmp_path / "run" / "sub" / "a.fastq")
    assert wait_for(lambda: rec.hinted(path))
    assert not any("run_tmp" in h for h in rec.seen())
    assert w._roots[0].tree.watched() == 3


def test_a_folder_moved_out_is_no_longer_watched(tmp_path: Path, rec: Recorder, make_watcher) -> None:
    """A folder moved out of the root loses its watches: files written there later give no hints."""
    root = tmp_path / "root"
    (root / "run" / "sub").mkdir(parents=True)
    w = make_watcher([root])
    os.rename(root / "run", tmp_path / "away")
    sentinel(root, rec)
    write(tmp_path / "away" / "sub" / "a.fastq")
    sentinel(root, rec, "zz_second.fastq")
    assert not any("a.fastq" in h for h in rec.seen())
    assert w._roots[0].tree.watched() == 1


# -- polling and degraded modes ------------------------------------------------------------------

def test_polling_mode_delivers_hints(tmp_path: Path, rec: Recorder, make_watcher) -> None:
    """A polled root hints new files, renamed-in files and changed files."""
    root = tmp_path / "nfs"
    root.mkdir()
    old = write(tmp_path / "outside.fq")
    w = make_watcher([root], polling={str(root): True}, poll_interval_s=0.05)
    assert w.is_alive() and w._inotify is None
    a = write(root / "run" / "a.fastq")
    assert wait_for(lambda: rec.hinted(a))
    write(root / "run" / "notes.txt")
    os.rename(old, root / "run" / "moved.fq")
    assert wait_for(lambda: rec.hinted(root / "run" / "moved.fq"))
    assert not any(h.endswith("notes.txt") for h in rec.seen())


def test_polling_root_vanishing_and_returning(tmp_path: Path, rec: Recorder, make_watcher) -> None:
    """A polled root that vanishes and returns is reported both ways and polled again."""
    root = tmp_path / "smb"
    root.mkdir()
    w = make_watcher([root], polling=True, poll_interval_s=0.05)
    root.rmdir()
    w.ensure_alive()
    assert rec.states == [(str(root), False)]
    root.mkdir()
    assert w.ensure_alive()
    path = write(root / "a.fq")
    assert wait_for(lambda: rec.hinted(path))


def test_watch_limit_at_schedule_falls_back_to_polling(tmp_path: Path, rec: Recorder, make_watcher,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC when watching the root: logged with the sysctl and its fix, root polled instead."""
    def no_space(self, path, mask):
        raise OSError(errno.ENOSPC, "inotify watch limit reached")

    monkeypatch.setattr(inotify_c.InotifyFD, "_get_or_create_watch", no_space)
    with capture_logs() as logs:
        w = make_watcher([tmp_path], poll_interval_s=0.05)
    assert "fs.inotify.max_user_watches" in w.degraded[str(tmp_path)]
    assert "99-seqdrop-inotify.conf" in w.degraded[str(tmp_path)]
    event = next(e for e in logs if e["event"] == "watcher.inotify_limit")
    assert event["log_level"] == "error" and event["sysctl"] == "fs.inotify.max_user_watches"
    assert w.is_alive()
    path = write(tmp_path / "a.fastq")
    assert wait_for(lambda: rec.hinted(path))


def test_watch_limit_in_sub_folder_is_noticed(tmp_path: Path, rec: Recorder, make_watcher,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC on a new sub-folder (swallowed by watchdog) switches the root to polling."""
    real = inotify_c.InotifyFD._get_or_create_watch

    def limited(self, path, mask):
        if b"big_run" in path:
            raise OSError(errno.ENOSPC, "inotify watch limit reached")
        return real(self, path, mask)

    monkeypatch.setattr(inotify_c.InotifyFD, "_get_or_create_watch", limited)
    w = make_watcher([tmp_path], poll_interval_s=0.05)
    assert w.degraded == {}
    (tmp_path / "big_run").mkdir()
    assert wait_for(lambda: w.ensure_alive() and str(tmp_path) in w.degraded)
    assert rec.states[-1] == (str(tmp_path), True)
    path = write(tmp_path / "big_run" / "deep" / "a.fastq")
    assert wait_for(lambda: rec.hinted(path))


def test_inotify_instance_limit_falls_back_to_polling(tmp_path: Path, rec: Recorder, make_watcher,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """EMFILE creating the inotify instance: the root is polled, the reason names max_user_instances."""
    def no_instance(cls):
        raise OSError(errno.EMFILE, "inotify instance limit reached")

    monkeypatch.setattr(inotify_c.InotifyFD, "_create_inotify_fd", classmethod(no_instance))
    w = make_watcher([tmp_path], poll_interval_s=0.05)
    assert "fs.inotify.max_user_instances" in w.degraded[str(tmp_path)]
    path = write(tmp_path / "a.fastq")
    assert wait_for(lambda: rec.hinted(path))


def test_stop_ends_all_threads(tmp_path: Path, rec: Recorder) -> None:
    """stop() leaves no watcher thread running, for inotify and polling roots alike."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    before = set(threading.enumerate())
    w = Watcher([str(tmp_path / "a"), str(tmp_path / "b")], matcher=Matcher(), on_hint=rec.on_hint,
                polling={str(tmp_path / "b"): True}, poll_interval_s=0.05)
    w.start()
    assert w.is_alive()
    w.stop()
    assert wait_for(lambda: set(threading.enumerate()) <= before)
    assert not w.is_alive() and not w.ensure_alive()
