"""The demo patients can live on one FHIR server side by side: distinct resource ids and names, and
each, fetched back from the server, keeps its own status (the SMART demo's likely-eligible patient
used to be overwritten by the other one)."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

from cds_service.engine.evaluate import evaluate
from cds_service.engine.loader import load_catalog
from cds_service.record import build_record
from tests.support.fhir_server import FhirServer

DEMO = Path(__file__).resolve().parents[1] / "data" / "demo"
WANTED = {"sle-likely-eligible": "likely-eligible", "sle-needs-review": "needs-review"}


def _bundles() -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted(DEMO.glob("*.json"))}


def test_demo_patients_have_distinct_ids_names_and_identifiers() -> None:
    seen: dict[str, str] = {}
    names, identifiers = set(), set()
    for stem, bundle in _bundles().items():
        for entry in bundle["entry"]:
            resource = entry["resource"]
            key = f"{resource['resourceType']}/{resource['id']}"
            assert key not in seen, f"{key} is in both {seen.get(key)} and {stem}"
            seen[key] = stem
            if resource["resourceType"] == "Patient":
                names.add(json.dumps(resource["name"]))
                identifiers.add(resource["identifier"][0]["value"])
    assert len(names) == len(identifiers) == len(_bundles())


def test_each_demo_patient_keeps_its_status_on_a_shared_server(fhir_server: FhirServer) -> None:
    for bundle in _bundles().values():
        fhir_server.load_bundle(bundle)
    catalog = load_catalog()
    for patient_id, status in WANTED.items():
        resources: list[dict[str, Any]] = [*fhir_server.search_all("Patient", {"_id": patient_id})]
        for resource_type in ("Condition", "Observation", "MedicationRequest"):
            resources += fhir_server.search_all(resource_type, {"patient": patient_id})
        record = build_record(resources)
        report = evaluate(catalog, record, as_of=date.today(), trial_ids=["NCT06888960"])
        assert report.trials[0].status == status, (patient_id, report.trials[0].status)
