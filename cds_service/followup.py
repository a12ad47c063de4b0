"""What happens after a card: which cards were shown, snoozes, and the study team's yield report.

Alert fatigue is the main reason trial alerts fail, so a clinician's "not interested", "already
screened" or "not eligible" hides that trial's card for that patient for the site's configured
period (``snooze_days`` in the portfolio). Feedback names only the card, so the service remembers,
for each card it showed, the trial and a keyed pseudonym of the patient (HMAC-SHA256 under
``CDS_PSEUDONYM_KEY``; no raw patient id is ever stored), and looks the card up when feedback
arrives. ``feedback_report`` gives, per trial and period, the cards shown, accepted (the referral),
overridden by reason, and the acceptance rate — the alert's positive predictive value as the study
team sees it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    MetaData,
    String,
    Table,
    and_,
    delete,
    insert,
    select,
)

_metadata = MetaData()

cards_shown = Table(
    "cards_shown",
    _metadata,
    Column("card", String(200), primary_key=True),
    Column("trial", String(64), nullable=False, index=True),
    Column("status", String(20), nullable=False),
    Column("patient_key", String(64), nullable=False, index=True),
    Column("shown_at", DateTime(timezone=True), nullable=False, index=True),
)

snoozes = Table(
    "card_snoozes",
    _metadata,
    Column("patient_key", String(64), primary_key=True),
    Column("trial", String(64), primary_key=True),
    Column("reason", String(40), nullable=False),
    Column("until", DateTime(timezone=True), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)


@dataclass(frozen=True)
class Shown:
    card: str
    trial: str
    status: str


@dataclass(frozen=True)
class Outcome:
    """One feedback item, as much of it as follow-up needs."""

    card: str
    outcome: str  # accepted | overridden
    reason: str | None  # the override reason code
    at: datetime


class FollowUp:
    def __init__(self, engine: Engine, *, snooze_days: Mapping[str, int]) -> None:
        self._engine = engine
        self._snooze_days = dict(snooze_days)
        _metadata.create_all(engine)

    def hidden_trials(self, patient_key: str, now: datetime) -> set[str]:
        """Trials whose cards this patient's clinicians asked not to see again yet."""
        active = and_(snoozes.c.patient_key == patient_key, snoozes.c.until > now)
        query = select(snoozes.c.trial).where(active)
        with self._engine.connect() as conn:
            return {row[0] for row in conn.execute(query)}

    def record_shown(self, patient_key: str, cards: Iterable[Shown], now: datetime) -> None:
        rows = [
            {"card": c.card, "trial": c.trial, "status": c.status, "patient_key": patient_key}
            | {"shown_at": now}
            for c in cards
        ]
        if rows:
            with self._engine.begin() as conn:
                conn.execute(insert(cards_shown), rows)

    def apply(self, outcomes: Iterable[Outcome]) -> int:
        """Snooze the trial for the patient for each override whose reason has a period; returns how
        many snoozes were set. Feedback for a card this service never showed is ignored."""
        snoozed = 0
        with self._engine.begin() as conn:
            for item in outcomes:
                days = self._snooze_days.get(item.reason or "") if item.outcome == "overridden" else None
                if not days:
                    continue
                card = cards_shown.c
                shown = conn.execute(
                    select(card.trial, card.patient_key).where(card.card == item.card)
                ).first()
                if shown is None:
                    continue
                trial, key = shown
                same = and_(snoozes.c.patient_key == key, snoozes.c.trial == trial)
                conn.execute(delete(snoozes).where(same))
                conn.execute(
                    insert(snoozes).values(
                        patient_key=key,
                        trial=trial,
                        reason=item.reason,
                        until=item.at + timedelta(days=days),
                        created_at=datetime.now(UTC),
                    )
                )
                snoozed += 1
        return snoozed

    def prune(self, now: datetime, *, keep_days: int) -> int:
        """Forget cards older than ``keep_days`` and expired snoozes (retention)."""
        with self._engine.begin() as conn:
            cutoff = now - timedelta(days=keep_days)
            old = conn.execute(delete(cards_shown).where(cards_shown.c.shown_at < cutoff))
            expired = conn.execute(delete(snoozes).where(snoozes.c.until <= now))
            return int(old.rowcount or 0) + int(expired.rowcount or 0)

    def shown_rows(self, *, since: datetime, until: datetime) -> list[dict[str, Any]]:
        inside = and_(cards_shown.c.shown_at >= since, cards_shown.c.shown_at < until)
        query = select(cards_shown).where(inside)
        with self._engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]


def feedback_report(
    shown: Iterable[Mapping[str, Any]], feedback: Iterable[Mapping[str, Any]], *, period: str
) -> list[dict[str, Any]]:
    """Per trial and period: cards shown, accepted, overridden (by reason), acceptance rate.

    ``feedback`` rows carry ``card``, ``outcome`` and ``override_code`` (the feedback store's rows);
    a card counts once, by its last outcome.
    """
    last: dict[str, Mapping[str, Any]] = {}
    for row in feedback:
        last[str(row["card"])] = row
    table: dict[tuple[str, str], dict[str, Any]] = {}
    for card in shown:
        key = (str(card["trial"]), _period(card["shown_at"], period))
        fresh = {"trial": key[0], "period": key[1], "shown": 0, "accepted": 0, "overridden": {}}
        entry = table.setdefault(key, fresh)
        entry["shown"] += 1
        outcome = last.get(str(card["card"]))
        if outcome is None:
            continue
        if outcome["outcome"] == "accepted":
            entry["accepted"] += 1
        else:
            reason = str(outcome.get("override_code") or "no reason given")
            entry["overridden"][reason] = entry["overridden"].get(reason, 0) + 1
    for entry in table.values():
        entry["acceptance_rate"] = round(entry["accepted"] / entry["shown"], 3) if entry["shown"] else 0.0
    return [table[k] for k in sorted(table)]


def _period(moment: datetime, period: str) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if period == "week":
        year, week, _ = moment.isocalendar()
        return f"{year}-W{week:02d}"
    if period == "day":
        return moment.date().isoformat()
    return moment.strftime("%Y-%m")
