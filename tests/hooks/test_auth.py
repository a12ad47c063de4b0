"""EHR JWT authentication, with real keys, real signed JWTs and a real JWKS HTTP server."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from jwt.warnings import InsecureKeyLengthWarning

from cds_service.errors import Unauthorized
from cds_service.hooks.auth import (
    EhrAuthenticator,
    JtiCache,
    JwksCache,
    JwtPolicy,
    VerifiedClient,
)
from tests.support.jwks_server import JwksServer

ISS = "https://ehr.example.org"
AUD = "https://cds.example.org/cds-services/trial-eligibility"
SUB = "sub-0c1d2e3f-patient-ish-value"
JWKS_PATH = "/ehr/jwks.json"
DROP = object()  # a claim value meaning "leave this claim out"

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True)
class Keys:
    ec384: ec.EllipticCurvePrivateKey
    ec384_new: ec.EllipticCurvePrivateKey
    ec384_rogue: ec.EllipticCurvePrivateKey
    ec256: ec.EllipticCurvePrivateKey
    rsa: rsa.RSAPrivateKey


@dataclass(frozen=True)
class Env:
    keys: Keys
    jwks_url: str


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys(
        ec384=ec.generate_private_key(ec.SECP384R1()),
        ec384_new=ec.generate_private_key(ec.SECP384R1()),
        ec384_rogue=ec.generate_private_key(ec.SECP384R1()),
        ec256=ec.generate_private_key(ec.SECP256R1()),
        rsa=rsa.generate_private_key(public_exponent=65537, key_size=3072),
    )


def public_jwk(private: PrivateKey, kid: str, **extra: Any) -> dict[str, Any]:
    if isinstance(private, ec.EllipticCurvePrivateKey):
        jwk = ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
    else:
        jwk = RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
    return {**jwk, "kid": kid, "use": "sig", **extra}


def standard_jwks(keys: Keys) -> list[dict[str, Any]]:
    return [
        public_jwk(keys.ec384, "ec384-1", alg="ES384"),
        public_jwk(keys.rsa, "rsa-1"),
        public_jwk(keys.ec256, "ec256-1"),
    ]


@pytest.fixture
def server(keys: Keys) -> Iterator[JwksServer]:
    with JwksServer() as srv:
        srv.set_jwks(JWKS_PATH, standard_jwks(keys))
        yield srv


def make_auth(
    jwks_url: str,
    *,
    algorithms: tuple[str, ...] = ("ES384", "RS384"),
    jwks: JwksCache | None = None,
    timeout: tuple[float, float] = (2.0, 3.0),
) -> EhrAuthenticator:
    policy = JwtPolicy(trusted_issuers={ISS: jwks_url}, algorithms=algorithms, http_timeout=timeout)
    return EhrAuthenticator(policy, jwks=jwks or JwksCache(http_timeout=timeout))


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "iss": ISS,
        "aud": AUD,
        "iat": now,
        "exp": now + 240,
        "jti": uuid.uuid4().hex,
        "sub": SUB,
        "tenant": "org-1",
    }
    merged = {**base, **overrides}
    return {k: v for k, v in merged.items() if v is not DROP}


def sign(private: PrivateKey, alg: str, payload: dict[str, Any], **header: Any) -> str:
    return jwt.encode(payload, private, algorithm=alg, headers=header)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(header: dict[str, Any], payload: dict[str, Any], secret: bytes | None) -> str:
    """A token PyJWT would refuse to produce: alg none, or HS256 keyed with a public key."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
    if secret is None:
        return signing_input + "."
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


def public_pem(private: PrivateKey) -> bytes:
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def bearer(token: str) -> str:
    return f"Bearer {token}"


@dataclass(frozen=True)
class In:
    """A claim time relative to the moment of signing, so cases never go stale mid-suite."""

    seconds: int


CONFIGURED_JKU = object()  # a header value meaning "the issuer's configured JWKS URL"
DEFAULT = ("ES384", "RS384")
WITH_ES256 = ("ES384", "RS384", "ES256")


