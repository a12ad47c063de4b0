"""The audit trail: a row per hook and feedback call (refused ones too), keyed pseudonyms, no PHI,
fail-closed hook calls, retention, and ``cds-service audit-export``."""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient
from sqlalchemy import text

from cds_service.app import create_app
from cds_service.cli import main
from cds_service.db import make_engine
from cds_service.ops import metrics
from cds_service.ops.audit import AuditEntry, AuditLog, export
from cds_service.settings import Settings
from tests.conftest import DATA
from tests.hooks.test_auth import AUD, ISS, claims, public_jwk, sign
from tests.hooks.test_probes import hook_body
from tests.support.jwks_server import JwksServer

SERVICE = "/cds-services/trial-eligibility"
KEY = "pseudonym-key-for-the-audit-tests"
DEMO = json.loads((DATA / "demo" / "sle-likely-eligible.json").read_text())


def rows(app: Any) -> list[dict[str, Any]]:
    return list(app.state.audit.rows(since=datetime(2000, 1, 1, tzinfo=UTC)))


@pytest.fixture
def app(tmp_path: Path) -> Any:
    return create_app(
        Settings(allow_unsigned=True, pseudonym_key=KEY, feedback_db_url=f"sqlite:///{tmp_path}/cds.sqlite3")
    )


def test_a_hook_call_is_audited_with_a_keyed_pseudonym_and_what_was_shown(app: Any) -> None:
    body = hook_body(DEMO)
    with TestClient(app) as client:
        answer = client.post(SERVICE, json=body, headers={"X-Request-ID": "req-0001"})
    assert answer.status_code == 200 and len(answer.json()["cards"]) == 1
    [row] = rows(app)
    patient = body["context"]["patientId"]
    assert row["kind"] == "hook" and row["outcome"] == "ok" and row["status"] == 200
    assert row["hook_instance"] == body["hookInstance"] and row["request_id"] == "req-0001"
    assert row["issuer"] == "unsigned" and row["user_id"] == "Practitioner/example"
    assert row["patient_pseudonym"] == hmac.new(KEY.encode(), patient.encode(), hashlib.sha256).hexdigest()
    evaluated = json.loads(row["trials_evaluated"])
    trials = app.state.catalog.trials
    assert {t["trial"] for t in evaluated} == set(trials)  # the site's portfolio: every trial
    assert all(t["version"] == trials[t["trial"]].version and t["version"] for t in evaluated)
    version = app.state.catalog.trials["NCT06888960"].version
    assert json.loads(row["trials_shown"]) == [
        {"trial": "NCT06888960", "version": version, "status": "likely-eligible"}
    ]
    assert row["duration_ms"] >= 0
    assert patient not in json.dumps(row, default=str)  # no PHI beyond the pseudonym


def test_refused_and_failed_calls_are_audited_too(app: Any) -> None:
    with TestClient(app) as client:
        bad = client.post(SERVICE, content=b"not json")
        huge = client.post(SERVICE, content=b"x", headers={"Content-Length": str(10**9)})
        feedback = client.post(
            SERVICE + "/feedback",
            json={
                "feedback": [
                    {"card": "c-1", "outcome": "overridden", "outcomeTimestamp": "2026-06-01T10:00:00Z"}
                ]
            },
        )
    assert (bad.status_code, huge.status_code, feedback.status_code) == (400, 413, 200)
    found = [(r["kind"], r["outcome"], r["status"]) for r in rows(app)]
    assert found == [("hook", "400", 400), ("hook", "413", 413), ("feedback", "ok", 200)]
    assert json.loads(rows(app)[2]["feedback"]) == [{"card": "c-1", "outcome": "overridden"}]


