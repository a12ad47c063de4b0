"""``cds-service serve`` as an operator runs it: escaped log lines, JSON logs with request ids,
metrics aggregated over two workers, graceful shutdown, and production refusals (exit 2, one line)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from tests.hooks.test_probes import hook_body
from tests.support.service_process import CLI, ServiceProcess

SERVICE = "/cds-services/trial-eligibility"
UNSIGNED = {"CDS_ALLOW_UNSIGNED": "true"}


def test_a_percent_encoded_crlf_path_cannot_forge_a_log_line(tmp_path: Path) -> None:
    with ServiceProcess(tmp_path, env=UNSIGNED) as service:
        forged = "/x%0d%0a2026-01-01 00:00:00,000 INFO cds_service.access: FORGED%1b[2J%c2%85next"
        answer = requests.get(service.url + forged, timeout=10)
        raw = requests.get(service.url + "/%00%07%7f", timeout=10)
    log = service.log()
    assert answer.status_code == 404 and raw.status_code == 404
    assert not any(line.startswith("2026-01-01") or "FORGED" in line[:40] for line in log.splitlines())
    assert (
        "GET /x\\x0d\\x0a2026-01-01 00:00:00,000 INFO cds_service.access: FORGED\\x1b[2J\\x85next 404" in log
    )
    assert "GET /\\x00\\x07\\x7f 404" in log
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", log)  # no raw control character anywhere


def test_two_workers_json_logs_request_ids_metrics_and_graceful_shutdown(tmp_path: Path) -> None:
    env = {**UNSIGNED, "CDS_LOG_FORMAT": "json", "TMPDIR": str(tmp_path)}
    calls = 24
    body = hook_body()
    with ServiceProcess(tmp_path, workers=2, env=env) as service:

        def call(i: int) -> requests.Response:
            headers = {"X-Request-ID": f"probe-{i:03d}"} if i % 2 else {"X-Request-ID": "bad id;<x>"}
            return requests.post(service.url + SERVICE, json=body, headers=headers, timeout=60)

        answers: list[requests.Response] = []
        for _ in range(5):  # new connections, 8 at once: the kernel hands them to both workers
            with ThreadPoolExecutor(max_workers=8) as pool:
                answers += pool.map(call, range(len(answers), len(answers) + calls))
            if len({e["pid"] for e in access_lines(service.log())}) == 2:
                break
        exposition = requests.get(service.url + "/metrics", timeout=10).text
        code = service.stop()
    assert [a.status_code for a in answers] == [200] * len(answers)
    ids = [a.headers["x-request-id"] for a in answers]
    assert ids[1::2] == [f"probe-{i:03d}" for i in range(1, len(answers), 2)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids[0::2])  # unsafe ids replaced
    access = access_lines(service.log())
    assert {e["request_id"] for e in access} == set(ids)
    assert len({e["pid"] for e in access}) == 2, "both workers should have answered"
    ok = re.search(r'^cds_hook_duration_seconds_count\{outcome="ok"\} (\S+)$', exposition, re.M)
    assert ok is not None and float(ok.group(1)) == len(answers)  # every worker's calls, one scrape
    assert re.search(r'^cds_prefetch_total\{state="given"\} \d', exposition, re.M)
    assert code == 0
    assert "Waiting for application shutdown." in service.log()
    assert not list(tmp_path.glob("cds-metrics-*"))  # the multiprocess directory, removed at exit


def access_lines(log: str) -> list[dict[str, object]]:
    entries = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    return [e for e in entries if e["logger"] == "cds_service.access" and SERVICE in str(e["message"])]


def run_serve(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
    return subprocess.run(
        [str(CLI), "serve", "--port", "1"],
        cwd=tmp_path,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_production_refuses_to_start_naming_what_to_set(tmp_path: Path) -> None:
    result = run_serve(
        tmp_path, CDS_ENV="production", CDS_ALLOW_UNSIGNED="true", CDS_ALLOW_HTTP_LOOPBACK="true"
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    line = result.stderr.strip()
    assert line.startswith("cds-service: CDS_ENV=production refuses to start: ")
    for needle in (
        "CDS_ALLOW_UNSIGNED is true: unset it",
        "CDS_ALLOW_HTTP_LOOPBACK is true: unset it",
        "CDS_PUBLIC_BASE_URL is not set",
        "CDS_PSEUDONYM_KEY is not set",
        "CDS_SESSION_KEY is not set",
    ):
        assert needle in line
    assert "Traceback" not in result.stderr


def test_a_setting_that_cannot_be_used_is_one_line_and_exit_2(tmp_path: Path) -> None:
    issuers = json.dumps({"https://ehr.example.org": "https://ehr.example.org/jwks"})
    result = run_serve(tmp_path, CDS_TRUSTED_ISSUERS=issuers)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "cds-service: settings: CDS_TRUSTED_ISSUERS is set but CDS_PUBLIC_BASE_URL is not: set "
        "CDS_PUBLIC_BASE_URL to this service's external base URL (EHR JWTs must name it as their aud)"
    ]
    bad = run_serve(tmp_path, CDS_FHIR_PAGE_SIZE="lots")
    assert bad.returncode == 2 and bad.stderr.startswith("cds-service: CDS_FHIR_PAGE_SIZE: ")


def test_production_with_everything_set_starts(tmp_path: Path) -> None:
    env = {
        "CDS_ENV": "production",
        "CDS_PUBLIC_BASE_URL": "https://cds.example.org",
        "CDS_PSEUDONYM_KEY": uuid.uuid4().hex,
        "CDS_SESSION_KEY": uuid.uuid4().hex,
        "CDS_TRUSTED_ISSUERS": json.dumps({"https://ehr.example.org": "https://ehr.example.org/jwks"}),
    }
    with ServiceProcess(tmp_path, env=env) as service:
        docs = [
            requests.get(service.url + path, timeout=10).status_code for path in ("/docs", "/openapi.json")
        ]
        unsigned = requests.post(service.url + SERVICE, json=hook_body(), timeout=30)
    assert docs == [404, 404]
    assert unsigned.status_code == 401
