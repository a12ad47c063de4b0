"""CDS Hooks contract: discovery and responses field by field, prefetch states, 400/412/413."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cds_service.app import create_app
from cds_service.engine.vectors import load_vectors
from cds_service.settings import Settings
from tests.conftest import DATA, REPO
from tests.support.portfolio import portfolio_file
from tests.support.prefetch import patient_id, prefetch_from_bundle, searchset

SERVICE = "/cds-services/trial-eligibility"
TRIAL = "NCT06888960"


def test_a_not_eligible_card_per_trial_up_to_the_cap(tmp_path: Path) -> None:
    """Liz is eligible for none of the packaged trials: with not-eligible cards on, she gets the
    portfolio's cap of them, never more."""
    settings = Settings(
        allow_unsigned=True, show_not_eligible=True, feedback_db_url=f"sqlite:///{tmp_path}/f.sqlite3"
    )
    with TestClient(create_app(settings)) as client:
        cards = client.post(SERVICE, json=hook_request(LIZ, client)).json()["cards"]
    assert len(cards) == min(3, len(_packaged_trials()))
    assert all(c["summary"].startswith("Not eligible: ") for c in cards)


def _packaged_trials() -> list[str]:
    return sorted(p.stem for p in (REPO / "mappings" / "trials").glob("*.yaml"))


def trial_cards(cards: list[dict[str, Any]], trial: str = TRIAL) -> list[dict[str, Any]]:
    """The cards of one trial (other packaged trials may give this patient cards too)."""
    return [c for c in cards if c["extension"]["org.cds-service.trial-eligibility"]["trial"] == trial]


LIZ = json.loads(next((DATA / "synthea").glob("Liz_Conn_*.json")).read_text())


def status_case(name: str) -> list[dict[str, Any]]:
    """The resources of the status vector with that name (likely-eligible, needs-review, ...)."""
    for loaded in load_vectors(REPO / "mappings"):
        if loaded.trial == TRIAL and loaded.path.stem == "status" and name in loaded.case.name:
            return loaded.case.parts()
    raise LookupError(name)


def bundle_of(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"fullUrl": f"{r['resourceType']}/{r['id']}", "resource": r} for r in resources],
    }


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(allow_unsigned=True, feedback_db_url=f"sqlite:///{tmp_path}/feedback.sqlite3")
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def hook_request(bundle: dict[str, Any], client: TestClient, **changes: Any) -> dict[str, Any]:
    templates = client.get("/cds-services").json()["services"][0]["prefetch"]
    body: dict[str, Any] = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/example", "patientId": patient_id(bundle)},
        "prefetch": prefetch_from_bundle(bundle, templates),
    }
    body.update(changes)
    return body


def assert_no_nulls_or_empties(value: Any, path: str = "$") -> None:
    if isinstance(value, dict):
        assert value, f"empty object at {path}"
        for key, item in value.items():
            assert_no_nulls_or_empties(item, f"{path}.{key}")
    elif isinstance(value, list):
        assert value, f"empty list at {path}"
        for index, item in enumerate(value):
            assert_no_nulls_or_empties(item, f"{path}[{index}]")
    else:
        assert value is not None and value != "", f"null or empty at {path}"


def test_discovery_lists_the_service_with_prefetch_derived_from_mappings(client: TestClient) -> None:
    response = client.get("/cds-services")
    assert response.status_code == 200
    body = response.json()
    assert_no_nulls_or_empties(body)
    (service,) = body["services"]
    assert service["id"] == "trial-eligibility" and service["hook"] == "patient-view"
    assert service["title"] and "NCT06888960" in service["description"]
    prefetch = service["prefetch"]
    assert prefetch["patient"] == "Patient/{{context.patientId}}"
    assert prefetch["conditions"] == "Condition?patient={{context.patientId}}"
    codes = re.search(r"code=([^&]+)", prefetch["observations"])
    assert codes and {"2160-0", "14682-9", "2458-8", "71773-6"} <= set(codes.group(1).split(","))
    for key in ("medicationRequests", "procedures", "immunizations", "allergies"):
        assert "patient={{context.patientId}}" in prefetch[key]


