"""Versions come from git tags (setuptools-scm), and the documented upgrade leaves no stale code.

Each test builds real wheels from a throwaway git repository holding this source tree (see
shipping.py) and installs them into a new virtual environment; nothing here touches the real
repository's tags or needs the package index.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from shipping import (
    REPO,
    build_wheel,
    clean_env,
    commit_file,
    git,
    installed_files,
    light_venv,
    repo_copy,
    run,
    version_of,
)

import daemon

pytestmark = pytest.mark.timeout(600)


def test_version_is_the_installed_distributions() -> None:
    """daemon.__version__ is what the installed metadata says, which `--version` prints."""
    assert daemon.__version__ == importlib.metadata.version("seqdrop")


def test_a_source_tree_that_was_never_installed_says_its_version_is_unknown(tmp_path: Path) -> None:
    """Without installed metadata, __version__ is the fallback, a valid version below every release."""
    # A copy of the package alone: the checkout itself may hold seqdrop.egg-info (an editable install
    # writes it there), which is installed metadata by another name.
    shutil.copytree(REPO / "daemon", tmp_path / "src" / "daemon", ignore=shutil.ignore_patterns("__pycache__"))
    code = f"import sys; sys.path.insert(0, {str(tmp_path / 'src')!r}); import daemon; print(daemon.__version__)"
    # -S: no site-packages, so no seqdrop distribution can be found (the interpreter alone).
    out = run(sys.executable, "-S", "-c", code, cwd=tmp_path).strip()
    assert out == daemon.UNKNOWN_VERSION == "0.0+unknown"


def test_a_tag_build_reports_the_tag_and_a_later_build_a_dev_version(tmp_path: Path) -> None:
    """`seqdrop --version` is exactly the tag on the tagged commit, and a dev version two commits on."""
    src = repo_copy(tmp_path / "src", tag="v1.2.3")
    venv = light_venv(tmp_path / "venv")

    wheel = build_wheel(src, tmp_path / "tagged")
    assert wheel.name.startswith("seqdrop-1.2.3-")
    run(venv / "bin" / "pip", "install", "--quiet", "--no-deps", wheel)
    assert version_of(venv) == "1.2.3"

    commit_file(src, "NOTES.txt", "one\n", "one commit past the tag")
    head = commit_file(src, "NOTES.txt", "two\n", "two commits past the tag")
    wheel = build_wheel(src, tmp_path / "dev")
    run(venv / "bin" / "pip", "install", "--quiet", "--no-deps", "--force-reinstall", wheel)
    version = version_of(venv)
    # setuptools-scm's default: the next patch release, .devN for N commits past the tag, +g<commit>.
    assert re.fullmatch(rf"1\.2\.4\.dev2\+g{head}[0-9a-f]*", version), version


def test_a_git_archive_of_a_tag_knows_its_version(tmp_path: Path) -> None:
    """A `git archive` tarball (what GitHub serves) has no .git, yet builds as its tag's version."""
    src = repo_copy(tmp_path / "src", tag="v2.0.0")
    archive = tmp_path / "seqdrop-2.0.0.tar"
    git(src, "archive", "--format=tar", f"--output={archive}", "--prefix=seqdrop-2.0.0/", "v2.0.0")
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    unpacked = tmp_path / "unpacked" / "seqdrop-2.0.0"
    assert not (unpacked / ".git").exists()
    assert build_wheel(unpacked, tmp_path / "out").name.startswith("seqdrop-2.0.0-")


def test_a_copy_without_git_metadata_builds_as_unknown(tmp_path: Path) -> None:
    """Files copied by hand (no .git, no archive metadata) build with the fallback version, not a crash."""
    src = repo_copy(tmp_path / "src")
    run("rm", "-rf", src / ".git", src / ".git_archival.txt")
    assert build_wheel(src, tmp_path / "out").name.startswith("seqdrop-0.0+unknown-")


# -- the documented upgrade ----------------------------------------------------------------------

OBSOLETE = "daemon/obsolete_module.py"


