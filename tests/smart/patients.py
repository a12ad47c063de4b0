"""Three FHIR patients for NCT06888960, one per status, built from the trial's own test vectors.

Each comes from a case of ``mappings/tests/NCT06888960/status.yaml``, with ids made unique per
patient, a name and a medical record number for the banner, and every date moved by (today - the
case's as_of): evaluated today, the patient stands exactly where the vector stood on its as_of date.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import yaml

STATUS_VECTORS = Path(__file__).resolve().parents[2] / "mappings" / "tests" / "NCT06888960" / "status.yaml"
TRIAL = "NCT06888960"
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"


def mrn(status: str) -> str:
    """The vector patient's medical record number (the banner shows it)."""
    return {"likely-eligible": "100-2041", "needs-review": "100-2042", "not-eligible": "100-2043"}[status]


@dataclass(frozen=True)
class VectorPatient:
    id: str
    status: str
    name: str
    bundle: dict[str, Any]


CASES = {
    "likely-eligible": ("likely eligible: every data criterion decided favourably", "Ada", "Eligible"),
    "needs-review": ("needs review: no IgA result", "Rita", "Review"),
    "not-eligible": ("not eligible: live vaccine last week", "Nora", "Vaccinated"),
}


def vector_patient(status: str, *, today: date | None = None) -> VectorPatient:
    prefix, given, family = CASES[status]
    cases = yaml.safe_load(STATUS_VECTORS.read_text(encoding="utf-8"))["cases"]
    case = next(c for c in cases if c["name"].startswith(prefix))
    assert case["expected"]["status"] == status, case["name"]
    shift = (today or date.today()) - date.fromisoformat(case["as_of"])
    pid = f"smart-{status}"
    resources = [_rewrite(r, pid=pid, shift=shift) for r in case["resources"]]
    patient = next(r for r in resources if r["resourceType"] == "Patient")
    patient["name"] = [{"use": "official", "family": family, "given": [given]}]
    patient["identifier"] = [
        {"system": "urn:example:insurance", "value": f"INS-{mrn(status)}"},
        {
            "type": {"coding": [{"system": V2_0203, "code": "MR"}]},
            "system": "urn:example:mrn",
            "value": mrn(status),
        },
    ]
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
            for r in resources
        ],
    }
    return VectorPatient(id=pid, status=status, name=f"{given} {family}", bundle=bundle)


def _rewrite(resource: dict[str, Any], *, pid: str, shift: timedelta) -> dict[str, Any]:
    out: dict[str, Any] = _shift_dates(copy.deepcopy(resource), shift)
    out["id"] = pid if out["resourceType"] == "Patient" else f"{pid}-{out['id']}"
    for key in ("subject", "patient"):
        if isinstance(out.get(key), dict):
            out[key]["reference"] = f"Patient/{pid}"
    return out


def _shift_dates(value: Any, shift: timedelta) -> Any:
    if isinstance(value, dict):
        return {k: _shift_dates(v, shift) for k, v in value.items()}
    if isinstance(value, list):
        return [_shift_dates(v, shift) for v in value]
    if isinstance(value, str) and _DATE.match(value):
        return (date.fromisoformat(value) + shift).isoformat()
    return value
