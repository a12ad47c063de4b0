"""Who is signed in: the OpenID Connect ``id_token`` of the token response, as a stable user key.

The app asks for ``openid fhirUser``; an EHR that grants them returns an ``id_token`` beside the
access token. We need one thing from it: a stable identifier of the user, to keep a reviewer's
checklist for the next launch. OpenID Connect Core §5.7: "the sub (subject) and iss (issuer)
Claims, used together, are the only Claims that an RP can rely upon as a stable identifier for the
End-User", so the key is a pseudonym of ``iss`` + ``sub`` (``fhirUser`` may change with the EHR's
resource ids, and is not needed). Nothing else from the token is kept, and no raw id reaches the
database.

Without an id_token (or with one that fails the checks below) the launch has no user key, and the
page says its checklist is kept for this launch only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import jwt

from cds_service.ops.audit import Pseudonyms

log = logging.getLogger(__name__)
MAX_ID_TOKEN = 16_384
_CLOCK_SKEW = 60  # seconds of leeway on exp / iat between us and the EHR


def user_key(id_token: str | None, *, issuer: str, client_id: str, pseudonyms: Pseudonyms) -> str | None:
    """The user's keyed pseudonym, or None when there is no usable id_token (logged, no claims)."""
    claims = id_token_claims(id_token, issuer=issuer, client_id=client_id) if id_token else None
    if claims is None:
        return None
    return pseudonyms.of(f"user|{claims['iss']}|{claims['sub']}")


def id_token_claims(id_token: str, *, issuer: str, client_id: str) -> Mapping[str, Any] | None:
    """The claims of an id_token for us from the EHR's issuer, or None.

    The signature is deliberately not verified: the token came to us directly from the token
    endpoint, over a connection we checked (https, or loopback http when allowed), in answer to
    our own code exchange. OpenID Connect Core §3.1.3.7 (6): "If the ID Token is received via direct
    communication between the Client and the Token Endpoint (which it is in this flow), the TLS
    server validation MAY be used to validate the issuer in place of checking the token signature."
    What TLS cannot tell us is checked: the issuer is the EHR's (§3.1.3.7 (2)), we are an audience
    and, with several, the authorized party (3)-(5), and it has not expired (9).
    """
    if len(id_token) > MAX_ID_TOKEN:
        log.warning("SMART id_token ignored: longer than %d characters", MAX_ID_TOKEN)
        return None
    try:
        claims: dict[str, Any] = jwt.decode(
            id_token,
            options={
                "verify_signature": False,  # see the docstring: TLS from the token endpoint vouches
                "verify_exp": True,
                "verify_iat": True,
                "verify_aud": True,
                "verify_iss": True,
                "require": ["iss", "sub", "aud", "exp"],
            },
            audience=client_id,
            issuer=issuer,
            leeway=_CLOCK_SKEW,
        )
    except jwt.PyJWTError as exc:
        log.warning("SMART id_token ignored: %s", type(exc).__name__)
        return None
    audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    if len(audiences) > 1 and claims.get("azp") != client_id:
        log.warning("SMART id_token ignored: several audiences and we are not its azp")
        return None
    if not isinstance(claims["sub"], str) or not claims["sub"] or len(claims["sub"]) > 255:
        log.warning("SMART id_token ignored: sub is not a string of 1-255 characters")
        return None
    return claims
