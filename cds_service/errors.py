"""The one exception tree of cds_service.

Every error the service raises on purpose derives from ``CdsServiceError``; the edges (CLI, hooks,
SMART) map each branch to one answer (an exit code, an HTTP status, a page). Messages are short,
name what was wrong and where, and never carry patient data or tokens::

    CdsServiceError
    ├── ConfigError           settings that cannot run (production refusals name what to set)
    ├── MappingError          a trial or value-set file is malformed (names file, criterion, field)
    ├── AuditUnavailable      an audit record could not be written (the hook answers 500)
    ├── RequestTooLarge       a request body over CDS_MAX_BODY_BYTES (413)
    ├── InvalidInput          patient data we were given cannot be used
    │   ├── InvalidResource   one resource is not valid FHIR R4 (names Type/id and the field)
    │   └── ForeignData       (record) resources about a patient other than the record's
    ├── Unauthorized          the caller's credentials were refused (EHR JWT, SMART session)
    │   └── JwksUnavailable   (hooks.jwks) the issuer's JWK Set could not be fetched
    ├── PrefetchUnavailable   the data a card needs can be had neither from prefetch nor from FHIR
    └── FhirError             the FHIR server failed us (``kind``: a metrics label, see ops.metrics)
        ├── FhirUnauthorized  it refused our token (401/403)
        └── FhirTimeout       it did not answer in time
"""

from __future__ import annotations

import re

_REFERENCE = re.compile(r"\b([A-Z][A-Za-z]{1,63})/[A-Za-z0-9\-.]{1,64}")
_URN = re.compile(r"\burn:(uuid|oid):[A-Za-z0-9\-.]+")


def without_ids(message: str) -> str:
    """``message`` with FHIR references masked (``Observation/o1`` → ``Observation/…``): what the
    HTTP edges put in error bodies and logs, since a Patient's id is patient data."""
    return _URN.sub(r"urn:\1:…", _REFERENCE.sub(r"\1/…", message))


class CdsServiceError(Exception):
    """Root of every error raised on purpose by cds_service."""


class ConfigError(CdsServiceError):
    """Settings the service refuses to run with; the message says which setting to change."""


class AuditUnavailable(CdsServiceError):
    """The audit trail could not be written: the call is refused rather than left unaudited."""


class RequestTooLarge(CdsServiceError):
    """The request body exceeds the configured limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body exceeds {limit} bytes")
        self.limit = limit


class MappingError(CdsServiceError):
    """A mapping file cannot be loaded; the message names the file, criterion and field."""


class InvalidInput(CdsServiceError):
    """Patient data that cannot be used: not JSON, not a Bundle, no Patient, two Patients, ..."""


class InvalidResource(InvalidInput):
    """A single resource that is not valid FHIR R4: ``reference`` (Type/id) and the first bad
    ``field`` (never its value), for a reason a clinician can act on."""

    def __init__(self, message: str, *, reference: str = "", field: str = "") -> None:
        super().__init__(message)
        self.reference = reference
        self.field = field


class ForeignData(InvalidInput):
    """Resources that refer to a patient other than the record's; ``resources`` holds them all."""

    def __init__(self, message: str, *, resources: list[dict[str, object]] | None = None) -> None:
        super().__init__(message)
        self.resources = resources or []


class Unauthorized(CdsServiceError):
    """Credentials refused. Deliberately carries no detail outward."""


class PrefetchUnavailable(CdsServiceError):
    """Required data could be had neither from prefetch nor from the FHIR server."""


class FhirError(CdsServiceError):
    """The FHIR server answered with an error, garbage, or not at all.

    ``kind`` is one of timeout / unauthorized / http / invalid / too-large / paging (the
    ``cds_fhir_fetch_failures_total`` label), or "abandoned" for a search stopped because a sibling
    search failed (not counted: the sibling's failure is).
    """

    kind = "http"

    def __init__(self, message: str, *, kind: str | None = None) -> None:
        super().__init__(message)
        if kind is not None:
            self.kind = kind


class FhirUnauthorized(FhirError):
    """The FHIR server refused the bearer token (401), or refused it for this resource (403)."""

    kind = "unauthorized"

    def __init__(self, message: str, *, status: int = 401) -> None:
        super().__init__(message)
        self.status = status


class FhirTimeout(FhirError):
    """The FHIR server did not answer within the configured timeouts."""

    kind = "timeout"