def token(
    key: str = "ec384", alg: str = "ES384", kid: str | None = "ec384-1", **spec: Any
) -> Callable[[Env], str]:
    """A builder for a token signed by ``keys.<key>``; ``spec`` holds claim overrides and, under
    ``header``, extra JOSE header fields."""

    def build(env: Env) -> str:
        now = int(time.time())
        header = {k: env.jwks_url if v is CONFIGURED_JKU else v for k, v in spec.get("header", {}).items()}
        if kid is not None:
            header["kid"] = kid
        payload = claims(
            **{k: now + v.seconds if isinstance(v, In) else v for k, v in spec.items() if k != "header"}
        )
        return sign(getattr(env.keys, key), alg, payload, **header)

    return build


def hs256_with_public_pem(env: Env) -> str:
    return hand_made({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}, claims(), public_pem(env.keys.rsa))


def alg_none(env: Env) -> str:
    return hand_made({"alg": "none", "typ": "JWT", "kid": "ec384-1"}, claims(), None)


MATRIX = [  # token builder, policy algorithms, accepted?
    pytest.param(token(), DEFAULT, True, id="valid-es384"),
    pytest.param(token("rsa", "RS384", "rsa-1"), DEFAULT, True, id="valid-rs384"),
    pytest.param(token(aud=["x", AUD]), DEFAULT, True, id="valid-aud-list"),
    pytest.param(token(sub=DROP, tenant=DROP), DEFAULT, True, id="valid-no-sub-no-tenant"),
    pytest.param(token(iat=In(-400), exp=In(-120)), DEFAULT, False, id="expired"),
    pytest.param(token(iat=In(120), exp=In(300)), DEFAULT, False, id="iat-in-future"),
    pytest.param(token(nbf=In(120)), DEFAULT, False, id="nbf-in-future"),
    pytest.param(token(exp=In(3600)), DEFAULT, False, id="lifetime-too-long"),
    pytest.param(token(aud="https://cds.example.org/x"), DEFAULT, False, id="wrong-aud"),
    pytest.param(token(iss="https://evil.example"), DEFAULT, False, id="unknown-iss"),
    pytest.param(token(header={"jku": "https://evil.example/jwks"}), DEFAULT, False, id="jku-foreign"),
    pytest.param(token(header={"jku": CONFIGURED_JKU}), DEFAULT, True, id="jku-configured"),
    pytest.param(alg_none, DEFAULT, False, id="alg-none"),
    pytest.param(hs256_with_public_pem, DEFAULT, False, id="hs256-public-pem-as-secret"),
    pytest.param(token("ec256", "ES256", "ec256-1"), DEFAULT, False, id="es256-by-default"),
    pytest.param(token("ec256", "ES256", "ec256-1"), WITH_ES256, True, id="es256-allowed"),
    pytest.param(token(kid="rsa-1"), DEFAULT, False, id="es384-naming-an-rsa-kid"),
    pytest.param(token(kid="ec256-1"), WITH_ES256, False, id="es384-naming-a-p256-kid"),
    pytest.param(token("ec384_rogue"), DEFAULT, False, id="signed-by-rogue-key"),
    pytest.param(token(jti=DROP), DEFAULT, False, id="missing-jti"),
    pytest.param(token(jti=""), DEFAULT, False, id="empty-jti"),
    pytest.param(token(exp=DROP), DEFAULT, False, id="missing-exp"),
    pytest.param(token(iat=DROP), DEFAULT, False, id="missing-iat"),
    pytest.param(token(aud=DROP), DEFAULT, False, id="missing-aud"),
    pytest.param(token(kid=None), DEFAULT, False, id="missing-kid"),
    pytest.param(token(header={"typ": "at+jwt"}), DEFAULT, False, id="typ-not-jwt"),
]


@pytest.mark.parametrize(("build", "algorithms", "accepted"), MATRIX)
def test_matrix(
    build: Callable[[Env], str],
    algorithms: tuple[str, ...],
    accepted: bool,
    keys: Keys,
    server: JwksServer,
) -> None:
    env = Env(keys=keys, jwks_url=server.url(JWKS_PATH))
    auth = make_auth(env.jwks_url, algorithms=algorithms)
    header = bearer(build(env))
    if accepted:
        client = auth.authenticate(authorization_header=header, audience=AUD)
        assert client.iss == ISS
    else:
        with pytest.raises(Unauthorized) as refused:
            auth.authenticate(authorization_header=header, audience=AUD)
        assert str(refused.value) == "invalid EHR credentials"
        assert refused.value.__cause__ is None


