"""Regression tests of the adversarial probe (issue 10): each attack replayed on loopback against the
service served by a real uvicorn, with real misbehaving servers (drip, faulty FHIR, JWKS)."""

from __future__ import annotations

import copy
import json
import socket
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import ValidationError

from cds_service.app import create_app
from cds_service.fhir.queries import prefetch_templates
from cds_service.ops import metrics
from cds_service.settings import Settings
from tests.conftest import DATA, packaged_catalog
from tests.hooks.test_auth import AUD, ISS, claims, public_jwk, sign
from tests.support.drip_server import DripServer
from tests.support.faulty_fhir import FaultyFhirServer
from tests.support.jwks_server import JwksServer
from tests.support.prefetch import patient_id, prefetch_from_bundle
from tests.support.smart_auth_server import ServerThread

SERVICE = "/cds-services/trial-eligibility"
BASE = AUD.removesuffix(SERVICE)
SLOW_ISS = "https://slow-ehr.example.org"
LIZ = json.loads(next((DATA / "synthea").glob("Liz_Conn_*.json")).read_text())
LIZ_ID = patient_id(LIZ)
SLACK = 1.5  # a shared 2-core machine; what is bounded would otherwise take minutes


def hook_body(bundle: dict[str, Any] = LIZ, **changes: Any) -> dict[str, Any]:
    body = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/example", "patientId": patient_id(bundle)},
        "prefetch": prefetch_from_bundle(bundle, prefetch_templates(packaged_catalog())),
    }
    return {**body, **changes}


@contextmanager
def served(settings: Settings) -> Iterator[str]:
    """The app on a real uvicorn on 127.0.0.1; yields its base URL."""
    server = ServerThread(create_app(settings))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/cds.sqlite3"


@pytest.fixture(scope="module")
def ehr_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


# --- 1. aud never comes from the Host header ----------------------------------------------------


def test_trusted_issuers_without_a_public_base_url_refuse_to_start() -> None:
    with pytest.raises(ValidationError, match="set CDS_PUBLIC_BASE_URL"):
        Settings(trusted_issuers={ISS: "https://ehr.example.org/jwks"})


def test_a_token_for_another_service_sent_with_its_host_is_refused(
    ehr_key: ec.EllipticCurvePrivateKey, tmp_path: Path
) -> None:
    other = "http://other-cds.example.net"
    with JwksServer() as jwks:
        jwks.set_jwks("/jwks", [public_jwk(ehr_key, "k1", alg="ES384")])
        settings = Settings(
            trusted_issuers={ISS: jwks.url("/jwks")}, public_base_url=BASE, feedback_db_url=db(tmp_path)
        )
        with served(settings) as url:
            theirs = sign(ehr_key, "ES384", claims(aud=other + SERVICE), kid="k1")
            attack = requests.post(
                url + SERVICE,
                json=hook_body(),
                headers={"Authorization": f"Bearer {theirs}", "Host": "other-cds.example.net"},
                timeout=30,
            )
            ours = sign(ehr_key, "ES384", claims(), kid="k1")
            fine = requests.post(
                url + SERVICE, json=hook_body(), headers={"Authorization": f"Bearer {ours}"}, timeout=30
            )
    assert attack.status_code == 401 and attack.content == b""
    assert fine.status_code == 200


# --- 2. a dripping JWKS endpoint ---------------------------------------------------------------


def test_forged_tokens_naming_a_dripping_issuer_do_not_stall_a_valid_call(
    ehr_key: ec.EllipticCurvePrivateKey, tmp_path: Path
) -> None:
    """45 unsigned-for forged tokens name an issuer whose JWKS drips 1 byte/s: they share one fetch
    that ends at its 5 s deadline, and meanwhile another issuer's valid call is answered at once."""
    rogue = ec.generate_private_key(ec.SECP384R1())
    with JwksServer() as jwks:
        jwks.set_jwks("/good", [public_jwk(ehr_key, "k1", alg="ES384")])
        jwks.set_jwks("/slow", [public_jwk(ehr_key, "s1", alg="ES384")])
        jwks.drip("/slow", interval=1.0)
        settings = Settings(
            trusted_issuers={ISS: jwks.url("/good"), SLOW_ISS: jwks.url("/slow")},
            public_base_url=BASE,
            jwks_min_refetch_seconds=0,
            feedback_db_url=db(tmp_path),
        )
        body = hook_body()
        with served(settings) as url, ThreadPoolExecutor(max_workers=46) as pool:

            def post(token: str) -> tuple[int, float]:
                started = time.monotonic()
                r = requests.post(
                    url + SERVICE, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=60
                )
                return r.status_code, time.monotonic() - started

            forged = [sign(rogue, "ES384", claims(iss=SLOW_ISS), kid=uuid.uuid4().hex) for _ in range(45)]
            pending = [pool.submit(post, token) for token in forged]
            time.sleep(1.0)  # every forged call is in flight, waiting on the slow JWK Set
            assert not any(f.done() for f in pending)
            status, took = post(sign(ehr_key, "ES384", claims(), kid="k1"))
            outcomes = [f.result() for f in pending]
        slow_fetches = jwks.request_count("/slow")
    assert status == 200 and took < 2.0, took
    assert {s for s, _ in outcomes} == {401}
    times = [t for _, t in outcomes]
    assert min(times) > 3.0 and max(times) < 5.0 + SLACK  # held by the drip until the 5 s JWKS deadline
    assert slow_fetches == 1  # 45 waiting callers shared one in-flight fetch