def documented_upgrade_commands() -> str:
    """The first shell block of docs/operations.md's upgrade section that installs seqdrop's wheel."""
    text = (REPO / "docs" / "operations.md").read_text()
    section = text[text.index("### Upgrade\n"):text.index("### Roll back\n")]
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL)
    matching = [b for b in blocks if "--force-reinstall" in b]
    assert len(matching) == 1, "docs/operations.md: expected one upgrade block that installs the wheel"
    return matching[0]


def test_the_documented_upgrade_builds_a_wheel_from_a_clean_tree() -> None:
    """The upgrade block removes build/ before building and installs the wheel with --force-reinstall."""
    block = documented_upgrade_commands()
    lines = block.splitlines()
    clean = next(i for i, line in enumerate(lines) if line.startswith("rm -rf build"))
    build = next(i for i, line in enumerate(lines) if " wheel " in line)
    assert clean < build
    assert "pip install --upgrade /opt/seqdrop/src" not in block


def test_upgrade_removes_a_deleted_module_and_keeps_the_queue(tmp_path: Path) -> None:
    """Version N installed the way section 3 says (which leaves build/ behind), a queue made by it;
    N+1 deletes a module; the documented upgrade: the module is gone from site-packages, --version
    says N+1, N+1 reads N's queue, and the daemon runs (the demo)."""
    opt = tmp_path / "opt-seqdrop"
    upstream = repo_copy(tmp_path / "upstream")
    commit_file(upstream, OBSOLETE, '"""Present in 1.0.0 only."""\n', "a module that 1.0.1 deletes")
    git(upstream, "tag", "-a", "v1.0.0", "-m", "v1.0.0")
    git(tmp_path, "clone", "-q", str(upstream), str(opt / "src"))
    venv = light_venv(opt / "venv")
    # Version N, as a first installation does it: pip builds in the source folder, leaving build/lib.
    run(venv / "bin" / "pip", "install", "--quiet", "--no-deps", opt / "src")
    assert version_of(venv) == "1.0.0"
    assert (opt / "src" / "build" / "lib" / OBSOLETE).exists()
    run(venv / "bin" / "python", "-c", "import daemon.obsolete_module", cwd=tmp_path)  # leaves a .pyc
    assert installed_files(venv, "obsolete_module*.pyc")
    queue, config = _queue_made_by(venv, tmp_path)

    commit_file(upstream, OBSOLETE, None, "1.0.1 deletes the module")
    git(upstream, "tag", "-a", "v1.0.1", "-m", "v1.0.1")
    script = documented_upgrade_commands().replace("/opt/seqdrop", str(opt))
    run("bash", "-euo", "pipefail", "-c", script, cwd=tmp_path)

    assert version_of(venv) == "1.0.1"
    assert installed_files(venv, "obsolete_module*") == []
    assert sorted(p.name for p in (opt / "wheels").iterdir()) == ["seqdrop-1.0.1-py3-none-any.whl"]
    status = json.loads(run(venv / "bin" / "seqdrop", "status", "--json", "--config", config, cwd=tmp_path))
    assert [(f["path"], f["state"]) for f in status["files"]] == [("/data/run1/a.fastq", "queued")]
    assert queue.exists()
    demo = subprocess.run([venv / "bin" / "seqdrop", "demo"], cwd=tmp_path, env=clean_env(),
                          capture_output=True, text=True, timeout=120)
    assert demo.returncode == 0, demo.stdout + demo.stderr


def _queue_made_by(venv: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A queue holding one queued file, written by the seqdrop installed in venv; and a config naming it."""
    queue = tmp_path / "state" / "queue.sqlite3"
    config = tmp_path / "config.toml"
    config.write_text(f'[queue]\npath = "{queue}"\n')
    code = ("import os, sys\n"
            "from daemon.queue.base import Identity\n"
            "from daemon.queue.sqlite import SqliteStore\n"
            "store = SqliteStore(sys.argv[1])\n"
            "file_id = store.add_seen('/data/run1/a.fastq', Identity.of(os.stat(sys.argv[1])))\n"
            "store.set_state(file_id, 'queued')\n"
            "store.close()\n")
    run(venv / "bin" / "python", "-c", code, queue, cwd=tmp_path)
    return queue, config
