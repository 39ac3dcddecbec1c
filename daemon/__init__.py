"""seqdrop: watch sequencer output folders and upload finished FASTA/FASTQ files to One Codex."""

from __future__ import annotations

#: What a source tree that was never installed reports: the truth (no build recorded a version),
#: and a valid PEP 440 version that sorts below every release. pyproject's fallback_version is the same.
UNKNOWN_VERSION = "0.0+unknown"

_version: str | None = None


def _installed_version() -> str:
    """The version the build recorded (setuptools-scm, from the git tag) in the installed metadata."""
    # lazy: importlib.metadata pulls in email, zipfile and more (~35 ms), which every validator child
    # and every `import daemon` paid for although few of them ever ask for the version
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("seqdrop")
    except PackageNotFoundError:    # run from a checkout with PYTHONPATH, never installed
        return UNKNOWN_VERSION


def __getattr__(name: str) -> str:
    """`daemon.__version__`, read from the installed metadata the first time it is asked for (PEP 562)."""
    global _version
    if name != "__version__":
        raise AttributeError(f"module 'daemon' has no attribute {name!r}")
    if _version is None:
        _version = _installed_version()
    return _version
