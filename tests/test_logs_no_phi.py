"""A full test run's logs contain none of the test patients' names, identifiers or tokens.

The run-wide check is the plugin ``tests/support/log_capture.py`` (loaded by ``tests/conftest.py``):
every in-scope record of the session goes to ``test-artifacts/test-run.log``, which is scanned at
session end; a hit fails the run. The tests here check that plugin (what it captures, what it looks
for, that a leak really fails a run) and then, focused, that the service's own loggers at DEBUG say
nothing identifying about a hook call with full prefetch, a failing FHIR fetch and a refused JWT.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient

from cds_service.app import create_app
from cds_service.settings import Settings
from tests.conftest import DATA, REPO
from tests.fhir_fixtures import FHIR_TEST_TOKEN
from tests.hooks.test_auth import AUD, ISS, JWKS_PATH, claims, public_jwk, sign
from tests.hooks.test_service import hook_request
from tests.support.faulty_fhir import FaultyFhirServer
from tests.support.jwks_server import JwksServer
from tests.support.log_capture import (
    Needle,
    ServiceLogFile,
    in_scope,
    needles,
    patient_needles,
    patients_in,
    register_secret,
    scan,
)

SERVICE = "/cds-services/trial-eligibility"
SYNTHEA = sorted((DATA / "synthea").glob("*.json"))
LIZ = json.loads(next((DATA / "synthea").glob("Liz_Conn_*.json")).read_text())
LIZ_PATIENT = next(patients_in(LIZ))
LIZ_ID = LIZ_PATIENT["id"]


def formatted(records: list[logging.LogRecord]) -> list[str]:
    """The records as the log file has them (message with args, exception and stack text)."""
    formatter = logging.Formatter("%(levelname)s %(name)s: %(message)s")
    return [formatter.format(record) for record in records]


# --- the session capture -----------------------------------------------------------------------


def test_the_session_log_file_captures_the_service_at_debug() -> None:
    (handler,) = [h for h in logging.getLogger().handlers if isinstance(h, ServiceLogFile)]
    assert logging.getLogger("cds_service.hooks").isEnabledFor(logging.DEBUG)
    marker = uuid.uuid4().hex
    logging.getLogger("cds_service.fhir.client").debug("capture check %s", marker)
    try:
        raise ValueError(f"exception text {marker}-exc")
    except ValueError:
        logging.getLogger("cds_service").exception("with a traceback")
    handler.flush()
    text = Path(handler.baseFilename).read_text(encoding="utf-8")
    assert f"capture check {marker}" in text
    assert f"ValueError: exception text {marker}-exc" in text


def record(name: str, level: int) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, "m", None, None)


@pytest.mark.parametrize(
    ("name", "level", "captured"),
    [
        ("cds_service", logging.DEBUG, True),
        ("cds_service.fhir.client", logging.DEBUG, True),
        ("cds_service_other", logging.DEBUG, False),
        ("urllib3.connectionpool", logging.DEBUG, False),  # `serve` sets urllib3 to WARNING
        ("urllib3.connectionpool", logging.INFO, False),
        ("urllib3.connectionpool", logging.WARNING, True),
        ("httpx", logging.INFO, True),  # `serve` configures the root logger at INFO
        ("asyncio", logging.DEBUG, False),
        ("hypothesis", logging.DEBUG, False),
        ("uvicorn.error", logging.ERROR, True),
    ],
)
def test_scope_is_what_a_deployed_service_writes(name: str, level: int, captured: bool) -> None:
    assert in_scope(record(name, level)) is captured


# --- what the scan looks for -------------------------------------------------------------------


@pytest.mark.parametrize("path", SYNTHEA, ids=[p.stem.split("_")[0] for p in SYNTHEA])
def test_every_synthea_patient_is_looked_for(path: Path) -> None:
    wanted = {n.value for n in needles()}
    (patient,) = patients_in(json.loads(path.read_text()))
    assert patient["id"] in wanted
    for name in patient["name"]:
        assert name["family"] in wanted and set(name["given"]) <= wanted
    values = [i["value"] for i in patient["identifier"]]
    assert values and set(values) <= wanted  # Synthea ids, SSN, driver's licence, passport


def test_vector_patients_and_test_tokens_are_looked_for() -> None:
    found = {n.value: n for n in needles()}
    assert found["p1"].kind == "patient id" and "mappings/tests/" in found["p1"].source
    assert found[FHIR_TEST_TOKEN].kind == "secret"
    assert "s3cret-fault-token" in found  # tests/fhir/test_client.py TOKEN, by naming convention
    secret = register_secret(f"registered-{uuid.uuid4().hex}")
    assert {n.value for n in needles()} >= {secret}


def test_patient_needles_read_names_ids_and_identifiers() -> None:
    patient = {
        "resourceType": "Patient",
        "id": "pat-1",
        "identifier": [{"value": "999-12-3456"}, {"system": "x"}],
        "name": [{"given": ["Ann", "Marie"], "family": "Smith", "text": "Ann Marie Smith"}, "junk"],
    }
    assert {(n.kind, n.value) for n in patient_needles(patient, "here")} == {
        ("patient id", "pat-1"),
        ("patient identifier", "999-12-3456"),
        ("patient name", "Ann"),
        ("patient name", "Marie"),
        ("patient name", "Smith"),
        ("patient name", "Ann Marie Smith"),
    }


JWT = "eyJhbGciOiJFUzM4NCJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        (f"412: the FHIR server has no Patient/{LIZ_ID}", "patient id"),
        ("reading the chart of Liz Conn", "patient name"),
        ("identifier 999-34-1238 refused", "patient identifier"),
        (f"header Bearer {FHIR_TEST_TOKEN}", "secret"),
        (f"token={JWT}", "JWT"),
        ("sent Bearer abc123.def-456", "Bearer credential"),
        ("headers {'Authorization': 'x'}", "Authorization header"),
        ("Authorization: Basic dXNlcjpwYXNz", "Authorization header"),
        ("GET /fhir/Condition?patient=p1&_count=200", "patient id"),
    ],
)
def test_scan_finds_planted_data(line: str, kind: str) -> None:
    assert kind in {hit.kind for hit in scan([line])}


@pytest.mark.parametrize(
    "line",
    [
        "INFO cds_service.access: POST /cds-services/trial-eligibility 200 35 ms",
        "hook trial-eligibility: 1 card(s) [NCT06888960=likely-eligible] in 80 ms",
        "EHR JWT refused: bearer token is not a compact JWS (iss=None)",
        "SMART token response without a bearer access_token",
        "SMART authorization answered error=access_denied",
        "p12 Lizard Connor http1 xp1",  # a needle inside a longer word is no hit
    ],
)
def test_scan_passes_clean_lines(line: str) -> None:
    assert scan([line]) == []


def test_a_leak_in_the_logs_fails_the_run(tmp_path: Path) -> None:
    """End to end: a run whose only test passes, but logs a patient's name, exits 1 and says why."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_leaky.py").write_text(
        textwrap.dedent(
            """
            import logging

            def test_passes_but_leaks():
                logging.getLogger("urllib3.connectionpool").debug("GET /Patient/p1")  # out of scope
                logging.getLogger("cds_service.hooks").info("evaluating Maida Gerhold")
            """
        )
    )
    log = tmp_path / "run.log"
    env = {**os.environ, "CDS_TEST_LOG": str(log), "PYTHONPATH": str(REPO)}
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-p",
        "tests.support.log_capture",
    ]
    result = subprocess.run(
        [*command, "-c", str(tmp_path / "pytest.ini"), str(tmp_path / "test_leaky.py")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 passed" in result.stdout and "PHI in test logs" in result.stdout
    assert "patient name 'Maida'" in result.stdout and "patient name 'Gerhold'" in result.stdout
    assert "Patient/p1" not in log.read_text()


# --- focused: the service's own logs at DEBUG ----------------------------------------------------


def service_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return formatted([r for r in caplog.records if in_scope(r)])


def liz_needles() -> list[Needle]:
    return [*needles(), *patient_needles(LIZ_PATIENT, "Liz")]


@pytest.fixture
def faulty() -> Iterator[FaultyFhirServer]:
    with FaultyFhirServer() as server:
        yield server


def fhir_client(tmp_path: Path, server: FaultyFhirServer) -> TestClient:
    settings = Settings(
        allow_unsigned=True,
        fhir_server_allowlist=[server.base_url],
        allow_http_loopback=True,
        feedback_db_url=f"sqlite:///{tmp_path}/feedback.sqlite3",
    )
    return TestClient(create_app(settings))


def fetching(client: TestClient, server: FaultyFhirServer, *missing: str, token: str) -> dict[str, Any]:
    """Liz's hook call, without some prefetch keys, naming the server and a token to fetch them."""
    body = hook_request(LIZ, client)
    for key in missing:
        body["prefetch"].pop(key)
    body["fhirServer"] = server.base_url
    body["fhirAuthorization"] = {
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "patient/*.read",
        "subject": "cds-service",
        "patient": LIZ_ID,
    }
    return body


def test_hook_calls_log_no_patient_data_or_tokens_at_debug(
    tmp_path: Path, faulty: FaultyFhirServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fhir_token = register_secret(f"fhir-token-{uuid.uuid4().hex}")
    statuses = []
    with fhir_client(tmp_path, faulty) as client:
        statuses.append(client.post(SERVICE, json=hook_request(LIZ, client)).status_code)  # full prefetch
        for mode in ("ok", "status:500", "status:401", "non-json", "foreign-next"):
            faulty.mode = mode
            body = fetching(client, faulty, "conditions", "observations", token=fhir_token)
            statuses.append(client.post(SERVICE, json=body).status_code)

    keys = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
    with JwksServer() as jwks:
        jwks.set_jwks(JWKS_PATH, [public_jwk(keys[0], "ec384-1", alg="ES384")])
        settings = Settings(
            trusted_issuers={ISS: jwks.url(JWKS_PATH)},
            public_base_url=AUD.removesuffix(SERVICE),
            jwks_min_refetch_seconds=0,
            feedback_db_url=f"sqlite:///{tmp_path}/jwt.sqlite3",
        )
        refused = [
            sign(keys[1], "ES384", claims(), kid="ec384-1"),  # signed by a key the EHR does not publish
            sign(keys[1], "ES384", claims(), kid="unknown-kid"),  # an unknown kid: JWKS refetched
            sign(keys[0], "ES384", claims(aud="https://elsewhere.example/x"), kid="ec384-1"),
            sign(keys[0], "ES384", claims(exp=1), kid="ec384-1"),
        ]
        with TestClient(create_app(settings)) as client:
            body = hook_request(LIZ, client)
            for jwt_text in refused:
                register_secret(jwt_text)
                response = client.post(SERVICE, json=body, headers={"Authorization": f"Bearer {jwt_text}"})
                statuses.append(response.status_code)

    assert statuses == [200, 200, 412, 412, 412, 412, 401, 401, 401, 401]
    lines = service_lines(caplog)
    text = "\n".join(lines)
    # the calls did what this test is about: FHIR fetches, their failures and the refusals were logged
    assert "FHIR Condition search" in text and "412: cannot fetch" in text
    assert "FHIR server refused the access token" in text
    assert text.count("EHR JWT refused") == len(refused)
    assert any(r.levelno == logging.DEBUG and r.name.startswith("cds_service") for r in caplog.records)
    assert scan(lines, liz_needles()) == []


def test_a_missing_patient_is_not_named_in_the_log(
    tmp_path: Path, faulty: FaultyFhirServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    faulty.mode = "status:404"
    with fhir_client(tmp_path, faulty) as client:
        response = client.post(SERVICE, json=fetching(client, faulty, "patient", token=FHIR_TEST_TOKEN))
    assert response.status_code == 412
    assert scan(service_lines(caplog), liz_needles()) == []


# --- error bodies and the probe's cases: no patient id in a log line or an answer -------------------

FOREIGN_ID = "foreign-patient-7f3a91"


def foreign(resource_type: str = "Observation") -> dict[str, Any]:
    return {
        "resourceType": resource_type,
        "id": "res-of-another-7f3a91",
        "status": "final",
        "code": {"text": "x"},
        "subject": {"reference": f"Patient/{FOREIGN_ID}"},
    }


def test_error_bodies_and_logs_name_no_patient(
    tmp_path: Path, faulty: FaultyFhirServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Each way a hook call can name a patient in an answer or a log line: an invalid Patient, the
    wrong Patient, foreign data in the prefetch (left out) and from the FHIR server (412), a missing
    Patient, a patientId that is no FHIR id. Bodies and log lines are scanned for every id."""
    caplog.set_level(logging.DEBUG)
    answers = []
    with fhir_client(tmp_path, faulty) as client:
        invalid = hook_request(LIZ, client)
        invalid["prefetch"]["patient"] = {**LIZ_PATIENT, "birthDate": "not-a-date"}
        wrong = hook_request(LIZ, client)
        wrong["context"]["patientId"] = "someone-else-entirely"
        mixed = hook_request(LIZ, client)
        mixed["prefetch"]["conditions"].setdefault("entry", []).append({"resource": foreign("Condition")})
        dots = hook_request(LIZ, client)
        dots["context"]["patientId"] = ".."
        for body in (invalid, wrong, mixed, dots):
            answers.append(client.post(SERVICE, json=body))
        faulty.entries = [{"resource": foreign(), "search": {"mode": "match"}}]
        answers.append(
            client.post(SERVICE, json=fetching(client, faulty, "observations", token=FHIR_TEST_TOKEN))
        )
        faulty.entries, faulty.mode = None, "status:404"
        answers.append(client.post(SERVICE, json=fetching(client, faulty, "patient", token=FHIR_TEST_TOKEN)))
    assert [a.status_code for a in answers] == [400, 400, 200, 400, 412, 412]
    assert answers[0].json()["error"].startswith("Patient/… is not valid FHIR R4: birthDate")
    assert answers[1].json() == {"error": "the prefetched Patient is not context.patientId"}
    assert answers[4].json() == {"error": "the FHIR server sent data about another patient"}
    texts = [a.text for a in answers] + service_lines(caplog)
    assert "another patient left out (Condition 1)" in "\n".join(texts)
    extra = [
        Needle("patient id", FOREIGN_ID, "this test"),
        Needle("patient id", "someone-else-entirely", "this test"),
        Needle("resource id", "res-of-another-7f3a91", "this test"),
    ]
    assert scan(texts, [*liz_needles(), *extra]) == []
