"""Soak benchmark: ``cds-service serve --workers 2`` for 60 s at concurrency 8, then SMART sessions
used across both workers.

Part 1 (hooks): a typical Synthea patient (``Madalyn_Frami`` from ``../shared``, else
``Asa_Hermiston`` from ``tests/data``) with full prefetch, 8 client threads (one keep-alive
``requests.Session`` each) for ``--seconds`` (60). Every call is audited (SQLite, WAL) and counted in
the multiprocess metrics. Printed: calls, errors, p50/p95/p99, req/s, each worker's RSS (VmRSS from
/proc, sampled every 5 s: first and peak), the audit rows written and the aggregated
``cds_hook_duration_seconds_count{outcome="ok"}`` from one ``/metrics`` scrape (both must equal the
successful calls).

Part 2 (SMART sessions across workers): sekmet-fhir with a vector patient, the test EHR
authorization server (``tests/support/smart_auth_server.py``) in this process, and ``--launches``
EHR launches through the service: launch, authorize, callback, then ``--pages`` page loads per
launch, each on a new connection (so either worker may answer). JSON logs name the pid that
answered each request id: printed are the page loads answered 200 and how many were answered by a
worker other than the one that completed the launch's callback.

    .venv/bin/python benchmarks/soak_bench.py [--seconds 60] [--concurrency 8] [--workers 2]
        [--launches 20] [--pages 10] [--shared DIR] [--baseline CHECKOUT]

``--shared`` defaults to ``../shared``. ``--baseline`` first runs the same hook load against another
checkout's ``cds_service`` (``PYTHONPATH``; e.g. ``git worktree add /tmp/base <commit>``), so the
figures of this tree come with a ratio measured in the same run on the same (shared) machine.

Exit status 0 when every call succeeded, 1 otherwise, 2 when the service could not start.
Only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

REPO = Path(__file__).resolve().parents[1]
SERVICE = "/cds-services/trial-eligibility"
CLIENT_ID = "cds-soak"


def percentile(values: list[float], pct: float) -> float:
    """Nearest rank (p99 of 400 samples is the 396th smallest)."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(pct / 100 * len(ordered))) - 1]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid: int) -> list[int]:
    """The uvicorn worker processes of ``pid`` (spawned; not multiprocessing's resource tracker)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            command = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and b"spawn_main" in command:
            found.append(int(stat.parent.name))
    return sorted(found)


class Served:
    """``cds-service serve`` in its own process group, JSON logs to a file."""

    def __init__(
        self, workdir: Path, *, workers: int, env: dict[str, str], source: Path | None = None
    ) -> None:
        self.port = env.pop("PORT", "") or str(free_port())
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "service.log"
        self.db = workdir / "cds.sqlite3"
        base = {k: v for k, v in os.environ.items() if not k.startswith(("CDS_", "PROMETHEUS_"))}
        base |= {
            "CDS_ALLOW_UNSIGNED": "true",
            "CDS_ALLOW_HTTP_LOOPBACK": "true",
            "CDS_LOG_FORMAT": "json",
            "CDS_FEEDBACK_DB_URL": f"sqlite:///{self.db}",
            "CDS_SESSION_KEY": uuid.uuid4().hex,
            "CDS_PSEUDONYM_KEY": uuid.uuid4().hex,
        }
        if source is not None:  # the baseline: another checkout's cds_service, imported first
            base["PYTHONPATH"] = str(source)
        command = [str(Path(sys.executable).with_name("cds-service")), "serve", "--port", self.port]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [*command, "--workers", str(workers)],
                env=base | env,
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def wait_ready(self, workers: int, timeout: float = 90) -> None:
        ends = time.monotonic() + timeout
        while time.monotonic() < ends:
            if self.process.poll() is not None:
                raise RuntimeError(self.log_path.read_text()[-3000:])
            try:  # /cds-services: a baseline without /readyz answers it too
                ready = requests.get(self.url + "/cds-services", timeout=1).status_code == 200
            except requests.RequestException:
                ready = False
            if ready and (workers == 1 or len(children(self.process.pid)) >= workers):
                time.sleep(1.0)  # let the second worker finish its startup too
                return
            time.sleep(0.2)
        raise RuntimeError("the service did not become ready")

    def stop(self) -> int:
        os.killpg(self.process.pid, signal.SIGTERM)
        return self.process.wait(30)

    def log_entries(self) -> list[dict[str, Any]]:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]


def hook_load(served: Served, body: bytes, *, concurrency: int, seconds: float) -> dict[str, Any]:
    url = served.url + SERVICE
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    start = threading.Barrier(concurrency + 1)
    go = threading.Event()  # set once ``ends`` is: every client runs the whole period
    ends = [0.0]

    def client() -> None:
        mine: list[float] = []
        failed = 0
        with requests.Session() as s:
            s.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=60).close()
            start.wait()
            go.wait()
            while time.monotonic() < ends[0]:
                began = time.perf_counter()
                try:
                    with s.post(
                        url, data=body, headers={"Content-Type": "application/json"}, timeout=60
                    ) as r:
                        ok = r.status_code == 200 and b'"cards"' in r.content
                except requests.RequestException:
                    ok = False
                if ok:
                    mine.append(time.perf_counter() - began)
                else:
                    failed += 1
        with lock:
            latencies.extend(mine)
            errors[0] += failed

    workers = children(served.process.pid) or [served.process.pid]  # one worker: uvicorn itself
    rss: dict[int, list[int]] = {pid: [rss_kib(pid)] for pid in workers}
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    start.wait()
    began = time.monotonic()
    ends[0] = began + seconds
    go.set()
    while time.monotonic() < ends[0]:
        time.sleep(min(5.0, max(0.0, ends[0] - time.monotonic())))
        for pid in workers:
            rss[pid].append(rss_kib(pid))
    for t in threads:
        t.join()
    wall = time.monotonic() - began
    return {"latencies": latencies, "errors": errors[0], "wall": wall, "rss": rss}


def scraped_ok(served: Served) -> float:
    text = requests.get(served.url + "/metrics", timeout=10).text
    found = re.search(r'^cds_hook_duration_seconds_count\{outcome="ok"\} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def audit_rows(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(
            conn.execute("SELECT count(*) FROM audit WHERE kind='hook' AND outcome='ok'").fetchone()[0]
        )


# --- part 2: SMART sessions across workers -----------------------------------------------------


def cookie_of(response: requests.Response) -> str | None:
    header = response.headers.get("set-cookie", "")
    match = re.match(r"cds_smart_session=([^;]+)", header)
    return match.group(1) if match else None


def one_launch(served: Served, auth: Any, patient: str, pages: int) -> tuple[str, list[tuple[int, str]]]:
    """Launch → authorize → callback → ``pages`` page loads on new connections; returns the callback's
    request id and (status, request id) of each page load. The Secure cookie is carried by hand
    (plain http on loopback here)."""
    iss = auth.fhir_base
    launch = requests.get(
        served.url + "/smart/launch",
        params={"iss": iss, "launch": auth.create_launch(patient=patient)},
        allow_redirects=False,
        timeout=30,
    )
    cookie = cookie_of(launch)
    authorized = requests.get(launch.headers["location"], allow_redirects=False, timeout=30)
    callback_url = authorized.headers["location"]
    parts = urlsplit(callback_url)
    callback = requests.get(
        served.url + parts.path + "?" + parts.query,
        headers={"Cookie": f"cds_smart_session={cookie}"},
        allow_redirects=False,
        timeout=30,
    )
    if callback.status_code != 302:
        raise RuntimeError(f"callback answered {callback.status_code}")
    session = cookie_of(callback)
    loads = []
    for _ in range(pages):
        rid = uuid.uuid4().hex
        page = requests.get(
            served.url + callback.headers["location"],
            headers={"Cookie": f"cds_smart_session={session}", "X-Request-ID": rid, "Connection": "close"},
            timeout=30,
        )
        loads.append((page.status_code, rid))
    return callback.headers["x-request-id"], loads


def smart_part(workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(REPO))
    from tests.smart.patients import vector_patient
    from tests.support.fhir_server import start_fhir_server
    from tests.support.smart_auth_server import SmartAuthServer

    port = str(free_port())
    redirect = f"http://127.0.0.1:{port}/smart/callback"
    token = "soak-fhir-token"
    with start_fhir_server(token=token, workdir=workdir / "fhir") as fhir:
        patient = vector_patient("likely-eligible")
        fhir.load_bundle(patient.bundle)
        auth = SmartAuthServer(
            fhir_upstream=fhir.base_url, access_token=token, client_id=CLIENT_ID, redirect_uris=[redirect]
        )
        with auth:
            env = {
                "PORT": port,
                "CDS_SMART_CLIENT_ID": CLIENT_ID,
                "CDS_SMART_REDIRECT_URI": redirect,
                "CDS_SMART_ISS_ALLOWLIST": auth.fhir_base,
            }
            served = Served(workdir, workers=args.workers, env=env)
            try:
                served.wait_ready(args.workers)
                runs = [one_launch(served, auth, patient.id, args.pages) for _ in range(args.launches)]
            finally:
                served.stop()
            pid_of = {
                e.get("request_id"): e["pid"]
                for e in served.log_entries()
                if e["logger"] == "cds_service.access"
            }
    loads = [
        (status, pid_of.get(rid), pid_of.get(callback)) for callback, pages in runs for status, rid in pages
    ]
    return {
        "loads": len(loads),
        "ok": sum(1 for status, _, _ in loads if status == 200),
        "switched": sum(1 for status, pid, home in loads if status == 200 and pid != home),
        "pids": len({pid for _, pid, _ in loads}),
    }


def typical_body(shared: Path) -> tuple[str, bytes]:
    sys.path.insert(0, str(REPO))
    from cds_service.engine.loader import load_catalog
    from cds_service.fhir.queries import prefetch_templates
    from tests.support.prefetch import patient_id, prefetch_from_bundle

    candidates = [*(shared / "data" / "synthea").glob("Madalyn_Frami_*.json")]
    candidates += [*(REPO / "tests" / "data" / "synthea").glob("Asa_Hermiston_*.json")]
    path = candidates[0]
    bundle = json.loads(path.read_text())
    body = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/1", "patientId": patient_id(bundle)},
        "prefetch": prefetch_from_bundle(bundle, prefetch_templates(load_catalog())),
    }
    return "_".join(path.name.split("_")[:2]), json.dumps(body).encode()


def run_hooks(workdir: Path, body: bytes, args: argparse.Namespace, source: Path | None) -> dict[str, Any]:
    """One served process under the hook load; the counts only where the service has them."""
    workdir.mkdir()
    served = Served(workdir, workers=args.workers, env={}, source=source)
    try:
        served.wait_ready(args.workers)
        result = hook_load(served, body, concurrency=args.concurrency, seconds=args.seconds)
        result["scraped"] = scraped_ok(served) if source is None else None
    finally:
        result_code = served.stop()
    result["exit"] = result_code
    result["audited"] = audit_rows(served.db) if source is None else None
    return result


def report(label: str, result: dict[str, Any]) -> tuple[float, float]:
    lat = [x * 1000 for x in result["latencies"]]
    calls, wall = len(lat), result["wall"]
    p50, p95, p99 = statistics.median(lat), percentile(lat, 95), percentile(lat, 99)
    print(f"{label}: {calls} calls in {wall:.1f} s ({calls / wall:.1f} req/s), {result['errors']} errors")
    exit_code = result["exit"]
    print(f"  p50 {p50:.1f} ms, p95 {p95:.1f} ms, p99 {p99:.1f} ms, max {max(lat):.1f} ms; exit {exit_code}")
    for pid, samples in result["rss"].items():
        print(f"  worker {pid}: RSS first {samples[0] / 1024:.0f} MiB, peak {max(samples) / 1024:.0f} MiB")
    return calls / wall, p99


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--launches", type=int, default=20)
    parser.add_argument("--pages", type=int, default=10)
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared", help="for Madalyn_Frami")
    parser.add_argument("--baseline", type=Path, help="another checkout (e.g. a git worktree) to run first")
    parser.add_argument("--rounds", type=int, default=1, help="with --baseline: alternate this many times")
    args = parser.parse_args()
    name, body = typical_body(args.shared)
    kib = len(body) / 1024
    print(f"hooks: {name}, {kib:.0f} kB request, {args.workers} workers, concurrency {args.concurrency}")
    with tempfile.TemporaryDirectory(prefix="cds-soak-") as tmp:
        workdir = Path(tmp)
        try:
            baselines, results = [], []
            for n in range(args.rounds if args.baseline else 1):  # alternated: the machine is shared
                if args.baseline:
                    baselines.append(run_hooks(workdir / f"baseline-{n}", body, args, args.baseline))
                results.append(run_hooks(workdir / f"hooks-{n}", body, args, None))
        except RuntimeError as exc:
            print(f"soak: the service could not be run: {exc}", file=sys.stderr)
            return 2
        (workdir / "smart").mkdir()
        smart = smart_part(workdir / "smart", args)
    for n, result in enumerate(results):
        if baselines:
            base_rate, base_p99 = report(f"round {n + 1}, baseline ({args.baseline})", baselines[n])
        rate, p99 = report(f"round {n + 1}, this tree", result)
        if baselines:
            print(f"  ratio to this round's baseline: req/s {rate / base_rate:.2f}, p99 {p99 / base_p99:.2f}")
        made = len(result["latencies"]) + args.concurrency  # each client's warm-up call is counted too
        audited, scraped = result["audited"], result["scraped"]
        print(f"  calls made {made}; audit rows (hook, ok) {audited}; /metrics ok {scraped:.0f}")
    print(
        f"smart: {args.launches} launches x {args.pages} page loads on new connections: "
        f"{smart['ok']}/{smart['loads']} answered 200, {smart['switched']} by the worker that did not "
        f"complete the launch, {smart['pids']} worker(s) answering"
    )
    counted = all(r["audited"] == r["scraped"] == len(r["latencies"]) + args.concurrency for r in results)
    failed = any(r["errors"] for r in results) or smart["ok"] != smart["loads"] or not counted
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
