"""The one exception tree of cds_service.

Every error the service raises on purpose derives from ``CdsServiceError``; the edges (CLI, hooks,
SMART) map each branch to one answer (an exit code, an HTTP status, a page). Messages are short,
name what was wrong and where, and never carry patient data or tokens::

    CdsServiceError
    ├── MappingError          a trial or value-set file is malformed (names file, criterion, field)
    ├── InvalidInput          patient data we were given cannot be used
    │   └── InvalidResource   one resource is not valid FHIR R4 (names Type/id and the field)
    ├── Unauthorized          the caller's credentials were refused (EHR JWT, SMART session)
    │   └── JwksUnavailable   (hooks.auth) the issuer's JWK Set could not be fetched
    ├── PrefetchUnavailable   the data a card needs can be had neither from prefetch nor from FHIR
    └── FhirError             the FHIR server failed us
        ├── FhirUnauthorized  it refused our token (401/403)
        └── FhirTimeout       it did not answer in time
"""

from __future__ import annotations


class CdsServiceError(Exception):
    """Root of every error raised on purpose by cds_service."""


class MappingError(CdsServiceError):
    """A mapping file cannot be loaded; the message names the file, criterion and field."""


class InvalidInput(CdsServiceError):
    """Patient data that cannot be used: not JSON, not a Bundle, no Patient, two Patients, ..."""


class InvalidResource(InvalidInput):
    """A single resource that is not valid FHIR R4."""


class Unauthorized(CdsServiceError):
    """Credentials refused. Deliberately carries no detail outward."""


class PrefetchUnavailable(CdsServiceError):
    """Required data could be had neither from prefetch nor from the FHIR server."""


class FhirError(CdsServiceError):
    """The FHIR server answered with an error, garbage, or not at all."""


class FhirUnauthorized(FhirError):
    """The FHIR server refused the bearer token (401), or refused it for this resource (403)."""

    def __init__(self, message: str, *, status: int = 401) -> None:
        super().__init__(message)
        self.status = status


class FhirTimeout(FhirError):
    """The FHIR server did not answer within the configured timeouts."""
