"""Load benchmark of the CDS Hooks service, served as a separate process and called over loopback.

Starts ``cds-service serve`` on a free 127.0.0.1 port (unsigned calls allowed, a throw-away feedback
database), waits until ``GET /cds-services`` answers, and from this process sends bounded loads to
``POST /cds-services/trial-eligibility``. Latency is measured client-side (``time.perf_counter``
around each ``requests`` call, one ``requests.Session`` per client thread, keep-alive); the
service's own timings are read from its log (``AccessLog``: request in to response out; ``run_hook``:
gather + record + engine + cards) and shown beside them.

Scenarios:

a. *typical*: a typical Synthea patient (Madalyn_Frami by default) with full prefetch, at
   concurrency 1, 8 and 32, with ``--workers 1`` and again with ``--workers 2``. Target: p99 ≤ 100 ms
   at concurrency 8.
b. *heavy*: ``heavy-7138-entries.json`` as prefetch (4.6 MB request body), concurrency 1, against
   ``orjson.loads`` of the same request body timed in this process, interleaved. Target:
   hook / parse ≤ 2 (medians).
c. *no prefetch*: the service fetches the typical patient from sekmet-fhir (started here, the
   patient loaded into it) with a bearer token, against "the FHIR fetches alone": the same filled
   queries run here with ``FhirClient(...).fetch_all(queries)`` (page size 200, 6 parallel
   searches: what the service does), a new client each time as the service makes one per call,
   interleaved. Target: hook / fetches ≤ 1.3 (medians).

Each measured run is preceded by a warm-up and bounded by a request count and a number of seconds.
Only 127.0.0.1 is ever contacted. The prefetch is built from the patient's Bundle with
``tests/support/prefetch.py`` (every Observation under ``observations``, not only the coded ones an
EHR would filter to: a heavier prefetch than a real EHR would send).

    .venv/bin/python benchmarks/load_bench.py [--shared DIR] [--patient NAME] [--workers 1,2]
        [--concurrency 1,8,32] [--requests N] [--seconds S] [--heavy-requests N] [--fhir-requests N]

Targets are reported, not enforced: exit status 0 when every call succeeded, 1 when some call
failed, 2 when the service could not be started.
"""

from __future__ import annotations

import argparse
import functools
import gc
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import requests

REPO = Path(__file__).resolve().parents[1]
SERVICE = "trial-eligibility"
DEFAULT_PATIENT = "Madalyn_Frami"
FALLBACK_PATIENT = "Asa_Hermiston"
HEAVY = "heavy-7138-entries.json"
FHIR_TOKEN = "load-bench-token"
TARGET_P99_MS = 100.0
TARGET_HEAVY = 2.0
TARGET_FHIR = 1.3
HOOK_LOG = re.compile(rb"hook " + SERVICE.encode() + rb": .* in (\d+) ms")
ACCESS_LOG = re.compile(rb"POST /cds-services/" + SERVICE.encode() + rb" (\d{3}) (\d+) ms")


