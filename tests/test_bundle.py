"""scripts/bundle: an offline bundle that installs into a fresh venv with no network and runs the demo.

Building the bundle downloads the dependencies' wheels (the package index is needed, as for any
installation; pip's cache makes later runs quick). Installing it must not touch the network: pip's
index is switched off, pointed at a closed port, and where `unshare` can make a network namespace,
install.sh runs in one that has no network at all.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from shipping import REPO, clean_env, repo_copy, run

pytestmark = pytest.mark.timeout(600)
VERSION = "3.1.4"


def _requirement_names(wheel: Path) -> set[str]:
    """The distributions a wheel requires at run time (no extras), normalised as PEP 503 says."""
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        lines = zf.read(meta).decode().splitlines()
    names = set()
    for line in lines:
        if line.startswith("Requires-Dist:") and "extra ==" not in line:
            names.add(_normalise(re.match(r"Requires-Dist:\s*([A-Za-z0-9._-]+)", line).group(1)))
    return names


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _no_network_prefix() -> list[str]:
    """`unshare -n` when this machine lets us make a network namespace (root, or user namespaces)."""
    for cmd in (["unshare", "-n"], ["unshare", "-rn"]):
        if shutil.which("unshare") and subprocess.run([*cmd, "true"], capture_output=True).returncode == 0:
            return cmd
    return []


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The x86_64 bundle built by scripts/bundle from this source tree, tagged v3.1.4."""
    tmp = tmp_path_factory.mktemp("bundle")
    src = repo_copy(tmp / "src", tag=f"v{VERSION}")
    run("bash", src / "scripts" / "bundle", "--arch", "x86_64", "--out", tmp / "out",
        cwd=src, env=clean_env(PYTHON=sys.executable), timeout_s=480)
    built = sorted((tmp / "out").iterdir())
    assert [p.name for p in built] == [f"seqdrop-bundle-{VERSION}.tar.gz"]
    with tarfile.open(built[0]) as tar:
        tar.extractall(tmp / "unpacked", filter="data")
    return tmp / "unpacked" / f"seqdrop-bundle-{VERSION}"


def test_the_bundle_holds_every_dependency_and_the_installation_files(bundle: Path) -> None:
    """seqdrop's wheel, a wheel per runtime dependency (x86_64 or pure Python), unit, sysctl, config."""
    wheels = sorted((bundle / "wheels").iterdir())
    own = [w for w in wheels if w.name.startswith("seqdrop-")]
    assert [w.name for w in own] == [f"seqdrop-{VERSION}-py3-none-any.whl"]
    present = {_normalise(w.name.split("-")[0]) for w in wheels}
    missing = _requirement_names(own[0]) - present
    assert not missing, f"no wheel in the bundle for {missing}"
    for w in wheels:
        assert w.suffix == ".whl"
        assert w.name.endswith("-any.whl") or "x86_64" in w.name, w.name
        assert "aarch64" not in w.name
    for rel in ("install.sh", "VERSION", "config.example.toml", "CHANGELOG.md", "docs/operations.md",
                "systemd/seqdrop.service", "systemd/99-seqdrop-inotify.conf"):
        assert (bundle / rel).is_file(), rel
    assert (bundle / "install.sh").stat().st_mode & 0o111
    assert (bundle / "VERSION").read_text().strip() == VERSION
    assert (bundle / "ARCHITECTURES").read_text().split() == ["x86_64"]


def test_the_bundle_installs_offline_and_the_demo_passes(bundle: Path, tmp_path: Path) -> None:
    """install.sh into a fresh venv with the index disabled (and no network where possible); then
    `seqdrop demo` from that venv exits 0."""
    venv = tmp_path / "venv"
    env = clean_env(PYTHON=sys.executable, PIP_CONFIG_FILE=os.devnull,
                    PIP_INDEX_URL="http://127.0.0.1:9/simple/", PIP_NO_CACHE_DIR="1")
    for name in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_NO_BUILD_ISOLATION"):
        env.pop(name, None)
    out = run(*_no_network_prefix(), "sh", bundle / "install.sh", venv, env=env, cwd=tmp_path, timeout_s=300)
    assert out.strip().splitlines()[-1] == f"seqdrop {VERSION}"
    shown = run(venv / "bin" / "python", "-m", "pip", "list", "--format=freeze", env=env, cwd=tmp_path)
    assert f"seqdrop=={VERSION}" in shown.splitlines()
    demo = subprocess.run([venv / "bin" / "seqdrop", "demo"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=180)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "samples confirmed" in demo.stdout


def test_an_unknown_architecture_is_a_usage_error(tmp_path: Path) -> None:
    """`scripts/bundle --arch sparc` says which architectures exist and exits 2, building nothing."""
    done = subprocess.run(["bash", REPO / "scripts" / "bundle", "--arch", "sparc", "--out", tmp_path / "out"],
                          env=clean_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "x86_64 or aarch64" in done.stderr
    assert not (tmp_path / "out").exists()
