"""What the page shows, computed from the report, the catalog, the portfolio and the Patient: no logic
in templates.

Criteria are grouped in the words the cards and the CLI use (``cds_service.vocabulary``): *rules the
patient out*, *to review*, *meets*, *absent — in the patient's favour* — so an exclusion the record
does not show reads as good news, never as "not met". Manual criteria still open form the
reviewer's checklist instead. Each criterion shows its short label, with the protocol's wording
beside it. Evidence links open the entry inside the app (``/smart/evidence``), never on the FHIR
server, which would answer the browser 401.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any
from urllib.parse import urlencode

from cds_service.engine.loader import Catalog
from cds_service.engine.model import Criterion
from cds_service.engine.report import CriterionResult, EligibilityReport, TrialResult
from cds_service.engine.time import age_on, day_range
from cds_service.fhir.ids import is_fhir_id
from cds_service.portfolio import Portfolio
from cds_service.smart.checklist import Item
from cds_service.smart.evidence import EVIDENCE_TYPES
from cds_service.vocabulary import GROUP_ORDER, GROUP_WORDS, STATUS_WORDS, Group, group_of

RECRUITING_WORDS = {
    "recruiting": "Recruiting",
    "not-yet-recruiting": "Not yet recruiting",
    "active-not-recruiting": "Active, not recruiting",
    "suspended": "Suspended",
    "closed": "Closed",
}
SHORT = 80
_REFERENCE = re.compile(r"^([A-Z][A-Za-z]{1,63})/([A-Za-z0-9\-.]{1,64})$")
_MR = "MR"  # v2-0203 "Medical record number"


@dataclass(frozen=True)
class EvidenceView:
    reference: str
    href: str | None
    value: str | None
    date: str | None


@dataclass(frozen=True)
class CriterionView:
    id: str
    anchor: str
    kind: str
    label: str
    text: str
    reason: str
    result: str
    group: Group
    evidence: list[EvidenceView]
    saved: Item = field(default_factory=lambda: Item(False))


@dataclass(frozen=True)
class GroupView:
    key: Group
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
    recruiting: str
    contact: str | None
    version: str
    effective: str
    groups: list[GroupView]
    checklist: list[CriterionView] = field(default_factory=list)
    ruled_out_by: list[CriterionView] = field(default_factory=list)
    to_review: list[CriterionView] = field(default_factory=list)


@dataclass(frozen=True)
class BannerView:
    name: str
    age: str
    gender: str
    birth_date: str
    identifier: str | None
    deceased: bool = False


def trial_views(
    report: EligibilityReport,
    *,
    catalog: Catalog,
    portfolio: Portfolio,
    evidence_url: str,
    first: str | None,
    saved: Mapping[str, Mapping[str, Item]] | None = None,
) -> list[TrialView]:
    """One view per trial of the report; the one the card's appContext named comes first.

    ``evidence_url`` is the app's evidence route with this launch's ``ctx`` (``/smart/evidence?ctx=…``);
    ``saved`` the reviewer's checklist as stored, trial → criterion → item."""
    ordered = sorted(report.trials, key=lambda t: t.trial != first)
    return [
        _trial_view(
            result,
            catalog=catalog,
            portfolio=portfolio,
            evidence_url=evidence_url,
            saved=(saved or {}).get(result.trial, {}),
        )
        for result in ordered
    ]


def _trial_view(
    result: TrialResult,
    *,
    catalog: Catalog,
    portfolio: Portfolio,
    evidence_url: str,
    saved: Mapping[str, Item],
) -> TrialView:
    trial = catalog.trial(result.trial)
    criteria = {c.id: c for c in trial.criteria}
    views = [
        _criterion_view(c, criteria.get(c.id), trial=result.trial, evidence_url=evidence_url, saved=saved)
        for c in result.criteria
    ]
    open_manual = {c.id for c in result.criteria if c.manual and c.result == "unknown"}
    decided = [v for v in views if v.id not in open_manual]
    groups = [GroupView(g, GROUP_WORDS[g], [v for v in decided if v.group == g]) for g in GROUP_ORDER]
    offer = portfolio.offer(result.trial)
    return TrialView(
        id=result.trial,
        short_title=trial.short_title,
        title=result.title,
        url=trial.url,
        status=result.status,
        status_label=STATUS_WORDS[result.status],
        recruiting=RECRUITING_WORDS[offer.status] if offer else RECRUITING_WORDS["recruiting"],
        contact=offer.contact.line() if offer and offer.contact else None,
        version=result.version,
        effective=result.effective,
        groups=[g for g in groups if g.items],
        checklist=[v for v in views if v.id in open_manual],
        ruled_out_by=[v for v in decided if v.group == "rules-out"],
        to_review=[v for v in decided if v.group == "to-review"],
    )


