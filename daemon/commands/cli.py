"""The `seqdrop` command: argument parsing, exit codes and the words people read.

Exit codes: 0 ok; 1 runtime failure; 2 usage or configuration error. User mistakes
get one clear message naming the thing and the fix, never a traceback.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import sqlite3
import sys
from typing import Any

from daemon import __version__
from daemon import config as config_mod
from daemon.commands import queue_owner
from daemon.commands import status as status_cmd
from daemon.config.api_key import key_file_exposure
from daemon.errors import ConfigError, SeqdropError
from daemon.operations import logs
from daemon.operations.notify import SystemdNotifier
from daemon.queue.base import STATES, StoreLocked
from daemon.queue.integrity import journal_has_records
from daemon.queue.journal import journal_path
from daemon.queue.open import open_shared
from daemon.queue.sqlite import SqliteStore
from daemon.queue.storage import STORE_DAMAGED, storage_fault

# The service, `upload`, `check`, `demo` and the sandbox are imported by the subcommand that needs
# them: together they pull in requests, watchdog, the pipeline and the emulator, which would add
# ~0.2 s to the start-up of every command (`seqdrop status`, `--help`, `--version`; -X importtime).

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS,
                        help="config file (default: $SEQDROP_CONFIG, then /etc/seqdrop/config.toml)")
    p = argparse.ArgumentParser(prog="seqdrop", parents=[common],
                                description="Watch sequencer output folders and upload finished "
                                            "FASTA/FASTQ files to One Codex.")
    p.add_argument("--version", action="version", version=f"seqdrop {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("run", parents=[common], help="run the daemon in the foreground (systemd's ExecStart)")
    st = sub.add_parser("status", parents=[common], help="what the queue holds: counts, files not done, the "
                                                         "last done")
    st.add_argument("--json", action="store_true", help="machine-readable output (every file unless filtered)")
    st.add_argument("--state", type=status_cmd.parse_states, action="extend", metavar="STATE",
                    help=f"only files in this state ({', '.join(STATES)}; repeat or comma-separate)")
    st.add_argument("--run", metavar="NAME|PATH", help="only files of this run folder (a name, a glob such as "
                                                      "'240501_*', or a path: that folder and below)")
    st.add_argument("--since", type=status_cmd.parse_since, metavar="WHEN",
                    help="only files changed since then: 30m, 2h, 3d, 1w, or a date/time (2026-11-25T14:00)")
    st.add_argument("--limit", type=_positive, metavar="N", help="at most N files, the most recently changed")
    sh = sub.add_parser("show", parents=[common], help="one file's whole story (every version), or a sample's")
    sh.add_argument("what", metavar="PATH|SAMPLE_ID|ID|sN", help="a file's path, a One Codex sample id, a file "
                                                              "ID, or sN: the local sample N (status lists s12)")
    sh.add_argument("--json", action="store_true", help="machine-readable output")
    rt = sub.add_parser("retry", parents=[common], help="put failed and/or rejected files back in the queue")
    rt.add_argument("--failed", action="store_true", help="retry failed files")
    rt.add_argument("--rejected", action="store_true", help="retry rejected files")
    rt.add_argument("ids", nargs="*", type=_file_id, metavar="ID",
                    help="only these file ids, or local samples as sN (see status); a member retries its sample")
    rn = sub.add_parser("runs", parents=[common], help="the runs the queue holds, with their samples by state")
    rn.add_argument("--json", action="store_true", help="machine-readable output (every sample of every run)")
    rp = sub.add_parser("report", parents=[common], help="the audit journal: every file that ended, with MD5, "
                                                         "sample id, run, project, times, and the totals")
    rp.add_argument("run", nargs="?", metavar="RUN", help="only this run (a name, a glob, or a folder path)")
    rp.add_argument("--since", type=status_cmd.parse_since, metavar="WHEN",
                    help="only files that ended since then: 30m, 2h, 3d, 1w, or a date/time (2026-11-25)")
    rp.add_argument("--format", choices=("csv", "json"), default="csv",
                    help="csv (default: one row per file, the totals on stderr) or json (files and totals)")
    up = sub.add_parser("upload", parents=[common], help="upload the named files (and folders' matching files) "
                                                         "now, with a progress bar")
    up.add_argument("files", nargs="+", metavar="FILE|DIR")
    up.add_argument("--force", action="store_true", help="also upload files the daemon's queue holds as already "
                                                         "uploaded or in progress (they become second samples)")
    up.add_argument("--no-pairing", action="store_true", help="send every file as a sample of its own (no R1+R2 "
                                                              "pairs, no lanes merged; index reads too)")
    up.add_argument("--max-wait", type=float, default=900.0, metavar="SECONDS",
                    help="give up on a file after retrying transient errors this long (default 900)")
    sub.add_parser("check", parents=[common], help="validate config, queue, folders and API key")
    dm = sub.add_parser("demo", parents=[common], help="a self-contained demonstration (no setup needed)")
    dm.add_argument("--keep", action="store_true", help="keep the demo's temporary folder")
    sb = sub.add_parser("sandbox", add_help=False, help="run the local One Codex + S3 emulator")
    sb.add_argument("rest", nargs=argparse.REMAINDER)
    return p


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def _file_id(text: str) -> int | str:
    """A file ID as `status` shows it: a positive whole number (SQLite's integers end at 2**63); or a
    local sample as `status` shows it, `s12` (kept as the text, resolved to its lead file by retry)."""
    number = text[1:] if text[:1] in ("s", "S") else text
    if not number.isdigit() or not 0 < int(number) < 2**63:
        raise argparse.ArgumentTypeError(f"{text!r} is not a file ID or a local sample (s12); take one from "
                                         f"`seqdrop status`")
    return int(number) if number is text else f"s{int(number)}"


def _complete_writes() -> None:
    """Under PYTHONUNBUFFERED=1 (or `python -u`) sys.stdout writes straight to a raw file object, and
    a partial write (the pipe's reader gone mid-write, a signal) is dropped without an error: `status`
    would end 0 with its output cut. A BufferedWriter under it writes everything or raises (the
    BrokenPipeError handled in main); line buffering keeps lines prompt as unbuffered output was."""
    out = sys.stdout
    if isinstance(out, io.TextIOWrapper) and isinstance(out.buffer, io.RawIOBase):
        sys.stdout = io.TextIOWrapper(io.BufferedWriter(out.buffer), encoding=out.encoding, errors=out.errors,
                                      line_buffering=True)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _complete_writes()
    if argv[:1] == ["sandbox"]:
        # lazy: the emulator is not part of the daemon (and would add ~80 ms to every command)
        from daemon.sandbox import main as sandbox_main
        return sandbox_main(argv[1:])
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return EXIT_USAGE
    explicit = getattr(args, "config", None) or os.environ.get("SEQDROP_CONFIG")
    args.config_path = explicit or config_mod.DEFAULT_CONFIG_PATH
    args.config_explicit = bool(explicit)
    handler = {"run": cmd_run, "status": cmd_status, "show": cmd_show, "retry": cmd_retry, "upload": cmd_upload,
               "check": cmd_check, "demo": cmd_demo, "runs": cmd_runs, "report": cmd_report}[args.command]
    try:
        return handler(args)
    except ConfigError as e:
        print(f"seqdrop: configuration error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except SeqdropError as e:
        print(f"seqdrop: {e}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("seqdrop: interrupted", file=sys.stderr)
        return EXIT_FAILURE     # design.md's exit codes are 0, 1 and 2: an interrupted command failed
    except BrokenPipeError:
        # `seqdrop status | head`: the reader left early. No traceback; point stdout at /dev/null so the
        # interpreter's last flush does not fail again (the recipe in Python's signal module docs).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE


# -- run ---------------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    # lazy: see the note on imports at the top
    from daemon.service.service import Service
    from daemon.service.startup import NotAQueue, QueueUnusable, open_configured_queue

    os.umask(0o077)      # state files are private (the unit sets UMask=0077; a shell may not)
    settings = config_mod.load(args.config_path)
    if not settings.watch.folders:
        raise ConfigError("no watch folders configured", file=settings.source, key="watch.paths",
                          fix='add paths = ["/srv/sequencer/output"] under [watch]')
    logs.configure(settings.log.level, settings.log.format)
    key = config_mod.load_api_key(settings)
    logs.register_secret(key)
    log = logs.get("seqdrop")
    if exposed := key_file_exposure(settings):
        log.warning("config.api_key_file_exposed", problem=exposed[0], fix=exposed[1])
    if trap := queue_owner.ownership_problem(settings.queue.path):
        # exit 1, not 2: systemd keeps trying, and the service resumes by itself once the files are chowned
        log.error("queue.not_writable", problem=trap[0], fix=trap[1])
        return EXIT_FAILURE
    log.info("service.starting", version=__version__, config=settings.source, queue=settings.queue.path)
    try:
        # Before anything else touches the queue: the lock, the integrity check, a rebuild if need be.
        store, rebuilt = open_configured_queue(settings, log=log)
    except StoreLocked as e:
        print(f"seqdrop: {e}; stop the other one first (systemctl stop seqdrop)", file=sys.stderr)
        return EXIT_FAILURE
    except NotAQueue as e:
        raise ConfigError(f"{settings.queue.path} is not a seqdrop queue ({e})", file=settings.source, key="queue.path",
                          fix="correct the path; if it is a damaged queue, move it aside and start again") from None
    except QueueUnusable as e:
        if os.path.isdir(settings.queue.path):
            raise _queue_error(settings, e, "") from None
        print(f"seqdrop: {e}", file=sys.stderr)     # exit 1: systemd tries again (the disk may come back)
        return EXIT_FAILURE
    except (OSError, sqlite3.Error) as e:
        raise _queue_error(settings, e, "make its folder writable by the seqdrop user (StateDirectory= in "
                                        "the unit)") from None
    service = Service(settings, api_key=key, log=log, store=store, rebuilt=rebuilt,
                      notifier=SystemdNotifier.from_env(log=log))
    _install_signal_handlers(service.request_stop, log)
    try:
        return service.run()
    except sqlite3.Error as e:    # the queue failing as the service starts: systemd tries again later
        print(f"seqdrop: the queue {settings.queue.path} failed ({e}); check the disk under it",
              file=sys.stderr)
        return EXIT_FAILURE


def _install_signal_handlers(request_stop: Any, log: Any) -> None:
    state = {"signals": 0}

    def handler(signum: int, _frame: Any) -> None:
        state["signals"] += 1
        if state["signals"] > 1:
            os._exit(EXIT_FAILURE)   # a second signal: stop now; claimed rows are released at start-up
        request_stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


# -- status / retry ----------------------------------------------------------------------------
def _open_store_for_reading(args: argparse.Namespace, *, write: bool = False) -> tuple[Any, Any]:
    """The daemon's queue, opened beside the running daemon (WAL: readers never block it).

    status opens it read-only, so running it as root never leaves root-owned files beside the
    database that the seqdrop user could not open.
    """
    settings = config_mod.load(args.config_path, must_exist=args.config_explicit, check_folders=False)
    if settings.queue.shared:       # PostgreSQL: read-only for status/show (a writer would migrate it)
        return settings, open_shared(settings, readonly=not write)
    path = settings.queue.path
    if not os.path.exists(path):
        return settings, None
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        # SQLite would open it as a new, empty database (and `retry` would write one into it)
        _refuse_if_damaged(settings, f"the queue {path} is empty (0 bytes)")
        return settings, None
    try:
        store = SqliteStore(path, readonly=True)     # retry too: a writer would create tables in it
        if not store.has_schema():      # the daemon's very first instant, or a queue that lost its tables
            store.close()
            _refuse_if_damaged(settings, f"the queue {path} has no tables")
            return settings, None
        if write:
            store.close()
            store = SqliteStore(path)
        return settings, store
    except sqlite3.Error as e:
        if storage_fault(e) == STORE_DAMAGED and _journal_has_records(settings):
            raise _damaged(settings, str(e)) from None
        raise _queue_error(settings, e, "run as the seqdrop user or root, and check the path") from None


def _refuse_if_damaged(settings: Any, what: str) -> None:
    """A queue without tables is a first start's instant, unless the audit journal records uploads."""
    if _journal_has_records(settings):
        raise _damaged(settings, f"{what}, but its audit journal records uploads")


def _journal_has_records(settings: Any) -> bool:
    return journal_has_records(journal_path(settings.queue.path))


def _read_failed(settings: Any, e: sqlite3.Error) -> SeqdropError:
    if storage_fault(e) == STORE_DAMAGED:
        return _damaged(settings, str(e))
    return SeqdropError(f"cannot read the queue {settings.queue.path} ({e}) — fix: try again; if it goes on, "
                        f"check the disk under it")


def _damaged(settings: Any, what: str) -> SeqdropError:
    """A damaged queue, said once with the file and the fix (never a traceback)."""
    return SeqdropError(f"the queue {settings.queue.path} is damaged ({what}) — fix: restart the daemon "
                        f"(systemctl restart seqdrop): it sets the damaged queue aside, keeps it, and rebuilds "
                        f"the queue from the audit journal {journal_path(settings.queue.path)}; "
                        f"`seqdrop check` says what is wrong")


def _queue_error(settings: Any, e: Exception, fix: str) -> ConfigError:
    """The queue cannot be opened: name the likely mistake (a folder, another file, files another user
    owns) before permissions."""
    path = settings.queue.path
    if trap := queue_owner.ownership_problem(path):
        return ConfigError(trap[0], file=settings.source, key="queue.path", fix=trap[1])
    if os.path.isdir(path):
        return ConfigError(f"the queue path {path} is a folder", file=settings.source, key="queue.path",
                           fix=f'name a file in it, e.g. path = "{os.path.join(path, "queue.sqlite3")}"')
    # A file that is no SQLite database: told by SQLite's error code (on sqlite3's errors since 3.11).
    if isinstance(e, sqlite3.Error) and e.sqlite_errorcode == sqlite3.SQLITE_NOTADB:
        return ConfigError(f"{path} is not a seqdrop queue ({e})", file=settings.source, key="queue.path",
                           fix="correct the path; if it is a damaged queue, move it aside and start again "
                               "(files already uploaded are then uploaded again)")
    return ConfigError(f"cannot open the queue {path} ({e})", file=settings.source, key="queue.path", fix=fix)


def cmd_status(args: argparse.Namespace) -> int:
    status_cmd.require_config(args.config_path)
    settings, store = _open_store_for_reading(args)
    try:
        return status_cmd.status(settings, store, args)
    except sqlite3.DatabaseError as e:     # a damaged page: "database disk image is malformed"
        raise _read_failed(settings, e) from None


def cmd_show(args: argparse.Namespace) -> int:
    status_cmd.require_config(args.config_path)
    settings, store = _open_store_for_reading(args)
    try:
        return status_cmd.show(settings, store, args.what, as_json=args.json)
    except sqlite3.DatabaseError as e:     # a damaged page: "database disk image is malformed"
        raise _read_failed(settings, e) from None


def cmd_retry(args: argparse.Namespace) -> int:
    status_cmd.require_config(args.config_path)
    settings, store = _open_store_for_reading(args, write=True)
    if store is None:
        print(f"No queue yet at {settings.queue.path}; nothing to retry.")
        return EXIT_USAGE if args.ids else EXIT_OK    # a named ID cannot be in a queue that does not exist
    states = tuple(s for s, on in (("failed", args.failed), ("rejected", args.rejected)) if on) or \
        ("failed", "rejected")
    try:
        named = store.samples_by_id({int(i[1:]) for i in args.ids if isinstance(i, str)})
        unknown_samples = [i for i in args.ids if isinstance(i, str) and int(i[1:]) not in named]
        ids = [named[int(i[1:])].lead if isinstance(i, str) else i for i in args.ids if i not in unknown_samples]
        rows = {i: store.get(i) for i in ids}
        samples = store.samples_by_id({r.sample for r in rows.values() if r is not None and r.sample is not None})
        before = store.counts()
        n = store.retry(states=states, ids=tuple(ids)) if ids or not args.ids else 0
        files = sum(before[s] for s in states) - sum(store.counts()[s] for s in states)   # members too
    except sqlite3.DatabaseError as e:
        raise _read_failed(settings, e) from None
    finally:
        store.close()
    print(status_cmd.retried_text(n, files) + ("; the running daemon picks them up within seconds." if n else "."))
    unknown = [i for i, row in rows.items() if row is None]
    for line in status_cmd.view.retry_lines(rows, samples, states):
        print(line)
    if unknown:
        print(f"seqdrop: no file with id {', '.join(map(str, unknown))} in the queue {settings.queue.path}"
              f" — fix: take the ID from the first column of `seqdrop status`", file=sys.stderr)
    if unknown_samples:
        print(f"seqdrop: no sample {', '.join(unknown_samples)} in the queue {settings.queue.path}"
              f" — fix: take the sample (s12) from `seqdrop status`", file=sys.stderr)
    return EXIT_USAGE if unknown or unknown_samples else EXIT_OK


# -- runs / report -----------------------------------------------------------------------------
def cmd_runs(args: argparse.Namespace) -> int:
    # lazy: only this command needs it
    from daemon.commands.runs import runs
    status_cmd.require_config(args.config_path)
    settings, store = _open_store_for_reading(args)
    try:
        return runs(settings, store, as_json=args.json)
    except sqlite3.DatabaseError as e:     # a damaged page: "database disk image is malformed"
        raise _read_failed(settings, e) from None


def cmd_report(args: argparse.Namespace) -> int:
    # lazy: only this command needs it
    from daemon.commands.report import report
    status_cmd.require_config(args.config_path)
    settings = config_mod.load(args.config_path, must_exist=args.config_explicit, check_folders=False)
    return report(settings, run=args.run, since=args.since, fmt=args.format)


# -- upload ------------------------------------------------------------------------------------
def cmd_upload(args: argparse.Namespace) -> int:
    # lazy: see the note on imports at the top
    from daemon.commands.upload import upload_files
    settings = config_mod.load(args.config_path, must_exist=args.config_explicit, check_folders=False)
    logs.configure(settings.log.level if settings.log.level != "info" else "warning", settings.log.format,
                   stream=sys.stderr)
    key = config_mod.load_api_key(settings)
    logs.register_secret(key)
    return upload_files(settings, key, args.files, max_wait_s=args.max_wait, force=args.force,
                        pairing=not args.no_pairing)


# -- check -------------------------------------------------------------------------------------
def cmd_check(args: argparse.Namespace) -> int:
    # lazy: see the note on imports at the top
    from daemon.commands.check import run_checks
    return run_checks(args.config_path)


# -- demo --------------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    # lazy: see the note on imports at the top
    from daemon.commands.demo import run_demo
    return run_demo(keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())