def test_likely_eligible_patient_gets_one_card_that_follows_the_spec(client: TestClient) -> None:
    bundle = bundle_of(status_case("likely eligible"))
    response = client.post(SERVICE, json=hook_request(bundle, client))
    assert response.status_code == 200, response.text
    body = response.json()
    assert_no_nulls_or_empties(body)
    (card,) = trial_cards(body["cards"])
    assert len(card["summary"]) < 140
    assert card["summary"] == "Likely eligible: CC312 in SLE (NCT06888960)"
    assert card["indicator"] in ("info", "warning", "critical")
    assert card["source"]["label"] and card["source"]["url"].startswith("https://clinicaltrials.gov/")
    uuid.UUID(card["uuid"])
    links = {link["type"]: link for link in card["links"]}
    assert links["absolute"]["url"] == "https://clinicaltrials.gov/study/NCT06888960"
    assert "appContext" not in links["absolute"]
    assert links["smart"]["url"].endswith("/smart/launch") and links["smart"]["url"].startswith("http")
    assert json.loads(links["smart"]["appContext"]) == {"trial": "NCT06888960"}
    assert all(reason["display"] for reason in card["overrideReasons"])
    report = card["extension"]["org.cds-service.trial-eligibility"]
    assert report["trial"] == "NCT06888960" and report["status"] == "likely-eligible"
    assert {c["id"] for c in report["criteria"]} >= {"adult", "sle-diagnosis", "tuberculosis"}
    assert "**Candidate because:**" in card["detail"] and "**To review (" in card["detail"]
    assert "**Study team:**" in card["detail"] and "Mapping v2.0" in card["detail"]
    (suggestion,) = card["suggestions"]
    assert suggestion["label"] == "Refer to the study team" and card["selectionBehavior"] == "at-most-one"
    assert suggestion["actions"][0]["resource"]["resourceType"] == "ServiceRequest"


def test_needs_review_card_counts_the_items_to_review(client: TestClient) -> None:
    bundle = bundle_of(status_case("needs review: no IgA"))
    (card,) = trial_cards(client.post(SERVICE, json=hook_request(bundle, client)).json()["cards"])
    report = card["extension"]["org.cds-service.trial-eligibility"]
    unknown = sum(1 for c in report["criteria"] if c["result"] == "unknown")
    assert card["summary"] == f"Needs review: CC312 in SLE (NCT06888960) – {unknown} items to check"


def test_not_eligible_patient_gets_no_card_by_default(client: TestClient) -> None:
    response = client.post(SERVICE, json=hook_request(LIZ, client))
    assert response.status_code == 200
    assert response.json() == {"cards": []}


def test_not_eligible_cards_shown_when_configured(tmp_path: Path) -> None:
    settings = Settings(
        allow_unsigned=True,
        show_not_eligible=True,
        feedback_db_url=f"sqlite:///{tmp_path}/f.sqlite3",
        portfolio=portfolio_file(tmp_path, TRIAL),
    )
    with TestClient(create_app(settings)) as client:
        (card,) = trial_cards(client.post(SERVICE, json=hook_request(LIZ, client)).json()["cards"])
    assert card["summary"].startswith("Not eligible: CC312 in SLE (NCT06888960) – ")
    assert "sle-diagnosis" not in card["summary"]  # a clinician's words, never an internal id


def test_an_invalid_deciding_entry_gives_a_review_card_not_a_400(client: TestClient) -> None:
    """One malformed Observation in the prefetch must not void the chart's cards (it answered 400,
    blaming the EHR, and the clinician saw nothing): the criterion it decided is left to review."""
    resources = status_case("likely eligible")
    observation = next(r for r in resources if r["resourceType"] == "Observation")
    observation["meta"] = {"lastUpdated": "yesterday"}  # not an instant: not valid FHIR R4
    response = client.post(SERVICE, json=hook_request(bundle_of(resources), client))
    assert response.status_code == 200, response.text
    (card,) = trial_cards(response.json()["cards"])
    assert card["summary"].startswith("Needs review: CC312 in SLE (NCT06888960)")
    report = card["extension"]["org.cds-service.trial-eligibility"]
    assert report["status"] == "needs-review"
    assert "Observation it rests on is not valid FHIR R4" in card["detail"]
    assert observation["id"] not in card["detail"]


