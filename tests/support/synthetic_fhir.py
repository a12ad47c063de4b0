"""Small synthetic FHIR R4 patient records, shaped like Synthea's transaction Bundles.

Made in code so that tests need no data files: entries are POSTs with ``urn:uuid:`` fullUrls and
every clinical resource points at the Patient (and an Encounter) by its ``urn:uuid:``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

JsonDict = dict[str, Any]

SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"
CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"

# (SNOMED code, ICD-10-CM code, display)
DEFAULT_CONDITIONS: tuple[tuple[str, str, str], ...] = (
    ("55464009", "M32.9", "Systemic lupus erythematosus"),
    ("44054006", "E11.9", "Type 2 diabetes mellitus"),
    ("38341003", "I10", "Essential hypertension"),
)


@dataclass(frozen=True)
class SyntheticPatient:
    """A generated record: the Bundle plus what a test needs to know about it."""

    patient_id: str
    bundle: JsonDict
    n_conditions: int
    n_observations: int
    n_medication_requests: int


def _urn(ns: uuid.UUID, name: str) -> tuple[str, str]:
    """(urn:uuid:..., id) for a stable id derived from the namespace and a name."""
    rid = str(uuid.uuid5(ns, name))
    return f"urn:uuid:{rid}", rid


def _entry(full_url: str, resource: JsonDict) -> JsonDict:
    # id in the resource, like Synthea; the request is a POST to the type.
    return {
        "fullUrl": full_url,
        "resource": resource,
        "request": {"method": "POST", "url": resource["resourceType"]},
    }


def make_patient_bundle(
    seed: str = "patient-1",
    *,
    family: str = "Testperson",
    given: str = "Alex",
    gender: str = "female",
    birth_date: str = "1980-04-12",
    conditions: tuple[tuple[str, str, str], ...] = DEFAULT_CONDITIONS,
    n_observations: int = 30,
    start: datetime | None = None,
) -> SyntheticPatient:
    """A transaction Bundle: one Patient, one Encounter, Conditions (SNOMED + ICD-10-CM codings),
    ``n_observations`` lab Observations (alternating serum creatinine and haemoglobin, one a day)
    and one active MedicationRequest. Ids are deterministic for a given ``seed``."""
    ns = uuid.uuid5(uuid.NAMESPACE_URL, f"cds-service-test/{seed}")
    start = start or datetime(2024, 1, 1, 8, 0, tzinfo=UTC)
    patient_urn, patient_id = _urn(ns, "Patient")
    enc_urn, enc_id = _urn(ns, "Encounter")
    subject = {"reference": patient_urn}
    entries: list[JsonDict] = [
        _entry(
            patient_urn,
            {
                "resourceType": "Patient",
                "id": patient_id,
                "identifier": [{"system": "urn:oid:2.16.840.1.113883.4.642.99", "value": seed}],
                "name": [{"use": "official", "family": family, "given": [given]}],
                "gender": gender,
                "birthDate": birth_date,
            },
        ),
        _entry(
            enc_urn,
            {
                "resourceType": "Encounter",
                "id": enc_id,
                "status": "finished",
                "class": {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                    "code": "AMB",
                },
                "subject": subject,
                "period": {
                    "start": start.isoformat(),
                    "end": (start + timedelta(hours=1)).isoformat(),
                },
            },
        ),
    ]
    for i, (snomed, icd, display) in enumerate(conditions):
        urn, rid = _urn(ns, f"Condition/{i}")
        entries.append(
            _entry(
                urn,
                {
                    "resourceType": "Condition",
                    "id": rid,
                    "clinicalStatus": {"coding": [{"system": CONDITION_CLINICAL, "code": "active"}]},
                    "code": {
                        "coding": [
                            {"system": SNOMED, "code": snomed, "display": display},
                            {"system": ICD10CM, "code": icd, "display": display},
                        ],
                        "text": display,
                    },
                    "subject": subject,
                    "encounter": {"reference": enc_urn},
                    "onsetDateTime": (start - timedelta(days=365 * (i + 1))).date().isoformat(),
                },
            )
        )
    labs = (
        ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 0.9),
        ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 12.5),
    )
    for i in range(n_observations):
        code, display, unit, base = labs[i % len(labs)]
        urn, rid = _urn(ns, f"Observation/{i}")
        entries.append(
            _entry(
                urn,
                {
                    "resourceType": "Observation",
                    "id": rid,
                    "status": "final",
                    "category": [{"coding": [{"system": OBS_CATEGORY, "code": "laboratory"}]}],
                    "code": {"coding": [{"system": LOINC, "code": code, "display": display}]},
                    "subject": subject,
                    "encounter": {"reference": enc_urn},
                    "effectiveDateTime": (start + timedelta(days=i)).isoformat(),
                    "valueQuantity": {
                        "value": round(base + (i % 5) / 10, 2),
                        "unit": unit,
                        "system": UCUM,
                        "code": unit,
                    },
                },
            )
        )
    urn, rid = _urn(ns, "MedicationRequest/0")
    entries.append(
        _entry(
            urn,
            {
                "resourceType": "MedicationRequest",
                "id": rid,
                "status": "active",
                "intent": "order",
                "medicationCodeableConcept": {
                    "coding": [{"system": RXNORM, "code": "979092", "display": "hydroxychloroquine 200 MG"}]
                },
                "subject": subject,
                "encounter": {"reference": enc_urn},
                "authoredOn": start.date().isoformat(),
            },
        )
    )
    bundle: JsonDict = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    return SyntheticPatient(
        patient_id=patient_id,
        bundle=bundle,
        n_conditions=len(conditions),
        n_observations=n_observations,
        n_medication_requests=1,
    )
