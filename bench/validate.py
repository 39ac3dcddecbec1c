"""Benchmark daemon/checks/validate.py against the system's own integrity checkers.

    .venv/bin/python bench/validate.py [--size-gib 1] [--quick] [--out bench/out/validate] [--against DIR]

Generates (once; reused while the size matches) an Illumina-like FASTQ of --size-gib GiB
(150 bp reads, NovaSeq-style binned qualities, fixed seed), its gzip -1 copy (the BCL Convert
default level), and 64 MiB side files (wrapped FASTQ, FASTA, bzip2), then times, each best of
--repeat runs, with the files in the page cache:
  gzip -t and md5sum  vs  validate_path() on the .fastq.gz   (target ratio >= 1.0 vs gzip -t)
  md5sum  vs  validate_path() on the plain FASTQ              (target >= 1500 MB/s of plain input)
  and, for the record, bzip2 -t and gzip -t (BGZF) vs the validator, the wrapped-FASTQ
  slow path, FASTA, and the peak memory of a fresh process validating each file.
MB/s is bytes of the file as on disk per second (best run); text MB/s is decompressed bytes per
second; MB per CPU s is the file's bytes per CPU second of the median run (the tool's own CPU, which
other processes' load on a shared machine changes far less than the wall time); "spread" is how much slower the median and the slowest run were than the best, which
shows how busy the machine was (the load average is printed before and after).

--against DIR (a copy of another commit, e.g. `git archive bab5de9 | tar -x -C DIR`) instead
times DIR's validate_path and this checkout's in turns, run after run, on the plain FASTQ and its
.gz: on a shared machine whose load changes by the minute, that is the fair before/after.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import os
import random
import resource
import shutil
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from daemon.checks.validate import validate_path  # noqa: E402

MiB = 1 << 20
ACGT = bytes.maketrans(bytes(range(256)), b"ACGT" * 64)
# NovaSeq bins its qualities to four values; mostly 'F' (Q37).
QUAL = bytes.maketrans(bytes(range(256)), b"F" * 200 + b":" * 30 + b"," * 16 + b"#" * 10)


def make_fastq(path: Path, size: int, *, wrap: int = 0, seed: int = 1) -> None:
    rng = random.Random(seed)
    written, n = 0, 0
    with open(path, "wb") as f:
        while written < size:
            recs = []
            for _ in range(10000):
                n += 1
                seq = rng.randbytes(150).translate(ACGT)
                qual = rng.randbytes(150).translate(QUAL)
                if wrap:
                    seq = b"\n".join(seq[i:i + wrap] for i in range(0, 150, wrap))
                    qual = b"\n".join(qual[i:i + wrap] for i in range(0, 150, wrap))
                recs.append(b"@A00123:8:H5KJ2DSX2:1:%d:%d:%d 1:N:0:ACGTACGT+TTGACCAA\n%s\n+\n%s\n"
                            % (1101 + n % 77, n % 32000, n % 29000, seq, qual))
            block = b"".join(recs)
            f.write(block)
            written += len(block)


def make_fasta(path: Path, size: int, seed: int = 2) -> None:
    rng = random.Random(seed)
    with open(path, "wb") as f:
        for chrom in range(1, 5):
            f.write(b">chr%d synthetic\n" % chrom)
            seq = rng.randbytes(size // 4).translate(ACGT)
            f.write(b"\n".join(seq[i:i + 60] for i in range(0, len(seq), 60)) + b"\n")


def compress(src: Path, dst: Path, tool: str) -> None:
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        if shutil.which(tool):
            subprocess.run([tool, "-1" if tool == "gzip" else "-9", "-c"], stdin=fin, stdout=fout, check=True)
        elif tool == "gzip":
            fout.write(gzip.compress(fin.read(), 1, mtime=0))
        else:
            raise SystemExit(f"{tool} is needed for this benchmark")


def make_bgzf(src: Path, dst: Path) -> None:
    """BGZF as bgzip writes it: 65280-byte blocks, one gzip member each, then the EOF block."""
    def block(data: bytes) -> bytes:
        c = zlib.compressobj(1, zlib.DEFLATED, -15)
        body = c.compress(data) + c.flush()
        return (struct.pack("<4BI2BH2BHH", 31, 139, 8, 4, 0, 0, 255, 6, 66, 67, 2, len(body) + 25)
                + body + struct.pack("<II", zlib.crc32(data), len(data)))
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while data := fin.read(65280):
            fout.write(block(data))
        fout.write(block(b""))


def peak_rss_mb(path: Path) -> float:
    """Peak resident memory of a fresh interpreter that validates path (import included)."""
    code = ("import resource, sys; sys.path.insert(0, sys.argv[2]); "
            "from daemon.checks.validate import validate_path; validate_path(sys.argv[1]); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", code, str(path), str(Path(__file__).resolve().parent.parent)],
                         check=True, capture_output=True, text=True).stdout
    return int(out) / 1024


def cpu_s() -> float:
    """CPU seconds of this process and its waited-for children so far: on a shared machine the CPU a
    run took says more than its wall time, which grows with other processes' load."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timings(repeat: int, fn) -> tuple[list[float], list[float]]:
    """Wall seconds and CPU seconds of repeat runs of fn, each fastest first."""
    times, cpus = [], []
    for _ in range(repeat):
        t, c = time.perf_counter(), cpu_s()
        fn()
        times.append(time.perf_counter() - t)
        cpus.append(cpu_s() - c)
    return sorted(times), sorted(cpus)


