"""Read the launch's patient from the EHR with the session's token and evaluate every trial.

The Patient is read first and alone: a 404/410 (or 403) there means the token does not cover the
patient of the launch, which deserves its own page rather than an empty report. The searches the
mappings need (``fhir.queries``, the same ones the hooks prefetch) then run in parallel.
"""

from __future__ import annotations

import logging
from datetime import date
from typing import Any

from cds_service.engine.evaluate import evaluate
from cds_service.engine.loader import Catalog
from cds_service.engine.report import EligibilityReport
from cds_service.errors import FhirError, FhirUnauthorized, InvalidInput, without_ids
from cds_service.fhir.client import FhirClient
from cds_service.fhir.ids import id_segment
from cds_service.fhir.queries import fill, prefetch_templates
from cds_service.record import build_record
from cds_service.settings import Settings
from cds_service.smart import errors
from cds_service.smart.sessions import Launch

log = logging.getLogger(__name__)


def load_report(
    launch: Launch, *, settings: Settings, catalog: Catalog, as_of: date, trial_ids: list[str]
) -> tuple[dict[str, Any], EligibilityReport]:
    """(the Patient resource, the report for ``trial_ids``); SmartError pages for each failure.

    ``as_of`` is the site's date and instants are placed in the site's zone (``CDS_SITE_TIMEZONE``),
    exactly as for the card that linked here: near midnight both faces say the same."""
    try:
        with FhirClient(base_url=launch.iss, token=launch.access_token, settings=settings) as client:
            segment = id_segment(launch.patient, what="the launch's patient")
            patient = _read_patient(client, segment)
            queries = {
                key: fill(template, patient_id=segment)
                for key, template in prefetch_templates(catalog).items()
                if key != "patient"
            }
            results = client.fetch_all(queries)
    except FhirUnauthorized as exc:
        log.info("SMART: FHIR server refused the token: %s", without_ids(str(exc)))
        raise errors.fhir_access_expired() from None
    except FhirError as exc:
        log.warning("SMART: FHIR read failed: %s", without_ids(str(exc)))
        raise errors.fhir_unreachable() from None
    parts = [patient, *(r for r in results.values() if r is not None)]
    try:
        record = build_record(parts)
    except InvalidInput as exc:
        log.warning("SMART: the EHR's data could not be used: %s", without_ids(str(exc)))
        raise errors.unusable_data() from None
    return patient, evaluate(catalog, record, as_of=as_of, tz=settings.tz(), trial_ids=trial_ids)


def _read_patient(client: FhirClient, patient_id: str) -> dict[str, Any]:
    try:
        patient = client.read(f"Patient/{patient_id}")
    except FhirUnauthorized as exc:
        if exc.status == 403:  # the token is valid but not for this patient
            raise errors.patient_not_available() from None
        raise
    if patient is None:
        log.info("SMART: the launch's Patient is not on the FHIR server (404/410)")
        raise errors.patient_not_available()
    return patient
