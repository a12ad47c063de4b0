"""The OAuth 2.0 half of SMART App Launch 2.2: discovery, the authorize URL, the code exchange.

Stateless functions; the session module keeps what must survive between the redirect and the
callback (state, PKCE verifier, token endpoint). PKCE is always S256 (SMART 2.2 forbids ``plain``);
``state`` and the verifier carry 256 bits from ``secrets``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import requests

from cds_service import net
from cds_service.engine.loader import Catalog
from cds_service.fhir.ids import is_fhir_id
from cds_service.fhir.queries import prefetch_templates
from cds_service.settings import Settings
from cds_service.smart import errors
from cds_service.smart.urls import transport_allowed

log = logging.getLogger(__name__)

# Always asked for, whatever the mappings need: the banner reads Patient.
BASE_RESOURCES = (
    "Patient",
    "Condition",
    "Observation",
    "MedicationRequest",
    "MedicationStatement",
    "Procedure",
    "Immunization",
    "AllergyIntolerance",
)
_RESOURCE_TYPE = re.compile(r"^([A-Z][A-Za-z]+)[/?]")
_MAX_BODY = 1_000_000


@dataclass(frozen=True)
class SmartConfiguration:
    authorization_endpoint: str
    token_endpoint: str
    capabilities: tuple[str, ...] = ()
    issuer: str | None = None  # the OpenID Connect issuer (SMART: required with sso-openid-connect)


@dataclass(frozen=True)
class TokenGrant:
    """What the token response tells us; the access token stays server-side (never in repr)."""

    access_token: str = field(repr=False)
    patient: str
    scope: str
    expires_in: int | None
    need_patient_banner: bool
    app_context: dict[str, Any]
    id_token: str | None = field(default=None, repr=False)  # OpenID Connect; read by smart.identity


def new_secret() -> str:
    """256 random bits, URL-safe: state values, PKCE verifiers, session ids."""
    return secrets.token_urlsafe(32)


def pkce_challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _timeouts(settings: Settings) -> tuple[float, float]:
    return (settings.fhir_connect_timeout, settings.fhir_read_timeout)


def _ends(settings: Settings) -> float:
    """Discovery and the token exchange each end within ``fhir_total_timeout``, on the socket."""
    return time.monotonic() + settings.fhir_total_timeout


def resource_types(catalog: Catalog) -> list[str]:
    """Every type the app reads: the fixed list plus whatever the mappings' searches name."""
    found = list(BASE_RESOURCES)
    for query in prefetch_templates(catalog).values():
        match = _RESOURCE_TYPE.match(query)
        if match and match.group(1) not in found:
            found.append(match.group(1))
    if any("_include=" in q for q in prefetch_templates(catalog).values()):
        found.append("Medication")
    return found


def scopes(catalog: Catalog, *, style: str, ehr_launch: bool) -> str:
    """``launch openid fhirUser patient/X.rs ...`` (v2) or ``patient/X.read`` (v1)."""
    suffix = "rs" if style == "v2" else "read"
    context = "launch" if ehr_launch else "launch/patient"
    resources = [f"patient/{t}.{suffix}" for t in resource_types(catalog)]
    return " ".join([context, "openid", "fhirUser", *resources])


def discover(iss: str, settings: Settings) -> SmartConfiguration:
    """Read ``{iss}/.well-known/smart-configuration``; refuse endpoints we could not trust."""
    url = f"{iss}/.well-known/smart-configuration"
    try:
        with net.session() as s:
            reply = net.fetch(
                s,
                "GET",
                url,
                ends=_ends(settings),
                timeout=_timeouts(settings),
                max_bytes=_MAX_BODY,
                headers={"Accept": "application/json"},
            )
        if reply.status != 200:
            raise ValueError(f"HTTP {reply.status}")
        doc = json.loads(reply.body)
    except (requests.RequestException, ValueError, RecursionError) as exc:
        log.warning("SMART discovery failed for %s: %s", iss, type(exc).__name__)
        raise errors.discovery_failed() from None
    if not isinstance(doc, dict):
        raise errors.discovery_failed()
    return _configuration(doc, iss=iss, settings=settings)


