"""Daemon benchmarks (issue 3, "Must show" 5): latency, start-up, throughput, idle CPU of `seqdrop run`.

    .venv/bin/python bench/daemon.py                      # all four parts, full sizes
    .venv/bin/python bench/daemon.py --quick              # smaller counts (smoke run)
    .venv/bin/python bench/daemon.py --only latency,throughput

The daemon is the real CLI, `.venv/bin/seqdrop run --config CFG` (ONE_CODEX_API_KEY set, JSON logs
on stdout, read line by line by this script), pointed at `seqdrop sandbox --no-store` running as
its own process, so neither the sandbox's nor this script's CPU is counted as the daemon's.

latency     settle_seconds = 1; files (4 KiB valid FASTQ: 8 records of 512 bytes) are written one at a time, 1.5 s apart,
            into the running daemon's watch folder; latency = the sandbox's record of the file's
            init_upload (the sample's created_at, ms) minus the moment this script closed the file.
startup     a tree of N small files (100 per folder, two levels) of which all but `--new` are
            already `done` in the queue (rows written with daemon.queue.sqlite.Store's own verbs, the
            identities the daemon will stat); time from spawning `seqdrop run` to its
            `service.ready` line; re-uploads = init_uploads for files that were done (must be 0);
            peak RSS (VmHWM) at ready and after the new files were uploaded.
idle        right after startup's uploads finished (same process, same 100,000-file tree):
            CPU (utime + stime from /proc/<pid>/stat) over 60 s with nothing to do.
throughput  M small files (4 KiB valid FASTQ, 100 per folder) present when a fresh daemon starts,
            default settings (workers = 2, validation on) but settle_seconds = 1; files/s from the
            first `file.queued` to the last `upload.confirmed` (the daemon's own log timestamps).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    OUT,
    SEQDROP,
    Sandbox,
    child_env,
    eprint,
    load,
    machine,
    now_utc,
    proc_cpu_s,
    proc_status,
    table,
    write_config,
)

PARTS = ("latency", "startup", "idle", "throughput")


def fastq_bytes(tag: str, records: int = 8) -> bytes:
    """A small valid FASTQ: `records` records of 512 bytes (a 10-character tag and the record number)."""
    seq = b"ACGT" * 61                # 244 bases: 19 + 245 + 2 + 245 = 511 bytes, + 1 padding in the name
    qual = b"I" * 244
    return b"".join(b"@%s_%07d\n%s\n+\n%s\n" % (tag.encode()[:10].ljust(10, b"x"), i, seq, qual)
                    for i in range(records))


def ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class Daemon:
    """`seqdrop run` as a child process; its JSON log lines are parsed as they arrive."""

    def __init__(self, config: Path, workdir: Path) -> None:
        self.stderr = open(workdir / "daemon-stderr.log", "ab")
        self.spawned = time.time()
        self.proc = subprocess.Popen([SEQDROP, "run", "--config", str(config)], stdout=subprocess.PIPE,
                                     stderr=self.stderr, env=child_env())
        self.events: list[dict] = []
        self.counts: dict[str, int] = {}
        self._cond = threading.Condition()
        self.rusage = None
        self.raw = open(workdir / "daemon-stdout.jsonl", "ab")
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            now = time.time()
            self.raw.write(line)
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            ev["_recv"] = now
            with self._cond:
                self.events.append(ev)
                name = ev.get("event", "")
                self.counts[name] = self.counts.get(name, 0) + 1
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait(self, predicate, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"waited {timeout_s:.0f} s for {what}; counts so far: {self.counts}")
                if self.proc.poll() is not None:
                    raise RuntimeError(f"seqdrop run exited ({self.proc.returncode}) while waiting for {what}")
                self._cond.wait(min(left, 1.0))

    def first(self, name: str) -> dict | None:
        with self._cond:
            return next((e for e in self.events if e.get("event") == name), None)

    def named(self, name: str) -> list[dict]:
        with self._cond:
            return [e for e in self.events if e.get("event") == name]

    def stop(self) -> int:
        if self.proc.poll() is None and self.rusage is None:
            self.proc.send_signal(signal.SIGTERM)
        timer = threading.Timer(30, self.proc.kill)
        timer.start()
        try:
            _pid, status, self.rusage = os.wait4(self.proc.pid, 0)
            self.proc.returncode = os.waitstatus_to_exitcode(status)
        except ChildProcessError:
            pass
        finally:
            timer.cancel()
        self.stderr.close()
        return self.proc.returncode


def py_spy(pid: int, out: Path, seconds: float | None = None) -> subprocess.Popen:
    """py-spy (in the venv) sampling `pid` from outside, raw collapsed stacks into `out`."""
    argv = [str(Path(SEQDROP).with_name("py-spy")), "record", "--nonblocking", "--idle", "-r", "100", "-f", "raw",
            "-o", str(out), "--pid", str(pid)]
    if seconds:
        argv += ["-d", str(int(seconds))]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def make_tree(root: Path, count: int, *, prefix: str = "s", per_folder: int = 100, per_run: int = 10) -> list[str]:
    """`count` small FASTQ files: root/run_XXX/lane_Y/PREFIX_ZZZZ.fastq, 100 per folder."""
    paths = []
    body = fastq_bytes(prefix)
    for i in range(count):
        folder = root / f"run_{i // (per_folder * per_run):03d}" / f"lane_{(i // per_folder) % per_run}"
        if i % per_folder == 0:
            folder.mkdir(parents=True, exist_ok=True)
        p = folder / f"{prefix}_{i:06d}.fastq"
        with open(p, "wb") as f:
            f.write(body)
        paths.append(str(p))
    return paths


def prefill_done(queue_path: Path, paths: list[str]) -> float:
    """Record `paths` as already uploaded, through the store's own verbs (add_seen, mark_done)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from daemon.queue.base import Identity
    from daemon.queue.sqlite import SqliteStore
    started = time.monotonic()
    store = SqliteStore(str(queue_path))
    store.db.execute("PRAGMA synchronous = OFF")      # preparation only: no fsync per row
    for n, p in enumerate(paths):
        file_id = store.add_seen(p, Identity.of(os.lstat(p)))
        store.mark_done(file_id, sample_id=f"{n:016x}", md5="0" * 32)
    store.close()
    return time.monotonic() - started