def test_a_cached_key_is_served_while_a_refetch_for_forged_kids_drips(
    ehr_key: ec.EllipticCurvePrivateKey, tmp_path: Path
) -> None:
    """Same issuer: its key is cached, then its JWKS starts dripping; forged kids make it refetch
    (once, shared), and a valid call with the cached kid never waits for that refetch."""
    with JwksServer() as jwks:
        jwks.set_jwks("/jwks", [public_jwk(ehr_key, "k1", alg="ES384")])
        settings = Settings(
            trusted_issuers={ISS: jwks.url("/jwks")},
            public_base_url=BASE,
            jwks_min_refetch_seconds=0,
            feedback_db_url=db(tmp_path),
        )
        body = hook_body()
        with served(settings) as url, ThreadPoolExecutor(max_workers=45) as pool:

            def post(token: str) -> tuple[int, float]:
                started = time.monotonic()
                r = requests.post(
                    url + SERVICE, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=60
                )
                return r.status_code, time.monotonic() - started

            assert post(sign(ehr_key, "ES384", claims(), kid="k1"))[0] == 200  # the key is cached
            jwks.drip("/jwks", interval=1.0)
            pending = [
                pool.submit(post, sign(ehr_key, "ES384", claims(), kid=uuid.uuid4().hex)) for _ in range(45)
            ]
            time.sleep(1.0)
            status, took = post(sign(ehr_key, "ES384", claims(), kid="k1"))
            outcomes = [f.result() for f in pending]
        fetches = jwks.request_count("/jwks")
    assert status == 200 and took < 2.0, took
    assert {s for s, _ in outcomes} == {401}
    assert fetches == 2  # the first fill, and one shared refetch for all 45 unknown kids


# --- 3. a dripping FHIR server -----------------------------------------------------------------


def test_a_dripping_fhir_server_is_cut_off_at_the_hook_deadline(tmp_path: Path) -> None:
    with DripServer(stage="body", interval=1.0) as drip:
        settings = Settings(
            allow_unsigned=True,
            allow_http_loopback=True,
            fhir_server_allowlist=[drip.url + "/fhir"],
            fhir_total_timeout=2.0,
            feedback_db_url=db(tmp_path),
        )
        body = hook_body()
        del body["prefetch"]["conditions"]
        body["fhirServer"] = drip.url + "/fhir"
        with served(settings) as url:
            started = time.monotonic()
            response = requests.post(url + SERVICE, json=body, timeout=60)
            took = time.monotonic() - started
    assert response.status_code == 412, response.text
    assert "did not answer within 2 s in total" in response.json()["error"]
    assert took < 2.0 + SLACK


# --- 4. context.patientId that is no FHIR id -----------------------------------------------------


@pytest.mark.parametrize("bad", [".", "..", "...", "a/b", "Patient?x", "a" * 65])
def test_patient_id_that_is_no_fhir_id_is_400_before_any_fetch(bad: str, tmp_path: Path) -> None:
    with FaultyFhirServer() as fhir:
        settings = Settings(
            allow_unsigned=True,
            allow_http_loopback=True,
            fhir_server_allowlist=[fhir.base_url],
            feedback_db_url=db(tmp_path),
        )
        body = {
            "hook": "patient-view",
            "hookInstance": str(uuid.uuid4()),
            "context": {"userId": "Practitioner/1", "patientId": bad},
            "fhirServer": fhir.base_url,
            "fhirAuthorization": {
                "access_token": "probe-token-123456",
                "token_type": "Bearer",
                "expires_in": 300,
                "scope": "patient/*.read",
                "subject": "cds",
            },
        }
        with served(settings) as url:
            response = requests.post(url + SERVICE, json=body, timeout=30)
        assert response.status_code == 400
        assert response.json()["error"].startswith("context.patientId")
        assert fhir.seen == []  # no URL was ever built from it


