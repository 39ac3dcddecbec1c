"""`seqdrop sandbox`: run the sandbox in the foreground until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import signal
import sys
import threading

from .faults import parse_fault
from .server import Sandbox

EXIT_OK, EXIT_USAGE, EXIT_FAILURE = 0, 2, 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seqdrop sandbox",
                     description="Serve a strict local One Codex API and S3 browser-POST endpoint on loopback, "
                                 "with injectable faults (see docs/sandbox.md).")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind (default 127.0.0.1)")
    parser.add_argument("--api-port", type=int, default=8700, help="API port (default 8700; 0 = any free)")
    parser.add_argument("--s3-port", type=int, default=8701, help="S3 port (default 8701; 0 = any free)")
    parser.add_argument("--api-key", action="append", dest="api_keys", metavar="KEY",
                        help="an accepted API key (repeatable; default sandbox-key)")
    parser.add_argument("--policy-lifetime", type=float, default=3600.0, metavar="SECONDS",
                        help="lifetime of the S3 POST policies init_upload hands out (default 3600)")
    parser.add_argument("--import-delay", type=float, default=0.0, metavar="SECONDS",
                        help="how long GET /api/v1/samples/<id> says 'importing' after a confirm before "
                             "'available' (default 0)")
    parser.add_argument("--data-dir", help="where uploaded objects are stored (default: a temporary "
                                           "folder removed at exit)")
    parser.add_argument("--multipart-s3-endpoint", metavar="URL",
                        help="an S3-compatible server on loopback for the multipart route (files over seqdrop's "
                             "upload.multipart_threshold_bytes), e.g. a moto_server: http://127.0.0.1:8702")
    parser.add_argument("--no-store", action="store_true", help="only hash uploads, store nothing")
    parser.add_argument("--fault", action="append", default=[], metavar="SPEC",
                        help="inject a fault from the start: TARGET:KIND[:STATUS][:name=value]... or JSON "
                             "(repeatable), e.g. init_upload:status:503:times=3, confirm_upload:trickle:interval_s=3, "
                             "s3:no_etag (kinds: docs/sandbox.md)")
    parser.add_argument("--verbose", "-v", action="store_true", help="log every request")
    return parser


def _is_loopback_v4(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.version == 4 and address.is_loopback


def main(argv: list[str]) -> int:
    """Parse `argv`, serve until SIGINT/SIGTERM, return the exit code."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2, already explained by argparse)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.host == "localhost":
        args.host = "127.0.0.1"
    if not _is_loopback_v4(args.host):
        print(f"seqdrop sandbox: --host {args.host} is not an IPv4 loopback address; the sandbox has no "
              "real security, so it only listens on loopback (use 127.0.0.1)", file=sys.stderr)
        return EXIT_USAGE
    if args.policy_lifetime <= 0:
        print("seqdrop sandbox: --policy-lifetime must be a positive number of seconds", file=sys.stderr)
        return EXIT_USAGE
    if args.import_delay < 0:
        print("seqdrop sandbox: --import-delay must not be negative", file=sys.stderr)
        return EXIT_USAGE
    try:
        faults = [parse_fault(spec) for spec in args.fault]
    except ValueError as exc:
        print(f"seqdrop sandbox: --fault: {exc}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("seqdrop.sandbox").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    if args.multipart_s3_endpoint:
        from urllib.parse import urlsplit
        mp = urlsplit(args.multipart_s3_endpoint)
        if mp.scheme not in ("http", "https") or not _is_loopback_v4(mp.hostname or ""):
            print("seqdrop sandbox: --multipart-s3-endpoint must be an http(s) URL on 127.0.0.1, e.g. "
                  "http://127.0.0.1:8702 (a moto_server)", file=sys.stderr)
            return EXIT_USAGE
    keys = args.api_keys or ["sandbox-key"]
    sandbox = Sandbox(host=args.host, api_port=args.api_port, s3_port=args.s3_port, data_dir=args.data_dir,
                      api_keys=keys, policy_lifetime_s=args.policy_lifetime, store_objects=not args.no_store,
                      multipart_s3_endpoint=args.multipart_s3_endpoint, import_delay_s=args.import_delay)
    try:
        sandbox.start()
    except OSError as exc:
        print(f"seqdrop sandbox: cannot listen on {args.host}: {exc} (choose other ports with --api-port/"
              "--s3-port, or 0 for any free port)", file=sys.stderr)
        return EXIT_FAILURE
    for fault in faults:
        sandbox.add_fault(fault)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(_banner(sandbox, keys[0], len(faults)), flush=True)
        stop.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sandbox.stop()
    print("seqdrop sandbox: stopped", flush=True)
    return EXIT_OK


def _banner(sandbox: Sandbox, key: str, fault_count: int) -> str:
    return "\n".join([
        f"seqdrop sandbox: One Codex API on {sandbox.api_url}, S3 on {sandbox.s3_url}",
        f"objects stored in {sandbox.data_dir}" if sandbox.store_objects else "objects are hashed, not stored",
        f"{fault_count} fault(s) active; add more with POST {sandbox.api_url}/_sandbox/faults",
        (f"multipart route: S3 at {sandbox.multipart_s3.endpoint}, bucket {sandbox.multipart_s3.bucket}"
         if sandbox.multipart_s3 else "multipart route: off (--multipart-s3-endpoint URL turns it on)"),
        "",
        "Point seqdrop at it with:",
        f"  export ONE_CODEX_API_KEY={key}",
        "  # in the config file:",
        "  [api]",
        f'  base_url = "{sandbox.api_url}"',
        *([ "  [upload]", f'  multipart_s3_endpoint = "{sandbox.multipart_s3.endpoint}"',
            "  multipart_threshold_bytes = 20971520   # rehearsal only: files over 20 MiB go multipart"]
          if sandbox.multipart_s3 else []),
        "",
        "Ctrl-C (SIGINT) or SIGTERM stops it.",
    ])
