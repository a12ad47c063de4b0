"""The checks of smoke-image.sh, run in its namespaces against the image's read-only root.

Standard library only (it runs with the host's python3). argv: the image root (mounted read-only,
with tmpfs on /tmp and /var/lib/cds-service) and a work directory holding ``inspect.json`` (from
``podman image inspect``) and ``request.json`` (a patient-view request for the demo patient).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

BASE = "http://127.0.0.1:8000"
USER = "10001:10001"
VOLUME = "/var/lib/cds-service"


def fail(message: str) -> None:
    print(f"smoke-image: FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def check_config(config: dict[str, Any], health: dict[str, Any] | None) -> dict[str, str]:
    """What the Containerfile promises: non-root, a volume for the database, a health check."""
    if config.get("User") != USER:
        fail(f"image user is {config.get('User')!r}, expected {USER}")
    env = dict(item.split("=", 1) for item in config.get("Env", []))
    db_url = env.get("CDS_FEEDBACK_DB_URL", "")
    if not db_url.startswith(f"sqlite:///{VOLUME}/"):
        fail(f"CDS_FEEDBACK_DB_URL is {db_url!r}, expected a file under {VOLUME}")
    if VOLUME not in (config.get("Volumes") or {}):
        fail(f"{VOLUME} is not a volume")
    test = (health or {}).get("Test") or []
    if test[:1] != ["CMD"] or not any("/healthz" in part for part in test):
        fail(f"HEALTHCHECK does not ask /healthz: {test}")
    return env


def in_image(root: Path, env: dict[str, str], workdir: str, argv: list[str]) -> list[str]:
    """argv run as the image's user, in its root, with its environment only (as a runtime would)."""
    pairs = [f"{key}={value}" for key, value in env.items()]
    return [
        "chroot",
        f"--userspec={USER}",
        str(root),
        "/usr/bin/env",
        "-i",
        f"--chdir={workdir}",
        *pairs,
        *argv,
    ]


def http(method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    request = urllib.request.Request(BASE + path, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_for_service(server: subprocess.Popen[bytes], deadline_s: float = 90) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            fail(f"the service exited with {server.returncode} before answering")
        try:
            if http("GET", "/cds-services")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.3)
    fail(f"the service did not answer GET /cds-services within {deadline_s:.0f} s")


def check_service(root: Path, request: bytes) -> None:
    status, body = http("GET", "/cds-services")
    ids = [service["id"] for service in json.loads(body)["services"]]
    if status != 200 or "trial-eligibility" not in ids:
        fail(f"discovery: {status} {ids}")
    status, body = http("POST", "/cds-services/trial-eligibility", request)
    cards = json.loads(body).get("cards", []) if status == 200 else []
    if len(cards) != 1 or "NCT06888960" not in cards[0]["summary"]:
        fail(f"hook for the demo patient: {status}, {len(cards)} card(s): {body[:300]!r}")
    feedback = {
        "feedback": [
            {"card": cards[0]["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-06-01T10:00:00Z"}
        ]
    }
    status, body = http("POST", "/cds-services/trial-eligibility/feedback", json.dumps(feedback).encode())
    if status != 200:
        fail(f"feedback: {status} {body[:300]!r}")
    database = root / VOLUME.lstrip("/") / "cds-feedback.sqlite3"
    if not database.is_file() or database.stat().st_uid != 10001:
        fail(f"no database owned by the image's user in the volume ({database})")
    print(f"smoke-image: discovery, hook (1 card), feedback stored in {VOLUME}: ok")


def check_health(root: Path, env: dict[str, str], workdir: str, test: list[str]) -> None:
    done = subprocess.run(in_image(root, env, workdir, test[1:]), capture_output=True, timeout=30)
    if done.returncode == 0:
        print("smoke-image: HEALTHCHECK (/healthz): ok")
        return
    status = http("GET", "/healthz")[0]
    fail(f"HEALTHCHECK exited {done.returncode} (GET /healthz: {status}): {done.stderr[-500:]!r}")


def check_commands(root: Path, env: dict[str, str], workdir: str) -> None:
    done = subprocess.run(
        in_image(root, env, workdir, ["cds-service", "check-mappings"]),
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0 or " 0 failed" not in done.stdout:
        fail(f"check-mappings: {done.returncode} {done.stdout[-300:]} {done.stderr[-300:]}")
    for patient in sorted((root / "tmp").glob("*.json")):
        argv = ["cds-service", "evaluate", f"/tmp/{patient.name}", "--as-of", "2026-06-01", "--json"]
        done = subprocess.run(in_image(root, env, workdir, argv), capture_output=True, text=True, timeout=120)
        if done.returncode != 0 or not json.loads(done.stdout)["trials"]:
            fail(f"evaluate {patient.name}: {done.returncode} {done.stderr[-300:]}")
    argv = ["python", "-c", "import psycopg; print(psycopg.pq.version())"]
    done = subprocess.run(in_image(root, env, workdir, argv), capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        fail(f"the PostgreSQL driver does not load: {done.stderr[-500:]}")
    done = subprocess.run(
        in_image(root, env, workdir, ["/bin/sh", "-c", "echo x > /opt/cds-service/x"]),
        capture_output=True,
        text=True,
        timeout=30,
    )
    if done.returncode == 0 or "Read-only file system" not in done.stderr:
        fail(f"the root file system was writable: {done.returncode} {done.stderr}")
    print("smoke-image: check-mappings, evaluate (tests/data/synthea), PostgreSQL driver, read-only root: ok")


def stop(server: subprocess.Popen[bytes], log: Path) -> None:
    """SIGTERM, as a runtime stops a container: uvicorn shuts down, then re-raises the signal."""
    server.send_signal(signal.SIGTERM)
    try:
        code = server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        fail("the service did not stop within 30 s of SIGTERM")
    text = log.read_text(errors="replace")
    if code not in (0, -signal.SIGTERM) or "Finished server process" not in text:
        fail(f"the service did not shut down cleanly on SIGTERM (exit {code}): {text[-1000:]}")
    print("smoke-image: stopped cleanly on SIGTERM")


def main() -> None:
    root, work = Path(sys.argv[1]), Path(sys.argv[2])
    image = json.loads((work / "inspect.json").read_text())[0]
    config = image["Config"]
    env = check_config(config, image.get("Healthcheck"))
    workdir = config.get("WorkingDir") or "/"
    log = (work / "server.log").open("wb")
    argv = [*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])]
    server = subprocess.Popen(
        in_image(root, {**env, "CDS_ALLOW_UNSIGNED": "true"}, workdir, argv),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_service(server)
        check_service(root, (work / "request.json").read_bytes())
        check_health(root, env, workdir, image["Healthcheck"]["Test"])
        check_commands(root, env, workdir)
        stop(server, work / "server.log")
    finally:
        if server.poll() is None:
            server.kill()
        text = (work / "server.log").read_text(errors="replace")
        if "Traceback" in text:
            print(text[-3000:], file=sys.stderr)
            fail("the service logged a traceback")


if __name__ == "__main__":
    main()