def test_verified_client_carries_the_claims(keys: Keys, server: JwksServer) -> None:
    payload = claims()
    token = sign(keys.ec384, "ES384", payload, kid="ec384-1")
    client = make_auth(server.url(JWKS_PATH)).authenticate(authorization_header=bearer(token), audience=AUD)
    assert client == VerifiedClient(iss=ISS, sub=SUB, jti=payload["jti"], tenant="org-1", exp=payload["exp"])


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "Bearer ",
        "Bearer garbage",
        "Bearer a.b",
        "Bearer a.b.c.d",
        "Bearer !!!.###.$$$",
        "Bearer " + "a" * 9000 + ".b.c",
        "Bearer eyJhbGciOiJFUzM4NCJ9.bm90IGpzb24.c2ln",
    ],
    ids=[
        "none",
        "empty",
        "basic",
        "bearer-only",
        "bearer-blank",
        "garbage",
        "two-parts",
        "four-parts",
        "bad-chars",
        "oversized",
        "payload-not-json",
    ],
)
def test_malformed_authorization_header_refused(header: str | None, server: JwksServer) -> None:
    with pytest.raises(Unauthorized):
        make_auth(server.url(JWKS_PATH)).authenticate(authorization_header=header, audience=AUD)
    assert server.request_count(JWKS_PATH) == 0


def test_bearer_scheme_is_case_insensitive(keys: Keys, server: JwksServer) -> None:
    token = sign(keys.ec384, "ES384", claims(), kid="ec384-1")
    make_auth(server.url(JWKS_PATH)).authenticate(authorization_header=f"bearer {token}", audience=AUD)


def test_replayed_jti_refused(keys: Keys, server: JwksServer) -> None:
    auth = make_auth(server.url(JWKS_PATH))
    token = sign(keys.ec384, "ES384", claims(), kid="ec384-1")
    auth.authenticate(authorization_header=bearer(token), audience=AUD)
    with pytest.raises(Unauthorized):
        auth.authenticate(authorization_header=bearer(token), audience=AUD)
    # A new token reusing the jti is a replay too, even when freshly signed.
    again = sign(
        keys.rsa,
        "RS384",
        claims(jti=jwt.decode(token, options={"verify_signature": False})["jti"]),
        kid="rsa-1",
    )
    with pytest.raises(Unauthorized):
        auth.authenticate(authorization_header=bearer(again), audience=AUD)