# -- parts -------------------------------------------------------------------------------------------

def bench_latency(sb: Sandbox, base: Path, files: int) -> dict:
    watch = base / "latency" / "watch"
    watch.mkdir(parents=True)
    cfg = write_config(base / "latency" / "config.toml", base_url=sb.api_url, queue=base / "latency" / "q.sqlite3",
                       watch=[watch], settle_s=1)
    d = Daemon(cfg, base / "latency")
    closed: dict[str, float] = {}
    try:
        d.wait(lambda: d.counts.get("service.ready"), 60, "service.ready")
        time.sleep(1.0)
        for i in range(files):
            name = f"lat_{i:03d}.fastq"
            with open(watch / name, "wb") as f:
                f.write(fastq_bytes(f"lat{i}"))
            closed[name] = time.time()
            time.sleep(1.5)
        d.wait(lambda: d.counts.get("upload.confirmed", 0) >= files, 60, f"{files} confirmations")
    finally:
        rc = d.stop()
    samples = {s["filename"]: s for s in sb.get("samples")}
    logged = {Path(e["path"]).name: ts(e["timestamp"]) for e in d.named("upload.initialized")}
    lat, lat_log = [], []
    for name, t_close in closed.items():
        s = samples.get(name)
        if s is None:
            raise RuntimeError(f"no init_upload for {name}")
        lat.append(ts(s["created_at"]) - t_close)
        lat_log.append(logged[name] - t_close)
    return {"files": files, "settle_s": 1.0, "median_s": statistics.median(lat), "max_s": max(lat),
            "min_s": min(lat), "median_log_s": statistics.median(lat_log), "max_log_s": max(lat_log),
            "all_s": [round(x, 3) for x in lat], "exit_code": rc}


