"""What the page shows, computed from the report, the catalog and the Patient: no logic in templates.

Criteria are grouped by their result (met / to review / not met); manual ones form the reviewer's
checklist instead. A criterion "rules out" the trial when it is an inclusion not met or an
exclusion met, and says so, because "not met" is good news for an exclusion.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cds_service.engine.loader import Catalog
from cds_service.engine.report import CriterionResult, EligibilityReport, TrialResult
from cds_service.fhir.ids import is_fhir_id

STATUS_LABELS = {
    "likely-eligible": "Likely eligible",
    "needs-review": "Needs review",
    "not-eligible": "Not eligible",
}
GROUPS = (("met", "Met"), ("unknown", "To review"), ("not-met", "Not met"))
SHORT = 80
_REFERENCE = re.compile(r"^[A-Z][A-Za-z]{1,63}/[A-Za-z0-9\-.]{1,64}$")


@dataclass(frozen=True)
class EvidenceView:
    reference: str
    href: str | None
    value: str | None
    date: str | None


@dataclass(frozen=True)
class CriterionView:
    id: str
    kind: str
    text: str
    short_text: str
    reason: str
    result: str
    rules_out: bool
    evidence: list[EvidenceView]


@dataclass(frozen=True)
class GroupView:
    key: str
    heading: str
    items: list[CriterionView]


@dataclass(frozen=True)
class TrialView:
    id: str
    short_title: str
    title: str
    url: str
    status: str
    status_label: str
    groups: list[GroupView]
    checklist: list[CriterionView] = field(default_factory=list)
    ruled_out_by: list[CriterionView] = field(default_factory=list)
    to_review: list[CriterionView] = field(default_factory=list)


@dataclass(frozen=True)
class BannerView:
    name: str
    birth_date: str
    gender: str


def trial_views(
    report: EligibilityReport, *, catalog: Catalog, iss: str, first: str | None
) -> list[TrialView]:
    """One view per trial; the one the card's appContext named comes first."""
    ordered = sorted(report.trials, key=lambda t: t.trial != first)
    return [_trial_view(result, catalog=catalog, iss=iss) for result in ordered]


def _trial_view(result: TrialResult, *, catalog: Catalog, iss: str) -> TrialView:
    trial = catalog.trial(result.trial)
    texts = {c.id: c.text for c in trial.criteria}
    views = [_criterion_view(c, text=texts.get(c.id, c.id), iss=iss) for c in result.criteria]
    manual = {c.id for c in result.criteria if c.manual}
    groups = [
        GroupView(key, heading, [v for v in views if v.result == key and v.id not in manual])
        for key, heading in GROUPS
    ]
    return TrialView(
        id=result.trial,
        short_title=trial.short_title,
        title=result.title,
        url=trial.url,
        status=result.status,
        status_label=STATUS_LABELS[result.status],
        groups=[g for g in groups if g.items],
        checklist=[v for v in views if v.id in manual],
        ruled_out_by=[v for v in views if v.rules_out],
        to_review=[v for v in views if v.result == "unknown" and v.id not in manual],
    )


def _linkable(reference: str) -> bool:
    """``Type/id`` with a real FHIR id: never a dot segment the browser would resolve."""
    return _REFERENCE.match(reference) is not None and is_fhir_id(reference.split("/", 1)[1])


def _criterion_view(result: CriterionResult, *, text: str, iss: str) -> CriterionView:
    rules_out = (result.kind == "inclusion" and result.result == "not-met") or (
        result.kind == "exclusion" and result.result == "met"
    )
    evidence = [
        EvidenceView(
            reference=e.reference,
            href=f"{iss}/{e.reference}" if _linkable(e.reference) else None,
            value=e.value,
            date=None if e.date and e.value and e.date in e.value else e.date,
        )
        for e in result.evidence
    ]
    return CriterionView(
        id=result.id,
        kind=result.kind,
        text=text,
        short_text=text if len(text) <= SHORT else text[: SHORT - 1].rsplit(" ", 1)[0] + "…",
        reason=result.reason,
        result=result.result,
        rules_out=rules_out,
        evidence=evidence,
    )


def banner_view(patient: Mapping[str, Any]) -> BannerView:
    return BannerView(
        name=patient_name(patient),
        birth_date=str(patient.get("birthDate") or "unknown"),
        gender=str(patient.get("gender") or "unknown").capitalize(),
    )


def patient_name(patient: Mapping[str, Any]) -> str:
    """The official (else first) name: its text, or given names then family; "Unnamed patient"."""
    names = [n for n in patient.get("name") or [] if isinstance(n, dict)]
    official = [n for n in names if n.get("use") == "official"]
    for name in official + names:
        if isinstance(name.get("text"), str) and name["text"].strip():
            return str(name["text"]).strip()
        given = [g for g in name.get("given") or [] if isinstance(g, str)]
        family = name.get("family")
        full = " ".join([*given, family if isinstance(family, str) else ""]).strip()
        if full:
            return full
    return "Unnamed patient"
