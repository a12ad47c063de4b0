"""One FHIR resource as a clinician reads it: what it is, its status, dates, value, and the rest.

The evidence page shows this, not the JSON (which stays available, collapsed). Each clinical type the
engine reads has its own list of facts; a fact the resource does not hold is left out rather than
shown empty, except an Observation's value, whose absence is itself worth saying. A code sent
without its display (common in exports) is named from the trial mappings' value sets, and the page
says the name is theirs, not the record's.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import tzinfo
from typing import Any

from cds_service.codes import normalize
from cds_service.engine.loader import Catalog
from cds_service.smart.fhir_text import (
    NONE,
    as_dict,
    as_list,
    choice,
    concept_codes,
    concept_name,
    concepts,
    dosage,
    notes,
    period,
    quantity,
    range_text,
    reference_name,
    when,
)

KINDS = {
    "Observation": "Observation",
    "Condition": "Condition",
    "MedicationRequest": "Medication order",
    "MedicationStatement": "Medication statement",
    "MedicationAdministration": "Medication given",
    "Procedure": "Procedure",
    "Immunization": "Immunization",
    "AllergyIntolerance": "Allergy or intolerance",
    "Encounter": "Encounter",
    "ImmunizationRecommendation": "Immunization recommendation",
    "ServiceRequest": "Order (service request)",
}
Json = Mapping[str, Any]


@dataclass(frozen=True)
class Fact:
    label: str
    value: str


@dataclass(frozen=True)
class ResourceView:
    reference: str
    kind: str
    title: str
    codes: list[str]
    facts: list[Fact]
    parts: list[Fact]  # components, panel members, reactions, recommendations
    notes: list[str]
    raw: str
    named_by_mapping: bool = False


def code_names(catalog: Catalog) -> dict[tuple[str, str], str]:
    """(system, code) → the display the mappings' value sets give it."""
    names: dict[tuple[str, str], str] = {}
    for valueset in catalog.valuesets.values():
        for key, display in valueset.displays.items():
            names.setdefault(key, display)
    return names


def readable(
    resource: Json,
    *,
    tz: tzinfo,
    medication: Json | None = None,
    names: Mapping[tuple[str, str], str] | None = None,
) -> ResourceView:
    rtype = str(resource.get("resourceType"))
    drug = rtype.startswith("Medication")
    concept = _medication_concept(resource, medication) if drug else _main(resource)
    concept, named = _named(concept, names or {})
    facts, parts = _DETAIL.get(rtype, _generic)(resource, tz)
    if concept:
        title = concept_name(concept)
    else:
        title = reference_name(resource.get("medicationReference")) if drug else "(no code recorded)"
    return ResourceView(
        reference=f"{rtype}/{resource.get('id')}",
        kind=KINDS.get(rtype, rtype),
        title=title,
        codes=concept_codes(concept),
        facts=[f for f in facts if f.value != NONE],
        parts=[p for p in parts if p.value != NONE],
        notes=notes(resource),
        raw=json.dumps(resource, indent=2, ensure_ascii=False, sort_keys=False),
        named_by_mapping=named,
    )


def _named(concept: Json, names: Mapping[tuple[str, str], str]) -> tuple[Json, bool]:
    """The concept with the mappings' display on codings that carry none (when it has no text)."""
    if not concept or (isinstance(concept.get("text"), str) and concept["text"].strip()):
        return concept, False
    codings, named = [], False
    for coding in map(as_dict, as_list(concept.get("coding"))):
        system, code = coding.get("system"), coding.get("code")
        if not coding.get("display") and isinstance(system, str) and isinstance(code, str):
            display = names.get(normalize(system, code))
            if display:
                coding, named = {**coding, "display": display}, True
        codings.append(coding)
    return ({**concept, "coding": codings}, named) if named else (concept, False)


def _main(resource: Json) -> Json:
    for key in ("code", "vaccineCode", "type"):
        value = resource.get(key)
        if isinstance(value, Mapping):
            return value
        if isinstance(value, list) and value and isinstance(value[0], Mapping):  # Encounter.type
            return dict(value[0])
    return {}


