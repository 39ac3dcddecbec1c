"""A strict local emulator of the One Codex upload API and of S3 browser POST, with injectable faults.

A part of its own: the daemon's core never imports it, and it imports nothing from the daemon.
See docs/sandbox.md.
"""

from .faults import Fault, parse_fault
from .server import Sandbox


def main(argv: list[str]) -> int:
    """`seqdrop sandbox`: serve until SIGINT/SIGTERM (see daemon/sandbox/cli.py)."""
    from .cli import main as cli_main

    return cli_main(argv)


__all__ = ["Fault", "Sandbox", "main", "parse_fault"]
