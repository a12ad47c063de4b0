"""Population screen benchmark: patients per second against the parse floor, and peak memory.

On a generated export (benchmarks/make_population.py; every packaged trial), in one run:

- the parse floor: ``orjson.loads`` of every line of every file, cyclic GC off, in this process;
- ``cds-service screen`` with the local engine, 1 and 2 workers, and with ``--engine spark``
  (``local[2]``), each as a separate process: wall time, patients/s, and peak RSS of the whole
  process tree (the screen, its workers or Spark's JVM), sampled from /proc every 0.1 s;
- optionally (``--big N``) the local engine on a second, larger export, for peak RSS against size.

Targets (reported, not enforced): local screen ≤ 3× the parse floor per core; 2 workers ≥ 1.7×
one worker; Spark local mode within 1.5× of the local engine; the same peak RSS at 10,000 and
50,000 patients.

    .venv/bin/python benchmarks/screen_bench.py                      # 10,000 patients
    .venv/bin/python benchmarks/screen_bench.py --big 50000          # and RSS at 50,000
    .venv/bin/python benchmarks/screen_bench.py --patients 2000 --skip-spark
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.make_population import generate  # noqa: E402

CLI = [sys.executable, "-m", "cds_service.cli"]
AS_OF = "2026-06-01"


def parse_floor(export: Path) -> tuple[float, float, int]:
    """Wall and CPU seconds to orjson.loads every line (reading included), GC off; lines."""
    lines = 0
    was = gc.isenabled()
    gc.disable()
    try:
        start, cpu = time.perf_counter(), time.process_time()
        for path in sorted(export.glob("*.ndjson")):
            with open(path, "rb") as f:
                for line in f:
                    orjson.loads(line)
                    lines += 1
        return time.perf_counter() - start, time.process_time() - cpu, lines
    finally:
        if was:
            gc.enable()


def _tree(root: int) -> list[int]:
    """A process and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, ()))
    return found


def _sample(pid: int) -> tuple[int, float]:
    """(resident bytes, CPU seconds so far) of one process; zeros if it is gone."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0, 0.0
    return rss, cpu


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_screen(export: Path, out: Path, *extra: str) -> tuple[float, float, int, int]:
    """Wall seconds, CPU seconds (the screen and every process it waited for), peak tree RSS
    (bytes) and exit code of one ``cds-service screen``."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [*CLI, "screen", str(export), "--out", str(out), "--as-of", AS_OF, *extra]
    start, cpu = time.perf_counter(), _children_cpu()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    peak = [0]
    cpu_seen: dict[int, float] = {}  # every process of the tree, its CPU when last seen
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            total = 0
            for pid in _tree(proc.pid):
                rss, used = _sample(pid)
                total += rss
                cpu_seen[pid] = max(cpu_seen.get(pid, 0.0), used)
            peak[0] = max(peak[0], total)
            stop.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = proc.communicate()
    seconds = time.perf_counter() - start
    stop.set()
    sampler.join()
    if proc.returncode != 0:
        print(err.decode(errors="replace")[-2000:], file=sys.stderr)
    # what the screen waited for is exact; the sampled tree also counts processes nobody waits for
    # (Spark's JVM and its Python workers), less their last 0.1 s
    waited = _children_cpu() - cpu
    return seconds, max(waited, sum(cpu_seen.values())), peak[0], proc.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=10_000)
    parser.add_argument("--big", type=int, default=0, help="also peak RSS on an export of this size")
    parser.add_argument("--work", type=Path, help="where exports and outputs go (default: a temp dir)")
    parser.add_argument("--skip-spark", action="store_true")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="screen-bench-"))
    export = work / f"pop{args.patients}"
    if not export.exists():
        t = time.perf_counter()
        generate(args.patients, export, seed=args.seed)
        print(f"generated {args.patients:,} patients in {time.perf_counter() - t:.1f} s")
    size = sum(p.stat().st_size for p in export.glob("*.ndjson"))
    floor, floor_cpu, lines = parse_floor(export)
    print(f"export: {args.patients:,} patients, {lines:,} lines, {size / 1e6:,.0f} MB; every packaged trial")
    print(f"parse floor (orjson.loads of every line, GC off): {floor:.2f} s wall, {floor_cpu:.2f} s CPU")
    load = os.getloadavg()[0]
    print(f"load average before the runs: {load:.1f} (other work skews wall times)\n")
    runs: dict[str, tuple[float, float, int, int]] = {}
    runs["local, 1 worker"] = run_screen(export, work / "out-1", "--workers", "1")
    runs["local, 2 workers"] = run_screen(export, work / "out-2", "--workers", "2")
    if not args.skip_spark:
        runs["spark local[2]"] = run_screen(export, work / "out-spark", "--engine", "spark", "--workers", "2")
    print("| run | wall s | patients/s | CPU s | CPU / parse-floor CPU | peak RSS MB | exit |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, (seconds, cpu_s, rss, code) in runs.items():
        rate = args.patients / seconds
        ratio = cpu_s / floor_cpu
        mb = rss / 1e6
        print(f"| {name} | {seconds:.1f} | {rate:,.0f} | {cpu_s:.1f} | {ratio:.2f} | {mb:,.0f} | {code} |")
    one, two = runs["local, 1 worker"][0], runs["local, 2 workers"][0]
    one_cpu = runs["local, 1 worker"][1] / floor_cpu
    print(f"\nlocal 1 worker / parse floor: {one / floor:.2f} wall, {one_cpu:.2f} CPU (target ≤ 3)")
    print(f"2 workers speed-up over 1: {one / two:.2f}× (target ≥ 1.7)")
    if "spark local[2]" in runs:
        print(f"spark local[2] / local 2 workers: {runs['spark local[2]'][0] / two:.2f} (target ≤ 1.5)")
    same = (work / "out-1" / "results.csv").read_bytes() == (work / "out-2" / "results.csv").read_bytes()
    print(f"results.csv identical for 1 and 2 workers: {same}")
    if args.big:
        big = work / f"pop{args.big}"
        if not big.exists():
            generate(args.big, big, seed=args.seed)
        seconds, _, rss, code = run_screen(big, work / "out-big", "--workers", "2")
        small_rss = runs["local, 2 workers"][2]
        print(
            f"\npeak RSS, local 2 workers: {small_rss / 1e6:,.0f} MB at {args.patients:,} patients, "
            f"{rss / 1e6:,.0f} MB at {args.big:,} ({seconds:.1f} s, {args.big / seconds:,.0f} patients/s,"
            f" exit {code})"
        )
    print(f"\nwork directory: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