def bench_startup_idle(sb: Sandbox, base: Path, total: int, new: int, idle_s: float, *,
                       do_startup: bool, do_idle: bool, profile: Path | None = None) -> dict:
    work = base / "startup"
    watch = work / "watch"
    watch.mkdir(parents=True)
    t0 = time.monotonic()
    paths = make_tree(watch, total)
    made_s = time.monotonic() - t0
    done_paths = paths[: total - new]
    qpath = work / "q.sqlite3"
    fill_s = prefill_done(qpath, done_paths)
    eprint(f"  tree of {total} files made in {made_s:.1f} s; {len(done_paths)} done rows written in {fill_s:.1f} s")
    cfg = write_config(work / "config.toml", base_url=sb.api_url, queue=qpath, watch=[watch], settle_s=1)
    before = len(sb.get("samples"))
    d = Daemon(cfg, work)
    out: dict = {"files": total, "done_before": len(done_paths), "new": new}
    try:
        d.wait(lambda: d.counts.get("service.ready"), 300, "service.ready")
        ready = d.first("service.ready")
        out["ready_s"] = ready["_recv"] - d.spawned
        out["scan_s"] = ready.get("scan_s")
        hwm = proc_status(d.proc.pid)
        out["rss_at_ready_mib"] = hwm.get("VmHWM", 0) / 1024
        out["cpu_to_ready_s"] = proc_cpu_s(d.proc.pid)
        d.wait(lambda: d.counts.get("upload.confirmed", 0) >= new, 600, f"{new} confirmations")
        confirmed = d.named("upload.confirmed")
        out["new_uploaded_s"] = confirmed[-1]["_recv"] - d.spawned if confirmed else None
        time.sleep(3.0)      # let the last transactions and log lines settle
        st = proc_status(d.proc.pid)
        out["rss_after_uploads_mib"] = st.get("VmHWM", 0) / 1024
        out["rss_now_mib"] = st.get("VmRSS", 0) / 1024
        if do_idle:
            spy = None
            if profile is not None:     # sampled from outside; its own CPU is not the daemon's
                spy = py_spy(d.proc.pid, profile / "idle.txt", idle_s)
            c0, w0 = proc_cpu_s(d.proc.pid), time.monotonic()
            time.sleep(idle_s)
            c1, w1 = proc_cpu_s(d.proc.pid), time.monotonic()
            if spy is not None:
                spy.wait(timeout=60)
            out["idle_window_s"] = w1 - w0
            out["idle_cpu_s"] = c1 - c0
            out["idle_cpu_pct"] = 100 * (c1 - c0) / (w1 - w0)
            out["rss_idle_mib"] = proc_status(d.proc.pid).get("VmRSS", 0) / 1024
    finally:
        out["exit_code"] = d.stop()
    done_set = set(done_paths)
    initialized = [e["path"] for e in d.named("upload.initialized")]
    out["reuploads"] = sum(1 for p in initialized if p in done_set)
    out["inits"] = len(initialized)
    out["sandbox_new_samples"] = len(sb.get("samples")) - before
    out["maxrss_mib"] = d.rusage.ru_maxrss / 1024 if d.rusage else None
    out["do_startup"], out["do_idle"] = do_startup, do_idle
    return out


