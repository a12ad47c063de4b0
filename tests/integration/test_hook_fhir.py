"""The hook against a real FHIR server (sekmet-fhir on loopback): fetch what prefetch lacks, page,
evaluate; and a defined, bounded answer when the token is wrong or the server is gone."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cds_service.app import create_app
from cds_service.engine.vectors import load_vectors
from cds_service.settings import Settings
from tests.support.portfolio import portfolio_file

from .conftest import FHIR_TEST_TOKEN

REPO = Path(__file__).resolve().parents[2]
SERVICE = "/cds-services/trial-eligibility"
LIZ_FILE = next((REPO / "tests" / "data" / "synthea").glob("Liz_Conn_*.json"))
ASA_FILE = next((REPO / "tests" / "data" / "synthea").glob("Asa_Hermiston_*.json"))


def relabel(resources: list[dict[str, Any]], *, prefix: str) -> list[dict[str, Any]]:
    """A vector's resources with ids unique to this test, so several patients share one server."""
    text = json.dumps(resources)
    for resource in resources:
        old = f"{resource['resourceType']}/{resource['id']}"
        text = text.replace(f'"{old}"', f'"{resource["resourceType"]}/{prefix}-{resource["id"]}"')
    out = json.loads(text)
    for resource in out:
        resource["id"] = f"{prefix}-{resource['id']}"
    return list(out)


def status_patient(name: str, prefix: str) -> list[dict[str, Any]]:
    for loaded in load_vectors(REPO / "mappings"):
        if loaded.trial == "NCT06888960" and loaded.path.stem == "status" and name in loaded.case.name:
            return relabel(loaded.case.parts(), prefix=prefix)
    raise LookupError(name)


@pytest.fixture(scope="module")
def loaded(fhir_server: Any) -> dict[str, str]:
    """Patients on the server: a likely-eligible one and Liz (Synthea, not eligible)."""
    likely = status_patient("likely eligible", prefix=f"le{uuid.uuid4().hex[:6]}")
    fhir_server.load_bundle(
        {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in likely]}
    )
    ids = {"likely": next(r["id"] for r in likely if r["resourceType"] == "Patient")}
    for name, path in (("liz", LIZ_FILE), ("asa", ASA_FILE)):
        bundle = json.loads(path.read_text())
        fhir_server.load_bundle(bundle)
        ids[name] = bundle["entry"][0]["resource"]["id"]
    return ids


def make_client(tmp_path: Path, **overrides: Any) -> TestClient:
    options: dict[str, Any] = {
        "allow_unsigned": True,
        "allow_http_loopback": True,
        "feedback_db_url": f"sqlite:///{tmp_path}/f.db",
        "show_not_eligible": True,
        "portfolio": portfolio_file(tmp_path, "NCT06888960"),
    }
    options.update(overrides)
    return TestClient(create_app(Settings(**options)))


@pytest.fixture
def client(tmp_path: Path, fhir_server: Any) -> Iterator[TestClient]:
    with make_client(tmp_path, fhir_server_allowlist=[fhir_server.base_url], fhir_page_size=3) as c:
        yield c


def request_for(patient: str, server: str, token: str = FHIR_TEST_TOKEN, **extra: Any) -> dict[str, Any]:
    body = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "fhirServer": server,
        "fhirAuthorization": {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "patient/*.read",
            "subject": "cds-service",
            "patient": patient,
        },
        "context": {"userId": "Practitioner/1", "patientId": patient},
    }
    body.update(extra)
    return body


