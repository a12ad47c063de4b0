"""Every card the test patients get is one a clinician reads in seconds: held to a length and line
budget, in plain words, with a referral the EHR can create and the study contact."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import orjson
import pytest
from fhir.resources.R4B.servicerequest import ServiceRequest

from cds_service.cards import CardContext, card_order, render_cards
from cds_service.engine.evaluate import evaluate
from cds_service.engine.vectors import LoadedCase, load_vectors
from cds_service.hooks.models import Card
from cds_service.portfolio import Contact, Portfolio, TrialOffer, default_portfolio
from cds_service.record import build_record
from tests.conftest import DATA, packaged_catalog

SUMMARY_LIMIT = 140
DETAIL_CHARS = 700
DETAIL_PARAGRAPHS = 5
CONTACT = Contact(
    name="A. Example", role="Study coordinator", phone="+1 555 0100", email="trials@example.org"
)


def _status_cases() -> list[LoadedCase]:
    return [c for c in load_vectors(packaged_catalog().root) if c.path.stem == "status"]


def _portfolio(max_cards: int = 20) -> Portfolio:
    base = default_portfolio(packaged_catalog())
    offers = {t: TrialOffer(trial=t, contact=CONTACT) for t in base.offers}
    return Portfolio(site="Test", max_cards=max_cards, snooze_days=base.snooze_days, offers=offers)


def _cards(parts: list[Any], as_of: str, portfolio: Portfolio | None = None) -> list[Card]:
    catalog = packaged_catalog()
    record = build_record(parts)
    report = evaluate(catalog, record, as_of=date.fromisoformat(as_of))
    context = CardContext(
        trials=dict(catalog.trials),
        portfolio=portfolio or _portfolio(),
        smart_launch_url="https://cds.example.org/smart/launch",
        patient_id=str(record.patient.get("id")),
        user_id="Practitioner/dr-1",
        today=date.fromisoformat(as_of),
    )
    return render_cards(report.trials, context=context, show_not_eligible=True)


def _every_test_card() -> list[tuple[str, Card]]:
    found = []
    for loaded in _status_cases():
        for card in _cards(loaded.case.parts(), loaded.case.as_of):
            found.append((loaded.label, card))
    for path in sorted((DATA / "demo").glob("*.json")) + sorted((DATA / "synthea").glob("*.json")):
        for card in _cards([orjson.loads(Path(path).read_bytes())], "2026-06-01"):
            found.append((path.name, card))
    return found


CARDS = _every_test_card()


def test_the_test_patients_get_cards_of_every_status() -> None:
    statuses = {c.extension["org.cds-service.trial-eligibility"]["status"] for _, c in CARDS if c.extension}
    assert statuses == {"likely-eligible", "needs-review", "not-eligible"}


@pytest.mark.parametrize(("where", "card"), CARDS, ids=[f"{w}-{i}" for i, (w, _) in enumerate(CARDS)])
def test_card_is_within_its_budget_and_in_plain_words(where: str, card: Card) -> None:
    assert len(card.summary) < SUMMARY_LIMIT
    assert card.summary.split(":")[0] in ("Likely eligible", "Needs review", "Not eligible")
    trial = packaged_catalog().trials[card.extension["org.cds-service.trial-eligibility"]["trial"]]  # type: ignore[index]
    ids = {c.id for c in trial.criteria if "-" in c.id}
    assert not any(criterion_id in card.summary for criterion_id in ids), card.summary
    detail = card.detail or ""
    assert len(detail) <= DETAIL_CHARS, (len(detail), detail)
    assert len([p for p in detail.split("\n\n") if p.strip()]) <= DETAIL_PARAGRAPHS
    assert "**Study team:** A. Example (Study coordinator)" in detail
    assert f"Mapping v{trial.version}" in detail


@pytest.mark.parametrize(("where", "card"), CARDS[:6], ids=[w for w, _ in CARDS[:6]])
def test_referral_is_a_valid_fhir_service_request_for_the_ehr_to_confirm(where: str, card: Card) -> None:
    (suggestion,) = card.suggestions or []
    assert suggestion.label == "Refer to the study team" and suggestion.uuid
    (action,) = suggestion.actions or []
    assert action.type == "create" and action.resource is not None
    request = ServiceRequest.model_validate(action.resource)
    assert request.status == "draft" and str(request.subject.reference).startswith("Patient/")
    assert request.requester is not None and request.requester.reference == "Practitioner/dr-1"
    assert card.selectionBehavior == "at-most-one"


def test_cards_are_capped_and_ordered_best_first() -> None:
    """A portfolio capped at one card shows one, and likely-eligible trials rank first."""
    likely = next(c for c in _status_cases() if "likely eligible" in c.case.name)
    cards = _cards(likely.case.parts(), likely.case.as_of, portfolio=_portfolio(max_cards=1))
    assert len(cards) == 1
    catalog = packaged_catalog()
    report = evaluate(catalog, build_record(likely.case.parts()), as_of=date.fromisoformat(likely.case.as_of))
    ranked = sorted(report.trials, key=lambda r: card_order(r, None))
    assert ranked[0].status == "likely-eligible"


def test_study_team_only_trials_get_no_card() -> None:
    likely = next(c for c in _status_cases() if "likely eligible" in c.case.name)
    base = _portfolio()
    hidden = {t: TrialOffer(trial=t, audience="study-team") for t in base.offers}
    portfolio = Portfolio(site=None, max_cards=3, snooze_days=base.snooze_days, offers=hidden)
    assert _cards(likely.case.parts(), likely.case.as_of, portfolio=portfolio) == []


def test_closed_trials_get_no_card() -> None:
    likely = next(c for c in _status_cases() if "likely eligible" in c.case.name)
    base = _portfolio()
    closed = {t: TrialOffer(trial=t, status="closed") for t in base.offers}
    portfolio = Portfolio(site=None, max_cards=3, snooze_days=base.snooze_days, offers=closed)
    assert _cards(likely.case.parts(), likely.case.as_of, portfolio=portfolio) == []