def evidence_href(evidence_url: str, reference: str, *, anchor: str) -> str | None:
    """The in-app link to a ``Type/id`` the app can show; None for anything else (a Patient,
    a contained or absolute reference, an id with a dot segment)."""
    match = _REFERENCE.match(reference)
    if match is None or match.group(1) not in EVIDENCE_TYPES or not is_fhir_id(match.group(2)):
        return None
    return f"{evidence_url}&{urlencode({'ref': reference, 'at': anchor})}"


def _criterion_view(
    result: CriterionResult,
    criterion: Criterion | None,
    *,
    trial: str,
    evidence_url: str,
    saved: Mapping[str, Item],
) -> CriterionView:
    text = " ".join((criterion.text if criterion else result.id).split())
    label = result.label or (criterion.short_label() if criterion else result.id)
    anchor = f"trial-{trial}-{result.id}"
    evidence = [
        EvidenceView(
            reference=e.reference,
            href=evidence_href(evidence_url, e.reference, anchor=anchor),
            value=e.value,
            date=None if e.date and e.value and e.date in e.value else e.date,
        )
        for e in result.evidence
    ]
    return CriterionView(
        id=result.id,
        anchor=anchor,
        kind=result.kind.capitalize(),
        label=label,
        text="" if text == label else text,
        reason=result.reason,
        result=result.result,
        group=group_of(result),
        evidence=evidence,
        saved=saved.get(result.id, Item(False)),
    )


def banner_view(patient: Mapping[str, Any], *, as_of: date) -> BannerView:
    """Name, age on the evaluation date, sex and an identifier: enough to tell two namesakes apart."""
    deceased = patient.get("deceasedBoolean") is True or bool(patient.get("deceasedDateTime"))
    return BannerView(
        name=patient_name(patient),
        age=patient_age(patient.get("birthDate"), as_of),
        gender=str(patient.get("gender") or "sex unknown").capitalize(),
        birth_date=str(patient.get("birthDate") or "unknown"),
        identifier=patient_identifier(patient),
        deceased=deceased,
    )


def patient_age(birth_date: object, as_of: date) -> str:
    """'41 years' (a range when the birth date is only a year or a month); 'age unknown'."""
    born = day_range(birth_date)
    if born is None or born.first > as_of:
        return "age unknown"
    oldest, youngest = age_on(born.first, as_of), max(age_on(born.last, as_of), 0)
    if oldest == youngest:
        return f"{oldest} year{'' if oldest == 1 else 's'}"
    return f"{youngest}–{oldest} years"


def patient_identifier(patient: Mapping[str, Any]) -> str | None:
    """'MRN 12345' from the identifier typed MR, else the first identifier with a value."""
    found = [
        i for i in patient.get("identifier") or [] if isinstance(i, dict) and isinstance(i.get("value"), str)
    ]
    for identifier in found:
        codings = (identifier.get("type") or {}).get("coding") or []
        if any(isinstance(c, dict) and c.get("code") == _MR for c in codings):
            return f"MRN {identifier['value']}"
    if not found:
        return None
    first = found[0]
    kind = first.get("type") or {}
    codings = [c for c in kind.get("coding") or [] if isinstance(c, dict)]
    label = kind.get("text") or next((c.get("display") for c in codings if c.get("display")), None)
    return f"{label if isinstance(label, str) else 'ID'} {first['value']}"


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
