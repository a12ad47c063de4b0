"""Durable feedback from EHRs: SQLite by default, any SQLAlchemy URL by setting.

EHRs retry, so storing is idempotent: one row per (card, outcome, outcomeTimestamp), a repeat is
a no-op. Rows hold what clinicians did with a card, never patient data (the card uuid is random).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
    select,
)
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError

from cds_service.db import make_engine
from cds_service.hooks.models import FeedbackItem

_metadata = MetaData()

feedback_table = Table(
    "feedback",
    _metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("service", String(64), nullable=False),
    Column("card", String(200), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("outcome_timestamp", String(40), nullable=False),
    Column("override_code", String(200)),
    Column("override_system", String(500)),
    Column("override_display", String(500)),
    Column("user_comment", Text),
    Column("accepted_suggestions", Text),
    Column("received_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("card", "outcome", "outcome_timestamp", name="uq_feedback_event"),
)


class FeedbackStore:
    """Over the app's database engine (``cds_service.db``), or its own for a URL."""

    def __init__(self, url_or_engine: str | Engine) -> None:
        self._owned = isinstance(url_or_engine, str)
        self._engine = make_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
        _metadata.create_all(self._engine)

    def record(self, *, service: str, items: list[FeedbackItem]) -> int:
        """Store each item once; returns how many were new (repeats are accepted silently)."""
        now = datetime.now(UTC)
        rows = [_row(service=service, item=item, now=now) for item in items]
        new = 0
        with self._engine.begin() as conn:
            for row in rows:
                if self._engine.dialect.name == "sqlite":
                    stmt = sqlite_insert(feedback_table).values(**row).on_conflict_do_nothing()
                    new += conn.execute(stmt).rowcount or 0
                    continue
                try:
                    with conn.begin_nested():
                        conn.execute(feedback_table.insert().values(**row))
                    new += 1
                except IntegrityError:
                    continue
        return new

    def count(self) -> int:
        with self._engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(feedback_table)).scalar_one())

    def rows(self) -> list[dict[str, Any]]:
        with self._engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(select(feedback_table))]

    def close(self) -> None:
        if self._owned:
            self._engine.dispose()


def _row(*, service: str, item: FeedbackItem, now: datetime) -> dict[str, Any]:
    reason = item.overrideReason.reason if item.overrideReason else None
    accepted = ",".join(s.id for s in item.acceptedSuggestions or ())
    return {
        "service": service,
        "card": item.card,
        "outcome": item.outcome,
        "outcome_timestamp": item.outcomeTimestamp,
        "override_code": reason.code if reason else None,
        "override_system": reason.system if reason else None,
        "override_display": reason.display if reason else None,
        "user_comment": item.overrideReason.userComment if item.overrideReason else None,
        "accepted_suggestions": accepted or None,
        "received_at": now,
    }
