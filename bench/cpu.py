"""CPU per byte (issue 16): seqdrop, the official client and curl side by side, HTTP and HTTPS.

    .venv/bin/python bench/cpu.py                    # 1 GiB plain + .gz, HTTP + HTTPS, 3 runs; 4 GiB once
    .venv/bin/python bench/cpu.py --quick            # 64 MiB files, 1 run, no 4 GiB: a smoke run
    .venv/bin/python bench/cpu.py --repeat 1 --big-gib 0 --schemes https --kinds plain

In one run, with the files in the page cache, each client uploads the same file to the same server,
bench/cpu_sink.py (bench/sink.py plus the official client's multipart route and TLS: it discards what
it receives and answers with the precomputed MD5 as ETag), one server per scheme, each its own process:
  * seqdrop:  `seqdrop upload --config CFG FILE` (validation on, as by default: FASTQ of one read
              length, plain or gzip, is checked in the sending process as it is sent; until issue
              16's second round, in a child process that read the file again; the MD5 compared with
              the ETag);
  * official: the official client (`pip install onecodex` into --occ-venv) through bench/occ_upload.py:
              init_multipart_upload, then boto3's multipart upload, one part at a time, then the callback;
  * curl:     `curl -F` of the form init_upload gave (init and confirm done by this script, not timed).
HTTPS uses a self-signed certificate made here, which the clients trust through REQUESTS_CA_BUNDLE,
AWS_CA_BUNDLE, SSL_CERT_FILE and curl's --cacert: TLS verification stays on.

Per run: wall time spawn -> exit; CPU = user + sys of the client and every descendant it reaped (the
rusage os.wait4 returns; seqdrop reaps a validator child, when it starts one), as CPU seconds per GiB of file; peak RSS
= the largest sum of VmRSS over the client's process tree, sampled every 20 ms, and the largest single
process (its VmHWM, sampled: wait4's ru_maxrss would count this script's own memory). The median of --repeat runs is reported, and `gzip -t`'s CPU time on the
.fastq.gz. The machine may be shared (2 cores here, other work running): compare within one run only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import API_KEY, OUT, PYTHON, SEQDROP, GiB, MiB, child_env, eprint, load, machine, now_utc, table, write_config  # noqa: E402,E501

HERE = Path(__file__).resolve().parent
TOOLS = ("seqdrop", "official", "curl")
REPORTED = ("seqdrop", "seqdrop-before", "official", "curl")


class Tree:
    """A command run to completion with its process tree's CPU and memory measured."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.started = time.monotonic()
        # Run from a neutral directory: run from a checkout, a child's `python -m daemon...` could
        # import that checkout's package instead of its own venv's (seqdrop-before's validator child did).
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                     cwd=tempfile.gettempdir())
        self.peak_tree_kib = 0     # the largest sum of VmRSS over the tree, sampled
        self.peak_one_kib = 0      # the largest VmHWM of one process of the tree, sampled
        self._out: list[bytes] = []
        self._err: list[bytes] = []
        self._done = threading.Event()
        threads = [threading.Thread(target=lambda: self._out.append(self.proc.stdout.read()), daemon=True),
                   threading.Thread(target=lambda: self._err.append(self.proc.stderr.read()), daemon=True),
                   threading.Thread(target=self._sample, daemon=True)]
        for t in threads:
            t.start()
        _pid, status, usage = os.wait4(self.proc.pid, 0)
        self.wall_s = time.monotonic() - self.started
        self._done.set()
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        for t in threads:
            t.join()
        self.cpu_s = usage.ru_utime + usage.ru_stime
        self.stdout = b"".join(self._out).decode(errors="replace")
        self.stderr = b"".join(self._err).decode(errors="replace")

    def _sample(self) -> None:
        while not self._done.wait(0.02):
            sizes = [_rss_kib(pid) for pid in _tree(self.proc.pid)]
            self.peak_tree_kib = max(self.peak_tree_kib, sum(rss for rss, _ in sizes))
            self.peak_one_kib = max([self.peak_one_kib] + [hwm for _, hwm in sizes])


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            pass
    return pids