def report_of(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    cards = response.json()["cards"]
    (card,) = [
        c for c in cards if c["extension"]["org.cds-service.trial-eligibility"]["trial"] == "NCT06888960"
    ]
    return dict(card["extension"]["org.cds-service.trial-eligibility"])


def test_no_prefetch_fetches_pages_and_evaluates(
    client: TestClient, fhir_server: Any, loaded: dict[str, str]
) -> None:
    report = report_of(client.post(SERVICE, json=request_for(loaded["likely"], fhir_server.base_url)))
    assert report["status"] == "likely-eligible"
    liz = report_of(client.post(SERVICE, json=request_for(loaded["liz"], fhir_server.base_url)))
    assert liz["status"] == "not-eligible"
    sle = next(c for c in liz["criteria"] if c["id"] == "sle-diagnosis")
    assert sle["result"] == "not-met"


def test_fetched_data_decides_exactly_as_full_prefetch(
    client: TestClient, fhir_server: Any, loaded: dict[str, str]
) -> None:
    """Asa has more Conditions, MedicationRequests and Immunizations than a page (3): paging sees all."""
    from tests.support.prefetch import prefetch_from_bundle

    templates = client.get("/cds-services").json()["services"][0]["prefetch"]
    prefetched = request_for(loaded["asa"], fhir_server.base_url)
    prefetched["prefetch"] = prefetch_from_bundle(json.loads(ASA_FILE.read_text()), templates)
    conditions = len(prefetched["prefetch"]["conditions"]["entry"])
    assert conditions > 3, "the test needs more Conditions than one page"
    fetched = report_of(client.post(SERVICE, json=request_for(loaded["asa"], fhir_server.base_url)))
    from_prefetch = report_of(client.post(SERVICE, json=prefetched))
    assert fetched == from_prefetch


def test_partial_prefetch_fetches_only_the_rest(
    client: TestClient, fhir_server: Any, loaded: dict[str, str]
) -> None:
    body = request_for(loaded["likely"], fhir_server.base_url, prefetch={"allergies": None})
    assert report_of(client.post(SERVICE, json=body))["status"] == "likely-eligible"


def test_wrong_token_is_412_naming_the_refusal(
    client: TestClient, fhir_server: Any, loaded: dict[str, str]
) -> None:
    response = client.post(SERVICE, json=request_for(loaded["likely"], fhir_server.base_url, token="wrong"))
    assert response.status_code == 412
    assert "refused the access token" in response.json()["error"]
    assert "wrong" not in response.text


def test_server_not_in_allowlist_is_412(tmp_path: Path, fhir_server: Any, loaded: dict[str, str]) -> None:
    with make_client(tmp_path, fhir_server_allowlist=["https://ehr.example.org/fhir"]) as client:
        response = client.post(SERVICE, json=request_for(loaded["likely"], fhir_server.base_url))
    assert response.status_code == 412 and "allow" in response.json()["error"]


def test_stopped_server_gives_a_bounded_412(tmp_path: Path) -> None:
    from tests.support.fhir_server import free_port

    dead = f"http://127.0.0.1:{free_port()}/fhir"
    with make_client(tmp_path, fhir_server_allowlist=[dead]) as client:
        started = time.perf_counter()
        response = client.post(SERVICE, json=request_for("p1", dead))
        elapsed = time.perf_counter() - started
    assert response.status_code == 412 and elapsed < 5
    assert "unreachable" in response.json()["error"]


@pytest.mark.parametrize(
    ("mode", "fragment"),
    [
        ("hang", "did not answer"),
        ("status:500", "HTTP 500"),
        ("non-json", "malformed"),
        ("loop-next", "page"),
    ],
)
def test_misbehaving_server_gives_a_bounded_412(tmp_path: Path, mode: str, fragment: str) -> None:
    """A FHIR server that hangs, fails or pages forever: the EHR gets a 412 within the deadline."""
    from tests.support.faulty_fhir import FaultyFhirServer

    with FaultyFhirServer(mode=mode) as faulty:
        options = {
            "fhir_server_allowlist": [faulty.base_url],
            "fhir_connect_timeout": 0.5,
            "fhir_read_timeout": 0.5,
            "fhir_total_timeout": 1.5,
            "fhir_page_limit": 3,
        }
        with make_client(tmp_path, **options) as client:
            started = time.perf_counter()
            patient = {"resourceType": "Patient", "id": "p1"}
            body = request_for("p1", faulty.base_url, prefetch={"patient": patient})
            response = client.post(SERVICE, json=body)
            elapsed = time.perf_counter() - started
    assert response.status_code == 412, response.text
    assert elapsed < 3.0
    assert fragment in response.json()["error"], response.json()
    assert FHIR_TEST_TOKEN not in response.text