# --- the JWT is checked before a large body is read ----------------------------------------------


def test_a_refused_jwt_is_answered_before_the_body_is_sent(tmp_path: Path) -> None:
    """Headers declaring a 30 MiB body with a bad JWT: the 401 comes back while the body is unsent."""
    with JwksServer() as jwks:
        settings = Settings(
            trusted_issuers={ISS: jwks.url("/jwks")}, public_base_url=BASE, feedback_db_url=db(tmp_path)
        )
        with served(settings) as url:
            host, port = url.removeprefix("http://").split(":")
            with socket.create_connection((host, int(port)), timeout=10) as sock:
                sock.sendall(
                    f"POST {SERVICE} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                    f"Authorization: Bearer not.a.jwt\r\nContent-Length: {30 * 1024 * 1024}\r\n\r\n".encode()
                    + b'{"hook": "patient-view"'
                )
                sock.settimeout(5)
                head = sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 401 ")


# --- 7. data about another patient ---------------------------------------------------------------


def foreign_observation(patient: str = "someone-else") -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": f"foreign-{uuid.uuid4().hex[:8]}",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2160-0"}]},
        "subject": {"reference": f"Patient/{patient}"},
        "valueQuantity": {
            "value": 9.9,
            "unit": "mg/dL",
            "system": "http://unitsofmeasure.org",
            "code": "mg/dL",
        },
    }


def test_a_foreign_resource_in_the_prefetch_is_left_out_counted_and_logged_without_ids(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    demo = json.loads((DATA / "demo" / "sle-likely-eligible.json").read_text())
    body = hook_body(demo)
    clean = requests_of(body)
    observations = body["prefetch"]["observations"]
    observations.setdefault("entry", []).append({"resource": foreign_observation()})
    before = metrics.FOREIGN_DROPPED._value.get()
    settings = Settings(allow_unsigned=True, feedback_db_url=db(tmp_path))
    with served(settings) as url:
        expected = requests.post(url + SERVICE, json=clean, timeout=30)
        response = requests.post(url + SERVICE, json=body, timeout=30)
    assert response.status_code == 200, response.text
    assert [c["summary"] for c in response.json()["cards"]] == [
        c["summary"] for c in expected.json()["cards"]
    ]
    assert response.json()["cards"], "the clinician still gets the right patient's card"
    assert metrics.FOREIGN_DROPPED._value.get() == before + 1
    lines = [r.getMessage() for r in caplog.records if "another patient left out" in r.getMessage()]
    assert lines == ["prefetch: 1 resource(s) about another patient left out (Observation 1)"]


def requests_of(body: dict[str, Any]) -> dict[str, Any]:
    clean = copy.deepcopy(body)
    clean["hookInstance"] = str(uuid.uuid4())
    return clean


def test_foreign_data_from_the_fhir_server_is_412(tmp_path: Path) -> None:
    with FaultyFhirServer() as fhir:  # its searchset holds an Observation about no patient of ours
        settings = Settings(
            allow_unsigned=True,
            allow_http_loopback=True,
            fhir_server_allowlist=[fhir.base_url],
            feedback_db_url=db(tmp_path),
        )
        fhir.entries = [{"resource": foreign_observation(), "search": {"mode": "match"}}]
        body = hook_body()
        del body["prefetch"]["observations"]
        body["fhirServer"] = fhir.base_url
        with served(settings) as url:
            response = requests.post(url + SERVICE, json=body, timeout=30)
    assert response.status_code == 412, response.text
    assert response.json() == {"error": "the FHIR server sent data about another patient"}
    assert LIZ_ID not in response.text and "someone-else" not in response.text


# --- item 8: 404 and 405 in the app's own error form ---------------------------------------------


def test_404_and_405_bodies_use_error(tmp_path: Path) -> None:
    with served(Settings(allow_unsigned=True, feedback_db_url=db(tmp_path))) as url:
        missing = requests.get(url + "/no-such-thing", timeout=10)
        wrong = requests.get(url + SERVICE, timeout=10)
    assert missing.status_code == 404 and missing.json() == {"error": "Not Found"}
    assert wrong.status_code == 405 and wrong.json() == {"error": "Method Not Allowed"}
    assert "POST" in wrong.headers["allow"]
