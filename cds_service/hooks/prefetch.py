"""The four prefetch states of CDS Hooks 2.0.1, and the FHIR fallback for what prefetch lacks.

For each prefetch key the service asked for: absent → fetch it from ``fhirServer`` with the token;
``null`` → the EHR has no such data, do not refetch; a Bundle → use it, following ``next`` if the
EHR paged it; an OperationOutcome → the EHR failed to get it, so treat it as absent. When data
cannot be had either way the caller answers 412 (``PrefetchUnavailable``).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from cds_service.errors import FhirError, InvalidInput, PrefetchUnavailable
from cds_service.fhir.allowlist import check_fhir_server
from cds_service.fhir.client import FhirClient
from cds_service.fhir.ids import id_segment
from cds_service.fhir.queries import fill
from cds_service.hooks.models import HookRequest
from cds_service.ops import metrics
from cds_service.record import PatientRecord, build_record
from cds_service.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Sorted:
    """The prefetch values, sorted by what must still be done with them."""

    ready: list[Any] = field(default_factory=list)
    missing: dict[str, str] = field(default_factory=dict)  # key → filled query
    paged: dict[str, dict[str, Any]] = field(default_factory=dict)


def sort_prefetch(
    prefetch: Mapping[str, Any] | None, *, templates: Mapping[str, str], patient_id: str
) -> Sorted:
    result = Sorted()
    given = prefetch or {}
    segment = id_segment(patient_id, what="context.patientId")  # before any URL is built
    states: list[str] = []
    for key, template in templates.items():
        query = fill(template, patient_id=segment)
        if key not in given:
            result.missing[key] = query
            states.append("missing")
            continue
        value = given[key]
        if value is None:
            if key == "patient":  # a read the EHR could not satisfy: the chart's patient, no details
                result.ready.append({"resourceType": "Patient", "id": patient_id})
            states.append("null")
            continue
        if not isinstance(value, dict) or not isinstance(value.get("resourceType"), str):
            raise InvalidInput(f"prefetch {key!r} is neither a FHIR resource, a Bundle nor null")
        if value["resourceType"] == "OperationOutcome":
            result.missing[key] = query
            states.append("outcome")
        elif value["resourceType"] == "Bundle" and _next_link(value):
            result.paged[key] = value
            states.append("paged")
        else:
            result.ready.append(value)
            states.append("given")
    for state in states:  # counted once the whole prefetch proved readable
        metrics.PREFETCH.labels(state=state).inc()
    return result


def _next_link(bundle: Mapping[str, Any]) -> str | None:
    links = bundle.get("link")
    if links is None:
        return None
    if not isinstance(links, list):
        raise InvalidInput("a prefetch Bundle's link is not a list")
    for link in links:
        if isinstance(link, dict) and link.get("relation") == "next" and link.get("url"):
            return str(link["url"])
    return None


@dataclass
class Gathered:
    """What the record is built from, and what of it the EHR itself sent (to tell whose data is
    at fault when some of it turns out to be about another patient)."""

    parts: list[Any]
    from_ehr: list[Any]


def gather(
    request: HookRequest, *, templates: Mapping[str, str], settings: Settings, from_trusted_issuer: bool
) -> Gathered:
    """Every Bundle and resource the record is built from; raises PrefetchUnavailable (→ 412)."""
    patient_id = request.context.patientId
    found = sort_prefetch(request.prefetch, templates=templates, patient_id=patient_id)
    from_ehr = [*found.ready, *found.paged.values()]
    if not found.missing and not found.paged:
        return Gathered(parts=found.ready, from_ehr=found.ready)  # all of it the EHR's
    wanted = sorted([*found.missing, *found.paged])
    if not request.fhirServer:
        raise PrefetchUnavailable(f"prefetch {', '.join(wanted)} not provided and no fhirServer to fetch it")
    try:
        base = check_fhir_server(
            request.fhirServer, settings=settings, from_trusted_issuer=from_trusted_issuer
        )
    except InvalidInput as exc:
        raise PrefetchUnavailable(f"cannot fetch {', '.join(wanted)}: {exc}") from None
    token = request.fhirAuthorization.access_token if request.fhirAuthorization else None
    client = FhirClient(base_url=base, token=token, settings=settings)
    try:
        fetched = client.fetch_all(found.missing)
        continued = [client.continue_bundle(bundle) for bundle in found.paged.values()]
    except FhirError as exc:
        raise PrefetchUnavailable(f"cannot fetch {', '.join(wanted)}: {exc}") from None
    finally:
        client.close()
    if "patient" in fetched and fetched["patient"] is None:
        raise PrefetchUnavailable("the FHIR server has no Patient with context.patientId")
    parts = found.ready + [value for value in fetched.values() if value is not None] + continued
    return Gathered(parts=parts, from_ehr=from_ehr)


def build_patient_record(gathered: Gathered, *, patient_id: str) -> PatientRecord:
    """The record for ``context.patientId``.

    A resource about another patient in the EHR's own prefetch is left out, counted
    (``cds_prefetch_foreign_dropped_total``) and logged by type only: the clinician still gets
    cards for the right patient. The same from the FHIR server is a 412: we asked it for this
    patient's data and cannot trust what it sent. The Patient itself must be the chart's."""
    dropped: list[dict[str, Any]] = []
    record = build_record(gathered.parts, foreign="drop", dropped=dropped)
    if record.patient.get("id") != patient_id:
        if not _from_ehr(gathered, [record.patient]):
            raise PrefetchUnavailable("the FHIR server's Patient is not context.patientId")
        raise InvalidInput("the prefetched Patient is not context.patientId")
    if not dropped:
        return record
    if not _from_ehr(gathered, dropped):
        raise PrefetchUnavailable("the FHIR server sent data about another patient")
    types = Counter(str(resource.get("resourceType")) for resource in dropped)
    metrics.FOREIGN_DROPPED.inc(len(dropped))
    log.warning(
        "prefetch: %d resource(s) about another patient left out (%s)",
        len(dropped),
        ", ".join(f"{name} {count}" for name, count in sorted(types.items())),
    )
    return record


def _from_ehr(gathered: Gathered, resources: list[dict[str, Any]]) -> bool:
    """True when every one of ``resources`` came in the EHR's own prefetch (by identity): walked
    only on the rare paths that need it."""
    if gathered.from_ehr is gathered.parts:
        return True
    ehr = {id(resource) for resource in _resources(gathered.from_ehr)}
    return all(id(resource) in ehr for resource in resources)


def _resources(parts: list[Any]) -> Iterator[dict[str, Any]]:
    """Every resource in the parts, Bundles (nested too) opened."""
    for part in parts:
        if isinstance(part, list):
            yield from _resources(part)
        elif isinstance(part, dict):
            if part.get("resourceType") == "Bundle":
                for entry in part.get("entry") or ():
                    if isinstance(entry, dict) and isinstance(entry.get("resource"), dict):
                        yield from _resources([entry["resource"]])
            else:
                yield part
