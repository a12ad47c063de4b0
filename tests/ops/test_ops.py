"""Health, readiness, metrics access and content, API docs, and production refusals, in process."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import create_engine

from cds_service.app import create_app
from cds_service.errors import ConfigError, without_ids
from cds_service.ops.health import DatabaseProbe, build_ops_router
from cds_service.settings import Settings, check_settings, production_problems
from tests.conftest import packaged_catalog
from tests.hooks.test_probes import LIZ_ID, hook_body, served

SERVICE = "/cds-services/trial-eligibility"
TOKEN = "metrics-token-for-tests-0123"


def settings(tmp_path: Path, **changes: Any) -> Settings:
    return Settings(allow_unsigned=True, feedback_db_url=f"sqlite:///{tmp_path}/cds.sqlite3", **changes)


def test_healthz_and_readyz(tmp_path: Path) -> None:
    with TestClient(create_app(settings(tmp_path))) as client:
        health = client.get("/healthz")
        ready = client.get("/readyz")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    assert ready.status_code == 200
    trials = len(packaged_catalog().trials)
    assert ready.json() == {
        "status": "ready",
        "checks": {"mappings": f"ok ({trials} trial(s))", "database": "ok"},
    }


def ops_client(engine: Any) -> TestClient:
    app = FastAPI()
    probe = DatabaseProbe(engine, timeout=0.5)
    app.include_router(build_ops_router(settings=Settings(), catalog=packaged_catalog(), probe=probe))
    return TestClient(app)


def test_readyz_names_an_unreachable_database(tmp_path: Path) -> None:
    broken = create_engine(f"sqlite:///{tmp_path}/no/such/dir/db.sqlite3")
    answer = ops_client(broken).get("/readyz")
    assert answer.status_code == 503
    assert answer.json()["not_ready"] == ["database"]
    assert answer.json()["checks"]["database"] == "error (OperationalError)"
    assert str(tmp_path) not in answer.text  # the error's type, never its message (URLs, paths)


def test_readyz_times_out_on_a_hanging_database() -> None:
    def hang() -> sqlite3.Connection:
        time.sleep(3)
        return sqlite3.connect(":memory:")

    client = ops_client(create_engine("sqlite://", creator=hang))
    started = time.monotonic()
    first, second = client.get("/readyz"), client.get("/readyz")
    assert time.monotonic() - started < 2.0  # two probes, 0.5 s timeout, the second at once
    assert first.status_code == second.status_code == 503
    assert first.json()["checks"]["database"] == second.json()["checks"]["database"] == "timeout"


def test_metrics_need_the_token_when_one_is_set(tmp_path: Path) -> None:
    with TestClient(create_app(settings(tmp_path, metrics_token=TOKEN))) as client:
        none = client.get("/metrics")
        wrong = client.get("/metrics", headers={"Authorization": "Bearer nope"})
        right = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert none.status_code == wrong.status_code == 401
    assert right.status_code == 200 and "cds_hook_duration_seconds" in right.text


def test_metrics_without_a_token_answer_loopback_only(tmp_path: Path) -> None:
    with TestClient(create_app(settings(tmp_path))) as client:  # the test client is no loopback peer
        remote = client.get("/metrics")
    assert remote.status_code == 403 and "CDS_METRICS_TOKEN" in remote.json()["error"]
    with served(settings(tmp_path)) as url:
        local = requests.get(url + "/metrics", timeout=10)
    assert local.status_code == 200 and local.headers["content-type"].startswith("text/plain")


def sample(text: str, name: str, **labels: str) -> float:
    """One sample's value from a text exposition (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = rf"^{re.escape(name)}(?:\{{{re.escape(wanted)}\}})? (\S+)$" if labels else rf"^{name} (\S+)$"
    found = re.search(pattern, text, re.M)
    return float(found.group(1)) if found else 0.0


def test_metrics_count_hooks_cards_prefetch_feedback_and_hold_no_patient_data(tmp_path: Path) -> None:
    import json

    from tests.conftest import DATA

    demo = json.loads((DATA / "demo" / "sle-likely-eligible.json").read_text())
    body = hook_body(demo)
    body["prefetch"]["allergies"] = None  # "the EHR has none"
    item = {"card": str(uuid.uuid4()), "outcome": "overridden", "outcomeTimestamp": "2026-06-01T10:00:00Z"}
    with served(settings(tmp_path)) as url:
        before = requests.get(url + "/metrics", timeout=10).text
        hook = requests.post(url + SERVICE, json=body, timeout=30)
        bad = requests.post(url + SERVICE, data=b"{", timeout=30)
        feedback = requests.post(url + SERVICE + "/feedback", json={"feedback": [item]}, timeout=30)
        after = requests.get(url + "/metrics", timeout=10).text
    assert hook.status_code == 200 and bad.status_code == 400 and feedback.status_code == 200
    assert len(hook.json()["cards"]) == 1

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert delta("cds_hook_duration_seconds_count", outcome="ok") == 1
    assert delta("cds_hook_duration_seconds_count", outcome="400") == 1
    assert delta("cds_cards_total", status="likely-eligible", trial="NCT06888960") == 1
    assert delta("cds_prefetch_total", state="null") == 1
    assert delta("cds_prefetch_total", state="given") >= 3
    assert delta("cds_feedback_total", outcome="overridden") == 1
    patient = body["context"]["patientId"]
    assert patient not in after and LIZ_ID not in after