def _configuration(doc: dict[str, Any], *, iss: str, settings: Settings) -> SmartConfiguration:
    endpoints = [doc.get("authorization_endpoint"), doc.get("token_endpoint")]
    for endpoint in endpoints:
        if not isinstance(endpoint, str) or not transport_allowed(
            endpoint, allow_http_loopback=settings.allow_http_loopback
        ):
            log.warning("SMART discovery for %s names an unusable endpoint", iss)
            raise errors.discovery_failed()
    methods = doc.get("code_challenge_methods_supported")
    if isinstance(methods, list) and "S256" not in methods:
        log.warning("SMART server %s does not offer PKCE S256", iss)
        raise errors.discovery_failed()
    capabilities = doc.get("capabilities")
    issuer = doc.get("issuer")
    return SmartConfiguration(
        authorization_endpoint=str(endpoints[0]),
        token_endpoint=str(endpoints[1]),
        capabilities=tuple(str(c) for c in capabilities) if isinstance(capabilities, list) else (),
        issuer=issuer if isinstance(issuer, str) and issuer else None,
    )


def authorize_url(
    config: SmartConfiguration,
    *,
    settings: Settings,
    redirect_uri: str,
    scope: str,
    state: str,
    verifier: str,
    aud: str,
    launch: str | None,
) -> str:
    params = {
        "response_type": "code",
        "client_id": settings.smart_client_id,
        "redirect_uri": redirect_uri,
        "scope": scope,
        "state": state,
        "aud": aud,
        "code_challenge": pkce_challenge(verifier),
        "code_challenge_method": "S256",
    }
    if launch is not None:
        params["launch"] = launch
    separator = "&" if "?" in config.authorization_endpoint else "?"
    return f"{config.authorization_endpoint}{separator}{urlencode(params)}"


def exchange_code(
    *, token_endpoint: str, code: str, verifier: str, redirect_uri: str, settings: Settings
) -> TokenGrant:
    """POST the code to the token endpoint: HTTP Basic when we have a secret, else a public client."""
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri,
        "code_verifier": verifier,
    }
    auth: tuple[str, str] | None = None
    if settings.smart_client_secret is not None:
        auth = (settings.smart_client_id, settings.smart_client_secret.get_secret_value())
    else:
        form["client_id"] = settings.smart_client_id
    headers = {"Accept": "application/json"}
    try:
        with net.session() as s:  # no redirects: the code and verifier go to the discovered endpoint only
            reply = net.fetch(
                s,
                "POST",
                token_endpoint,
                ends=_ends(settings),
                timeout=_timeouts(settings),
                max_bytes=_MAX_BODY,
                data=form,
                auth=auth,
                headers=headers,
            )
        status, body = reply.status, reply.body
    except requests.RequestException as exc:
        log.warning("SMART token endpoint unreachable: %s", type(exc).__name__)
        raise errors.token_failed() from None
    if status != 200:
        log.warning("SMART token endpoint answered HTTP %s: %s", status, _oauth_error(body))
        raise errors.token_failed()
    return _grant(body)


def _oauth_error(body: bytes) -> str:
    """The ``error`` code of an OAuth error body (never the description, which may echo input)."""
    try:
        data = json.loads(body)
    except ValueError:
        return "(not JSON)"
    error = data.get("error") if isinstance(data, dict) else None
    return error if isinstance(error, str) and error.isidentifier() else "(no error code)"


def _grant(body: bytes) -> TokenGrant:
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise errors.token_failed()
    token, token_type, patient = data.get("access_token"), data.get("token_type"), data.get("patient")
    if not isinstance(token, str) or not token or str(token_type).lower() != "bearer":
        log.warning("SMART token response without a bearer access_token")
        raise errors.token_failed()
    if not isinstance(patient, str) or not is_fhir_id(patient):
        log.warning("SMART token response without a usable patient context")
        raise errors.patient_not_available()
    expires_in, id_token = data.get("expires_in"), data.get("id_token")
    return TokenGrant(
        access_token=token,
        patient=patient,
        scope=str(data.get("scope", "")),
        expires_in=expires_in if isinstance(expires_in, int) and expires_in > 0 else None,
        need_patient_banner=data.get("need_patient_banner") is not False,
        app_context=parse_app_context(data.get("appContext")),
        id_token=id_token if isinstance(id_token, str) and id_token else None,
    )


def parse_app_context(value: object) -> dict[str, Any]:
    """``appContext`` is a string (JSON by our convention, e.g. ``{"trial": "NCT..."}``); else empty."""
    if isinstance(value, dict):
        return value
    if not isinstance(value, str):
        return {}
    try:
        parsed = json.loads(value)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}