def run_tool(args: list[str]) -> None:
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)


def compare_against(root: Path, paths: list[Path], repeat: int) -> None:
    """Time root's validate_path and ours alternately on each path; print best and median MB/s."""
    spec = importlib.util.spec_from_file_location("validate_against", root / "daemon" / "checks" / "validate.py")
    other = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = other      # dataclasses look their module up there
    spec.loader.exec_module(other)
    print(f"\nPython {sys.version.split()[0]}, load average {os.getloadavg()[0]:.2f}; {repeat} turns each\n")
    print("| file | validator | best s | median s | MB/s (best) | MB/s (median) |")
    print("|---|---|---:|---:|---:|---:|")
    for path in paths:
        times: dict[str, list[float]] = {str(root): [], "this checkout": []}
        for _ in range(repeat):
            for name, fn in ((str(root), other.validate_path), ("this checkout", validate_path)):
                t = time.perf_counter()
                fn(path)
                times[name].append(time.perf_counter() - t)
        for name, ts in times.items():
            ts.sort()
            size = path.stat().st_size / 1e6
            print(f"| {path.name} | {name} | {ts[0]:.2f} | {ts[len(ts) // 2]:.2f} | {size / ts[0]:,.0f} | "
                  f"{size / ts[len(ts) // 2]:,.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-gib", type=float, default=1.0)
    ap.add_argument("--quick", action="store_true", help="64 MiB main file, 8 MiB side files: a smoke run")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out" / "validate")
    ap.add_argument("--against", type=Path, help="another commit's copy: time its validator and ours in turns")
    args = ap.parse_args()
    size = 64 * MiB if args.quick else int(args.size_gib * 1024 * MiB)
    side = 8 * MiB if args.quick else 64 * MiB
    args.out.mkdir(parents=True, exist_ok=True)

    plain = args.out / f"reads_{size}.fastq"
    packed = plain.with_name(plain.name + ".gz")
    wrapped = args.out / f"wrapped_{side}.fastq"
    fasta = args.out / f"genome_{side}.fasta"
    small = args.out / f"reads_{side}.fastq"
    small_bz2 = small.with_name(small.name + ".bz2")
    small_bgzf = small.with_name(small.name + ".bgzf.gz")
    t0 = time.perf_counter()
    for path, make in [(plain, lambda p: make_fastq(p, size)), (packed, lambda p: compress(plain, p, "gzip")),
                       (wrapped, lambda p: make_fastq(p, side, wrap=60)), (fasta, lambda p: make_fasta(p, side)),
                       (small, lambda p: make_fastq(p, side, seed=3)), (small_bz2, lambda p: compress(small, p, "bzip2")),
                       (small_bgzf, lambda p: make_bgzf(small, p))]:
        if not path.exists():
            print(f"generating {path.name} ...", file=sys.stderr, flush=True)
            make(path)
    print(f"files ready in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    if args.against:
        compare_against(args.against, [plain, packed], args.repeat)
        return

    rows = []

    def measure(path: Path, tool: str, fn, text_bytes: int, ref: float | None, ref_name: str) -> float:
        for _ in range(1):      # warm the page cache
            with open(path, "rb", buffering=0) as f:
                while f.read(8 * MiB):
                    pass
        times, cpus = timings(args.repeat, fn)
        secs = times[0]
        spread = f"+{times[len(times) // 2] / secs - 1:.0%} / +{times[-1] / secs - 1:.0%}"
        mb_s = path.stat().st_size / secs / 1e6
        cpu_mb_s = path.stat().st_size / cpus[len(cpus) // 2] / 1e6
        rows.append((path.name, path.stat().st_size / 1e6, tool, secs, spread, mb_s, text_bytes / secs / 1e6,
                     cpu_mb_s, f"{mb_s / ref:.2f} vs {ref_name}" if ref else ""))
        return mb_s

    n_plain = plain.stat().st_size
    load_before = os.getloadavg()
    gzip_t = measure(packed, "gzip -t", lambda: run_tool(["gzip", "-t", str(packed)]), n_plain, None, "")
    measure(packed, "md5sum", lambda: run_tool(["md5sum", str(packed)]), n_plain, None, "")
    measure(packed, "seqdrop validate", lambda: validate_path(packed), n_plain, gzip_t, "gzip -t")
    md5 = measure(plain, "md5sum", lambda: run_tool(["md5sum", str(plain)]), n_plain, None, "")
    measure(plain, "seqdrop validate", lambda: validate_path(plain), n_plain, md5, "md5sum")
    rows[-1] = (*rows[-1][:-1], rows[-1][-1] + f"; {rows[-1][5] / 1500:.2f} vs 1500 MB/s target")
    if shutil.which("bzip2"):
        bz_t = measure(small_bz2, "bzip2 -t", lambda: run_tool(["bzip2", "-t", str(small_bz2)]), side, None, "")
        measure(small_bz2, "seqdrop validate", lambda: validate_path(small_bz2), side, bz_t, "bzip2 -t")
    bgzf_t = measure(small_bgzf, "gzip -t", lambda: run_tool(["gzip", "-t", str(small_bgzf)]), side, None, "")
    measure(small_bgzf, "seqdrop validate", lambda: validate_path(small_bgzf), side, bgzf_t, "gzip -t")
    measure(wrapped, "seqdrop validate (wrapped: exact slow path)", lambda: validate_path(wrapped),
            wrapped.stat().st_size, None, "")
    measure(fasta, "seqdrop validate", lambda: validate_path(fasta), fasta.stat().st_size, None, "")

    load_after = os.getloadavg()
    print(f"\nPython {sys.version.split()[0]}, {os.cpu_count()} CPUs, best of {args.repeat}; load average "
          f"{load_before[0]:.2f} before, {load_after[0]:.2f} after\n")
    print("| file | size MB | tool | seconds | spread (median / slowest) | MB/s | text MB/s | MB per CPU s "
          "(median) | ratio |")
    print("|---|---:|---|---:|---|---:|---:|---:|---|")
    for name, mb, tool, secs, spread, mb_s, text_mb_s, cpu_mb_s, ratio in rows:
        print(f"| {name} | {mb:,.0f} | {tool} | {secs:.2f} | {spread} | {mb_s:,.0f} | {text_mb_s:,.0f} | "
              f"{cpu_mb_s:,.0f} | {ratio} |")
    print("\nPeak RSS of a fresh interpreter validating (memory does not grow with file size):")
    for path in (packed, plain, small, fasta):
        print(f"- {path.name}: {peak_rss_mb(path):.0f} MB")


if __name__ == "__main__":
    main()