def _medication_concept(resource: Json, medication: Json | None) -> Json:
    """The drug: medicationCodeableConcept, else the referenced (or contained) Medication's code."""
    if isinstance(resource.get("medicationCodeableConcept"), Mapping):
        return dict(resource["medicationCodeableConcept"])
    reference = str(as_dict(resource.get("medicationReference")).get("reference") or "")
    if reference.startswith("#"):
        medication = next(
            (c for c in as_list(resource.get("contained")) if as_dict(c).get("id") == reference[1:]), None
        )
    return dict(as_dict(as_dict(medication).get("code")))


Facts = tuple[list[Fact], list[Fact]]


def _observation(r: Json, tz: tzinfo) -> Facts:
    value = choice(r, "value", tz)
    if value == NONE and r.get("dataAbsentReason"):
        value = f"not recorded ({concept_name(r['dataAbsentReason'])})"
    elif value == NONE and not r.get("component"):
        value = "no value recorded"
    facts = [
        Fact("Value", value),
        Fact("Interpretation", concepts(r.get("interpretation"))),
        Fact("Reference range", _ranges(r.get("referenceRange"))),
        Fact("Status", str(r.get("status") or NONE)),
        Fact("Category", concepts(r.get("category"))),
        Fact("Date", choice(r, "effective", tz)),
        Fact("Issued", when(r.get("issued"), tz)),
        Fact("Body site", concept_name(r["bodySite"]) if r.get("bodySite") else NONE),
        Fact("Method", concept_name(r["method"]) if r.get("method") else NONE),
    ]
    parts = [
        Fact(concept_name(c.get("code")), _component_value(c, tz))
        for c in map(as_dict, as_list(r.get("component")))
    ]
    members = [
        as_dict(m) for m in as_list(r.get("contained")) if as_dict(m).get("resourceType") == "Observation"
    ]
    parts += [Fact(concept_name(m.get("code")), _component_value(m, tz)) for m in members]
    return facts, parts


def _component_value(part: Json, tz: tzinfo) -> str:
    value = choice(part, "value", tz)
    if value == NONE and part.get("dataAbsentReason"):
        value = f"not recorded ({concept_name(part['dataAbsentReason'])})"
    flag = concepts(part.get("interpretation"))
    ranges = _ranges(part.get("referenceRange"))
    extra = [x for x in (flag, f"range {ranges}" if ranges != NONE else NONE) if x != NONE]
    return f"{value} ({'; '.join(extra)})" if extra and value != NONE else value


def _ranges(value: object) -> str:
    shown = []
    for item in map(as_dict, as_list(value)):
        text = range_text(item)
        if isinstance(item.get("text"), str):
            text = item["text"] if text == NONE else f"{text} ({item['text']})"
        if item.get("type") or item.get("appliesTo"):
            whom = concepts([item["type"]] if item.get("type") else item.get("appliesTo"))
            text = f"{text}, {whom}"
        shown.append(text)
    return "; ".join(s for s in shown if s != NONE) or NONE


def _condition(r: Json, tz: tzinfo) -> Facts:
    stages = [concept_name(as_dict(s).get("summary")) for s in as_list(r.get("stage"))]
    return [
        Fact("Clinical status", concept_name(r["clinicalStatus"]) if r.get("clinicalStatus") else NONE),
        Fact("Verification", concept_name(r["verificationStatus"]) if r.get("verificationStatus") else NONE),
        Fact("Category", concepts(r.get("category"))),
        Fact("Severity", concept_name(r["severity"]) if r.get("severity") else NONE),
        Fact("Stage", "; ".join(s for s in stages if s != NONE) or NONE),
        Fact("Body site", concepts(r.get("bodySite"))),
        Fact("Onset", choice(r, "onset", tz)),
        Fact("Abatement", choice(r, "abatement", tz)),
        Fact("Recorded", when(r.get("recordedDate"), tz)),
    ], []


def _medication(r: Json, tz: tzinfo) -> Facts:
    dosages = as_list(r.get("dosageInstruction")) or as_list(r.get("dosage")) or [r.get("dosage")]
    return [
        Fact("Status", str(r.get("status") or NONE)),
        Fact("Intent", str(r.get("intent") or NONE)),
        Fact("Ordered", when(r.get("authoredOn"), tz)),
        Fact(
            "Taken" if r.get("resourceType") == "MedicationStatement" else "Given", choice(r, "effective", tz)
        ),
        Fact("Asserted", when(r.get("dateAsserted"), tz)),
        Fact("Dosage", " | ".join(d for d in (dosage(x, tz) for x in dosages if x) if d != NONE) or NONE),
        Fact("Reason", concepts(r.get("reasonCode"))),
        Fact("Category", concepts(r.get("category")) if isinstance(r.get("category"), list) else NONE),
    ], []


