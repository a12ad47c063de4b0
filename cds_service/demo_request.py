"""Turn a patient Bundle into a patient-view hook request with full prefetch, as an EHR would send it.

For trying the service (``python -m cds_service.demo_request BUNDLE.json | curl ... --data-binary @-``),
for benchmarks and for tests. ``urn:uuid:`` references are rewritten to ``Type/id``, as a FHIR server
holds them after a transaction.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cds_service.engine.loader import load_catalog
from cds_service.fhir.queries import prefetch_templates

KEY_TYPES: Mapping[str, tuple[str, ...]] = {
    "conditions": ("Condition",),
    "observations": ("Observation",),
    "findingCodes": (),
    "findingValues": (),
    "findings": ("Observation",),
    "medicationRequests": ("MedicationRequest", "Medication"),
    "medicationStatements": ("MedicationStatement",),
    "medicationAdministrations": ("MedicationAdministration",),
    "procedures": ("Procedure",),
    "serviceRequests": ("ServiceRequest",),
    "encounters": ("Encounter",),
    "immunizations": ("Immunization",),
    "immunizationRecommendations": ("ImmunizationRecommendation",),
    "allergies": ("AllergyIntolerance",),
}
_URN = re.compile(r'"(urn:uuid:[0-9a-fA-F-]+)"')


def resources_of(bundle: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The bundle's resources with ``urn:uuid:`` references rewritten to ``Type/id``."""
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
        types = KEY_TYPES.get(key, ())
        prefetch[key] = searchset(r for r in resources if r["resourceType"] in types)
    return prefetch


def patient_id(bundle: Mapping[str, Any]) -> str:
    return str(next(r for r in resources_of(bundle) if r["resourceType"] == "Patient")["id"])


def hook_request(bundle: Mapping[str, Any], templates: Iterable[str]) -> dict[str, Any]:
    return {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/example", "patientId": patient_id(bundle)},
        "prefetch": prefetch_from_bundle(bundle, templates),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cds_service.demo_request",
        description="Print a patient-view hook request with full prefetch for a patient Bundle, "
        "as an EHR would send it (to try the service: pipe it into curl).",
    )
    parser.add_argument("bundle", type=Path, metavar="BUNDLE.json", help="one patient's FHIR Bundle")
    args = parser.parse_args(argv)
    try:
        bundle = json.loads(args.bundle.read_text(encoding="utf-8"))
        request = hook_request(bundle, prefetch_templates(load_catalog()))
    except (OSError, ValueError, KeyError, StopIteration) as exc:
        print(f"demo_request: {args.bundle}: not a patient Bundle ({type(exc).__name__})", file=sys.stderr)
        return 2
    json.dump(request, sys.stdout)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