def test_null_prefetch_means_no_data_and_is_not_refetched(client: TestClient) -> None:
    """Every key null (and no fhirServer): evaluated on nothing, not a 412."""
    body = hook_request(LIZ, client)
    body["prefetch"] = {key: None for key in body["prefetch"]}
    response = client.post(SERVICE, json=body)
    assert response.status_code == 200, response.text


def test_absent_prefetch_without_fhir_server_is_412(client: TestClient) -> None:
    body = hook_request(LIZ, client)
    del body["prefetch"]["observations"]
    response = client.post(SERVICE, json=body)
    assert response.status_code == 412
    assert "observations" in response.json()["error"] and "fhirServer" in response.json()["error"]


def test_operation_outcome_prefetch_counts_as_missing(client: TestClient) -> None:
    body = hook_request(LIZ, client)
    body["prefetch"]["conditions"] = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "timeout"}],
    }
    response = client.post(SERVICE, json=body)
    assert response.status_code == 412 and "conditions" in response.json()["error"]


def test_paged_prefetch_without_fhir_server_is_412(client: TestClient) -> None:
    body = hook_request(LIZ, client)
    paged = body["prefetch"]["observations"]
    paged["link"] = [{"relation": "next", "url": "https://ehr.example.org/fhir/Observation?page=2"}]
    response = client.post(SERVICE, json=body)
    assert response.status_code == 412 and "observations" in response.json()["error"]


def test_prefetch_patient_must_be_the_context_patient(client: TestClient) -> None:
    body = hook_request(LIZ, client)
    body["context"]["patientId"] = "someone-else"
    response = client.post(SERVICE, json=body)
    assert response.status_code == 400
    assert "context.patientId" in response.json()["error"]


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda b: b.pop("hookInstance"), "hookInstance"),
        (lambda b: b.update(hook="order-sign"), "hook"),
        (lambda b: b["context"].pop("patientId"), "context.patientId"),
        (
            lambda b: b.update(
                fhirAuthorization={
                    "access_token": "t",
                    "token_type": "Bearer",
                    "expires_in": 300,
                    "scope": "x",
                    "subject": "s",
                }
            ),
            "fhirServer is required",
        ),
        (lambda b: b["prefetch"].update(conditions=[1, 2]), "prefetch 'conditions'"),
        (
            lambda b: b["prefetch"].update(conditions={"resourceType": "Bundle", "entry": [{"resource": 1}]}),
            "entry 0",
        ),
    ],
)
def test_malformed_requests_get_400_with_a_message(client: TestClient, mutate: Any, fragment: str) -> None:
    body = hook_request(LIZ, client)
    mutate(body)
    response = client.post(SERVICE, json=body)
    assert response.status_code == 400, response.text
    assert fragment in response.json()["error"]


def test_not_json_is_400(client: TestClient) -> None:
    response = client.post(SERVICE, content=b"{nope", headers={"content-type": "application/json"})
    assert response.status_code == 400 and response.json() == {"error": "request body is not JSON"}


def test_body_over_the_limit_is_413(tmp_path: Path) -> None:
    settings = Settings(
        allow_unsigned=True, max_body_bytes=4096, feedback_db_url=f"sqlite:///{tmp_path}/f.db"
    )
    with TestClient(create_app(settings)) as client:
        response = client.post(SERVICE, content=b"x" * 5000, headers={"content-type": "application/json"})
        assert response.status_code == 413 and "4096" in response.json()["error"]

        def chunks() -> Iterator[bytes]:
            for _ in range(5):
                yield b"x" * 1000

        response = client.post(SERVICE, content=chunks(), headers={"content-type": "application/json"})
        assert response.status_code == 413


