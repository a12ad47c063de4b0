"""The audit trail: one durable row per hook call and per feedback call, in table ``audit``.

Each row says when, which call (``hookInstance``), who asked (the JWT's verified ``iss``, or
"unsigned"; ``context.userId`` as the EHR sent it, a user reference), about which patient (a keyed
pseudonym: HMAC-SHA256 of ``context.patientId`` under ``CDS_PSEUDONYM_KEY``, so whoever holds the key
can find a patient's rows and nobody else can read one), what was evaluated and shown (trial ids
with their mapping versions and statuses), and how it ended (outcome, status, duration). Nothing
else about the patient is stored.

A hook call that would answer with cards is audited *before* the answer leaves: if the row cannot be
written the call fails closed (500 "the call could not be audited", ``cds_audit_write_failures_total``
and an error log line), because unaudited decision support is a compliance gap. Calls that already
end in an error (400/401/412/413/500) are audited after their answer; a failure to audit those is
logged and counted, not turned into another error.

Rows older than ``CDS_AUDIT_RETENTION_DAYS`` are deleted at start and daily (``prune``);
``cds-service audit-export`` writes a date range as CSV or NDJSON.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import IO, Any

from sqlalchemy import Column, DateTime, Engine, Integer, MetaData, String, Table, Text, delete, select
from sqlalchemy.exc import SQLAlchemyError

from cds_service.errors import AuditUnavailable, ConfigError
from cds_service.ops import metrics

log = logging.getLogger(__name__)
_metadata = MetaData()

audit_table = Table(
    "audit",
    _metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False, index=True),
    Column("kind", String(16), nullable=False),  # hook | feedback
    Column("request_id", String(128)),
    Column("hook_instance", String(200)),
    Column("issuer", String(500)),  # verified JWT iss, or "unsigned"; null when the JWT was refused
    Column("user_id", String(256)),
    Column("patient_pseudonym", String(64)),
    Column("trials_evaluated", Text),  # JSON [{"trial", "version"}]
    Column("trials_shown", Text),  # JSON [{"trial", "version", "status"}]
    Column("feedback", Text),  # JSON [{"card", "outcome"}] for feedback calls
    Column("outcome", String(8), nullable=False),  # ok | 400 | 401 | 412 | 413 | 500
    Column("status", Integer, nullable=False),
    Column("duration_ms", Integer, nullable=False),
)
COLUMNS = [c.name for c in audit_table.columns if c.name != "id"]
_INSERT = audit_table.insert()  # built once; executed with each row's parameters


class Pseudonyms:
    """HMAC-SHA256 pseudonyms of patient ids under one secret key."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ConfigError("CDS_PSEUDONYM_KEY must be at least 16 characters long")
        self._key = key

    @classmethod
    def from_secret(cls, secret: str | None) -> Pseudonyms:
        """From ``CDS_PSEUDONYM_KEY``; without one (development only: production refuses to start)
        a random key for this process, so pseudonyms do not match across restarts."""
        if secret:
            return cls(secret.encode())
        log.warning("CDS_PSEUDONYM_KEY is not set: audit pseudonyms use a random key of this process")
        return cls(secrets.token_bytes(32))

    def of(self, patient_id: str) -> str:
        return hmac.new(self._key, patient_id.encode(), hashlib.sha256).hexdigest()


@dataclass
class AuditEntry:
    """One call's row, filled in as the call learns who and what (see service.py)."""

    kind: str
    started: float
    request_id: str | None = None
    hook_instance: str | None = None
    issuer: str | None = None
    user_id: str | None = None
    patient_pseudonym: str | None = None
    trials_evaluated: list[dict[str, Any]] | None = None
    trials_shown: list[dict[str, Any]] | None = None
    feedback: list[dict[str, Any]] | None = None
    written: bool = field(default=False)


class AuditLog:
    def __init__(self, engine: Engine, *, retention_days: int) -> None:
        self._engine = engine
        self._retention = timedelta(days=retention_days)
        _metadata.create_all(engine)

    def write(
        self, entry: AuditEntry, *, status: int, duration_s: float, now: datetime | None = None
    ) -> None:
        """Store the row; AuditUnavailable (and the failure counted) when the database refuses."""
        row = {
            "at": now or datetime.now(UTC),
            "kind": entry.kind,
            "request_id": entry.request_id,
            "hook_instance": entry.hook_instance,
            "issuer": entry.issuer,
            "user_id": entry.user_id,
            "patient_pseudonym": entry.patient_pseudonym,
            "trials_evaluated": _json(entry.trials_evaluated),
            "trials_shown": _json(entry.trials_shown),
            "feedback": _json(entry.feedback),
            "outcome": metrics.hook_outcome(status),
            "status": status,
            "duration_ms": round(duration_s * 1000),
        }
        try:
            with self._engine.begin() as conn:
                conn.execute(_INSERT, row)
        except SQLAlchemyError as exc:
            metrics.AUDIT_FAILURES.labels(kind=entry.kind).inc()
            log.error("audit write failed for a %s call: %s", entry.kind, type(exc).__name__)
            raise AuditUnavailable("the call could not be audited") from None
        entry.written = True

    def prune(self, now: datetime | None = None) -> int:
        """Delete rows older than the retention period; returns how many."""
        cutoff = (now or datetime.now(UTC)) - self._retention
        with self._engine.begin() as conn:
            deleted = conn.execute(delete(audit_table).where(audit_table.c.at < cutoff)).rowcount or 0
        if deleted:
            log.info("audit retention: %d row(s) older than %s deleted", deleted, cutoff.date())
        return deleted

    def rows(self, *, since: datetime, until: datetime | None = None) -> Iterator[dict[str, Any]]:
        """Rows with ``since <= at < until``, oldest first."""
        query = (
            select(audit_table).where(audit_table.c.at >= since).order_by(audit_table.c.at, audit_table.c.id)
        )
        if until is not None:
            query = query.where(audit_table.c.at < until)
        with self._engine.connect() as conn:
            for row in conn.execute(query):
                yield {name: row._mapping[name] for name in COLUMNS}


def _json(value: object) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def export(rows: Iterable[dict[str, Any]], *, fmt: str, out: IO[str]) -> int:
    """Write rows as CSV (a header line, JSON columns as JSON text) or NDJSON; returns the count."""
    count = 0
    writer = csv.DictWriter(out, fieldnames=COLUMNS) if fmt == "csv" else None
    if writer is not None:
        writer.writeheader()
    for row in rows:
        at = row["at"]
        if isinstance(at, datetime):
            at = (at if at.tzinfo else at.replace(tzinfo=UTC)).isoformat()
        flat = {**row, "at": at}
        if writer is not None:
            writer.writerow(flat)
        else:
            for name in ("trials_evaluated", "trials_shown", "feedback"):
                flat[name] = json.loads(flat[name]) if flat[name] else None
            out.write(json.dumps(flat, separators=(",", ":")) + "\n")
        count += 1
    return count
