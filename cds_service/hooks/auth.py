"""Authenticate the EHR behind a CDS Hooks 2.0 call by the JWT it signed ("Trusting CDS Clients").

The EHR signs a short-lived JWT per call; we trust it only if its issuer is on our allowlist, its
key comes from the JWKS URL *we* configured for that issuer (a ``jku`` header may only repeat that
URL, never redirect us elsewhere), its algorithm is an asymmetric one we chose (never ``none`` or
HMAC, which would let a public key act as a shared secret), its ``aud`` is the endpoint invoked,
and its ``jti`` has not been seen before. Every refusal is one bare ``Unauthorized``; the reason
is logged, never the token or claims other than ``iss``.
"""

from __future__ import annotations

import heapq
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import jwt
from jwt.exceptions import (
    ExpiredSignatureError,
    ImmatureSignatureError,
    InvalidAudienceError,
    InvalidIssuedAtError,
    InvalidIssuerError,
    InvalidSignatureError,
    MissingRequiredClaimError,
    PyJWTError,
)

from cds_service.errors import Unauthorized
from cds_service.hooks.jwks import JwksCache, JwksUnavailable
from cds_service.ops import metrics

log = logging.getLogger(__name__)
__all__ = ["EhrAuthenticator", "JtiCache", "JwksCache", "JwksUnavailable", "JwtPolicy", "VerifiedClient"]

# alg -> (kty, crv) its verifying JWK must have. Only asymmetric algorithms exist here.
_KEY_SHAPE: dict[str, tuple[str, str | None]] = {
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "ES512": ("EC", "P-521"),
    "RS256": ("RSA", None),
    "RS384": ("RSA", None),
    "RS512": ("RSA", None),
    "PS256": ("RSA", None),
    "PS384": ("RSA", None),
    "PS512": ("RSA", None),
}
_PRIVATE_JWK_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_REQUIRED_CLAIMS = ["iss", "aud", "exp", "iat", "jti"]
_TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_MAX_TOKEN_CHARS = 8192
_MAX_JTI_CHARS = 256


