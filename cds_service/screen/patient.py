"""One patient's lines to an eligibility report and worklist rows: the function both engines run.

The record is built exactly as the hook and ``cds-service evaluate`` build theirs
(``record.build_record``) and evaluated by the same engine, so a patient's report in a screen is the
report a clinician's card or the CLI shows for the same data. The report is read generically (as
JSON), so fields the engine adds later flow through to ``reports.ndjson`` untouched.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from cds_service.engine.evaluate import evaluate
from cds_service.engine.loader import Catalog
from cds_service.errors import InvalidInput
from cds_service.gcpause import paused
from cds_service.record import build_record

from .source import Origin

ELIGIBLE, REVIEW, NOT_ELIGIBLE = "likely-eligible", "needs-review", "not-eligible"
CANDIDATE_STATUSES = (ELIGIBLE, REVIEW)
NOT_EVALUATED = "patient not evaluated"
INTERNAL = "patient not evaluated: internal error"
MAX_EVIDENCE_DATES = 3


@dataclass(frozen=True)
class Outcome:
    """What one patient gives: the report (JSON bytes), table rows and worklist candidates, or why not."""

    patient: str
    report: bytes | None = None
    rows: tuple[dict[str, Any], ...] = ()
    candidates: tuple[dict[str, Any], ...] = ()
    error: str | None = None
    error_reason: str = NOT_EVALUATED
    error_origin: Origin | None = None


def screen_patient(
    catalog: Catalog,
    patient: str,
    lines: Sequence[tuple[Origin, bytes]],
    *,
    as_of: date,
    trial_ids: Sequence[str] | None,
    zone: str = "UTC",
) -> Outcome:
    """Evaluate one patient from their export lines, given in export order."""
    with paused():
        resources = [orjson.loads(line) for _, line in lines]
        bundle = {"resourceType": "Bundle", "type": "collection", "entry": list(map(_entry, resources))}
        try:
            record = build_record([bundle])
            report: dict[str, Any] = evaluate(
                catalog, record, as_of=as_of, trial_ids=trial_ids, tz=ZoneInfo(zone)
            ).to_json_dict()
        except InvalidInput as exc:
            return Outcome(patient, error=str(exc), error_origin=_blame(str(exc), resources, lines))
        except Exception as exc:  # an engine bug must not stop a population run; it is reported
            origin = _blame("Patient/", resources, lines)
            return Outcome(patient, error=type(exc).__name__, error_reason=INTERNAL, error_origin=origin)
    rows = tuple(table_row(patient, report["as_of"], trial) for trial in report["trials"])
    candidates = tuple(
        candidate(patient, trial) for trial in report["trials"] if trial["status"] in CANDIDATE_STATUSES
    )
    return Outcome(patient, report=orjson.dumps(report), rows=rows, candidates=candidates)


def _entry(resource: dict[str, Any]) -> dict[str, Any]:
    """A Bundle entry; Patients and Medications get ``urn:uuid:<id>`` so such references resolve."""
    rid = resource.get("id") if isinstance(resource, dict) else None
    if isinstance(rid, str) and resource.get("resourceType") in ("Patient", "Medication"):
        return {"fullUrl": f"urn:uuid:{rid}", "resource": resource}
    return {"resource": resource}


def _blame(message: str, resources: list[Any], lines: Sequence[tuple[Origin, bytes]]) -> Origin | None:
    """The line of the resource an error names (``Type/id`` first in the message), else the Patient's."""
    named = message.split(" ", 1)[0].split(".", 1)[0]
    fallback = None
    for resource, (origin, _) in zip(resources, lines, strict=True):
        if not isinstance(resource, dict):
            continue
        ref = f"{resource.get('resourceType')}/{resource.get('id')}"
        if ref == named:
            return origin
        if fallback is None and resource.get("resourceType") == "Patient":
            fallback = origin
    return fallback or (lines[0][0] if lines else None)


def _rules_out(criterion: dict[str, Any]) -> bool:
    kind, result = criterion.get("kind"), criterion.get("result")
    return (kind == "inclusion" and result == "not-met") or (kind == "exclusion" and result == "met")


def table_row(patient: str, as_of: str, trial: dict[str, Any]) -> dict[str, Any]:
    """One results.csv / results.parquet row: counts by result, what rules out, what is left to review."""
    criteria: list[dict[str, Any]] = trial.get("criteria") or []
    results = [c.get("result") for c in criteria]
    out = next((c for c in criteria if _rules_out(c)), None)
    review = [c for c in criteria if c.get("result") == "unknown"]
    return {
        "patient": patient,
        "trial": trial["trial"],
        "status": trial["status"],
        "met": results.count("met"),
        "not_met": results.count("not-met"),
        "unknown": results.count("unknown"),
        "manual": sum(1 for c in review if c.get("manual")),
        "rules_out": out["id"] if out else "",
        "rules_out_reason": out.get("reason", "") if out else "",
        "to_review": "; ".join(str(c.get("id")) for c in review),
        "as_of": as_of,
    }


def candidate(patient: str, trial: dict[str, Any]) -> dict[str, Any]:
    """A worklist entry: the inclusions met (rule in) and the criteria left to review, with dates."""
    criteria: list[dict[str, Any]] = trial.get("criteria") or []
    rule_in = [_reason(c) for c in criteria if c.get("kind") == "inclusion" and c.get("result") == "met"]
    review = [_reason(c) for c in criteria if c.get("result") == "unknown"]
    return {
        "patient": patient,
        "trial": trial["trial"],
        "title": trial.get("title", ""),
        "status": trial["status"],
        "met": sum(1 for c in criteria if c.get("result") == "met"),
        "review_count": len(review),
        "manual": sum(1 for c in criteria if c.get("result") == "unknown" and c.get("manual")),
        "rule_in": rule_in,
        "review": review,
        "latest": max((d for r in rule_in for d in r["dates"]), default=""),
    }


def _reason(criterion: dict[str, Any]) -> dict[str, Any]:
    dates = sorted({e["date"] for e in _evidence(criterion) if isinstance(e.get("date"), str)}, reverse=True)
    return {
        "id": str(criterion.get("id", "")),
        "label": str(criterion.get("label") or criterion.get("id", "")),
        "reason": str(criterion.get("reason", "")),
        "manual": bool(criterion.get("manual")),
        "dates": dates[:MAX_EVIDENCE_DATES],
    }


def _evidence(criterion: dict[str, Any]) -> Iterable[dict[str, Any]]:
    items = criterion.get("evidence")
    return [e for e in items if isinstance(e, dict)] if isinstance(items, list) else []
