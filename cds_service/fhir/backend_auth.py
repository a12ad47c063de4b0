"""SMART Backend Services: a client_credentials token with a signed ``private_key_jwt`` assertion.

The client's private key (PEM, or a JWK / JWK Set holding one private key) signs a short-lived JWT
(RS384 for RSA, ES384 for P-384) whose audience is the token endpoint; the server checks it with
the public key it has registered (a JWK Set, possibly at the ``jku`` URL). The token is kept in
memory only, renewed a minute before it expires, and never logged or printed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from cds_service.errors import InvalidInput

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME = 240  # seconds; servers accept at most 5 minutes


@dataclass(frozen=True)
class ClientKey:
    """A private signing key with its algorithm and key id."""

    key: Any
    alg: str
    kid: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def thumbprint(public_jwk: dict[str, Any]) -> str:
    """RFC 7638 thumbprint: the default ``kid`` for a PEM key."""
    names = ("e", "kty", "n") if public_jwk["kty"] == "RSA" else ("crv", "kty", "x", "y")
    members = {k: public_jwk[k] for k in names}
    return _b64(hashlib.sha256(json.dumps(members, separators=(",", ":"), sort_keys=True).encode()).digest())


def _alg(key: Any) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS384"
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1":
        return "ES384"
    raise InvalidInput("the client key must be RSA (RS384) or EC P-384 (ES384)")


def load_client_key(path: Path, *, kid: str | None = None) -> ClientKey:
    """Read a PEM private key or a private JWK (or a JWK Set with one private key)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot be read: {exc.strerror}") from None
    if data.lstrip().startswith(b"{"):
        return _from_jwk(path, data, kid)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise InvalidInput(f"{path}: not an unencrypted PEM private key or a private JWK") from None
    alg = _alg(key)
    public_key: Any = key.public_key()
    public = json.loads(
        jwt.algorithms.RSAAlgorithm.to_jwk(public_key)
        if alg == "RS384"
        else jwt.algorithms.ECAlgorithm.to_jwk(public_key)
    )
    return ClientKey(key, alg, kid or thumbprint(public))


def _from_jwk(path: Path, data: bytes, kid: str | None) -> ClientKey:
    try:
        doc = json.loads(data)
        keys = doc.get("keys", [doc])
        private = [k for k in keys if "d" in k and (kid is None or k.get("kid") == kid)]
        if len(private) != 1:
            raise InvalidInput(f"{path}: expected exactly one private key{' with that kid' if kid else ''}")
        jwk = private[0]
        algorithm = jwt.algorithms.RSAAlgorithm if jwk.get("kty") == "RSA" else jwt.algorithms.ECAlgorithm
        key = algorithm.from_jwk(json.dumps(jwk))
    except (ValueError, KeyError, TypeError, jwt.exceptions.InvalidKeyError):
        raise InvalidInput(f"{path}: not a usable private JWK") from None
    alg = _alg(key)
    return ClientKey(key, alg, kid or str(jwk.get("kid") or ""))


def client_assertion(
    key: ClientKey, *, client_id: str, token_url: str, jku: str | None = None, now: float | None = None
) -> str:
    """The signed JWT the token endpoint checks (iss = sub = client id, aud = token URL)."""
    issued = int(now if now is not None else time.time())
    headers: dict[str, Any] = {"typ": "JWT", "kid": key.kid}
    if jku:
        headers["jku"] = jku
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": token_url,
        "iat": issued,
        "exp": issued + ASSERTION_LIFETIME,
        "jti": str(uuid.uuid4()),
    }
    return jwt.encode(claims, key.key, algorithm=key.alg, headers=headers)
