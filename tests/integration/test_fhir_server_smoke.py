"""Pins the behaviour of the loopback FHIR test server (sekmet-fhir 0.1.1) that the project relies on.

If one of these fails after an upgrade of sekmet-fhir, read deployment/fhir-test-server.md first.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.fhir_server import (
    FhirServer,
    FhirServerError,
    SmartClient,
    free_port,
    next_link,
    start_fhir_server,
)
from tests.support.synthetic_fhir import ICD10CM, LOINC, SNOMED, SyntheticPatient

from .conftest import FHIR_TEST_TOKEN

TIMEOUT = 10


def _get(server: FhirServer, path: str, **params: str) -> dict[str, Any]:
    with requests.get(server.url(path), params=params, headers=server.headers, timeout=TIMEOUT) as r:
        assert r.status_code == 200, r.text[:1000]
        body: dict[str, Any] = r.json()
    return body


def _ids(bundle: dict[str, Any]) -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def _outcomes(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "outcome"]


def test_server_starts_and_serves_metadata(fhir_server: FhirServer) -> None:
    assert fhir_server.is_running()
    assert fhir_server.base_url == f"http://127.0.0.1:{fhir_server.port}/fhir"
    # metadata is anonymous
    with requests.get(fhir_server.url("metadata"), timeout=TIMEOUT) as r:
        assert r.status_code == 200
        cs = r.json()
    assert cs["resourceType"] == "CapabilityStatement"
    assert cs["fhirVersion"] == "4.0.1"


def test_patient_read(fhir_server: FhirServer, synthetic_patients: list[SyntheticPatient]) -> None:
    p = synthetic_patients[0]
    patient = _get(fhir_server, f"Patient/{p.patient_id}")
    assert patient["id"] == p.patient_id  # load_bundle keeps the urn:uuid ids
    assert patient["name"][0]["family"] == "Lupus"
    with requests.get(
        fhir_server.url("Patient/does-not-exist"), headers=fhir_server.headers, timeout=TIMEOUT
    ) as r:
        assert r.status_code == 404
        assert r.json()["resourceType"] == "OperationOutcome"


def test_condition_search_by_patient_and_code(
    fhir_server: FhirServer, synthetic_patients: list[SyntheticPatient]
) -> None:
    p1, p2 = synthetic_patients
    all_p1 = _get(fhir_server, "Condition", patient=p1.patient_id)
    assert all_p1["total"] == p1.n_conditions
    # references were rewritten from urn:uuid to relative Type/id
    first = all_p1["entry"][0]["resource"]
    assert first["subject"]["reference"] == f"Patient/{p1.patient_id}"
    assert first["encounter"]["reference"].startswith("Encounter/")

    for code in (f"{SNOMED}|55464009", f"{ICD10CM}|M32.9", "M32.9"):
        hits = _get(fhir_server, "Condition", patient=f"Patient/{p1.patient_id}", code=code)
        assert hits["total"] == 1, code
        assert not _outcomes(hits)
    # comma = OR
    either = _get(
        fhir_server, "Condition", patient=p1.patient_id, code=f"{SNOMED}|55464009,{SNOMED}|38341003"
    )
    assert either["total"] == 2
    # another patient's data does not leak in
    none = _get(fhir_server, "Condition", patient=p2.patient_id, code=f"{SNOMED}|55464009")
    assert none["total"] == 0
    active = _get(fhir_server, "Condition", patient=p2.patient_id, **{"clinical-status": "active"})
    assert active["total"] == p2.n_conditions


@pytest.mark.parametrize(
    ("rtype", "expected"),
    [
        ("Observation", 30),
        ("MedicationRequest", 1),
        ("Encounter", 1),
        ("MedicationStatement", 0),
        ("Procedure", 0),
        ("Immunization", 0),
        ("AllergyIntolerance", 0),
    ],
)
def test_search_by_patient_per_type(
    fhir_server: FhirServer,
    synthetic_patients: list[SyntheticPatient],
    rtype: str,
    expected: int,
) -> None:
    bundle = _get(fhir_server, rtype, patient=synthetic_patients[0].patient_id)
    assert bundle["type"] == "searchset"
    assert bundle["total"] == expected
    assert not _outcomes(bundle)  # the `patient` parameter is understood for every type


def test_observation_search_by_code_and_date(
    fhir_server: FhirServer, synthetic_patients: list[SyntheticPatient]
) -> None:
    pid = synthetic_patients[0].patient_id
    creat = _get(fhir_server, "Observation", patient=pid, code=f"{LOINC}|2160-0", _count="100")
    assert creat["total"] == 15
    newest = _get(fhir_server, "Observation", patient=pid, code=f"{LOINC}|2160-0", _sort="-date", _count="1")
    assert newest["entry"][0]["resource"]["effectiveDateTime"].startswith("2024-01-29")
    since = _get(fhir_server, "Observation", patient=pid, date="ge2024-01-21")
    assert since["total"] == 10


def test_paging_follows_next_links(
    fhir_server: FhirServer, synthetic_patients: list[SyntheticPatient]
) -> None:
    p = synthetic_patients[0]
    seen: list[str] = []
    page_sizes: list[int] = []
    url: str | None = fhir_server.url("Observation")
    params: dict[str, str] | None = {"patient": p.patient_id, "_count": "10"}
    with requests.Session() as s:
        s.headers.update(fhir_server.headers)
        while url is not None:
            assert len(page_sizes) < 10, "paging does not end"
            with s.get(url, params=params, timeout=TIMEOUT) as r:
                assert r.status_code == 200, r.text[:500]
                page = r.json()
            params = None
            assert page["total"] == p.n_observations
            page_sizes.append(len(_ids(page)))
            seen += _ids(page)
            url = next_link(page)
            if url is not None:  # absolute, on our base, and keeps the patient filter
                assert url.startswith(fhir_server.base_url)
                assert p.patient_id in url
    assert page_sizes == [10, 10, 10]
    assert len(set(seen)) == len(seen) == p.n_observations
    # the helper does the same
    assert len(fhir_server.search_all("Observation", {"patient": p.patient_id, "_count": "7"})) == 30
    # default page size is 20
    assert len(_ids(_get(fhir_server, "Observation", patient=p.patient_id))) == 20


def test_known_bug_compartment_search_next_link_drops_patient(
    fhir_server: FhirServer, synthetic_patients: list[SyntheticPatient]
) -> None:
    """sekmet 0.1.1: Patient/X/Observation pages correctly at first, but its `next` link is
    Observation?_count=..&_offset=.. WITHOUT the patient: do not page compartment searches;
    use Observation?patient=X instead. If this test fails, the bug is fixed: update the notes."""
    p = synthetic_patients[0]
    first = _get(fhir_server, f"Patient/{p.patient_id}/Observation", _count="10")
    assert first["total"] == p.n_observations
    nxt = next_link(first)
    assert nxt is not None
    assert p.patient_id not in nxt


def test_unknown_search_parameter_is_ignored_with_a_warning(
    fhir_server: FhirServer, synthetic_patients: list[SyntheticPatient]
) -> None:
    pid = synthetic_patients[0].patient_id
    lenient = _get(fhir_server, "Condition", patient=pid, **{"not-a-param": "x"})
    assert lenient["total"] == synthetic_patients[0].n_conditions
    assert _outcomes(lenient)[0]["issue"][0]["severity"] == "warning"
    headers = {**fhir_server.headers, "Prefer": "handling=strict"}
    with requests.get(
        fhir_server.url("Condition"),
        params={"patient": pid, "not-a-param": "x"},
        headers=headers,
        timeout=TIMEOUT,
    ) as r:
        assert r.status_code == 400


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token", f"Basic {FHIR_TEST_TOKEN}"])
def test_wrong_or_missing_token_gets_401(
    fhir_server: FhirServer, synthetic_patients: list[SyntheticPatient], authorization: str | None
) -> None:
    headers = {"Accept": "application/fhir+json"}
    if authorization:
        headers["Authorization"] = authorization
    pid = synthetic_patients[0].patient_id
    for path in (f"Patient/{pid}", f"Condition?patient={pid}"):
        with requests.get(fhir_server.url(path), headers=headers, timeout=TIMEOUT) as r:
            assert r.status_code == 401
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
            assert r.json()["resourceType"] == "OperationOutcome"


def test_load_bundle_is_idempotent_and_keeps_ids(
    fhir_server: FhirServer, synthetic_patients: list[SyntheticPatient]
) -> None:
    p = synthetic_patients[1]
    response = fhir_server.load_bundle(p.bundle)  # second time: PUTs update in place
    assert response["type"] == "transaction-response"
    assert {e["response"]["status"] for e in response["entry"]} == {"200 OK"}
    assert _get(fhir_server, "Observation", patient=p.patient_id)["total"] == p.n_observations
    assert _get(fhir_server, "Patient", family="Control")["total"] == 1


def test_synthea_style_post_bundle_gets_server_ids(fhir_server: FhirServer) -> None:
    """preserve_ids=False sends the Bundle as Synthea wrote it: POST entries, urn:uuid refs."""
    from tests.support.synthetic_fhir import make_patient_bundle

    p = make_patient_bundle("posted", family="Posted", n_observations=3)
    response = fhir_server.load_bundle(p.bundle, preserve_ids=False)
    statuses = {e["response"]["status"] for e in response["entry"]}
    assert statuses == {"201 Created"}
    location = response["entry"][0]["response"]["location"]
    new_id = location.split("/_history")[0].rsplit("/", 1)[1]
    assert new_id != p.patient_id
    assert _get(fhir_server, "Observation", patient=new_id)["total"] == 3


def test_invalid_resource_rejects_the_whole_transaction(fhir_server: FhirServer) -> None:
    bad = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:7d9ad0a6-0d2b-4c46-9d54-0c6b1f0e4b11",
                "resource": {"resourceType": "Patient", "id": "rolled-back", "family": "Wrong"},
                "request": {"method": "POST", "url": "Patient"},
            }
        ],
    }
    with pytest.raises(FhirServerError, match="HTTP 400"):
        fhir_server.load_bundle(bad)
    with requests.get(
        fhir_server.url("Patient/rolled-back"), headers=fhir_server.headers, timeout=TIMEOUT
    ) as r:
        assert r.status_code == 404


def test_server_can_be_stopped_and_frees_its_port() -> None:
    with start_fhir_server(token=None) as server:
        # token=None: no auth at all
        with requests.get(server.url("Patient"), timeout=TIMEOUT) as r:
            assert r.status_code == 200
        workdir = server.workdir
    assert not server.is_running()
    assert server.process.returncode is not None
    assert not workdir.exists()
    with pytest.raises(requests.ConnectionError):
        requests.get(server.url("metadata"), timeout=2)
    server.stop()  # idempotent


def test_start_failure_is_reported_with_the_server_log() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        port = blocker.getsockname()[1]
        with pytest.raises(FhirServerError, match=r"(?i)address already in use"):
            start_fhir_server(port=port, startup_timeout=10)


def test_smart_backend_services_only() -> None:
    """SMART support is Backend Services (client_credentials) only: no authorization_code,
    no EHR launch, no PKCE, no `patient` in the token response (see the notes)."""
    client = SmartClient("cds-test", "s3cret", scopes="system/*.read")
    with start_fhir_server(token=None, smart_clients=[client], port=free_port()) as server:
        with requests.get(f"{server.root_url}/.well-known/smart-configuration", timeout=TIMEOUT) as r:
            conf = r.json()
        assert conf["grant_types_supported"] == ["client_credentials"]
        assert conf["token_endpoint"] == f"{server.root_url}/auth/token"
        assert "code_challenge_methods_supported" not in conf
        assert "launch-ehr" not in conf["capabilities"]

        authorize = {
            "response_type": "code",
            "client_id": client.client_id,
            "redirect_uri": "http://127.0.0.1:1/cb",
            "launch": "xyz",
            "scope": "launch openid fhirUser patient/*.read",
            "state": "s",
            "aud": server.base_url,
            "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
            "code_challenge_method": "S256",
        }
        with requests.get(
            conf["authorization_endpoint"], params=authorize, allow_redirects=False, timeout=TIMEOUT
        ) as r:
            assert r.status_code == 400
            assert r.json()["error"] == "unsupported_response_type"

        with requests.post(
            conf["token_endpoint"],
            data={"grant_type": "client_credentials", "scope": "system/*.read"},
            auth=(client.client_id, client.client_secret),
            timeout=TIMEOUT,
        ) as r:
            assert r.status_code == 200, r.text
            token = r.json()
        assert token["token_type"] == "bearer"
        assert token["scope"] == "system/*.read"
        assert "patient" not in token
        bearer = {"Authorization": f"Bearer {token['access_token']}"}
        with requests.get(server.url("Patient"), headers=bearer, timeout=TIMEOUT) as r:
            assert r.status_code == 200
        with requests.post(
            server.url("Patient"),
            data=json.dumps({"resourceType": "Patient"}),
            headers={**bearer, "Content-Type": "application/fhir+json"},
            timeout=TIMEOUT,
        ) as r:
            assert r.status_code == 403  # scope enforcement
        with requests.get(server.url("Patient"), timeout=TIMEOUT) as r:
            assert r.status_code == 401  # token=None but SMART on: a token is required


@pytest.mark.extended
def test_loads_real_synthea_bundles(fhir_server: FhirServer, synthea_dir: Path) -> None:
    """Two small Synthea patients from ../shared load as they are (strict validation on)."""
    files = sorted(synthea_dir.glob("*_*-*.json"), key=lambda f: f.stat().st_size)[:2]
    assert len(files) == 2
    for f in files:
        response = fhir_server.load_bundle(f)
        with f.open(encoding="utf-8") as fh:
            bundle = json.load(fh)
        assert len(response["entry"]) == len(bundle["entry"])
        patient = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
        read = _get(fhir_server, f"Patient/{patient['id']}")
        assert read["id"] == patient["id"]
        n_cond = sum(e["resource"]["resourceType"] == "Condition" for e in bundle["entry"])
        assert len(fhir_server.search_all("Condition", {"patient": patient["id"]})) == n_cond
