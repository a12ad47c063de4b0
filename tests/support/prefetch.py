"""Build CDS Hooks prefetch (key → searchset Bundle) from a patient Bundle, as an EHR would."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

KEY_TYPES: Mapping[str, tuple[str, ...]] = {
    "conditions": ("Condition",),
    "observations": ("Observation",),
    "findingCodes": (),
    "findingValues": (),
    "findings": ("Observation",),
    "medicationRequests": ("MedicationRequest", "Medication"),
    "medicationStatements": ("MedicationStatement",),
    "procedures": ("Procedure",),
    "immunizations": ("Immunization",),
    "immunizationRecommendations": ("ImmunizationRecommendation",),
    "allergies": ("AllergyIntolerance",),
}


def resources_of(bundle: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The bundle's resources with ``urn:uuid:`` references rewritten to ``Type/id``, as a server has them."""
    entries = [e for e in bundle.get("entry", []) if "resource" in e]
    local = {
        e["fullUrl"]: f"{e['resource']['resourceType']}/{e['resource'].get('id')}"
        for e in entries
        if str(e.get("fullUrl", "")).startswith("urn:")
    }
    text = json.dumps([e["resource"] for e in entries])
    if local:
        text = _URN.sub(lambda m: '"' + local.get(m.group(1), m.group(1)) + '"', text)
    return list(json.loads(text))


_URN = re.compile(r'"(urn:uuid:[0-9a-fA-F-]+)"')


def searchset(resources: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    entries = [
        {"fullUrl": f"{r['resourceType']}/{r.get('id')}", "resource": r, "search": {"mode": "match"}}
        for r in resources
    ]
    return {"resourceType": "Bundle", "type": "searchset", "total": len(entries), "entry": entries}


def prefetch_from_bundle(bundle: Mapping[str, Any], templates: Iterable[str]) -> dict[str, Any]:
    """Every key the service asked for, filled from the bundle (the Patient as a read)."""
    resources = resources_of(bundle)
    prefetch: dict[str, Any] = {}
    for key in templates:
        if key == "patient":
            prefetch[key] = next(r for r in resources if r["resourceType"] == "Patient")
            continue
        types = KEY_TYPES[key]
        prefetch[key] = searchset(r for r in resources if r["resourceType"] in types)
    return prefetch


def patient_id(bundle: Mapping[str, Any]) -> str:
    return str(next(r for r in resources_of(bundle) if r["resourceType"] == "Patient")["id"])
