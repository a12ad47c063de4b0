"""A dismissed card stays hidden for that patient and trial for the reason's period; the referral's
acceptance is recorded; the study team's report counts both (over HTTP, on a real database file)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cds_service.app import create_app
from cds_service.cli import main
from cds_service.followup import FollowUp
from cds_service.settings import Settings
from tests.hooks.test_service import SERVICE, TRIAL, bundle_of, hook_request, status_case, trial_cards
from tests.support.portfolio import portfolio_file


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        allow_unsigned=True,
        feedback_db_url=f"sqlite:///{tmp_path}/cds.sqlite3",
        portfolio=portfolio_file(tmp_path, TRIAL),
        pseudonym_key="test-pseudonym-key-0123456789abcdef",
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


PATIENT_ID = "snooze-patient-7731"


def _patient() -> list[dict[str, Any]]:
    """The likely-eligible vector patient under a distinctive id (so a byte search means something)."""
    resources = status_case("likely eligible")
    old = next(r["id"] for r in resources if r["resourceType"] == "Patient")
    out = []
    for resource in resources:
        resource = dict(resource)
        if resource["resourceType"] == "Patient":
            resource["id"] = PATIENT_ID
        for field in ("subject", "patient"):
            if resource.get(field) == {"reference": f"Patient/{old}"}:
                resource[field] = {"reference": f"Patient/{PATIENT_ID}"}
        out.append(resource)
    return out


def _card(client: TestClient) -> dict[str, Any] | None:
    body = hook_request(bundle_of(_patient()), client)
    cards = trial_cards(client.post(SERVICE, json=body).json()["cards"])
    return cards[0] if cards else None


def _feedback(client: TestClient, card: dict[str, Any], outcome: str, reason: str | None = None) -> None:
    item: dict[str, Any] = {
        "card": card["uuid"],
        "outcome": outcome,
        "outcomeTimestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if reason:
        item["overrideReason"] = {"reason": {"code": reason, "system": "urn:cds-service:override-reason"}}
    if outcome == "accepted":
        item["acceptedSuggestions"] = [{"id": card["suggestions"][0]["uuid"]}]
    response = client.post(f"{SERVICE}/feedback", json={"feedback": [item]})
    assert response.status_code == 200, response.text


def test_not_interested_hides_the_card_at_the_next_chart_open(client: TestClient) -> None:
    card = _card(client)
    assert card is not None
    _feedback(client, card, "overridden", "not-interested")
    assert _card(client) is None


def test_a_data_problem_does_not_hide_the_card(client: TestClient) -> None:
    card = _card(client)
    assert card is not None
    _feedback(client, card, "overridden", "data-incorrect")
    assert _card(client) is not None


def test_the_snooze_ends_after_its_period(client: TestClient) -> None:
    card = _card(client)
    assert card is not None
    _feedback(client, card, "overridden", "already-screened")
    engine = client.app.state.engine  # type: ignore[attr-defined]
    with engine.connect() as conn:
        key, until = conn.exec_driver_sql("SELECT patient_key, until FROM card_snoozes").one()
    until = datetime.fromisoformat(str(until)).replace(tzinfo=UTC)
    assert timedelta(days=89) < until - datetime.now(UTC) <= timedelta(days=90)  # already-screened: 90 d
    followup = FollowUp(engine, snooze_days={})
    assert followup.hidden_trials(key, until - timedelta(seconds=1)) == {TRIAL}
    assert followup.hidden_trials(key, until + timedelta(seconds=1)) == set()


def test_feedback_report_counts_cards_accepted_and_overridden(
    client: TestClient,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = _card(client)
    assert first is not None
    _feedback(client, first, "accepted")  # the referral was created
    second = _card(client)
    assert second is not None and second["uuid"] != first["uuid"]
    _feedback(client, second, "overridden", "not-interested")
    assert _card(client) is None
    monkeypatch.setenv("CDS_FEEDBACK_DB_URL", settings.feedback_db_url)
    assert main(["feedback-report", "--period", "month", "--json"]) == 0
    import json

    (row,) = json.loads(capsys.readouterr().out)
    assert row["trial"] == TRIAL and row["shown"] == 2 and row["accepted"] == 1
    assert row["overridden"] == {"not-interested": 1} and row["acceptance_rate"] == 0.5
    assert main(["feedback-report"]) == 0
    table = capsys.readouterr().out
    assert TRIAL in table and "50%" in table


def test_the_cards_table_holds_no_raw_patient_id(client: TestClient, tmp_path: Path) -> None:
    card = _card(client)
    assert card is not None
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("cds.sqlite3*"))
    assert PATIENT_ID.encode() not in raw and card["uuid"].encode() in raw