def test_api_docs_are_on_in_development_and_can_be_turned_off(tmp_path: Path) -> None:
    with TestClient(create_app(settings(tmp_path))) as client:
        on = [client.get(p).status_code for p in ("/docs", "/redoc", "/openapi.json")]
    with TestClient(create_app(settings(tmp_path, api_docs=False))) as client:
        off = [client.get(p).status_code for p in ("/docs", "/redoc", "/openapi.json")]
    assert on == [200, 200, 200] and off == [404, 404, 404]


def production(**changes: Any) -> Settings:
    base: dict[str, Any] = {
        "env": "production",
        "public_base_url": "https://cds.example.org",
        "pseudonym_key": "p" * 32,
        "session_key": "s" * 32,
    }
    return Settings(**{**base, **changes})


def test_production_with_its_settings_has_no_problems_and_no_docs(tmp_path: Path) -> None:
    ready = production(feedback_db_url=f"sqlite:///{tmp_path}/p.sqlite3")
    assert production_problems(ready) == []
    with TestClient(create_app(ready)) as client:
        assert [client.get(p).status_code for p in ("/docs", "/redoc", "/openapi.json")] == [404, 404, 404]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"allow_unsigned": True}, "CDS_ALLOW_UNSIGNED is true: unset it"),
        ({"allow_http_loopback": True}, "CDS_ALLOW_HTTP_LOOPBACK is true: unset it"),
        ({"api_docs": True}, "CDS_API_DOCS is true: unset it"),
        ({"public_base_url": None}, "CDS_PUBLIC_BASE_URL is not set: set it"),
        ({"public_base_url": "http://cds.example.org"}, "CDS_PUBLIC_BASE_URL is not https"),
        ({"pseudonym_key": None}, "CDS_PSEUDONYM_KEY is not set"),
        ({"session_key": "short"}, "CDS_SESSION_KEY is not set: set a random secret of 16+ characters"),
    ],
)
def test_each_production_refusal_names_what_to_set(changes: dict[str, Any], message: str) -> None:
    refused = production(**changes)
    [problem] = production_problems(refused)
    assert message in problem
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_settings(refused)
    with pytest.raises(ConfigError):
        create_app(refused)


def test_error_messages_mask_fhir_ids() -> None:
    assert (
        without_ids("Patient/p-1.2 is not valid FHIR R4: name.0: x")
        == "Patient/… is not valid FHIR R4: name.0: x"
    )
    assert without_ids("see urn:uuid:6c3c-11 and Observation/o1") == "see urn:uuid:… and Observation/…"
    assert without_ids("the prefetched Patient is not context.patientId") == (
        "the prefetched Patient is not context.patientId"
    )


def test_database_probe_closes() -> None:
    probe = DatabaseProbe(create_engine("sqlite://"))
    assert asyncio.run(probe.check()) == "ok"
    probe.close()


@pytest.mark.parametrize(
    ("mode", "kind"),
    [
        ("status:500", "http"),
        ("status:401", "unauthorized"),
        ("non-json", "invalid"),
        ("not-bundle", "invalid"),
        ("big", "too-large"),
        ("loop-next", "paging"),
        ("foreign-next", "paging"),
        ("hang", "timeout"),
    ],
)
def test_fhir_failures_are_counted_by_kind(mode: str, kind: str) -> None:
    from cds_service.errors import FhirError
    from cds_service.fhir.client import FhirClient
    from cds_service.ops import metrics
    from tests.support.faulty_fhir import FaultyFhirServer

    counter = metrics.FHIR_FETCH_FAILURES.labels(kind=kind)
    before, requests_before = counter._value.get(), metrics.FHIR_FETCH_DURATION._sum.get()
    limits = Settings(
        allow_http_loopback=True, fhir_total_timeout=1.0, fhir_page_limit=3, max_body_bytes=2048
    )
    with (
        FaultyFhirServer(mode=mode, big_bytes=10_000) as server,
        FhirClient(base_url=server.base_url, token="t0ken-for-counting", settings=limits) as client,
        pytest.raises(FhirError),
    ):
        client.search("Observation?patient=p1")
    assert counter._value.get() == before + 1  # one failing call, counted once
    assert metrics.FHIR_FETCH_DURATION._sum.get() > requests_before


def test_jwt_rejections_are_counted_by_reason() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    from cds_service.errors import Unauthorized
    from cds_service.hooks.auth import EhrAuthenticator, JwtPolicy
    from cds_service.ops import metrics
    from tests.hooks.test_auth import AUD, ISS, claims, public_jwk, sign
    from tests.support.jwks_server import JwksServer

    key = ec.generate_private_key(ec.SECP384R1())
    with JwksServer() as jwks:
        jwks.set_jwks("/jwks", [public_jwk(key, "k1", alg="ES384")])
        auth = EhrAuthenticator(JwtPolicy(trusted_issuers={ISS: jwks.url("/jwks")}))
        once = sign(key, "ES384", claims(), kid="k1")
        cases = {
            "no-token": None,
            "malformed": "Bearer not-a-jwt",
            "issuer": "Bearer " + sign(key, "ES384", claims(iss="https://who.example"), kid="k1"),
            "kid": "Bearer " + sign(key, "ES384", claims(), kid="nope"),
            "audience": "Bearer " + sign(key, "ES384", claims(aud="https://elsewhere.example/x"), kid="k1"),
            "expired": "Bearer " + sign(key, "ES384", claims(exp=1, iat=0), kid="k1"),
            "replay": "Bearer " + once,
        }
        auth.authenticate(authorization_header="Bearer " + once, audience=AUD)
        for reason, header in cases.items():
            counter = metrics.JWT_REJECTIONS.labels(reason=reason)
            before = counter._value.get()
            with pytest.raises(Unauthorized):
                auth.authenticate(authorization_header=header, audience=AUD)
            assert counter._value.get() == before + 1, reason
