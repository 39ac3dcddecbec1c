"""seqdrop: watch sequencer output folders and upload finished FASTA/FASTQ files to One Codex."""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _dist_version

#: What a source tree that was never installed reports: the truth (no build recorded a version),
#: and a valid PEP 440 version that sorts below every release. pyproject's fallback_version is the same.
UNKNOWN_VERSION = "0.0+unknown"


def _installed_version() -> str:
    """The version the build recorded (setuptools-scm, from the git tag) in the installed metadata."""
    try:
        return _dist_version("seqdrop")
    except PackageNotFoundError:    # run from a checkout with PYTHONPATH, never installed
        return UNKNOWN_VERSION


__version__ = _installed_version()
