"""The FHIR searches the loaded mappings need, derived once from the catalog.

One function describes the data: discovery's prefetch templates, the hook's own FHIR fallback and
the SMART app's fetches all use it, so nothing describes the service's data needs twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from cds_service.codes import CVX, LOINC
from cds_service.engine.loader import Catalog
from cds_service.engine.model import Rule

PATIENT_TOKEN = "{{context.patientId}}"


def _leaves(rule: Rule) -> Iterator[tuple[str, Any]]:
    for name in ("age", "condition", "lab", "medication", "procedure", "immunization", "allergy"):
        leaf = getattr(rule, name)
        if leaf is not None:
            yield name, leaf
            guard = getattr(leaf, "absent_unknown_only_if", None)
            if isinstance(guard, Rule):
                yield from _leaves(guard)
    for children in (rule.any, rule.all):
        for child in children or ():
            yield from _leaves(child)
    if rule.not_ is not None:
        yield from _leaves(rule.not_)


def prefetch_templates(catalog: Catalog) -> dict[str, str]:
    """Prefetch key → FHIR query with ``{{context.patientId}}``, narrowed by code where that is exact."""
    lab_codes: set[str] = set()
    vaccine_codes: set[str] = set()
    kinds: set[str] = set()
    finding_codes: set[str] = set()
    planned_vaccines = False
    for trial in catalog.trials.values():
        for criterion in trial.criteria:
            for kind, leaf in _leaves(criterion.rule) if criterion.rule else ():
                kinds.add(kind)
                if kind == "lab":
                    lab_codes |= _tokens(catalog, leaf.valueset)
                if kind == "condition" and "Observation" in getattr(leaf, "resources", ()):
                    finding_codes |= _tokens(catalog, leaf.valueset)
                if kind == "immunization":
                    vaccine_codes |= _tokens(catalog, leaf.valueset)
                    planned_vaccines = planned_vaccines or bool(getattr(leaf, "planned", False))
    patient = f"patient={PATIENT_TOKEN}"
    templates = {"patient": f"Patient/{PATIENT_TOKEN}"}
    if "condition" in kinds:
        templates["conditions"] = f"Condition?{patient}"
    if lab_codes:
        templates["observations"] = f"Observation?{patient}" + _filter("code", lab_codes)
    if finding_codes == {"*"}:
        templates["findings"] = f"Observation?{patient}"
    elif finding_codes:
        tokens = ",".join(sorted(finding_codes))
        templates["findingCodes"] = f"Observation?{patient}&code={tokens}"
        templates["findingValues"] = f"Observation?{patient}&value-concept={tokens}"
    if "medication" in kinds or planned_vaccines:
        templates["medicationRequests"] = f"MedicationRequest?{patient}&_include=MedicationRequest:medication"
    if "medication" in kinds:
        templates["medicationStatements"] = (
            f"MedicationStatement?{patient}&_include=MedicationStatement:medication"
        )
    if "procedure" in kinds:
        templates["procedures"] = f"Procedure?{patient}"
    if vaccine_codes:
        templates["immunizations"] = f"Immunization?{patient}" + _filter("vaccine-code", vaccine_codes)
    if planned_vaccines:
        templates["immunizationRecommendations"] = f"ImmunizationRecommendation?{patient}"
    if "allergy" in kinds:
        templates["allergies"] = f"AllergyIntolerance?{patient}"
    return templates


def _filter(param: str, tokens: set[str]) -> str:
    """``&code=2160-0,...``; no filter at all when some value set cannot be expressed as codes."""
    if "*" in tokens:
        return ""
    plain = sorted(t.split("|", 1)[1] if t.startswith((LOINC + "|", CVX + "|")) else t for t in tokens)
    return f"&{param}={','.join(plain)}"


def _tokens(catalog: Catalog, valueset_id: object) -> set[str]:
    """``system|code`` search tokens, or {"*"} when the set has prefixes a search cannot express."""
    valueset = catalog.valuesets[str(valueset_id)]
    if not valueset.exact_only:
        return {"*"}
    return {f"{system}|{code}" for system, code in valueset.exact}


def fill(template: str, *, patient_id: str) -> str:
    return template.replace(PATIENT_TOKEN, patient_id)
