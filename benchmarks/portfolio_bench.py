"""Portfolio benchmark: the cost of many trials against one, in-process and through the hook.

A site runs many trials at once. This builds catalogs of 1, 10, 50 and 200 trials — the packaged
trials, then synthetic copies of them under new ids (``COPY0001`` ...), all reading the packaged
value sets — and measures, for a typical patient and the heavy one:

* **in-process**: ``from_bytes(bundle)`` + ``evaluate(every trial)``, cyclic GC off, median of
  ``--repeat`` runs, and its ratio to the 1-trial catalog;
* **hook**: ``cds-service serve`` (one worker) started on each catalog, a patient-view call with
  full prefetch, median client-side latency over ``--calls`` calls, against the **parse floor**:
  ``orjson.loads`` of the same request body in a fresh process with the cyclic GC off.

Targets (issue 7): 50 trials ≤ 2× one trial for a typical patient, in-process and through the hook;
the heavy patient's hook ≤ 2× its parse floor.

    .venv/bin/python benchmarks/portfolio_bench.py [--shared DIR] [--sizes 1,10,50,200] [--repeat 15]
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import orjson
import requests
import yaml

REPO = Path(__file__).resolve().parents[1]
AS_OF = date(2026, 6, 1)
TYPICAL = "Madalyn_Frami"
FALLBACK = "Liz_Conn"
HEAVY = "heavy-7138-entries.json"


def copies_dir(size: int, root: Path, source: Path, only: str | None = None) -> Path:
    """A mappings directory of ``size`` trials: the real ones (or only ``only``), then copies under
    new ids."""
    target = root / f"trials-{only or 'all'}-{size}"
    (target / "trials").mkdir(parents=True)
    (target / "valuesets").symlink_to(source.resolve() / "valuesets")
    originals = sorted((source / "trials").glob(f"{only or '*'}.yaml"))
    for index in range(size):
        original = originals[index % len(originals)]
        data = yaml.safe_load(original.read_text(encoding="utf-8"))
        if index >= len(originals):
            data["trial"] = f"COPY{index:04d}"
        (target / "trials" / f"{data['trial']}.yaml").write_text(yaml.safe_dump(data, allow_unicode=True))
    return target


def median_ms(action: Callable[[], object], repeat: int) -> float:
    action()  # warm-up
    times = []
    for _ in range(repeat):
        gc.collect()
        gc.disable()
        start = time.perf_counter()
        result = action()
        times.append((time.perf_counter() - start) * 1000)
        gc.enable()
        del result
    return statistics.median(times)


def in_process(mappings: Path, bundle: bytes, repeat: int) -> float:
    from cds_service.engine.evaluate import evaluate
    from cds_service.engine.loader import load_catalog
    from cds_service.record import from_bytes

    catalog = load_catalog(mappings)
    return median_ms(lambda: evaluate(catalog, from_bytes(bundle), as_of=AS_OF), repeat)


def parse_floor(body: bytes, repeat: int) -> float:
    """orjson.loads of the body in a fresh process, cyclic GC off: what reading it costs at least."""
    script = (
        "import gc, orjson, statistics, sys, time\n"
        "data = sys.stdin.buffer.read(); gc.disable(); orjson.loads(data); times = []\n"
        f"for _ in range({repeat}):\n"
        "    start = time.perf_counter(); parsed = orjson.loads(data)\n"
        "    times.append((time.perf_counter() - start) * 1000); del parsed\n"
        "print(statistics.median(times))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], input=body, capture_output=True, check=True)
    return float(out.stdout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def hook_latency(mappings: Path, bodies: dict[str, bytes], calls: int, workdir: Path) -> dict[str, float]:
    """Median client-side latency of each body through a served catalog (one worker)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
    env |= {
        "CDS_ALLOW_UNSIGNED": "true",
        "CDS_MAPPINGS_DIR": str(mappings),
        "CDS_FEEDBACK_DB_URL": f"sqlite:///{workdir / f'f-{port}.sqlite3'}",
        "CDS_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
    }
    command = [str(Path(sys.executable).with_name("cds-service")), "serve", "--port", str(port)]
    log = open(workdir / f"serve-{port}.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(base, process)
        url = f"{base}/cds-services/trial-eligibility"
        results = {}
        with requests.Session() as session:
            for name, body in bodies.items():
                times = []
                for index in range(calls + 2):
                    start = time.perf_counter()
                    with session.post(
                        url, data=body, headers={"Content-Type": "application/json"}, timeout=120
                    ) as r:
                        r.raise_for_status()
                        _ = r.content
                    if index >= 2:  # two warm-up calls
                        times.append((time.perf_counter() - start) * 1000)
                results[name] = statistics.median(times)
        return results
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
        log.close()


def _wait(base: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the service exited; see its log in the work directory")
        try:
            if requests.get(f"{base}/cds-services", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            time.sleep(0.3)
    raise RuntimeError("the service did not start")


def patients(shared: Path) -> dict[str, Path]:
    synthea = shared / "data" / "synthea"
    found = {}
    typical = sorted(synthea.glob(f"{TYPICAL}_*.json")) or sorted(
        (REPO / "tests/data/synthea").glob(f"{FALLBACK}_*.json")
    )
    found["typical"] = typical[0]
    if (synthea / HEAVY).is_file():
        found["heavy"] = synthea / HEAVY
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    parser.add_argument("--sizes", default="1,10,50,200")
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--calls", type=int, default=15)
    parser.add_argument("--skip-hook", action="store_true")
    parser.add_argument(
        "--series",
        default="all,NCT06888960",
        help="comma-separated: 'all' (the packaged trials, then copies) and/or one trial id (its copies)",
    )
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    sys.path.insert(0, str(REPO))
    from cds_service.demo_request import hook_request
    from cds_service.engine.loader import DEFAULT_MAPPINGS, load_catalog
    from cds_service.fhir.queries import prefetch_templates

    people = patients(args.shared)
    raw = {name: path.read_bytes() for name, path in people.items()}
    templates = prefetch_templates(load_catalog())
    bodies = {name: orjson.dumps(hook_request(orjson.loads(data), templates)) for name, data in raw.items()}
    floors = {name: parse_floor(body, args.repeat) for name, body in bodies.items()}
    print(f"patients: {', '.join(f'{n}={p.name}' for n, p in people.items())}; nproc {os.cpu_count()}")
    print("parse floor (orjson.loads of the hook body, fresh process, GC off): "
          + ", ".join(f"{n} {ms:.1f} ms" for n, ms in floors.items()))  # fmt: skip
    workdir = Path(tempfile.mkdtemp(prefix="cds-portfolio-bench-"))
    try:
        for series in args.series.split(","):
            only = None if series == "all" else series
            title = "the packaged trials, then copies" if only is None else f"copies of {only}"
            print(f"\n{title}:")
            run_series(args, sizes, workdir, only, raw, bodies, floors, DEFAULT_MAPPINGS)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def run_series(
    args: argparse.Namespace,
    sizes: list[int],
    workdir: Path,
    only: str | None,
    raw: dict[str, bytes],
    bodies: dict[str, bytes],
    floors: dict[str, float],
    source: Path,
) -> None:
    base: dict[str, float] = {}
    hook_base: dict[str, float] = {}
    print("\n| trials | patient | in-process ms | × 1 trial | hook ms | × 1 trial | hook / parse floor |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for size in sizes:
        mappings = copies_dir(size, workdir, source, only)
        inproc = {name: in_process(mappings, data, args.repeat) for name, data in raw.items()}
        hooks = {} if args.skip_hook else hook_latency(mappings, bodies, args.calls, workdir)
        for name in raw:
            base.setdefault(name, inproc[name])
            ratio = inproc[name] / base[name]
            hook_ms = hooks.get(name)
            if hook_ms is not None:
                hook_base.setdefault(name, hook_ms)
            hook_text = (
                f"{hook_ms:.1f} | {hook_ms / hook_base[name]:.2f} | {hook_ms / floors[name]:.2f}"
                if hook_ms
                else "— | — | —"
            )
            print(f"| {size} | {name} | {inproc[name]:.2f} | {ratio:.2f} | {hook_text} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
