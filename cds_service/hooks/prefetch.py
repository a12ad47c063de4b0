"""The four prefetch states of CDS Hooks 2.0.1, and the FHIR fallback for what prefetch lacks.

For each prefetch key the service asked for: absent → fetch it from ``fhirServer`` with the token;
``null`` → the EHR has no such data, do not refetch; a Bundle → use it, following ``next`` if the
EHR paged it; an OperationOutcome → the EHR failed to get it, so treat it as absent. When data
cannot be had either way the caller answers 412 (``PrefetchUnavailable``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cds_service.errors import FhirError, InvalidInput, PrefetchUnavailable
from cds_service.fhir.allowlist import check_fhir_server
from cds_service.fhir.client import FhirClient
from cds_service.fhir.queries import fill
from cds_service.hooks.models import HookRequest
from cds_service.settings import Settings


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
    for key, template in templates.items():
        query = fill(template, patient_id=patient_id)
        if key not in given:
            result.missing[key] = query
            continue
        value = given[key]
        if value is None:
            if key == "patient":  # a read the EHR could not satisfy: the chart's patient, no details
                result.ready.append({"resourceType": "Patient", "id": patient_id})
            continue
        if not isinstance(value, dict) or not isinstance(value.get("resourceType"), str):
            raise InvalidInput(f"prefetch {key!r} is neither a FHIR resource, a Bundle nor null")
        if value["resourceType"] == "OperationOutcome":
            result.missing[key] = query
        elif value["resourceType"] == "Bundle" and _next_link(value):
            result.paged[key] = value
        else:
            result.ready.append(value)
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


def gather(
    request: HookRequest, *, templates: Mapping[str, str], settings: Settings, from_trusted_issuer: bool
) -> list[Any]:
    """Every Bundle and resource the record is built from; raises PrefetchUnavailable (→ 412)."""
    patient_id = request.context.patientId
    found = sort_prefetch(request.prefetch, templates=templates, patient_id=patient_id)
    if not found.missing and not found.paged:
        return found.ready
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
    return found.ready + [value for value in fetched.values() if value is not None] + continued
