"""FhirClient against the real sekmet-fhir server, and against a misbehaving one (fault injection).

The real-server fixtures (``fhir_server``, ``synthetic_patients``) come from tests/fhir_fixtures.py
through tests/conftest.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from cds_service.errors import FhirError, FhirTimeout, FhirUnauthorized, InvalidInput
from cds_service.fhir.client import FhirClient
from cds_service.fhir.queries import fill, prefetch_templates
from cds_service.settings import Settings
from tests.conftest import packaged_catalog
from tests.fhir_fixtures import FHIR_TEST_TOKEN
from tests.support.faulty_fhir import FaultyFhirServer

TOKEN = "s3cret-fault-token"
PATIENT = "secret-patient-id"


def _matches(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e.get("search", {}).get("mode", "match") == "match"]


@pytest.fixture
def lupus(synthetic_patients: Any) -> Any:
    """patient-1: 30 Observations, 3 Conditions."""
    return synthetic_patients[0]


def real_client(server: Any, *, token: str | None = FHIR_TEST_TOKEN, **settings: Any) -> FhirClient:
    return FhirClient(base_url=server.base_url + "/", token=token, settings=Settings(**settings))


# ---------------- the real server ----------------


def test_read_patient_and_missing_one(fhir_server: Any, lupus: Any) -> None:
    with real_client(fhir_server) as client:
        patient = client.read(f"Patient/{lupus.patient_id}")
        assert patient is not None
        assert (patient["resourceType"], patient["id"]) == ("Patient", lupus.patient_id)
        assert client.read("Patient/no-such-patient") is None


def test_search_follows_every_page(fhir_server: Any, lupus: Any) -> None:
    with real_client(fhir_server, fhir_page_size=10) as client:
        bundle = client.search(f"Observation?patient={lupus.patient_id}")
        assert client.requests_made == 3
    ids = [r["id"] for r in _matches(bundle)]
    assert len(ids) == len(set(ids)) == lupus.n_observations == 30
    assert (bundle["resourceType"], bundle["type"], bundle["total"]) == ("Bundle", "searchset", 30)
    assert "link" not in bundle  # the merged Bundle has no next page


def test_search_keeps_an_explicit_count(fhir_server: Any, lupus: Any) -> None:
    with real_client(fhir_server, fhir_page_size=10) as client:
        bundle = client.search(f"Observation?patient={lupus.patient_id}&_count=7")
        assert client.requests_made == 5
    assert len(_matches(bundle)) == 30


def test_continue_bundle_fetches_the_rest_of_a_prefetch(fhir_server: Any, lupus: Any) -> None:
    url = fhir_server.url(f"Observation?patient={lupus.patient_id}&_count=10")
    with requests.get(url, headers=fhir_server.headers, timeout=10) as r:
        first_page = r.json()
    assert len(first_page["entry"]) == 10
    with real_client(fhir_server) as client:
        bundle = client.continue_bundle(first_page)
        assert client.requests_made == 2
        assert client.continue_bundle(bundle) == bundle  # nothing left to fetch
    assert len({r["id"] for r in _matches(bundle)}) == 30


def test_fetch_all_runs_the_real_prefetch_templates(fhir_server: Any, lupus: Any) -> None:
    templates = prefetch_templates(packaged_catalog())
    queries = {key: fill(t, patient_id=lupus.patient_id) for key, t in templates.items()}
    with real_client(fhir_server, fhir_page_size=5, fhir_parallel_searches=4) as client:
        results = client.fetch_all(queries)
    assert list(results) == list(queries)
    assert results["patient"]["id"] == lupus.patient_id
    for key, bundle in results.items():
        if key != "patient":
            assert (bundle["resourceType"], bundle["type"]) == ("Bundle", "searchset"), key
    assert len(_matches(results["conditions"])) == lupus.n_conditions
    assert len(_matches(results["medicationRequests"])) >= lupus.n_medication_requests


def test_wrong_or_missing_token_is_unauthorized(fhir_server: Any, lupus: Any) -> None:
    for token in ("wrong-" + TOKEN, None):
        with real_client(fhir_server, token=token) as client, pytest.raises(FhirUnauthorized) as caught:
            client.search(f"Observation?patient={lupus.patient_id}")
        assert str(caught.value) == "FHIR server refused the access token (HTTP 401)"


def test_page_limit_is_an_error_not_a_truncation(fhir_server: Any, lupus: Any) -> None:
    with real_client(fhir_server, fhir_page_size=10, fhir_page_limit=2) as client:
        with pytest.raises(FhirError, match="Observation search has more than 2 pages"):
            client.search(f"Observation?patient={lupus.patient_id}")
        assert client.requests_made == 2


# ---------------- fault injection ----------------

FAST = {"fhir_connect_timeout": 0.5, "fhir_read_timeout": 0.5, "fhir_total_timeout": 3.0}


@pytest.fixture
def faulty() -> Iterator[FaultyFhirServer]:
    with FaultyFhirServer() as server:
        yield server


@pytest.fixture
def safe_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Everything is logged at DEBUG; afterwards no record may hold the token or the patient id."""
    caplog.set_level(logging.DEBUG)
    yield
    for record in caplog.records:
        assert TOKEN not in record.getMessage()
        if record.name.startswith("cds_service"):
            assert PATIENT not in record.getMessage()


def faulty_client(server: FaultyFhirServer, **settings: Any) -> FhirClient:
    return FhirClient(base_url=server.base_url, token=TOKEN, settings=Settings(**{**FAST, **settings}))


def _search(c: FhirClient) -> object:
    return c.search(f"Observation?patient={PATIENT}")


