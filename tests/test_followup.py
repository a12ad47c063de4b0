"""Snoozes and the study team's yield report, on a real SQLite database file."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine

from cds_service.followup import FollowUp, Outcome, Shown, feedback_report
from cds_service.portfolio import DEFAULT_SNOOZE_DAYS

NOW = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
PATIENT_ID = "patient-0042"


def _key(patient_id: str) -> str:
    return hmac.new(b"test-key", patient_id.encode(), hashlib.sha256).hexdigest()


def _followup(tmp_path: Path) -> FollowUp:
    return FollowUp(create_engine(f"sqlite:///{tmp_path / 'cds.sqlite3'}"), snooze_days=DEFAULT_SNOOZE_DAYS)


def test_not_interested_hides_the_trial_for_the_patient_until_the_period_ends(tmp_path: Path) -> None:
    followup = _followup(tmp_path)
    key = _key(PATIENT_ID)
    followup.record_shown(key, [Shown("card-1", "NCT06888960", "likely-eligible")], NOW)
    assert followup.apply([Outcome("card-1", "overridden", "not-interested", NOW)]) == 1
    days = DEFAULT_SNOOZE_DAYS["not-interested"]
    assert followup.hidden_trials(key, NOW + timedelta(days=days - 1)) == {"NCT06888960"}
    assert followup.hidden_trials(key, NOW + timedelta(days=days, seconds=1)) == set()
    assert followup.hidden_trials(_key("someone-else"), NOW) == set()


def test_each_reason_has_its_own_period_and_others_do_not_snooze(tmp_path: Path) -> None:
    followup = _followup(tmp_path)
    key = _key(PATIENT_ID)
    followup.record_shown(
        key,
        [
            Shown("a", "T1", "needs-review"),
            Shown("b", "T2", "needs-review"),
            Shown("c", "T3", "needs-review"),
        ],
        NOW,
    )
    snoozed = followup.apply(
        [
            Outcome("a", "overridden", "already-screened", NOW),
            Outcome("b", "overridden", "data-incorrect", NOW),  # a data problem: show it again
            Outcome("c", "accepted", None, NOW),
            Outcome("never-shown", "overridden", "not-interested", NOW),
        ]
    )
    assert snoozed == 1
    screened = DEFAULT_SNOOZE_DAYS["already-screened"]
    assert followup.hidden_trials(key, NOW + timedelta(days=screened - 1)) == {"T1"}
    assert followup.hidden_trials(key, NOW + timedelta(days=screened + 1)) == set()


def test_no_raw_patient_id_is_stored(tmp_path: Path) -> None:
    followup = _followup(tmp_path)
    followup.record_shown(_key(PATIENT_ID), [Shown("card-1", "T1", "likely-eligible")], NOW)
    followup.apply([Outcome("card-1", "overridden", "not-eligible", NOW)])
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert PATIENT_ID.encode() not in raw and _key(PATIENT_ID).encode() in raw


def test_feedback_report_counts_shown_accepted_overridden_and_the_rate() -> None:
    shown = [
        {"card": "a", "trial": "T1", "shown_at": NOW},
        {"card": "b", "trial": "T1", "shown_at": NOW + timedelta(days=1)},
        {"card": "c", "trial": "T1", "shown_at": NOW + timedelta(days=2)},
        {"card": "d", "trial": "T1", "shown_at": NOW + timedelta(days=2)},
        {"card": "e", "trial": "T2", "shown_at": NOW + timedelta(days=40)},
    ]
    feedback: list[dict[str, Any]] = [
        {"card": "a", "outcome": "accepted", "override_code": None},
        {"card": "b", "outcome": "overridden", "override_code": "not-interested"},
        {"card": "c", "outcome": "overridden", "override_code": "not-interested"},
        {"card": "e", "outcome": "overridden", "override_code": None},
    ]
    rows = feedback_report(shown, feedback, period="month")
    assert rows == [
        {
            "trial": "T1",
            "period": "2026-06",
            "shown": 4,
            "accepted": 1,
            "overridden": {"not-interested": 2},
            "acceptance_rate": 0.25,
        },
        {
            "trial": "T2",
            "period": "2026-07",
            "shown": 1,
            "accepted": 0,
            "overridden": {"no reason given": 1},
            "acceptance_rate": 0.0,
        },
    ]