def test_a_refused_jwt_is_audited_without_an_issuer(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    with JwksServer() as jwks:
        jwks.set_jwks("/jwks", [public_jwk(key, "k1", alg="ES384")])
        settings = Settings(
            trusted_issuers={ISS: jwks.url("/jwks")},
            public_base_url=AUD.removesuffix(SERVICE),
            feedback_db_url=f"sqlite:///{tmp_path}/cds.sqlite3",
        )
        app = create_app(settings)
        with TestClient(app) as client:
            good = client.post(
                SERVICE,
                json=hook_body(),
                headers={"Authorization": f"Bearer {sign(key, 'ES384', claims(), kid='k1')}"},
            )
            refused = client.post(SERVICE, json=hook_body(), headers={"Authorization": "Bearer x.y.z"})
    assert (good.status_code, refused.status_code) == (200, 401)
    assert [(r["issuer"], r["outcome"]) for r in rows(app)] == [(ISS, "ok"), (None, "401")]


def test_a_hook_that_cannot_be_audited_fails_closed(app: Any) -> None:
    with app.state.engine.begin() as conn:
        conn.execute(text("DROP TABLE audit"))
    before = metrics.AUDIT_FAILURES.labels(kind="hook")._value.get()
    with TestClient(app) as client:
        answer = client.post(SERVICE, json=hook_body(DEMO))
    assert answer.status_code == 500 and answer.json() == {"error": "the call could not be audited"}
    assert "cards" not in answer.text
    assert metrics.AUDIT_FAILURES.labels(kind="hook")._value.get() >= before + 1


def test_retention_prunes_old_rows(tmp_path: Path) -> None:
    audit = AuditLog(make_engine(f"sqlite:///{tmp_path}/a.sqlite3"), retention_days=400)
    now = datetime(2026, 6, 1, tzinfo=UTC)
    for age in (401, 399, 0):
        audit.write(
            AuditEntry(kind="hook", started=0.0), status=200, duration_s=0.01, now=now - timedelta(days=age)
        )
    assert audit.prune(now=now) == 1
    left = [r["at"] for r in audit.rows(since=datetime(2000, 1, 1, tzinfo=UTC))]
    assert len(left) == 2


@pytest.fixture
def audit_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[AuditLog]:
    url = f"sqlite:///{tmp_path}/export.sqlite3"
    monkeypatch.setenv("CDS_FEEDBACK_DB_URL", url)
    audit = AuditLog(make_engine(url), retention_days=400)
    for day, instance in ((1, "a"), (2, "b"), (3, "c")):
        entry = AuditEntry(kind="hook", started=0.0, hook_instance=instance, trials_shown=[{"trial": "T1"}])
        audit.write(entry, status=200, duration_s=0.002, now=datetime(2026, 6, day, 12, tzinfo=UTC))
    yield audit


def test_audit_export_ndjson_and_csv(audit_db: AuditLog, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit-export", "--since", "2026-06-02"]) == 0
    out, err = capsys.readouterr()
    lines = [json.loads(line) for line in out.splitlines()]
    assert [r["hook_instance"] for r in lines] == ["b", "c"]
    assert lines[0]["trials_shown"] == [{"trial": "T1"}] and lines[0]["at"].startswith("2026-06-02T12:00")
    assert err.strip() == "cds-service: 2 audit row(s) exported"
    assert main(["audit-export", "--since", "2026-06-01", "--until", "2026-06-02", "--format", "csv"]) == 0
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["hook_instance"] for r in table] == ["a", "b"] and table[0]["outcome"] == "ok"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--since", "2026-13-01"], "--since '2026-13-01': expected a date YYYY-MM-DD"),
        (["--since", "2026-06-02", "--until", "2026-06-01"], "--until '2026-06-01' is before --since"),
    ],
)
def test_audit_export_bad_dates_exit_2(
    argv: list[str], message: str, audit_db: AuditLog, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["audit-export", *argv]) == 2
    assert message in capsys.readouterr().err


def test_export_of_no_rows_writes_a_csv_header_only() -> None:
    out = io.StringIO()
    assert export([], fmt="csv", out=out) == 0
    assert out.getvalue().startswith("at,kind,request_id,hook_instance,")
