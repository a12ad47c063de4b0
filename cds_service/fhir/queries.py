"""FHIR searches rendered from the engine's data needs (``cds_service.engine.needs``).

Discovery's prefetch templates, the hook's own FHIR fallback and the SMART app's fetches all use
``prefetch_templates``; a Bulk export's ``_type`` uses ``DataNeeds.resource_types``.
"""

from __future__ import annotations

from cds_service.codes import CVX, LOINC
from cds_service.engine.loader import Catalog
from cds_service.engine.needs import ALL, DataNeeds, data_needs

PATIENT_TOKEN = "{{context.patientId}}"


def prefetch_templates(catalog: Catalog) -> dict[str, str]:
    """Prefetch key → FHIR query with ``{{context.patientId}}``, narrowed by code where that is exact."""
    return render_templates(data_needs(catalog))


def render_templates(needs: DataNeeds) -> dict[str, str]:
    patient = f"patient={PATIENT_TOKEN}"
    templates = {"patient": f"Patient/{PATIENT_TOKEN}"}
    types = needs.types
    if "Condition" in types:
        templates["conditions"] = f"Condition?{patient}"
    if needs.observation_codes:
        templates["observations"] = f"Observation?{patient}" + _filter("code", needs.observation_codes)
    if ALL in needs.finding_codes:
        templates["findings"] = f"Observation?{patient}"
    elif needs.finding_codes:
        tokens = ",".join(sorted(needs.finding_codes))
        templates["findingCodes"] = f"Observation?{patient}&code={tokens}"
        templates["findingValues"] = f"Observation?{patient}&value-concept={tokens}"
    if "MedicationRequest" in types:
        templates["medicationRequests"] = f"MedicationRequest?{patient}&_include=MedicationRequest:medication"
    if "MedicationStatement" in types:
        templates["medicationStatements"] = (
            f"MedicationStatement?{patient}&_include=MedicationStatement:medication"
        )
    if "MedicationAdministration" in types:
        templates["medicationAdministrations"] = (
            f"MedicationAdministration?{patient}&_include=MedicationAdministration:medication"
        )
    if "Procedure" in types:
        templates["procedures"] = f"Procedure?{patient}"
    if "ServiceRequest" in types:
        templates["serviceRequests"] = f"ServiceRequest?{patient}&status=active"
    if needs.vaccine_codes:
        templates["immunizations"] = f"Immunization?{patient}" + _filter("vaccine-code", needs.vaccine_codes)
    if "ImmunizationRecommendation" in types:
        templates["immunizationRecommendations"] = f"ImmunizationRecommendation?{patient}"
    if "AllergyIntolerance" in types:
        templates["allergies"] = f"AllergyIntolerance?{patient}"
    if "Encounter" in types:
        templates["encounters"] = f"Encounter?{patient}"
    return templates


def _filter(param: str, tokens: set[str]) -> str:
    """``&code=2160-0,...``; no filter at all when some value set cannot be expressed as codes."""
    if ALL in tokens:
        return ""
    plain = sorted(t.split("|", 1)[1] if t.startswith((LOINC + "|", CVX + "|")) else t for t in tokens)
    return f"&{param}={','.join(plain)}"


def fill(template: str, *, patient_id: str) -> str:
    return template.replace(PATIENT_TOKEN, patient_id)