def _read(c: FhirClient) -> object:
    return c.read(f"Patient/{PATIENT}")


def _fetch_all(c: FhirClient) -> object:
    return c.fetch_all({f"k{i}": f"Condition?patient={PATIENT}&i={i}" for i in range(4)})


FAULTS: list[tuple[str, Callable[[FhirClient], object], type[FhirError], str, dict[str, Any]]] = [
    ("hang", _search, FhirTimeout, "did not answer in time for Observation search", {}),
    ("hang", _read, FhirTimeout, "did not answer in time for Patient read", {}),
    ("hang", _fetch_all, FhirTimeout, "did not answer in time for Condition search", {}),
    ("slow-loop", _search, FhirTimeout, "within 1 s in total", {"fhir_total_timeout": 1.0}),
    ("status:500", _search, FhirError, "^FHIR server answered HTTP 500 for Observation search$", {}),
    ("status:500", _fetch_all, FhirError, "HTTP 500 for Condition search", {}),
    ("status:503", _read, FhirError, "HTTP 503 for Patient read", {}),
    ("status:404", _search, FhirError, "HTTP 404 for Observation search", {}),
    ("status:401", _read, FhirUnauthorized, "refused the access token \\(HTTP 401\\)", {}),
    ("status:403", _search, FhirUnauthorized, "refused the access token \\(HTTP 403\\)", {}),
    ("non-json", _search, FhirError, "malformed page for Observation search \\(not JSON\\)", {}),
    ("non-json", _read, FhirError, "malformed page for Patient read", {}),
    ("not-bundle", _search, FhirError, "malformed page for Observation search \\(not a Bundle\\)", {}),
    ("foreign-next", _search, FhirError, "next link outside its base URL", {}),
    ("loop-next", _search, FhirError, "more than 5 pages", {"fhir_page_limit": 5}),
    ("close", _search, FhirError, "closed the connection during Observation search", {}),
    ("big", _search, FhirError, "more than 1024 bytes for Observation search", {"max_body_bytes": 1024}),
    ("redirect", _read, FhirError, "HTTP 302 for Patient read", {}),
]


@pytest.mark.parametrize(
    ("mode", "call", "error", "message", "settings"),
    FAULTS,
    ids=[f"{mode}-{call.__name__.strip('_')}" for mode, call, *_ in FAULTS],
)
@pytest.mark.usefixtures("safe_logs")
def test_fault(
    faulty: FaultyFhirServer,
    mode: str,
    call: Callable[[FhirClient], object],
    error: type[FhirError],
    message: str,
    settings: dict[str, Any],
) -> None:
    faulty.mode = mode
    started = time.monotonic()
    with faulty_client(faulty, **settings) as client, pytest.raises(error, match=message) as caught:
        call(client)
    assert time.monotonic() - started < 2.5
    assert TOKEN not in str(caught.value) and PATIENT not in str(caught.value)
    assert "127.0.0.1" not in str(caught.value) and "evil" not in str(caught.value)


@pytest.mark.usefixtures("safe_logs")
def test_fault_limits_requests(faulty: FaultyFhirServer) -> None:
    """A foreign next link and a redirect are never followed; a loop stops at the page limit."""
    for mode, call, expected in (
        ("foreign-next", _search, 1),
        ("redirect", _read, 1),
        ("loop-next", _search, 3),
    ):
        faulty.mode, faulty.seen = mode, []
        with faulty_client(faulty, fhir_page_limit=3) as client, pytest.raises(FhirError):
            call(client)
        assert len(faulty.seen) == expected, mode


@pytest.mark.usefixtures("safe_logs")
def test_stopped_server_is_unreachable_quickly() -> None:
    server = FaultyFhirServer()
    server.stop()
    started = time.monotonic()
    with faulty_client(server) as client, pytest.raises(FhirError, match=r"^FHIR server unreachable$"):
        _search(client)
    assert time.monotonic() - started < 1.5


@pytest.mark.usefixtures("safe_logs")
def test_headers_count_and_missing_read(faulty: FaultyFhirServer) -> None:
    with faulty_client(faulty, fhir_page_size=50) as client:
        assert len(_search(client)["entry"]) == 1  # type: ignore[index]
        faulty.mode = "status:410"
        assert _read(client) is None
    path, auth = faulty.seen[0]
    assert path == f"/fhir/Observation?patient={PATIENT}&_count=50"
    assert auth == f"Bearer {TOKEN}"
    faulty.mode, faulty.seen = "ok", []
    with FhirClient(base_url=faulty.base_url, token=None, settings=Settings()) as anonymous:
        anonymous.read("Patient/1")
    assert faulty.seen == [("/fhir/Patient/1", None)]


@pytest.mark.usefixtures("safe_logs")
def test_first_failure_in_fetch_all_abandons_the_rest(faulty: FaultyFhirServer) -> None:
    faulty.mode = "status:500"
    with (
        faulty_client(faulty, fhir_parallel_searches=1) as client,
        pytest.raises(FhirError, match="HTTP 500"),
    ):
        _fetch_all(client)
    assert len(faulty.seen) == 1  # the three queued searches never started


@pytest.mark.parametrize(
    "query",
    ["Patient/../admin", "Patient/a b", "observation?patient=1", "Observation?patient=1#x", "../Patient/1"],
)
def test_queries_that_could_leave_the_base_are_refused(faulty: FaultyFhirServer, query: str) -> None:
    with faulty_client(faulty) as client, pytest.raises(InvalidInput, match=r"FHIR (read|search) must be"):
        client.fetch_all({"key": query})
    assert faulty.seen == []