# --- statistics ------------------------------------------------------------------------------


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest rank (p99 of 400 samples is the 396th smallest)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def median_or_nan(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


@dataclass
class Result:
    scenario: str
    workers: int
    concurrency: int
    latencies: list[float]  # seconds, successful calls only
    errors: int
    wall: float  # seconds from the first request sent to the last answer received
    server_total: list[float] = field(default_factory=list)  # ms, from the service's access log
    server_hook: list[float] = field(default_factory=list)  # ms, from run_hook's log line

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.wall if self.wall > 0 else float("nan")

    def p(self, pct: float) -> float:
        return percentile(self.latencies, pct) * 1000 if self.latencies else float("nan")


HEADER = (
    f"{'scenario':<34} {'wkr':>3} {'conc':>4} {'reqs':>5} {'err':>3} {'p50 ms':>8} {'p95 ms':>8} "
    f"{'p99 ms':>8} {'req/s':>7} {'srv p50':>8} {'hook p50':>8}"
)


def row(r: Result) -> str:
    return (
        f"{r.scenario:<34} {r.workers:>3} {r.concurrency:>4} {len(r.latencies):>5} {r.errors:>3} "
        f"{r.p(50):>8.1f} {r.p(95):>8.1f} {r.p(99):>8.1f} {r.throughput:>7.1f} "
        f"{_ms_or_na(r.server_total):>8} {_ms_or_na(r.server_hook):>8}"
    )


def _ms_or_na(values: Sequence[float]) -> str:
    return f"{statistics.median(values):.0f}" if values else "n/a"


# --- the service under test --------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Service:
    """``cds-service serve`` in its own process group; ``stop()`` ends it (and its workers)."""

    def __init__(self, *, workers: int, workdir: Path, fhir_base: str | None) -> None:
        exe = Path(sys.executable).with_name("cds-service")
        command = str(exe) if exe.exists() else shutil.which("cds-service")
        if command is None:
            raise RuntimeError("the cds-service command is not installed (pip install -e .)")
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"service-w{workers}-{self.port}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
        env |= {
            "CDS_ALLOW_UNSIGNED": "true",
            "CDS_FEEDBACK_DB_URL": f"sqlite:///{workdir / 'feedback.sqlite3'}",
            "CDS_ALLOW_HTTP_LOOPBACK": "true",
            "PYTHONUNBUFFERED": "1",
        }
        if fhir_base:
            env["CDS_FHIR_SERVER_ALLOWLIST"] = fhir_base
        argv = [command, "serve", "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(workers)]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def wait_ready(self, timeout: float = 90.0) -> dict[str, Any]:
        """The discovery document, once the service answers it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the service exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with requests.get(f"{self.base}/cds-services", timeout=2) as r:
                    if r.status_code == 200:
                        doc: dict[str, Any] = r.json()
                        return doc
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the service did not answer within {timeout:g} s:\n{self.log_tail()}")

    def log_size(self) -> int:
        return self.log_path.stat().st_size

    def timings_since(self, offset: int) -> tuple[list[float], list[float]]:
        """(access-log ms of 200 answers, run_hook ms) logged after ``offset``."""
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            text = f.read()
        total = [float(m[2]) for m in ACCESS_LOG.finditer(text) if m[1] == b"200"]
        hook = [float(m[1]) for m in HOOK_LOG.finditer(text)]
        return total, hook

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # uvicorn's supervisor stops its workers
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)  # the group this script created
                self.process.wait(timeout=5)


# --- requests --------------------------------------------------------------------------------


def hook_body(patient: str, prefetch: dict[str, Any] | None, fhir: tuple[str, str] | None = None) -> bytes:
    body: dict[str, Any] = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/1", "patientId": patient},
    }
    if prefetch is not None:
        body["prefetch"] = prefetch
    if fhir is not None:
        body["fhirServer"], token = fhir
        body["fhirAuthorization"] = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "patient/*.read",
            "subject": "cds",
        }
    return orjson.dumps(body)


HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}


def call(session: requests.Session, url: str, body: bytes) -> tuple[float, int]:
    """(seconds, status) of one hook call, the answer fully read."""
    start = time.perf_counter()
    with session.post(url, data=body, headers=HEADERS, timeout=60) as r:
        content = r.content
        status = r.status_code
    elapsed = time.perf_counter() - start
    if status == 200 and b'"cards"' not in content:
        status = -1
    return elapsed, status


def check_once(url: str, body: bytes, what: str) -> None:
    with requests.Session() as s, s.post(url, data=body, headers=HEADERS, timeout=120) as r:
        if r.status_code != 200 or "cards" not in r.json():
            raise RuntimeError(f"{what}: HTTP {r.status_code}: {r.text[:500]}")


def load(
    url: str,
    body: bytes,
    *,
    concurrency: int,
    requests_max: int,
    seconds: float,
    warmup: int,
    on_start: Callable[[], None] = lambda: None,
) -> tuple[list[float], int, float]:
    """``concurrency`` threads, one Session each, share ``requests_max`` calls within ``seconds``.

    Each thread first makes ``warmup`` calls on its own connection (not counted); once all have,
    ``on_start()`` runs and they start together. Returns (latencies of successful calls, failed
    calls, wall time).
    """
    barrier = threading.Barrier(concurrency + 1)
    lock = threading.Lock()
    tickets = [requests_max]
    latencies: list[float] = []
    errors = [0]
    deadline = [0.0]
    go = threading.Event()

    def take() -> bool:
        with lock:
            if tickets[0] <= 0 or time.perf_counter() >= deadline[0]:
                return False
            tickets[0] -= 1
            return True

    def client() -> None:
        with requests.Session() as session:
            for _ in range(warmup):
                call(session, url, body)
            barrier.wait()
            go.wait()
            mine: list[float] = []
            failed = 0
            while take():
                try:
                    elapsed, status = call(session, url, body)
                except requests.RequestException:
                    failed += 1
                    continue
                if status == 200:
                    mine.append(elapsed)
                else:
                    failed += 1
            with lock:
                latencies.extend(mine)
                errors[0] += failed

    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    barrier.wait()  # every client has warmed up its connection
    on_start()
    started = time.perf_counter()
    deadline[0] = started + seconds
    go.set()
    for t in threads:
        t.join()
    return latencies, errors[0], time.perf_counter() - started


def timed(action: Callable[[], object]) -> float:
    """Seconds taken by ``action`` (after a gc.collect()); its result is freed after the clock stops."""
    gc.collect()
    start = time.perf_counter()
    result = action()
    elapsed = time.perf_counter() - start
    del result
    return elapsed


# --- data ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Patient:
    name: str
    id: str
    bundle: dict[str, Any]
    prefetch: dict[str, Any]


def find_bundle(directory: Path, name: str) -> Path | None:
    found = sorted(directory.glob(f"{name}*.json"))
    return found[0] if found else None


def patient_from(path: Path, templates: dict[str, str]) -> Patient:
    from tests.support.prefetch import patient_id, prefetch_from_bundle

    bundle = orjson.loads(path.read_bytes())
    name = path.stem if path.name == HEAVY else "_".join(path.stem.split("_")[:2])
    return Patient(name, patient_id(bundle), bundle, prefetch_from_bundle(bundle, templates))


# --- scenarios -------------------------------------------------------------------------------


def run_typical(service: Service, workers: int, typical: Patient, args: argparse.Namespace) -> list[Result]:
    url = f"{service.base}/cds-services/{SERVICE}"
    body = hook_body(typical.id, typical.prefetch)
    check_once(url, body, "typical patient")
    label = f"(a) {typical.name} {len(body) / 1000:.0f} kB"
    results = []
    for concurrency in args.concurrency:
        offsets: list[int] = []
        latencies, errors, wall = load(
            url,
            body,
            concurrency=concurrency,
            requests_max=args.requests,
            seconds=args.seconds,
            warmup=max(2, 20 // concurrency),
            on_start=functools.partial(_mark, offsets, service),
        )
        time.sleep(0.2)
        total, hook = service.timings_since(offsets[0])
        results.append(Result(label, workers, concurrency, latencies, errors, wall, total, hook))
        print(row(results[-1]), flush=True)
    return results


@dataclass
class Ratio:
    label: str
    hook: list[float]
    base: list[float]
    base_name: str
    target: float
    server_total: list[float]
    server_hook: list[float]
    errors: int

    @property
    def ratio(self) -> float:
        return statistics.median(self.hook) / statistics.median(self.base)

    def lines(self) -> list[str]:
        verdict = "met" if self.ratio <= self.target else "MISSED"
        return [
            f"{self.label}",
            f"    hook (client side)   median {statistics.median(self.hook) * 1000:8.1f} ms   "
            f"p90 {percentile(self.hook, 90) * 1000:8.1f} ms   "
            f"({len(self.hook)} calls, {self.errors} failed)",
            f"    service access log   median {median_or_nan(self.server_total):8.0f} ms   "
            f"run_hook median {median_or_nan(self.server_hook):.0f} ms",
            f"    {self.base_name:<20} median {statistics.median(self.base) * 1000:8.1f} ms   "
            f"p90 {percentile(self.base, 90) * 1000:8.1f} ms",
            f"    ratio hook / {self.base_name.split()[0]} = {self.ratio:.2f}   "
            f"(target ≤ {self.target:g}: {verdict})",
        ]


def run_heavy(service: Service, name: str, body: bytes, args: argparse.Namespace) -> Ratio:
    url = f"{service.base}/cds-services/{SERVICE}"
    check_once(url, body, "heavy patient")
    hooks: list[float] = []
    parses: list[float] = []
    errors = 0
    deadline = time.monotonic() + args.seconds * 3
    with requests.Session() as session:
        call(session, url, body)  # warm-up (one more after check_once)
        orjson.loads(body)
        offset = service.log_size()
        for _ in range(args.heavy_requests):
            if time.monotonic() > deadline:
                break
            gc.collect()
            elapsed, status = call(session, url, body)
            if status == 200:
                hooks.append(elapsed)
            else:
                errors += 1
            parses.append(timed(lambda: orjson.loads(body)))
    time.sleep(0.2)
    total, hook = service.timings_since(offset)
    label = f"(b) heavy prefetch: {name}, request body {len(body) / 1e6:.1f} MB, concurrency 1"
    return Ratio(label, hooks, parses, "orjson.loads(body)", TARGET_HEAVY, total, hook, errors)


def run_no_prefetch(
    service: Service, typical: Patient, fhir_base: str, templates: dict[str, str], args: argparse.Namespace
) -> Ratio:
    from cds_service.fhir.client import FhirClient
    from cds_service.fhir.queries import fill
    from cds_service.settings import Settings

    url = f"{service.base}/cds-services/{SERVICE}"
    body = hook_body(typical.id, None, fhir=(fhir_base, FHIR_TOKEN))
    check_once(url, body, "no-prefetch call")
    settings = Settings(allow_http_loopback=True, fhir_server_allowlist=[fhir_base])
    queries = {key: fill(template, patient_id=typical.id) for key, template in templates.items()}

    def fetch() -> dict[str, Any]:
        with FhirClient(base_url=fhir_base, token=FHIR_TOKEN, settings=settings) as client:
            return client.fetch_all(queries)

    fetched = fetch()  # warm-up, and a check that the server holds the patient
    if fetched.get("patient") is None:
        raise RuntimeError("the FHIR server does not have the patient")
    hooks: list[float] = []
    fetches: list[float] = []
    errors = 0
    deadline = time.monotonic() + args.seconds * 3
    with requests.Session() as session:
        call(session, url, body)  # warm-up
        offset = service.log_size()
        for _ in range(args.fhir_requests):
            if time.monotonic() > deadline:
                break
            gc.collect()
            elapsed, status = call(session, url, body)
            if status == 200:
                hooks.append(elapsed)
            else:
                errors += 1
            fetches.append(timed(fetch))
    time.sleep(0.2)
    total, hook = service.timings_since(offset)
    entries = sum(
        len(v.get("entry") or []) if v.get("resourceType") == "Bundle" else 1 for v in fetched.values() if v
    )
    label = (
        f"(c) no prefetch: {typical.name} from sekmet-fhir, {len(queries)} queries, "
        f"{entries} resources, concurrency 1"
    )
    return Ratio(label, hooks, fetches, "fetch_all alone", TARGET_FHIR, total, hook, errors)


# --- main ------------------------------------------------------------------------------------


def machine() -> str:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"nproc {os.cpu_count()}, CPU {model}, Python {platform.python_version()}, "
        f"load average at start {load1:.2f}"
    )


def int_list(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("a comma-separated list of positive integers")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared", help="the shared folder")
    parser.add_argument(
        "--patient", default=DEFAULT_PATIENT, help=f"typical patient (default {DEFAULT_PATIENT})"
    )
    parser.add_argument("--workers", type=int_list, default=[1, 2], help="service workers to try (1,2)")
    parser.add_argument("--concurrency", type=int_list, default=[1, 8, 32], help="client threads (1,8,32)")
    parser.add_argument("--requests", type=int, default=1000, help="calls per (a) run at most (1000)")
    parser.add_argument("--seconds", type=float, default=12.0, help="seconds per (a) run at most (12)")
    parser.add_argument("--heavy-requests", type=int, default=10, help="(b) calls (10)")
    parser.add_argument("--fhir-requests", type=int, default=30, help="(c) calls (30)")
    parser.add_argument("--skip-fhir", action="store_true", help="skip (c), the sekmet-fhir scenario")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))  # tests.support

    from cds_service.engine.loader import load_catalog
    from cds_service.fhir.queries import prefetch_templates

    templates = prefetch_templates(load_catalog(None))
    synthea = args.shared / "data" / "synthea"
    typical_path = find_bundle(synthea, args.patient) if synthea.is_dir() else None
    notes: list[str] = []
    if typical_path is None:
        typical_path = find_bundle(REPO / "tests" / "data" / "synthea", FALLBACK_PATIENT)
        notes.append(
            f"NOTE: {synthea}/{args.patient}*.json is absent: using the repository's "
            f"tests/data/synthea/{FALLBACK_PATIENT} instead, and skipping the heavy scenario."
        )
        if typical_path is None:
            print("load_bench: no patient data found", file=sys.stderr)
            return 2
    heavy_path = synthea / HEAVY if (synthea / HEAVY).is_file() else None
    typical = patient_from(typical_path, templates)
    heavy_body = None
    if heavy_path is not None:
        heavy = patient_from(heavy_path, templates)
        heavy_body = hook_body(heavy.id, heavy.prefetch)
        del heavy  # only its bytes are used: keep this process's heap small
    gc.collect()
    gc.freeze()  # the data above is never freed: keep it out of this process's GC passes

    print(machine())
    print(f"typical patient: {typical_path.name}; heavy: {heavy_path.name if heavy_path else 'absent'}")
    for note in notes:
        print(note)

    workdir = Path(tempfile.mkdtemp(prefix="cds-load-bench-"))
    fhir = None
    if not args.skip_fhir:
        from tests.support.fhir_server import sekmet_available, start_fhir_server

        if sekmet_available():
            fhir = start_fhir_server(token=FHIR_TOKEN)
            fhir.load_bundle(typical.bundle)
        else:
            print("NOTE: sekmet-fhir is not installed: skipping (c) (pip install 'sekmet-fhir==0.1.1')")

    results: list[Result] = []
    ratios: list[Ratio] = []
    failed = False
    try:
        print()
        print(HEADER)
        print("-" * len(HEADER))
        for workers in args.workers:
            service = Service(workers=workers, workdir=workdir, fhir_base=fhir.base_url if fhir else None)
            try:
                service.wait_ready()
                results += run_typical(service, workers, typical, args)
                if workers == args.workers[0]:
                    if heavy_body is not None and heavy_path is not None:
                        ratios.append(run_heavy(service, heavy_path.stem, heavy_body, args))
                    if fhir is not None:
                        ratios.append(run_no_prefetch(service, typical, fhir.base_url, templates, args))
            except RuntimeError as exc:
                print(f"load_bench: {exc}", file=sys.stderr)
                return 2
            finally:
                service.stop()
    finally:
        if fhir is not None:
            fhir.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    print("\nlatency: client side (ms); srv p50: the service's access log (request in to answer out);")
    print("hook p50: run_hook (gather prefetch, build the record, evaluate, render cards).")
    print("n/a: the service logged no timing for that run.\n")
    for ratio in ratios:
        print("\n".join(ratio.lines()))
        failed = failed or ratio.errors > 0
    print("\ntargets:")
    at8 = [r for r in results if r.concurrency == 8]
    for r in at8:
        verdict = "met" if r.p(99) <= TARGET_P99_MS else "MISSED"
        print(f"  typical p99 at concurrency 8, {r.workers} worker(s): {r.p(99):.1f} ms ≤ 100 ms: {verdict}")
    for ratio in ratios:
        verdict = "met" if ratio.ratio <= ratio.target else "MISSED"
        print(f"  {ratio.label[:3]} ratio {ratio.ratio:.2f} ≤ {ratio.target:g}: {verdict}")
    failed = failed or any(r.errors for r in results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())


def _mark(offsets: list[int], service: Service) -> None:
    """Note where the service's log stood when the timed calls began."""
    offsets.append(service.log_size())
