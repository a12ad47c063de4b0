"""Fixtures for the SMART app: the real FHIR test server (sekmet), the test authorization server in
front of it, the three vector patients, and a TestClient on the app with a controllable clock."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from cds_service.settings import Settings
from cds_service.smart.router import build_smart_router
from cds_service.smart.sessions import SessionStore
from tests.conftest import packaged_catalog
from tests.fhir_fixtures import FHIR_TEST_TOKEN
from tests.smart.patients import VectorPatient, vector_patient
from tests.support.fhir_server import FhirServer
from tests.support.smart_auth_server import SmartAuthServer

CLIENT_ID = "cds-trials-test"
TEST_ORIGIN = "https://testserver"
REDIRECT_URI = f"{TEST_ORIGIN}/smart/callback"


@pytest.fixture(scope="session")
def vector_patients(fhir_server: FhirServer) -> dict[str, VectorPatient]:
    """likely-eligible / needs-review / not-eligible patients for NCT06888960, loaded into sekmet."""
    patients = {s: vector_patient(s) for s in ("likely-eligible", "needs-review", "not-eligible")}
    for p in patients.values():
        fhir_server.load_bundle(p.bundle)
    return patients


@pytest.fixture(scope="session")
def auth_server(fhir_server: FhirServer) -> Iterator[SmartAuthServer]:
    """The EHR's authorization server (and FHIR proxy); hands out sekmet's bearer token."""
    server = SmartAuthServer(
        fhir_upstream=fhir_server.base_url,
        access_token=FHIR_TEST_TOKEN,
        client_id=CLIENT_ID,
        redirect_uris=[REDIRECT_URI],
    )
    with server:
        yield server


def smart_settings(auth: SmartAuthServer, **changes: object) -> Settings:
    base = Settings(
        smart_client_id=CLIENT_ID,
        smart_iss_allowlist=[auth.fhir_base],
        allow_http_loopback=True,
        smart_redirect_uri=REDIRECT_URI,
    )
    return Settings.model_validate({**base.model_dump(), **changes})


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class SmartHarness:
    client: TestClient
    auth: SmartAuthServer
    sessions: SessionStore
    clock: FakeClock
    settings: Settings
    app: FastAPI


def make_harness(
    auth: SmartAuthServer, sessions: SessionStore | None = None, **changes: object
) -> SmartHarness:
    clock = FakeClock()
    sessions = sessions or SessionStore(clock=clock)
    settings = smart_settings(auth, **changes)
    app = FastAPI()
    router = build_smart_router(settings=settings, catalog=packaged_catalog(), sessions=sessions)
    app.include_router(router, prefix="/smart")
    client = TestClient(app, base_url=TEST_ORIGIN, follow_redirects=False)
    return SmartHarness(client, auth, sessions, clock, settings, app)


@pytest.fixture
def smart(auth_server: SmartAuthServer, vector_patients: dict[str, VectorPatient]) -> Iterator[SmartHarness]:
    harness = make_harness(auth_server)
    with harness.client:
        yield harness