def _immunization(r: Json, tz: tzinfo) -> Facts:
    return [
        Fact("Status", str(r.get("status") or NONE)),
        Fact("Given", choice(r, "occurrence", tz)),
        Fact("Not given because", concept_name(r["statusReason"]) if r.get("statusReason") else NONE),
        Fact("Dose", quantity(r.get("doseQuantity"))),
        Fact("Lot", str(r.get("lotNumber") or NONE)),
        Fact("Recorded", when(r.get("recorded"), tz)),
    ], []


def _procedure(r: Json, tz: tzinfo) -> Facts:
    return [
        Fact("Status", str(r.get("status") or NONE)),
        Fact("Performed", choice(r, "performed", tz)),
        Fact("Category", concept_name(r["category"]) if r.get("category") else NONE),
        Fact("Body site", concepts(r.get("bodySite"))),
        Fact("Outcome", concept_name(r["outcome"]) if r.get("outcome") else NONE),
    ], []


def _allergy(r: Json, tz: tzinfo) -> Facts:
    reactions = [
        Fact("Reaction", "; ".join(concept_name(m) for m in as_list(as_dict(x).get("manifestation"))) or NONE)
        for x in as_list(r.get("reaction"))
    ]
    return [
        Fact("Clinical status", concept_name(r["clinicalStatus"]) if r.get("clinicalStatus") else NONE),
        Fact("Verification", concept_name(r["verificationStatus"]) if r.get("verificationStatus") else NONE),
        Fact("Type", str(r.get("type") or NONE)),
        Fact("Category", ", ".join(str(c) for c in as_list(r.get("category"))) or NONE),
        Fact("Criticality", str(r.get("criticality") or NONE)),
        Fact("Onset", choice(r, "onset", tz)),
        Fact("Recorded", when(r.get("recordedDate"), tz)),
    ], reactions


def _encounter(r: Json, tz: tzinfo) -> Facts:
    cls = as_dict(r.get("class"))
    discharge = as_dict(r.get("hospitalization")).get("dischargeDisposition")
    return [
        Fact("Status", str(r.get("status") or NONE)),
        Fact("Class", str(cls.get("display") or cls.get("code") or NONE)),
        Fact("When", period(r.get("period"), tz)),
        Fact("Reason", concepts(r.get("reasonCode"))),
        Fact("Discharge", concept_name(discharge) if discharge else NONE),
    ], []


def _recommendation(r: Json, tz: tzinfo) -> Facts:
    parts = []
    for item in map(as_dict, as_list(r.get("recommendation"))):
        dates = ", ".join(
            f"{concept_name(d.get('code'))} {when(d.get('value'), tz)}"
            for d in map(as_dict, as_list(item.get("dateCriterion")))
        )
        status = concept_name(item.get("forecastStatus"))
        parts.append(
            Fact(concepts(item.get("vaccineCode")), "; ".join(x for x in (status, dates) if x and x != NONE))
        )
    return [Fact("Date", when(r.get("date"), tz))], parts


def _service_request(r: Json, tz: tzinfo) -> Facts:
    return [
        Fact("Status", str(r.get("status") or NONE)),
        Fact("Intent", str(r.get("intent") or NONE)),
        Fact("Category", concepts(r.get("category"))),
        Fact("Ordered", when(r.get("authoredOn"), tz)),
        Fact("Planned for", choice(r, "occurrence", tz)),
        Fact("Reason", concepts(r.get("reasonCode"))),
    ], []


def _generic(r: Json, tz: tzinfo) -> Facts:
    return [Fact("Status", str(r.get("status") or NONE))], []


_DETAIL: dict[str, Callable[[Json, tzinfo], Facts]] = {
    "Observation": _observation,
    "Condition": _condition,
    "MedicationRequest": _medication,
    "MedicationStatement": _medication,
    "MedicationAdministration": _medication,
    "Procedure": _procedure,
    "Immunization": _immunization,
    "AllergyIntolerance": _allergy,
    "Encounter": _encounter,
    "ImmunizationRecommendation": _recommendation,
    "ServiceRequest": _service_request,
}
