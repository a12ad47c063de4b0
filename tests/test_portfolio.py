"""The site's portfolio file is validated at start, naming the file and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from cds_service.errors import MappingError
from cds_service.portfolio import load_portfolio
from tests.conftest import REPO, packaged_catalog

EXAMPLE = REPO / "deployment" / "portfolio.example.yaml"


def test_the_example_portfolio_loads() -> None:
    portfolio = load_portfolio(EXAMPLE, packaged_catalog())
    assert portfolio.max_cards == 3 and portfolio.for_clinicians() == ["NCT06888960"]
    offer = portfolio.offer("NCT06888960")
    assert offer is not None and offer.contact is not None
    assert "Study coordinator" in offer.contact.line()


def test_no_file_offers_every_trial_to_clinicians() -> None:
    portfolio = load_portfolio(None, packaged_catalog())
    assert set(portfolio.for_clinicians()) == set(packaged_catalog().trials)


@pytest.mark.parametrize(
    ("text", "wanted"),
    [
        ("trials: [{trial: NCT00000000}]", "no mapping for NCT00000000"),
        ("trials: [{trial: NCT06888960, status: paused}]", "trials[0] › status"),
        ("trials: [{trial: NCT06888960, audience: everyone}]", "audience"),
        ("trials: [{trial: NCT06888960, contact: {name: x, email: not-an-email}}]", "email"),
        ("max_cards: 0\ntrials: [{trial: NCT06888960}]", "max_cards"),
        ("snooze_days: {bored: 3}\ntrials: [{trial: NCT06888960}]", "unknown reason"),
        ("trials: [{trial: NCT06888960}, {trial: NCT06888960}]", "listed twice"),
        ("trials: [{trial: NCT06888960, colour: blue}]", "colour"),
    ],
)
def test_a_bad_portfolio_is_refused_naming_file_and_field(tmp_path: Path, text: str, wanted: str) -> None:
    path = tmp_path / "portfolio.yaml"
    path.write_text(text)
    with pytest.raises(MappingError) as err:
        load_portfolio(path, packaged_catalog())
    assert str(path) in str(err.value) and wanted in str(err.value)