def test_concurrent_replays_let_exactly_one_through(keys: Keys, server: JwksServer) -> None:
    auth = make_auth(server.url(JWKS_PATH))
    token = sign(keys.ec384, "ES384", claims(), kid="ec384-1")
    outcomes: list[bool] = []
    start = threading.Barrier(12)

    def call() -> None:
        start.wait()
        try:
            auth.authenticate(authorization_header=bearer(token), audience=AUD)
            outcomes.append(True)
        except Unauthorized:
            outcomes.append(False)

    threads = [threading.Thread(target=call) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == [False] * 11 + [True]
    assert server.request_count(JWKS_PATH) == 1  # misses shared a single fetch


def test_rotated_kid_accepted_after_exactly_one_refetch(keys: Keys, server: JwksServer) -> None:
    auth = make_auth(server.url(JWKS_PATH), jwks=JwksCache(min_refetch_seconds=0))
    auth.authenticate(
        authorization_header=bearer(sign(keys.ec384, "ES384", claims(), kid="ec384-1")), audience=AUD
    )
    assert server.request_count(JWKS_PATH) == 1
    server.set_jwks(JWKS_PATH, [*standard_jwks(keys), public_jwk(keys.ec384_new, "ec384-2")])
    new = sign(keys.ec384_new, "ES384", claims(), kid="ec384-2")
    client = auth.authenticate(authorization_header=bearer(new), audience=AUD)
    assert client.iss == ISS
    assert server.request_count(JWKS_PATH) == 2


def test_kid_that_never_appears_costs_at_most_one_refetch(keys: Keys, server: JwksServer) -> None:
    auth = make_auth(server.url(JWKS_PATH), jwks=JwksCache(min_refetch_seconds=0))
    auth.authenticate(
        authorization_header=bearer(sign(keys.ec384, "ES384", claims(), kid="ec384-1")), audience=AUD
    )
    with pytest.raises(Unauthorized):
        auth.authenticate(
            authorization_header=bearer(sign(keys.ec384, "ES384", claims(), kid="no-such-kid")), audience=AUD
        )
    assert server.request_count(JWKS_PATH) == 2


def test_random_kids_cannot_make_us_hammer_the_ehr(keys: Keys, server: JwksServer) -> None:
    auth = make_auth(server.url(JWKS_PATH))  # default: one refetch per 30 s per URL
    for _ in range(10):
        with pytest.raises(Unauthorized):
            auth.authenticate(
                authorization_header=bearer(sign(keys.ec384, "ES384", claims(), kid=uuid.uuid4().hex)),
                audience=AUD,
            )
    assert server.request_count(JWKS_PATH) == 1


def test_refetch_rate_limit_follows_the_clock(keys: Keys, server: JwksServer) -> None:
    now = [1000.0]
    cache = JwksCache(min_refetch_seconds=30, clock=lambda: now[0])
    auth = make_auth(server.url(JWKS_PATH), jwks=cache)
    auth.authenticate(
        authorization_header=bearer(sign(keys.ec384, "ES384", claims(), kid="ec384-1")), audience=AUD
    )
    server.set_jwks(JWKS_PATH, [public_jwk(keys.ec384_new, "ec384-2")])
    now[0] += 5
    with pytest.raises(Unauthorized):
        auth.authenticate(
            authorization_header=bearer(sign(keys.ec384_new, "ES384", claims(), kid="ec384-2")), audience=AUD
        )
    assert server.request_count(JWKS_PATH) == 1
    now[0] += 30
    auth.authenticate(
        authorization_header=bearer(sign(keys.ec384_new, "ES384", claims(), kid="ec384-2")), audience=AUD
    )
    assert server.request_count(JWKS_PATH) == 2
    # The rotated-out key is gone from the cache too.
    with pytest.raises(Unauthorized):
        auth.authenticate(
            authorization_header=bearer(sign(keys.ec384, "ES384", claims(), kid="ec384-1")), audience=AUD
        )


def test_jwks_ttl_expiry_refetches(keys: Keys, server: JwksServer) -> None:
    now = [1000.0]
    auth = make_auth(server.url(JWKS_PATH), jwks=JwksCache(ttl_seconds=600, clock=lambda: now[0]))
    for step in (0, 599, 2):
        now[0] += step
        auth.authenticate(
            authorization_header=bearer(sign(keys.ec384, "ES384", claims(), kid="ec384-1")), audience=AUD
        )
    assert server.request_count(JWKS_PATH) == 2


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/jwks.json"


def test_jwks_server_down_is_refused_quickly(keys: Keys) -> None:
    auth = make_auth(closed_port_url(), timeout=(0.5, 0.5))
    started = time.monotonic()
    with pytest.raises(Unauthorized):
        auth.authenticate(
            authorization_header=bearer(sign(keys.ec384, "ES384", claims(), kid="ec384-1")), audience=AUD
        )
    assert time.monotonic() - started < 2.0


def test_hanging_jwks_server_is_refused_in_bounded_time(keys: Keys, server: JwksServer) -> None:
    server.hang("/slow")
    auth = make_auth(server.url("/slow"), timeout=(0.5, 0.5))
    for _ in range(3):
        started = time.monotonic()
        with pytest.raises(Unauthorized):
            auth.authenticate(
                authorization_header=bearer(sign(keys.ec384, "ES384", claims(), kid="ec384-1")), audience=AUD
            )
        assert time.monotonic() - started < 2.0
    assert server.request_count("/slow") == 1  # later calls did not wait on it again


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (200, b"not json"),
        (200, b'{"no": "keys"}'),
        (200, b'{"keys": {}}'),
        (200, b"[]"),
        (500, b'{"keys": []}'),
        (302, b""),
        (200, b'{"keys": [], "pad": "' + b"x" * 70_000 + b'"}'),
    ],
    ids=["not-json", "no-keys", "keys-not-list", "array", "http-500", "redirect", "too-large"],
)
def test_unusable_jwks_refused(status: int, body: bytes, keys: Keys, server: JwksServer) -> None:
    server.set_body("/bad", body, status=status)
    with pytest.raises(Unauthorized):
        make_auth(server.url("/bad")).authenticate(
            authorization_header=bearer(sign(keys.ec384, "ES384", claims(), kid="ec384-1")), audience=AUD
        )


