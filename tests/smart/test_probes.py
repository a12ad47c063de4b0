"""SMART regression tests of the adversarial probe (issue 10): a flood of cookieless launches, sessions
shared by two app instances over one database (a worker switch), and SMART discovery and the token
exchange against servers that drip bytes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from cds_service.db import make_engine
from cds_service.settings import Settings
from cds_service.smart import errors, oauth
from cds_service.smart.router import build_smart_router
from cds_service.smart.sessions import SessionStore
from tests.conftest import packaged_catalog
from tests.fhir_fixtures import FHIR_TEST_TOKEN
from tests.smart.conftest import TEST_ORIGIN, make_harness
from tests.smart.flow import Flow
from tests.smart.patients import VectorPatient
from tests.support.drip_server import DripServer, Stage
from tests.support.smart_auth_server import SmartAuthServer

SECRET = "a-session-key-for-these-tests-0123456789"
SLACK = 1.5


def file_store(path: Path, *, secret: str = SECRET, max_pending: int = 10_000) -> SessionStore:
    return SessionStore(engine=make_engine(f"sqlite:///{path}"), secret=secret, max_pending=max_pending)


def test_a_flood_of_cookieless_launches_evicts_no_signed_in_session(
    auth_server: SmartAuthServer, vector_patients: dict[str, VectorPatient], tmp_path: Path
) -> None:
    """2,000 launches without a cookie (4x the pending cap): launches under way are bounded and the
    oldest dropped, the signed-in user keeps their page, and the EHR's discovery is read once."""
    store = file_store(tmp_path / "cds.sqlite3", max_pending=500)
    harness = make_harness(auth_server, sessions=store)
    discovered = auth_server.discovery_requests
    with harness.client:
        page = Flow(harness).open_app(auth_server.create_launch(patient="smart-likely-eligible"))
        assert page.status_code == 200
        with TestClient(harness.app, base_url=TEST_ORIGIN, follow_redirects=False) as attacker:
            for _ in range(2000):
                attacker.cookies.clear()
                launched = attacker.get("/smart/launch", params={"iss": auth_server.fhir_base, "launch": "x"})
                assert launched.status_code == 302
        counts = store.counts()
        again = harness.client.get(str(page.url))
    assert again.status_code == 200 and "NCT06888960" in again.text
    assert counts["smart_session"] == 1 and counts["smart_launch"] == 1
    assert counts["smart_pending"] <= 500
    assert auth_server.discovery_requests - discovered == 1  # cached (TTL) and shared


def test_a_session_made_through_one_instance_works_through_another(
    auth_server: SmartAuthServer, vector_patients: dict[str, VectorPatient], tmp_path: Path
) -> None:
    """Two app instances (two workers, or two replicas) on one database file and key."""
    path = tmp_path / "shared.sqlite3"
    first = make_harness(auth_server, sessions=file_store(path))
    second = make_harness(auth_server, sessions=file_store(path))
    stranger = make_harness(auth_server, sessions=file_store(path, secret="another-key-0123456789abcdef"))
    with first.client, second.client, stranger.client:
        page = Flow(first).open_app(auth_server.create_launch(patient="smart-likely-eligible"))
        assert page.status_code == 200
        cookies = dict(first.client.cookies)
        for other in (second, stranger):
            other.client.cookies.set("cds_smart_session", cookies["cds_smart_session"])
        there = second.client.get(str(page.url))
        refused = stranger.client.get(str(page.url))
    assert there.status_code == 200 and "NCT06888960" in there.text
    assert refused.status_code == 401  # another key cannot decrypt the stored token: "session expired"
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("shared.sqlite3*"))
    assert FHIR_TEST_TOKEN.encode() not in stored  # the access token is encrypted at rest
    assert cookies["cds_smart_session"].encode() not in stored  # ids are stored hashed


def test_smart_discovery_from_a_dripping_server_ends_at_the_deadline() -> None:
    with DripServer(stage="body", interval=1.0) as drip:
        iss = drip.url + "/fhir"
        settings = Settings(smart_iss_allowlist=[iss], allow_http_loopback=True, fhir_total_timeout=2.0)
        app = FastAPI()
        app.include_router(build_smart_router(settings=settings, catalog=packaged_catalog()), prefix="/smart")
        with TestClient(app, base_url=TEST_ORIGIN) as client:
            started = time.monotonic()
            page = client.get("/smart/launch", params={"iss": iss, "launch": "x"})
            took = time.monotonic() - started
    assert page.status_code == 502 and "SMART configuration could not be read" in page.text
    assert 1.9 <= took < 2.0 + SLACK  # ended by the deadline, not by some other failure


@pytest.mark.parametrize("stage", ["headers", "body"])
def test_the_token_exchange_with_a_dripping_server_ends_at_the_deadline(stage: Stage) -> None:
    settings = Settings(allow_http_loopback=True, fhir_total_timeout=2.0)
    with DripServer(stage=stage, interval=1.0) as drip:
        started = time.monotonic()
        with pytest.raises(errors.SmartError) as failed:
            oauth.exchange_code(
                token_endpoint=drip.url + "/token",
                code="c",
                verifier="v" * 43,
                redirect_uri="r",
                settings=settings,
            )
        took = time.monotonic() - started
    assert failed.value.status == 502 and 1.9 <= took < 2.0 + SLACK


@pytest.mark.parametrize("patient", [".", "..", "a/b", ""])
def test_a_token_response_naming_no_fhir_id_is_refused(patient: str) -> None:
    body = {"access_token": "t" * 20, "token_type": "Bearer", "patient": patient}
    with pytest.raises(errors.SmartError) as refused:
        oauth._grant(json.dumps(body).encode())
    assert refused.value.status == 403