def _rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a live process, in KiB. (wait4's ru_maxrss is no use here: a child counts
    the benchmark's own memory from before its exec.)"""
    found = {"VmRSS:": 0, "VmHWM:": 0}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    found[line.split()[0]] = int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return found["VmRSS:"], found["VmHWM:"]


class Sink:
    """bench/cpu_sink.py as its own process, over HTTP or (with cert) HTTPS."""

    def __init__(self, md5_file: Path, cert: tuple[Path, Path] | None) -> None:
        argv = [PYTHON, str(HERE / "cpu_sink.py"), "--md5s", str(md5_file)]
        if cert:
            argv += ["--tls-cert", str(cert[0]), "--tls-key", str(cert[1])]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("sink: "):
            raise RuntimeError(f"bench/cpu_sink.py did not start: {line!r}")
        self.url = line.split()[1]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def make_cert(workdir: Path) -> tuple[Path, Path]:
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def md5_of(path: Path) -> str:
    side = path.with_name(path.name + ".md5")
    if side.exists() and side.stat().st_mtime >= path.stat().st_mtime:
        return side.read_text().split()[0]
    h = hashlib.md5()
    with open(path, "rb", buffering=0) as f:
        while block := f.read(8 * MiB):
            h.update(block)
    side.write_text(h.hexdigest() + "\n")
    return h.hexdigest()


def make_files(size: int, big: int) -> dict[str, Path]:
    """The plain FASTQ of `size` bytes (Illumina-like, bench/validate.py's generator), its gzip -1 copy,
    and (big > 0) a plain file of big GiB made of copies of it."""
    from validate import compress, make_fastq   # bench/validate.py: same files as the validator's bench
    folder = OUT / "validate"
    folder.mkdir(parents=True, exist_ok=True)
    plain = folder / f"reads_{size}.fastq"
    files = {"plain": plain, "gz": plain.with_name(plain.name + ".gz")}
    if not plain.exists():
        eprint(f"generating {plain.name} ...")
        make_fastq(plain, size)
    if not files["gz"].exists():
        eprint(f"compressing {plain.name} ...")
        compress(plain, files["gz"], "gzip")
    if big:
        files["big"] = OUT / "cpu" / f"reads_{big}GiB.fastq"
        files["big"].parent.mkdir(parents=True, exist_ok=True)
        if not files["big"].exists():
            eprint(f"writing {files['big'].name} ...")
            with open(files["big"], "wb") as out:
                for _ in range(round(big * GiB / plain.stat().st_size)):
                    with open(plain, "rb") as f:
                        shutil.copyfileobj(f, out, 16 * MiB)
    return files


def warm(path: Path) -> None:
    with open(path, "rb", buffering=0) as f:
        while f.read(16 * MiB):
            pass


def env_for(cert: Path | None, **extra: str) -> dict[str, str]:
    env = child_env(**extra)
    if cert:
        env.update(REQUESTS_CA_BUNDLE=str(cert), AWS_CA_BUNDLE=str(cert), SSL_CERT_FILE=str(cert),
                   CURL_CA_BUNDLE=str(cert))
    return env


def run_seqdrop(url: str, path: Path, workdir: Path, cert: Path | None, seqdrop: str = SEQDROP) -> tuple[Tree, bool]:
    cfg = write_config(workdir / f"seqdrop-{url.split(':')[0]}.toml", base_url=url, log_level="info",
                       queue=workdir / f"queue-{time.monotonic_ns()}.db")
    t = Tree([seqdrop, "upload", "--config", str(cfg), str(path)], env_for(cert))
    return t, t.proc.returncode == 0 and "confirmed as sample" in t.stdout


def run_official(url: str, path: Path, workdir: Path, cert: Path | None, occ_python: str) -> tuple[Tree, bool]:
    aws_cfg = workdir / "aws-config"
    aws_cfg.write_text("[default]\nregion = us-east-1\ns3 =\n    addressing_style = path\n")
    env = env_for(cert, AWS_ENDPOINT_URL_S3=url, AWS_CONFIG_FILE=str(aws_cfg), AWS_EC2_METADATA_DISABLED="true",
                  AWS_SHARED_CREDENTIALS_FILE=str(workdir / "no-credentials"))
    t = Tree([occ_python, str(HERE / "occ_upload.py"), url, API_KEY, str(path)], env)
    return t, t.proc.returncode == 0 and "uploaded as sample" in t.stdout


def run_curl(url: str, path: Path, workdir: Path, cert: Path | None) -> tuple[Tree, bool]:
    import requests
    verify = str(cert) if cert else True
    auth = (API_KEY, "")
    r = requests.post(f"{url}/api/v1/samples/init_upload", auth=auth, timeout=30, verify=verify,
                      json={"filename": path.name, "size": path.stat().st_size, "upload_type": "standard"})
    r.raise_for_status()
    init = r.json()
    argv = ["curl", "-sS", "-o", os.devnull, "-w", "%{http_code}"]
    if cert:
        argv += ["--cacert", str(cert)]
    for name, value in init["additional_fields"].items():
        argv += ["--form-string", f"{name}={value}"]
    argv += ["-F", f"file=@{path}", init["upload_url"]]
    t = Tree(argv, env_for(cert))
    ok = t.proc.returncode == 0 and t.stdout.strip() == "201"
    if ok:
        c = requests.post(f"{url}/api/v1/samples/confirm_upload", auth=auth, timeout=30, verify=verify,
                          json={"sample_id": init["sample_id"], "upload_type": "standard"})
        ok = c.status_code == 200
    return t, ok


def one(tool: str, url: str, path: Path, workdir: Path, cert: Path | None, occ_python: str,
        before: Path | None = None) -> dict:
    warm(path)
    if tool == "seqdrop":
        t, ok = run_seqdrop(url, path, workdir, cert)
    elif tool == "seqdrop-before":
        t, ok = run_seqdrop(url, path, workdir, cert, str(before / ".venv" / "bin" / "seqdrop"))
    elif tool == "official":
        t, ok = run_official(url, path, workdir, cert, occ_python)
    else:
        t, ok = run_curl(url, path, workdir, cert)
    if not ok:
        eprint(f"  {tool} FAILED (exit {t.proc.returncode}): {t.stdout[-400:]} {t.stderr[-1500:]}")
    size = path.stat().st_size
    return {"tool": tool, "ok": ok, "wall_s": t.wall_s, "mb_s": size / 1e6 / t.wall_s,
            "cpu_s_per_gib": t.cpu_s / (size / GiB), "tree_rss_mib": t.peak_tree_kib / 1024,
            "max_rss_mib": t.peak_one_kib / 1024, "load": os.getloadavg()[0]}


def summarise(results: list[dict], cases: list[tuple[str, str, Path]]) -> tuple[list[list[object]], list[dict]]:
    rows, summary = [], []
    for kind, scheme, path in cases:
        med: dict[str, dict] = {}
        for tool in REPORTED:
            good = [r for r in results if (r["kind"], r["scheme"], r["tool"]) == (kind, scheme, tool) and r["ok"]]
            runs = [r for r in results if (r["kind"], r["scheme"], r["tool"]) == (kind, scheme, tool)]
            if good:
                med[tool] = {k: statistics.median(r[k] for r in good) for k in ("mb_s", "cpu_s_per_gib")}
                med[tool].update(tree_rss_mib=max(r["tree_rss_mib"] for r in good),
                                 max_rss_mib=max(r["max_rss_mib"] for r in good), runs=f"{len(good)}/{len(runs)}")
        official = med.get("official")
        for tool, m in med.items():
            ratio = m["mb_s"] / official["mb_s"] if official else None
            rows.append([kind, scheme, tool, f"{m['mb_s']:.0f}", f"{m['cpu_s_per_gib']:.2f}",
                         f"{m['tree_rss_mib']:.0f}", f"{m['max_rss_mib']:.0f}",
                         f"{ratio:.2f}" if ratio else "-", m["runs"]])
            summary.append({"kind": kind, "scheme": scheme, "tool": tool, "file": path.name, **m,
                            "speed_vs_official": ratio})
    return rows, summary


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-gib", type=float, default=1.0)
    p.add_argument("--big-gib", type=float, default=4.0, help="one run of each client on a plain file this "
                                                               "large, HTTPS (0: none)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="64 MiB, one run, no big file")
    p.add_argument("--schemes", default="http,https")
    p.add_argument("--kinds", default="plain,gz")
    p.add_argument("--tools", default=",".join(TOOLS))
    p.add_argument("--occ-venv", default="/tmp/occ", help="virtualenv with `pip install onecodex`")
    p.add_argument("--before", type=Path, help="another checkout with its own .venv (e.g. `git archive "
                                                   "COMMIT | tar -x -C DIR`, venv copied, `pip install -e`): "
                                                   "its seqdrop runs in the same turns as 'seqdrop-before'")
    p.add_argument("--json", type=Path, help="also write the raw results here")
    args = p.parse_args(argv)
    if args.quick:
        args.size_gib, args.repeat, args.big_gib = 1 / 16, 1, 0.0
    return args


def run_cases(args: argparse.Namespace, cases: list[tuple[str, str, Path]], tools: list[str], workdir: Path,
              cert: tuple[Path, Path], schemes: list[str]) -> list[dict]:
    """Every client on every case, in turns; one server process per scheme."""
    occ_python = str(Path(args.occ_venv) / "bin" / "python")
    sinks = {s: Sink(workdir / "md5s.json", cert if s == "https" else None) for s in schemes}
    results: list[dict] = []
    try:
        for kind, scheme, path in cases:
            for rep in range(1 if kind == "big" else args.repeat):
                for tool in tools:
                    r = one(tool, sinks[scheme].url, path, workdir, cert[0] if scheme == "https" else None,
                            occ_python, args.before)
                    r.update(kind=kind, scheme=scheme, rep=rep)
                    results.append(r)
                    eprint(f"  {kind:5} {scheme:5} {tool:8} {'ok ' if r['ok'] else 'FAIL'} {r['mb_s']:6.0f} MB/s "
                           f"{r['cpu_s_per_gib']:5.2f} CPU s/GiB  tree RSS {r['tree_rss_mib']:4.0f} MiB  "
                           f"load {r['load']:.2f}")
    finally:
        for s in sinks.values():
            s.stop()
    return results


def report(results: list[dict], cases: list[tuple[str, str, Path]], files: dict[str, Path], repeat: int) -> dict:
    gzip_t = None
    if "gz" in files and shutil.which("gzip"):
        warm(files["gz"])
        gzip_t = Tree(["gzip", "-t", str(files["gz"])], dict(os.environ)).cpu_s
    rows, summary = summarise(results, cases)
    print()
    print(table(["file", "scheme", "client", "MB/s", "CPU s/GiB", "peak RSS tree MiB", "peak RSS one process MiB",
                 "speed × official", "ok runs"], rows))
    sizes = {k: f"{files[k].name} {files[k].stat().st_size / 1e6:,.0f} MB" for k in files}
    print(f"\nfiles: {sizes}. Median of {repeat} runs (big: one run); MB/s = file bytes / wall time; "
          f"CPU s per GiB of file, client plus reaped descendants. {load()} at the end.")
    if gzip_t is not None:
        print(f"`gzip -t {files['gz'].name}`: {gzip_t:.2f} CPU s "
              f"({gzip_t / (files['gz'].stat().st_size / GiB):.2f} per GiB of .gz, "
              f"{gzip_t / (files['plain'].stat().st_size / GiB):.2f} per GiB of FASTQ inside)")
    return {"machine": machine(), "results": results, "summary": summary, "gzip_t_cpu_s": gzip_t}


def main(argv: list[str]) -> int:
    args = parse(argv)
    tools = [t for t in args.tools.split(",") if t] + (["seqdrop-before"] if args.before else [])
    if "official" in tools and not (Path(args.occ_venv) / "bin" / "python").exists():
        raise SystemExit(f"no official client at {args.occ_venv}: python -m venv {args.occ_venv} && "
                         f"{args.occ_venv}/bin/pip install onecodex (or --tools seqdrop,curl)")
    # Byte-compile seqdrop as an installed wheel would be: an editable checkout run with
    # PYTHONDONTWRITEBYTECODE (as here) compiles every module again at each start, 0.15 CPU s per run.
    for root in [HERE.parent] + ([args.before] if args.before else []):
        subprocess.run([PYTHON, "-m", "compileall", "-q", str(root / "daemon")], check=True, stdout=subprocess.DEVNULL,
                       env={k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"})
    files = make_files(int(args.size_gib * GiB), args.big_gib)
    workdir = Path(tempfile.mkdtemp(prefix="seqdrop-bench-cpu-"))
    (workdir / "md5s.json").write_text(json.dumps({path.name: md5_of(path) for path in files.values()}))
    cert = make_cert(workdir)
    eprint(f"seqdrop CPU benchmark, {now_utc()}\n{machine()}\n{load()} at start")
    schemes = [s for s in args.schemes.split(",") if s]
    cases = [(k, s, files[k]) for k in args.kinds.split(",") if k for s in schemes]
    if args.big_gib and "https" in schemes:
        cases.append(("big", "https", files["big"]))
    try:
        results = run_cases(args, cases, tools, workdir, cert, schemes)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    raw = report(results, cases, files, args.repeat)
    if args.json:
        args.json.write_text(json.dumps(raw, indent=1))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