@pytest.mark.parametrize("extra", [{"use": "enc"}, {"alg": "ES256"}], ids=["use-enc", "declared-other-alg"])
def test_jwk_not_for_this_signature_ignored(extra: dict[str, Any], keys: Keys, server: JwksServer) -> None:
    server.set_jwks(JWKS_PATH, [public_jwk(keys.ec384, "ec384-1", **extra)])
    with pytest.raises(Unauthorized):
        make_auth(server.url(JWKS_PATH)).authenticate(
            authorization_header=bearer(sign(keys.ec384, "ES384", claims(), kid="ec384-1")), audience=AUD
        )


def test_short_rsa_key_refused(server: JwksServer) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    server.set_jwks(JWKS_PATH, [public_jwk(weak, "weak")])
    with pytest.warns(InsecureKeyLengthWarning):
        token = sign(weak, "RS384", claims(), kid="weak")
    with pytest.raises(Unauthorized):
        make_auth(server.url(JWKS_PATH)).authenticate(authorization_header=bearer(token), audience=AUD)


def test_jti_cache_is_per_issuer_and_bounded() -> None:
    now = [100.0]
    cache = JtiCache(max_entries=2, clock=lambda: now[0])
    assert cache.remember(iss="a", jti="1", forget_after=110)
    assert cache.remember(iss="b", jti="1", forget_after=120)
    assert not cache.remember(iss="a", jti="1", forget_after=110)
    assert not cache.remember(iss="a", jti="2", forget_after=130)  # full: refuse, don't forget
    now[0] = 110.0
    assert cache.remember(iss="a", jti="2", forget_after=130)  # ("a", "1") expired and evicted
    assert len(cache) == 2
    assert not cache.remember(iss="b", jti="1", forget_after=120)


@pytest.mark.parametrize(
    "kwargs",
    [{"algorithms": ("HS256",)}, {"algorithms": ("none",)}, {"algorithms": ()}, {"trusted_issuers": {}}],
    ids=["hs256", "none", "empty-algorithms", "no-issuers"],
)
def test_policy_refuses_unsafe_settings(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        JwtPolicy(**{"trusted_issuers": {ISS: "https://ehr.example.org/jwks"}, **kwargs})


def test_policy_copies_the_issuer_allowlist() -> None:
    issuers = {ISS: "https://ehr.example.org/jwks"}
    policy = JwtPolicy(trusted_issuers=issuers)
    issuers["https://evil.example"] = "https://evil.example/jwks"
    assert list(policy.trusted_issuers) == [ISS]


def test_logs_carry_neither_token_nor_sub(
    keys: Keys, server: JwksServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    auth = make_auth(server.url(JWKS_PATH))
    good = sign(keys.ec384, "ES384", claims(), kid="ec384-1")
    bad = sign(keys.ec384, "ES384", claims(aud="https://elsewhere.example"), kid="ec384-1")
    auth.authenticate(authorization_header=bearer(good), audience=AUD)
    with pytest.raises(Unauthorized):
        auth.authenticate(authorization_header=bearer(bad), audience=AUD)
    with pytest.raises(Unauthorized):
        auth.authenticate(authorization_header=bearer(good), audience=AUD)  # replay
    assert any("refused" in r.getMessage() for r in caplog.records)
    assert any("accepted" in r.getMessage() for r in caplog.records)
    for record in caplog.records:
        text = record.getMessage() + repr(record.args)
        for secret in (good, bad, *good.split("."), *bad.split("."), SUB):
            assert secret not in text
