"""``GET /smart/evidence?ctx=…&ref=Type/id``: one piece of evidence, read server-side, shown readably.

The browser never talks to the FHIR server (it has no token, and must never get one: a raw FHIR link
answers it 401). The app reads the entry with the launch's token through the same ``FhirClient``
as the report (its deadlines, size caps and error mapping), and only when:

- ``ref`` is ``Type/id`` of a clinical type the engine reads (``EVIDENCE_TYPES``) with a FHIR id
  (``fhir.ids``): never a Patient search, a dot segment, an absolute URL or another server;
- the entry's ``subject`` (or ``patient``) is the launch's patient, relative or under the launch's
  ``iss``: an entry about anyone else is refused with its own page and shown to nobody, whatever
  the FHIR server would allow the token to read.

FHIR 401 → "access expired", 403 → "not available", 404/410 → "not found", timeouts and errors →
"did not answer": the app's usual error pages.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from cds_service.errors import FhirError, FhirUnauthorized, without_ids
from cds_service.fhir.client import FhirClient
from cds_service.fhir.ids import id_segment, is_fhir_id
from cds_service.settings import Settings
from cds_service.smart import errors
from cds_service.smart.sessions import Launch

log = logging.getLogger(__name__)
Json = dict[str, Any]

EVIDENCE_TYPES = frozenset(
    {
        "Observation",
        "Condition",
        "MedicationRequest",
        "MedicationStatement",
        "MedicationAdministration",
        "Procedure",
        "Immunization",
        "AllergyIntolerance",
        "Encounter",
        "ImmunizationRecommendation",
        "ServiceRequest",
    }
)
_PATIENT_FIELD = {
    "Immunization": "patient",
    "AllergyIntolerance": "patient",
    "ImmunizationRecommendation": "patient",
}
_ANCHOR = re.compile(r"^trial-[A-Za-z0-9._-]{1,200}$")
_MAX_REF = 200


def parse_reference(ref: str | None) -> tuple[str, str]:
    """(type, id) of ``Type/id``, or the 400 page."""
    if not ref or len(ref) > _MAX_REF or ref.count("/") != 1:
        raise errors.bad_reference()
    rtype, rid = ref.split("/")
    if rtype not in EVIDENCE_TYPES or not is_fhir_id(rid):
        raise errors.bad_reference()
    return rtype, rid


def back_anchor(at: str | None) -> str | None:
    """The criterion's anchor on the app page to come back to, when it has the shape we make."""
    return at if at and _ANCHOR.match(at) else None


def load_evidence(
    launch: Launch, rtype: str, rid: str, *, settings: Settings
) -> tuple[Json, Json | None, Json | None]:
    """(the entry, its Medication if it names one, the Patient) — every failure an error page."""
    queries = {"item": f"{rtype}/{id_segment(rid)}", "patient": f"Patient/{id_segment(launch.patient)}"}
    try:
        with FhirClient(base_url=launch.iss, token=launch.access_token, settings=settings) as client:
            found = client.fetch_all(queries)
            resource: Json | None = found["item"]
            if resource is None:
                raise errors.evidence_not_found()
            if resource.get("id") != rid:
                log.warning("SMART evidence: the FHIR server answered a read with another id")
                raise errors.unusable_data()
            if not about_patient(resource, patient_id=launch.patient, iss=launch.iss):
                log.warning("SMART evidence refused: a %s not about the launch's patient", rtype)
                raise errors.evidence_other_patient()
            medication = _medication(client, resource)
    except FhirUnauthorized as exc:
        log.info("SMART evidence: FHIR server refused the token (HTTP %s)", exc.status)
        raise (
            errors.evidence_not_available() if exc.status == 403 else errors.fhir_access_expired()
        ) from None
    except FhirError as exc:
        log.warning("SMART evidence: FHIR read failed: %s", without_ids(str(exc)))
        raise errors.fhir_unreachable() from None
    return resource, medication, found["patient"]


def about_patient(resource: Mapping[str, Any], *, patient_id: str, iss: str) -> bool:
    """Does the entry's subject (or patient) name exactly this patient? No subject: no."""
    field = _PATIENT_FIELD.get(str(resource.get("resourceType")), "subject")
    ref = resource.get(field)
    target = ref.get("reference") if isinstance(ref, Mapping) else None
    if not isinstance(target, str):
        return False
    base = iss.rstrip("/") + "/"
    if target.startswith(base):
        target = target[len(base) :]
    parts = target.split("/")
    if len(parts) == 4 and parts[2] == "_history":
        parts = parts[:2]
    return len(parts) == 2 and parts[0] == "Patient" and parts[1] == patient_id


def _medication(client: FhirClient, resource: Mapping[str, Any]) -> Json | None:
    """The Medication a medication entry refers to (by ``Medication/id``), or None: the page then
    shows the reference's display. A failure here must not hide the entry itself."""
    ref = resource.get("medicationReference")
    target = ref.get("reference") if isinstance(ref, Mapping) else None
    if not isinstance(target, str) or not target.startswith("Medication/"):
        return None
    rid = target.removeprefix("Medication/")
    if not is_fhir_id(rid):
        return None
    try:
        return client.read(f"Medication/{id_segment(rid)}")
    except FhirError as exc:
        log.info("SMART evidence: the Medication could not be read: %s", type(exc).__name__)
        return None