class _Refused(Exception):
    """Internal: why a token was refused; logged and counted by ``reason`` (one of
    ``metrics.JWT_REASONS``), never shown to the caller."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _reason_of(exc: PyJWTError) -> str:
    if isinstance(exc, InvalidSignatureError):
        return "signature"
    if isinstance(exc, InvalidAudienceError):
        return "audience"
    if isinstance(exc, ExpiredSignatureError | ImmatureSignatureError | InvalidIssuedAtError):
        return "expired"
    if isinstance(exc, InvalidIssuerError):
        return "issuer"
    return "claims"


@dataclass(frozen=True)
class JwtPolicy:
    """Which EHRs we trust and how strictly; built once from settings."""

    trusted_issuers: Mapping[str, str]  # iss -> the JWKS URL configured for it out of band
    algorithms: tuple[str, ...] = ("ES384", "RS384")
    leeway_seconds: int = 30
    max_lifetime_seconds: int = 300  # the spec asks for exp at most 5 minutes after iat
    http_timeout: tuple[float, float] = (2.0, 3.0)  # (connect, read) for JWKS fetches

    def __post_init__(self) -> None:
        """Fail at startup, not per request, on a policy that would let weak tokens in."""
        unsupported = [a for a in self.algorithms if a not in _KEY_SHAPE]
        if not self.algorithms or unsupported:
            raise ValueError(f"algorithms must be asymmetric JWS algorithms, got {unsupported}")
        if not self.trusted_issuers:
            raise ValueError("trusted_issuers is empty: no EHR could ever be authenticated")
        # A private copy, so a later change to the caller's dict cannot widen the allowlist.
        object.__setattr__(self, "trusted_issuers", MappingProxyType(dict(self.trusted_issuers)))


@dataclass(frozen=True)
class VerifiedClient:
    """The EHR whose JWT passed every check; what downstream code may rely on."""

    iss: str
    sub: str | None
    jti: str
    tenant: str | None
    exp: int


class JtiCache:
    """Seen ``(iss, jti)`` pairs, each kept until its token's exp plus leeway.

    Bounded by ``max_entries``: expired entries go first; if it is still full, new tokens are
    refused rather than unexpired entries forgotten, since forgetting would re-open replay. A
    legitimate EHR would need ``max_entries`` calls within one token lifetime to hit this.
    """

    def __init__(self, *, max_entries: int = 100_000, clock: Callable[[], float] = time.time):
        self._max = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str], float] = {}
        self._by_expiry: list[tuple[float, tuple[str, str]]] = []

    def remember(self, *, iss: str, jti: str, forget_after: float) -> bool:
        """Record the pair; False if it was already seen (a replay) or there is no room."""
        with self._lock:
            now = self._clock()
            while self._by_expiry and self._by_expiry[0][0] <= now:
                del self._seen[heapq.heappop(self._by_expiry)[1]]
            key = (iss, jti)
            if key in self._seen:
                return False
            if len(self._seen) >= self._max:
                log.warning("jti cache full (%d unexpired); refusing new tokens", self._max)
                return False
            self._seen[key] = forget_after
            heapq.heappush(self._by_expiry, (forget_after, key))
            return True

    def __len__(self) -> int:
        with self._lock:
            return len(self._seen)


class EhrAuthenticator:
    """Checks the ``Authorization`` header of every hook and feedback call."""

    def __init__(
        self, policy: JwtPolicy, *, jwks: JwksCache | None = None, jtis: JtiCache | None = None
    ) -> None:
        self._policy = policy
        self._jwks = jwks or JwksCache(http_timeout=policy.http_timeout)
        self._jtis = jtis or JtiCache()

    def authenticate(self, *, authorization_header: str | None, audience: str) -> VerifiedClient:
        """The verified client, or Unauthorized; ``audience`` is the URL the EHR invoked."""
        iss: str | None = None
        try:
            token, header, iss, kid = self._start(authorization_header)
            jwk = self._key(lambda: self._jwks.find_key(self._policy.trusted_issuers[iss], kid))
            client = self._finish(token, header=header, iss=iss, jwk=jwk, audience=audience)
        except _Refused as exc:
            raise self._refused(exc, iss) from None
        log.info("EHR JWT accepted (iss=%s)", iss)
        return client

    async def authenticate_async(self, *, authorization_header: str | None, audience: str) -> VerifiedClient:
        """``authenticate`` on the event loop: a JWKS fetch is awaited, holding no worker thread, so
        tokens naming a slow issuer cannot starve the thread pool other calls need."""
        iss: str | None = None
        try:
            token, header, iss, kid = self._start(authorization_header)
            url = self._policy.trusted_issuers[iss]
            try:
                jwk = await self._jwks.find_key_async(url, kid)
            except JwksUnavailable as exc:
                raise _Refused("jwks-unavailable", f"JWKS unavailable: {exc}") from None
            client = self._finish(token, header=header, iss=iss, jwk=jwk, audience=audience)
        except _Refused as exc:
            raise self._refused(exc, iss) from None
        log.info("EHR JWT accepted (iss=%s)", iss)
        return client

    def _start(self, authorization_header: str | None) -> tuple[str, dict[str, Any], str, str]:
        """(token, unverified header, trusted iss, kid): everything decided before any key is needed."""
        token = _bearer_token(authorization_header)
        header, iss = self._trusted_header_and_iss(token)
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise _Refused("kid", "header has no kid")
        return token, header, iss, kid

    @staticmethod
    def _key(find: Callable[[], dict[str, Any] | None]) -> dict[str, Any] | None:
        try:
            return find()
        except JwksUnavailable as exc:
            raise _Refused("jwks-unavailable", f"JWKS unavailable: {exc}") from None

    def _finish(
        self, token: str, *, header: dict[str, Any], iss: str, jwk: dict[str, Any] | None, audience: str
    ) -> VerifiedClient:
        if jwk is None:
            raise _Refused("kid", "kid not in the issuer's JWKS")
        payload = self._verify(
            token, header=header, iss=iss, key=_verification_key(jwk, header["alg"]), audience=audience
        )
        return self._client(payload, iss=iss)

    @staticmethod
    def _refused(exc: _Refused, iss: str | None) -> Unauthorized:
        log.warning("EHR JWT refused: %s (iss=%s)", exc, iss)
        metrics.jwt_rejected(exc.reason)
        return Unauthorized("invalid EHR credentials")

    def _trusted_header_and_iss(self, token: str) -> tuple[dict[str, Any], str]:
        """Unverified header and iss, only to pick the key; refuse what we would never accept."""
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(token, options={"verify_signature": False})
        except PyJWTError as exc:
            raise _Refused("malformed", f"undecodable token ({type(exc).__name__})") from None
        alg = header.get("alg")
        if alg not in self._policy.algorithms:
            raise _Refused("algorithm", f"alg {str(alg)[:20]!r} not allowed")
        if header.get("typ", "JWT") != "JWT":
            raise _Refused("malformed", "typ is not JWT")
        iss = claims.get("iss")
        if not isinstance(iss, str) or iss not in self._policy.trusted_issuers:
            raise _Refused("issuer", f"untrusted iss {str(iss)[:100]!r}")
        jku = header.get("jku")
        if jku is not None and jku != self._policy.trusted_issuers[iss]:
            raise _Refused("jku", "jku is not the JWKS URL configured for this iss")
        return header, iss

    def _verify(
        self, token: str, *, header: dict[str, Any], iss: str, key: jwt.PyJWK, audience: str
    ) -> dict[str, Any]:
        """Signature and standard claims, by the issuer's own key and our algorithm list."""
        try:
            return jwt.decode(
                token,
                key=key,
                algorithms=[header["alg"]],
                audience=audience,
                issuer=iss,
                leeway=self._policy.leeway_seconds,
                options={"require": _REQUIRED_CLAIMS, "enforce_minimum_key_length": True},
            )
        except MissingRequiredClaimError as exc:
            raise _Refused("claims", f"missing claim {exc.claim}") from None
        except PyJWTError as exc:
            raise _Refused(_reason_of(exc), f"verification failed ({type(exc).__name__})") from None

    def _client(self, payload: dict[str, Any], *, iss: str) -> VerifiedClient:
        """Checks PyJWT does not make (lifetime, claim types), then the replay check, last,
        so that tokens refused for other reasons never occupy the jti cache."""
        iat, exp, jti = payload["iat"], payload["exp"], payload["jti"]
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (iat, exp)):
            raise _Refused("claims", "iat/exp are not numbers")
        policy = self._policy
        if exp <= iat or exp - iat > policy.max_lifetime_seconds + policy.leeway_seconds:
            raise _Refused("claims", "exp is not within the allowed lifetime after iat")
        if not isinstance(jti, str) or not 0 < len(jti) <= _MAX_JTI_CHARS:
            raise _Refused("claims", "jti is not a non-empty short string")
        tenant = payload.get("tenant")
        if tenant is not None and not isinstance(tenant, str):
            raise _Refused("claims", "tenant is not a string")
        forget_after = float(exp) + policy.leeway_seconds
        if not self._jtis.remember(iss=iss, jti=jti, forget_after=forget_after):
            raise _Refused("replay", "jti replayed (or jti cache full)")
        return VerifiedClient(iss=iss, sub=payload.get("sub"), jti=jti, tenant=tenant, exp=int(exp))


