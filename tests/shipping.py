"""Helpers for the packaging tests: a throwaway git repository holding this source tree, wheels built
from it, and light virtual environments to install them into.

Builds run without build isolation (the test extra installs setuptools and setuptools-scm), so no
test here needs the package index.
"""

from __future__ import annotations

import os
import re
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUILD_TIMEOUT_S = 180.0
_SKIP_DIRS = {".git", ".venv", "__pycache__", "build", "dist", ".pytest_cache", ".hypothesis"}


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without what would steer git, pip or the version under test."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GIT_", "SETUPTOOLS_SCM", "PYTHONPATH", "VIRTUAL_ENV"))}
    env.update({"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull,
                "PIP_DISABLE_PIP_VERSION_CHECK": "1",
                # pip's spelling of --no-build-isolation as a variable is "0" (it negates the flag).
                "PIP_NO_BUILD_ISOLATION": "0"})
    env.update(extra)
    return env


def run(*cmd: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None,
        timeout_s: float = BUILD_TIMEOUT_S) -> str:
    """Run a command; on failure, fail the test with everything it printed. Returns stdout."""
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env or clean_env(), text=True,
                          capture_output=True, timeout=timeout_s)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} exited {done.returncode}\n--- stdout\n{done.stdout}"
                    f"\n--- stderr\n{done.stderr}", pytrace=False)
    return done.stdout


def git(repo: Path, *args: str) -> str:
    return run("git", "-c", "user.name=seqdrop tests", "-c", "user.email=tests@seqdrop.invalid",
               "-c", "init.defaultBranch=main", "-c", "commit.gpgsign=false", "-c", "tag.gpgsign=false",
               *args, cwd=repo).strip()


def source_files() -> list[Path]:
    """The files of this source tree as a commit would hold them (tracked, or new and not ignored)."""
    if (REPO / ".git").exists() and shutil.which("git"):
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=REPO, env=clean_env(), capture_output=True, check=True).stdout
        names = [n for n in out.decode().split("\0") if n]
        return [Path(n) for n in names if (REPO / n).is_file()]
    files = []
    for root, dirs, names in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in _SKIP_DIRS and not d.endswith(".egg-info")]
        files += [Path(root, n).relative_to(REPO) for n in names]
    return files


def repo_copy(dest: Path, *, tag: str | None = None) -> Path:
    """A new git repository at dest holding this source tree in one commit (tagged if asked).

    A copy rather than a clone: it tests the tree as it is now, uncommitted edits included, and no tag
    of the real repository can leak into the versions under test.
    """
    dest.mkdir(parents=True)
    for rel in source_files():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dest / rel)
    git(dest, "init", "-q")
    git(dest, "add", "-A")
    git(dest, "commit", "-q", "-m", "the source tree under test")
    if tag:
        git(dest, "tag", "-a", tag, "-m", tag)
    return dest


def commit_file(repo: Path, rel: str, text: str | None, message: str) -> str:
    """Write (or with text None, delete) one file and commit it; return the new commit's short hash."""
    path = repo / rel
    if text is None:
        git(repo, "rm", "-q", rel)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        git(repo, "add", rel)
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "--short", "HEAD")


def build_wheel(src: Path, out: Path) -> Path:
    """Build seqdrop's wheel from src into out (which must hold no other) and return its path."""
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", out, src, cwd=src)
    wheels = sorted(out.glob("seqdrop-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def light_venv(path: Path) -> Path:
    """A new virtual environment that installs into its own site-packages but borrows this one's
    packages (dependencies, pip, the build backend) through a .pth file: seconds instead of a download.

    Paths listed in a .pth are not site directories, so the .pth files in them (this venv's editable
    seqdrop) are not run, and the new venv's own site-packages comes first on sys.path.
    """
    run(sys.executable, "-m", "venv", "--without-pip", path)
    purelib = Path(run(path / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").strip())
    borrowed = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (purelib / "_borrowed_from_test_venv.pth").write_text("".join(f"{p}\n" for p in borrowed))
    pip = path / "bin" / "pip"
    pip.write_text(f'#!/bin/sh\nexec "{path}/bin/python" -m pip "$@"\n')
    pip.chmod(0o755)
    return path


def version_of(venv: Path) -> str:
    """What `seqdrop --version` prints in venv, without the program's name."""
    out = run(venv / "bin" / "seqdrop", "--version", cwd=venv).strip()
    assert re.fullmatch(r"seqdrop \S+", out), out
    return out.split()[1]


def installed_files(venv: Path, pattern: str) -> list[Path]:
    """Files under venv's site-packages whose name matches the glob pattern (at any depth)."""
    return sorted(p for p in venv.glob(f"lib/python*/site-packages/**/{pattern}"))