def bench_throughput(sb: Sandbox, base: Path, count: int, label: str, profile: Path | None = None) -> dict:
    work = base / f"throughput-{label}"
    watch = work / "watch"
    watch.mkdir(parents=True)
    make_tree(watch, count, prefix="t")
    cfg = write_config(work / "config.toml", base_url=sb.api_url, queue=work / "q.sqlite3", watch=[watch], settle_s=1)
    before = len(sb.get("samples"))
    sb_cpu0 = proc_cpu_s(sb.proc.pid)
    d = Daemon(cfg, work)
    spy = py_spy(d.proc.pid, profile / f"throughput-{label}.txt") if profile is not None else None
    try:
        d.wait(lambda: d.counts.get("upload.confirmed", 0) >= count, 1800, f"{count} confirmations")
        if spy is not None:
            spy.send_signal(signal.SIGINT)      # py-spy writes its file on SIGINT
            spy.wait(timeout=60)
        cpu = proc_cpu_s(d.proc.pid)
        hwm = proc_status(d.proc.pid).get("VmHWM", 0) / 1024
    finally:
        rc = d.stop()
    sb_cpu = proc_cpu_s(sb.proc.pid) - sb_cpu0
    queued = d.named("file.queued")
    confirmed = d.named("upload.confirmed")
    t_first = min(ts(e["timestamp"]) for e in queued)
    t_last = max(ts(e["timestamp"]) for e in confirmed)
    ready = d.first("service.ready")
    samples = [s for s in sb.get("samples")][before:]
    return {"sandbox": label, "files": count, "seconds": t_last - t_first, "files_per_s": count / (t_last - t_first),
            "ready_s": ready["_recv"] - d.spawned if ready else None,
            "first_queued_after_spawn_s": t_first - d.spawned,
            "confirmed": len(confirmed), "sandbox_samples": len(samples),
            "sandbox_confirmed": sum(1 for s in samples if s["state"] == "confirmed"),
            "max_confirm_count": max((s["confirm_count"] for s in samples), default=0),
            "daemon_cpu_s": cpu, "sandbox_cpu_s": sb_cpu, "rss_mib": hwm, "exit_code": rc,
            "delayed": d.counts.get("upload.delayed", 0)}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description="seqdrop daemon benchmarks (latency, startup, idle, throughput)")
    p.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts of: {', '.join(PARTS)}")
    p.add_argument("--quick", action="store_true", help="smaller counts for a smoke run")
    p.add_argument("--throughput-files", default=None, metavar="SHIPPED,NODELAY",
                   help="files for the throughput part against the sandbox as shipped and against "
                        "bench/sandbox_nodelay.py (0 skips one; default 10000,10000; --quick 1000,1000)")
    p.add_argument("--startup-new", type=int, default=None, metavar="N",
                   help="files of the start-up tree that are not yet done (default 1000; --quick 100)")
    p.add_argument("--idle-seconds", type=float, default=None, help="idle window (default 60; --quick 15)")
    p.add_argument("--py-spy", metavar="DIR", help="record py-spy profiles (raw collapsed stacks) of the daemon's "
                                                 "idle window and throughput runs into DIR (pip install py-spy)")
    p.add_argument("--keep", action="store_true", help="keep the work folder (trees, queues, daemon logs)")
    p.add_argument("--json", help="also write the raw results here")
    args = p.parse_args(argv)
    parts = [x.strip() for x in args.only.split(",") if x.strip()]
    bad = set(parts) - set(PARTS)
    if bad:
        p.error(f"unknown part(s): {', '.join(sorted(bad))}")
    n_lat, n_tree, n_new, n_tp, idle_s = (5, 10_000, 100, 1_000, 15.0) if args.quick else \
        (20, 100_000, 1_000, 10_000, 60.0)
    n_new = n_new if args.startup_new is None else args.startup_new
    idle_s = idle_s if args.idle_seconds is None else args.idle_seconds
    OUT.mkdir(parents=True, exist_ok=True)
    base = Path(os.path.realpath(OUT)) / f"daemon-{os.getpid()}"
    base.mkdir(parents=True)
    eprint(f"seqdrop daemon benchmark, {now_utc()}\n{machine()}\n{load()} at start; work folder {base}")
    results: dict = {"machine": machine(), "load_start": load()}
    profile = Path(args.py_spy).resolve() if args.py_spy else None
    if profile is not None:
        profile.mkdir(parents=True, exist_ok=True)
    sb = Sandbox(store=False)
    try:
        if "latency" in parts:
            eprint(f"latency: {n_lat} files, settle_seconds = 1 ...")
            results["latency"] = r = bench_latency(sb, base, n_lat)
            eprint(f"  median {r['median_s']:.3f} s, max {r['max_s']:.3f} s  {load()}")
        if "startup" in parts or "idle" in parts:
            eprint(f"startup/idle: {n_tree} files, {n_tree - n_new} already done ...")
            results["startup"] = r = bench_startup_idle(sb, base, n_tree, n_new, idle_s,
                                                        do_startup="startup" in parts, do_idle="idle" in parts,
                                                        profile=profile)
            eprint(f"  ready {r['ready_s']:.2f} s, re-uploads {r['reuploads']}, RSS {r['rss_after_uploads_mib']:.1f}"
                   f" MiB, idle CPU {r.get('idle_cpu_s', float('nan')):.3f} s  {load()}")
        if "throughput" in parts:
            counts = [int(x) for x in args.throughput_files.split(",")] if args.throughput_files else [n_tp, n_tp]
            results["throughput"] = []
            for label, count in zip(("shipped", "nodelay"), counts):
                if not count:
                    continue
                eprint(f"throughput: {count} files, sandbox {label} ...")
                if label == "nodelay":
                    sb_nd = Sandbox(store=False, nodelay=True)
                    try:
                        r = bench_throughput(sb_nd, base, count, label, profile)
                    finally:
                        sb_nd.stop()
                else:
                    r = bench_throughput(sb, base, count, label, profile)
                r["load_after"] = load()
                results["throughput"].append(r)
                eprint(f"  {r['files_per_s']:.1f} files/s over {r['seconds']:.1f} s; daemon CPU {r['daemon_cpu_s']:.1f} s,"
                       f" sandbox CPU {r['sandbox_cpu_s']:.1f} s  {load()}")
    finally:
        sb.stop()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    results["load_end"] = load()

    rows = []
    if "latency" in results:
        r = results["latency"]
        rows.append(["latency: file close → init_upload (settle 1 s)",
                     f"median {r['median_s']:.2f} s, max {r['max_s']:.2f} s over {r['files']} files",
                     "≤ settle + 1 s = 2 s", "met" if r["max_s"] <= 2.0 else "MISSED"])
    if "startup" in results:
        r = results["startup"]
        if r["do_startup"]:
            rows.append([f"start-up: {r['files']:,} files, {r['done_before']:,} done → service.ready",
                         f"{r['ready_s']:.2f} s (scan {r['scan_s']} s)", "≤ 10 s",
                         "met" if r["ready_s"] <= 10 else "MISSED"])
            rows.append(["start-up: re-uploads of done files", f"{r['reuploads']} (new files uploaded: "
                         f"{r['inits']} of {r['new']})", "0", "met" if r["reuploads"] == 0 else "MISSED"])
            rows.append(["start-up: peak RSS (VmHWM)", f"{r['rss_at_ready_mib']:.1f} MiB at ready, "
                         f"{r['rss_after_uploads_mib']:.1f} MiB after the new uploads", "≤ 150 MiB",
                         "met" if r["rss_after_uploads_mib"] <= 150 else "MISSED"])
        if r["do_idle"]:
            rows.append([f"idle CPU over {r['files']:,} files, {r['idle_window_s']:.0f} s",
                         f"{r['idle_cpu_s']:.2f} CPU s ({r['idle_cpu_pct']:.2f} % of one core)", "≈ 0",
                         "met" if r["idle_cpu_pct"] < 1.0 else "MISSED"])
    for r in results.get("throughput", []):
        what = "sandbox as shipped" if r["sandbox"] == "shipped" else "sandbox + TCP_NODELAY"
        rows.append([f"throughput: {r['files']:,} small files, workers = 2, {what}",
                     f"{r['files_per_s']:.1f} files/s ({r['seconds']:.1f} s)", "≥ 100 files/s",
                     "met" if r["files_per_s"] >= 100 else "MISSED"])
    print()
    print(table(["benchmark", "result", "target", ""], rows))
    print(f"\n{results['load_start']} at start, {results['load_end']} at the end")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
