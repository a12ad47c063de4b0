"""Which servers the app may talk to: the launch's ``iss`` and the endpoints its discovery names.

``iss`` must lie under one of CDS_SMART_ISS_ALLOWLIST on a path boundary (``https://ehr/fhir`` admits
``https://ehr/fhir/r4`` but not ``https://ehr/fhir-evil`` nor ``https://ehr.evil``): the same rules,
and the same code, as the FHIR server allowlist of the hooks (``fhir.allowlist``). Every URL we send
a code or a token to must be https, or http on a loopback host when ``allow_http_loopback`` is set.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from cds_service.errors import InvalidInput
from cds_service.fhir.allowlist import check_fhir_server, is_loopback
from cds_service.settings import Settings


def checked_iss(iss: str, settings: Settings) -> str | None:
    """The normalized ``iss`` (no trailing slash) when it is allowlisted, else None."""
    if not settings.smart_iss_allowlist:
        return None
    as_fhir = settings.model_copy(update={"fhir_server_allowlist": settings.smart_iss_allowlist})
    try:
        return check_fhir_server(iss, settings=as_fhir, from_trusted_issuer=False)
    except InvalidInput:
        return None


def transport_allowed(url: str, *, allow_http_loopback: bool) -> bool:
    """https anywhere; http only to a loopback host, and only when allowed. No credentials in it."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    if not parts.hostname or parts.username is not None or parts.fragment:
        return False
    if parts.scheme == "https":
        return True
    return parts.scheme == "http" and allow_http_loopback and is_loopback(parts.hostname)


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.lower()}"