def _bearer_token(authorization_header: str | None) -> str:
    """The compact JWT from ``Bearer <jwt>``; the scheme name is case-insensitive (RFC 6750)."""
    if not authorization_header:
        raise _Refused("no-token", "no Authorization header")
    scheme, _, token = authorization_header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer":
        raise _Refused("malformed", "Authorization scheme is not Bearer")
    if len(token) > _MAX_TOKEN_CHARS or not _TOKEN_SHAPE.fullmatch(token):
        raise _Refused("malformed", "bearer token is not a compact JWS")
    return token


def _verification_key(jwk: dict[str, Any], alg: str) -> jwt.PyJWK:
    """A public key bound to ``alg``, refusing a JWK of another type, curve or declared alg."""
    kty, crv = _KEY_SHAPE[alg]
    if jwk.get("kty") != kty or (crv is not None and jwk.get("crv") != crv):
        raise _Refused("algorithm", f"JWK type/curve does not fit {alg}")
    if jwk.get("alg", alg) != alg:
        raise _Refused("algorithm", f"JWK is declared for another alg than {alg}")
    public = {k: v for k, v in jwk.items() if k not in _PRIVATE_JWK_MEMBERS}
    try:
        return jwt.PyJWK(public, algorithm=alg)
    except (PyJWTError, KeyError, TypeError, ValueError) as exc:
        raise _Refused("algorithm", f"unusable JWK ({type(exc).__name__})") from None