def test_unsigned_call_is_refused_unless_allowed(tmp_path: Path) -> None:
    settings = Settings(feedback_db_url=f"sqlite:///{tmp_path}/f.db")
    with TestClient(create_app(settings)) as client:
        response = client.post(SERVICE, json=hook_request(LIZ, client))
        assert response.status_code == 401 and response.content == b""
        response = client.post(f"{SERVICE}/feedback", json={"feedback": []})
        assert response.status_code == 401


def test_feedback_is_stored_once_even_when_repeated(client: TestClient) -> None:
    item = {
        "card": str(uuid.uuid4()),
        "outcome": "overridden",
        "outcomeTimestamp": "2026-06-01T10:00:00Z",
        "overrideReason": {
            "reason": {
                "code": "already-screened",
                "system": "urn:cds-service:override-reason",
                "display": "Already screened",
            },
            "userComment": "seen last week",
        },
    }
    for _ in range(3):
        response = client.post(f"{SERVICE}/feedback", json={"feedback": [item]})
        assert response.status_code == 200 and response.json() == {"received": 1}
    store = client.app.state.store  # type: ignore[attr-defined]
    rows = store.rows()
    assert len(rows) == 1 and rows[0]["override_code"] == "already-screened"


@pytest.mark.parametrize(
    "body",
    [
        {"feedback": []},
        {"feedback": [{"card": "x", "outcome": "maybe", "outcomeTimestamp": "2026-06-01T10:00:00Z"}]},
        {"feedback": [{"card": "x", "outcome": "accepted", "outcomeTimestamp": "2026-06-01T10:00:00Z"}]},
        {"feedback": [{"card": "x", "outcome": "overridden", "outcomeTimestamp": "yesterday"}]},
        {"nothing": 1},
    ],
)
def test_malformed_feedback_is_400(client: TestClient, body: dict[str, Any]) -> None:
    response = client.post(f"{SERVICE}/feedback", json=body)
    assert response.status_code == 400 and response.json()["error"]


def test_feedback_survives_a_restart(tmp_path: Path) -> None:
    """Durable: a second app on the same database file sees the first one's feedback."""
    settings = Settings(allow_unsigned=True, feedback_db_url=f"sqlite:///{tmp_path}/durable.sqlite3")
    item = {"card": "c1", "outcome": "overridden", "outcomeTimestamp": "2026-06-01T10:00:00Z"}
    with TestClient(create_app(settings)) as client:
        assert client.post(f"{SERVICE}/feedback", json={"feedback": [item]}).status_code == 200
    with TestClient(create_app(settings)) as client:
        assert client.app.state.store.count() == 1  # type: ignore[attr-defined]


def test_searchset_helper_is_a_bundle() -> None:
    assert searchset([])["type"] == "searchset"


def test_cors_preflight_allows_the_configured_origin_with_authorization(tmp_path: Path) -> None:
    """The CDS Hooks sandbox runs in a browser and sends Authorization: its preflight must pass."""
    settings = Settings(
        allow_unsigned=True,
        cors_origins=["https://sandbox.cds-hooks.org"],
        feedback_db_url=f"sqlite:///{tmp_path}/f.db",
    )
    with TestClient(create_app(settings)) as client:
        allowed = client.options(
            SERVICE,
            headers={
                "Origin": "https://sandbox.cds-hooks.org",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
        other = client.options(
            SERVICE, headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
        )
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://sandbox.cds-hooks.org"
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-origin" not in other.headers


def test_garbage_collector_is_running_again_after_every_kind_of_answer(client: TestClient) -> None:
    """The hook pauses the cyclic GC from parse to free; every path must resume it."""
    import gc

    good = hook_request(LIZ, client)
    missing = hook_request(LIZ, client)
    del missing["prefetch"]["conditions"]
    for body, status in ((good, 200), (missing, 412), ({"hook": "patient-view"}, 400)):
        assert client.post(SERVICE, json=body).status_code == status
        assert gc.isenabled()


def test_ehr_text_cannot_inject_links_or_html_into_the_card() -> None:
    from cds_service.cards import _escape

    text = _escape("SLE [click](https://evil.example) <img src=x> *bold* `code`")
    assert text == r"SLE \[click\](https://evil.example) \<img src=x\> \*bold\* \`code\`"
