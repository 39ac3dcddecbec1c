"""The shared queue's benchmark (issue 15, "Must show" 4): N small files through 1 and 3 daemons on
PostgreSQL against 1 daemon on SQLite, in one run.

    .venv/bin/python bench/pg.py                 # 10,000 files per scenario
    .venv/bin/python bench/pg.py --files 1000    # a smoke run

Each scenario: a fresh tree of N small valid FASTQ files (4 KiB, 100 per folder) present before the
daemons start, default settings (workers = 2, validation on) but settle_seconds = 1, the real CLI
(`seqdrop run`) against `seqdrop sandbox --no-store` with TCP_NODELAY (bench/sandbox_nodelay.py) as its
own process. PostgreSQL: a server of its own, started like the test suite's (tests/pg_server.py), one
fresh database per scenario; its hosts share one watch folder (id "bench").
files/s: N over the time from the first `file.queued` to the last `upload.confirmed` (all daemons' logs).
Round trips: the statements the server received from the daemons (log_statement = all for the
scenario's database, counted in the server's log; each is one client round trip: psycopg sends a
parameterised query's Parse/Bind/Execute in one), divided by N. The waiting loop's own queries are
not logged (it turns log_statement off for its session). SQLite has no round trips (in process).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
import psycopg
from common import (
    OUT,
    SEQDROP,
    Sandbox,
    child_env,
    eprint,
    load,
    machine,
    now_utc,
    table,
)
from pg_server import PgServer, _bin_dir

STATEMENT = re.compile(rb"LOG:  (statement|execute [^:]*): ")


def fastq_bytes(tag: str, records: int = 8) -> bytes:
    seq, qual = b"ACGT" * 61, b"I" * 244
    return b"".join(b"@%s_%07d\n%s\n+\n%s\n" % (tag.encode()[:10].ljust(10, b"x"), i, seq, qual)
                    for i in range(records))


def make_tree(root: Path, count: int) -> None:
    for i in range(count):
        folder = root / f"d{i // 100:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{i:06d}.fastq").write_bytes(fastq_bytes(f"f{i}"))


def config(path: Path, *, api_url: str, watch: Path, state: Path, url: str | None, host: str) -> Path:
    entry = f'{{path = {json.dumps(str(watch))}, id = "bench"}}' if url else json.dumps(str(watch))
    queue = f'path = {json.dumps(str(state / "queue.sqlite3"))}\n'
    if url:
        queue += f'url = "{url}"\nhost = "{host}"\n'
    path.write_text(f'[api]\nbase_url = "{api_url}"\n\n[watch]\npaths = [{entry}]\nsettle_seconds = 1\n\n'
                    f'[queue]\n{queue}\n[log]\nformat = "json"\n')
    return path


def ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def done_count(url: str | None, sqlite_path: Path) -> int:
    if url is None:
        if not sqlite_path.exists():
            return 0
        db = sqlite3.connect(f"file:{sqlite_path}?mode=ro", uri=True, timeout=30)
        try:
            return db.execute("SELECT count(*) FROM files WHERE state = 'done'").fetchone()[0]
        except sqlite3.OperationalError:
            return 0
        finally:
            db.close()
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("SET log_statement = 'none'")
        try:
            return db.execute("SELECT count(*) FROM files WHERE state = 'done'").fetchone()[0]
        except psycopg.errors.UndefinedTable:
            return 0


def scenario(name: str, *, hosts: int, count: int, base: Path, sb: Sandbox, server: PgServer | None) -> dict:
    work = base / name
    watch = work / "watch"
    make_tree(watch, count)
    url = None
    if server is not None:
        url = server.create_database()
        with psycopg.connect(url, autocommit=True) as db:
            name_in_db = db.execute("SELECT current_database()").fetchone()[0]
            db.execute(f'ALTER DATABASE "{name_in_db}" SET log_statement = \'all\'')
    log_start = os.path.getsize(server.log) if server is not None else 0
    procs, logs = [], []
    for n in range(hosts):
        state = work / f"h{n + 1}"
        state.mkdir()
        cfg = config(state / "config.toml", api_url=sb.api_url, watch=watch, state=state, url=url, host=f"h{n + 1}")
        logs.append(state / "daemon.log")
        with open(logs[-1], "wb") as out:
            procs.append(subprocess.Popen([SEQDROP, "run", "--config", str(cfg)], stdout=out,
                                          stderr=subprocess.STDOUT, env=child_env()))
    deadline = time.monotonic() + 3600
    try:
        while done_count(url, work / "h1" / "queue.sqlite3") < count:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"{name}: not every file done (a daemon exited, or an hour went by)")
            time.sleep(1.0)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
    events = [json.loads(line) for log in logs for line in log.read_bytes().splitlines() if line.startswith(b"{")]
    queued = [ts(e["timestamp"]) for e in events if e.get("event") == "file.queued"]
    confirmed = [ts(e["timestamp"]) for e in events if e.get("event") == "upload.confirmed"]
    seconds = max(confirmed) - min(queued)
    trips, kinds = None, {}
    if server is not None:
        with open(server.log, "rb") as f:
            f.seek(log_start)
            text = f.read()
        trips = len(STATEMENT.findall(text))
        for m in re.finditer(rb"LOG:  (?:statement|execute [^:]*): (.{0,48})", text):
            kind = re.sub(rb"\s+", b" ", m.group(1)).decode(errors="replace")
            kinds[kind] = kinds.get(kind, 0) + 1
    return {"scenario": name, "daemons": hosts, "files": count, "seconds": round(seconds, 2),
            "files_per_s": round(count / seconds, 1), "confirmed": len(confirmed),
            "round_trips": trips, "round_trips_per_file": round(trips / count, 2) if trips else None,
            "statements_per_file": {k: round(v / count, 2) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])[:15]}}


def main() -> int:
    p = argparse.ArgumentParser(description="seqdrop: 1 and 3 daemons on PostgreSQL against 1 on SQLite")
    p.add_argument("--files", type=int, default=10_000)
    args = p.parse_args()
    bin_dir = _bin_dir()
    if bin_dir is None:
        eprint("bench/pg.py: no PostgreSQL server binaries (apt-get install postgresql-15)")
        return 2
    base = OUT / f"pg-{int(time.time())}"
    base.mkdir(parents=True)
    server = PgServer(bin_dir)
    server.init()
    server.start()
    results = []
    try:
        with Sandbox(nodelay=True) as sb:
            for name, hosts, srv in (("sqlite-1", 1, None), ("postgresql-1", 1, server), ("postgresql-3", 3, server)):
                eprint(f"{now_utc()} {name}: {args.files} files through {hosts} daemon(s)")
                results.append(scenario(name, hosts=hosts, count=args.files, base=base, sb=sb, server=srv))
                eprint(json.dumps(results[-1]))
    finally:
        server.remove()
    rows = [[r["scenario"], r["daemons"], r["files"], r["seconds"], r["files_per_s"], r["confirmed"],
             r["round_trips_per_file"] if r["round_trips_per_file"] is not None else "— (in process)"] for r in results]
    print(f"{now_utc()}; {machine()}; {load()}; PostgreSQL {server_version(bin_dir)}\n")
    print(table(["scenario", "daemons", "files", "s", "files/s", "confirmed", "DB round trips/file"], rows))
    (base / "results.json").write_text(json.dumps(results, indent=1))
    return 0


def server_version(bin_dir: str) -> str:
    out = subprocess.run([os.path.join(bin_dir, "postgres"), "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip().rsplit(" ", 1)[-1] if out.returncode == 0 else "?"


if __name__ == "__main__":
    sys.exit(main())
