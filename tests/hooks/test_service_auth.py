"""The EHR JWT matrix through HTTP: each token gets the status CDS Hooks asks for (200 or a bare 401)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi.testclient import TestClient

from cds_service.app import create_app
from cds_service.settings import Settings
from tests.conftest import DATA
from tests.hooks.test_auth import (
    AUD,
    ISS,
    JWKS_PATH,
    MATRIX,
    Env,
    Keys,
    public_jwk,
    standard_jwks,
    token,
)
from tests.hooks.test_service import hook_request
from tests.support.jwks_server import JwksServer

LIZ = json.loads(next((DATA / "synthea").glob("Liz_Conn_*.json")).read_text())
BASE = AUD.removesuffix("/cds-services/trial-eligibility")


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys(
        ec384=ec.generate_private_key(ec.SECP384R1()),
        ec384_new=ec.generate_private_key(ec.SECP384R1()),
        ec384_rogue=ec.generate_private_key(ec.SECP384R1()),
        ec256=ec.generate_private_key(ec.SECP256R1()),
        rsa=rsa.generate_private_key(public_exponent=65537, key_size=3072),
    )


@pytest.fixture
def jwks(keys: Keys) -> Iterator[JwksServer]:
    with JwksServer() as server:
        server.set_jwks(JWKS_PATH, standard_jwks(keys))
        yield server


def app_client(tmp_path: Path, jwks: JwksServer, *, sha256: bool = False) -> TestClient:
    settings = Settings(
        trusted_issuers={ISS: jwks.url(JWKS_PATH)},
        public_base_url=BASE,
        jwks_min_refetch_seconds=0.3,
        allow_sha256_jwt=sha256,
        feedback_db_url=f"sqlite:///{tmp_path}/f.db",
    )
    return TestClient(create_app(settings))


def call(client: TestClient, jwt_text: str) -> Any:
    body = hook_request(LIZ, client)
    return client.post(
        "/cds-services/trial-eligibility", json=body, headers={"Authorization": f"Bearer {jwt_text}"}
    )


@pytest.mark.parametrize(("build", "algorithms", "accepted"), MATRIX)
def test_jwt_matrix_over_http(
    build: Any, algorithms: tuple[str, ...], accepted: bool, keys: Keys, jwks: JwksServer, tmp_path: Path
) -> None:
    with app_client(tmp_path, jwks, sha256="ES256" in algorithms) as client:
        response = call(client, build(Env(keys=keys, jwks_url=jwks.url(JWKS_PATH))))
    if accepted:
        assert response.status_code == 200, response.text
    else:
        assert response.status_code == 401 and response.content == b""


def test_replayed_jti_is_401_the_second_time(keys: Keys, jwks: JwksServer, tmp_path: Path) -> None:
    jwt_text = token()(Env(keys=keys, jwks_url=jwks.url(JWKS_PATH)))
    with app_client(tmp_path, jwks) as client:
        assert call(client, jwt_text).status_code == 200
        assert call(client, jwt_text).status_code == 401


def test_unknown_kid_after_key_rotation_is_accepted(keys: Keys, jwks: JwksServer, tmp_path: Path) -> None:
    env = Env(keys=keys, jwks_url=jwks.url(JWKS_PATH))
    with app_client(tmp_path, jwks) as client:
        assert call(client, token()(env)).status_code == 200  # keys now cached
        jwks.set_jwks(JWKS_PATH, [*standard_jwks(keys), public_jwk(keys.ec384_new, "ec384-2", alg="ES384")])
        time.sleep(0.4)  # past the refetch rate limit (0.3 s here, 10 s by default)
        response = call(client, token("ec384_new", "ES384", "ec384-2")(env))
        fetches = jwks.request_count(JWKS_PATH)
    assert response.status_code == 200, response.text
    assert fetches == 2  # the first call's fetch, and exactly one refetch for the new kid


def test_feedback_needs_a_jwt_for_its_own_url(keys: Keys, jwks: JwksServer, tmp_path: Path) -> None:
    env = Env(keys=keys, jwks_url=jwks.url(JWKS_PATH))
    item = {"card": "c1", "outcome": "overridden", "outcomeTimestamp": "2026-06-01T10:00:00Z"}
    with app_client(tmp_path, jwks) as client:
        url = "/cds-services/trial-eligibility/feedback"
        wrong_aud = client.post(
            url, json={"feedback": [item]}, headers={"Authorization": f"Bearer {token()(env)}"}
        )
        right = client.post(
            url,
            json={"feedback": [item]},
            headers={"Authorization": f"Bearer {token(aud=AUD + '/feedback')(env)}"},
        )
    assert wrong_aud.status_code == 401 and right.status_code == 200


def test_discovery_needs_no_jwt(jwks: JwksServer, tmp_path: Path) -> None:
    """Discovery carries no patient data, so EHRs (and the sandbox) may read it without signing."""
    with app_client(tmp_path, jwks) as client:
        assert client.get("/cds-services").status_code == 200
