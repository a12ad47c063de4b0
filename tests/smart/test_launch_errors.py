"""Every failure a user can meet during a SMART launch is a clear page with the right status."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx  # what starlette's TestClient returns
import pytest
from fastapi.testclient import TestClient

from cds_service.app import create_app
from cds_service.settings import Settings
from tests.fhir_fixtures import FHIR_TEST_TOKEN
from tests.smart.conftest import CLIENT_ID, REDIRECT_URI, TEST_ORIGIN, SmartHarness, make_harness
from tests.smart.flow import Flow, query
from tests.support.fhir_server import FhirServer, free_port
from tests.support.smart_auth_server import SmartAuthServer


def assert_error_page(response: httpx.Response, status: int, phrase: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert phrase in response.text
    assert "What to do:" in response.text and "Traceback" not in response.text
    assert "frame-ancestors" in response.headers["content-security-policy"]
    assert response.headers["cache-control"] == "no-store"


@pytest.fixture
def own_auth(fhir_server: FhirServer) -> Iterator[SmartAuthServer]:
    """An auth server of the test's own, which the test may stop."""
    server = SmartAuthServer(
        fhir_upstream=fhir_server.base_url,
        access_token=FHIR_TEST_TOKEN,
        client_id=CLIENT_ID,
        redirect_uris=[REDIRECT_URI],
    )
    with server:
        yield server


def test_launch_without_iss(smart: SmartHarness) -> None:
    assert_error_page(Flow(smart).launch(launch="abc"), 400, "Open this app from the EHR")


@pytest.mark.parametrize(
    "iss",
    [
        "https://evil.example/fhir",
        "{base}-evil",
        "{root}/other",
        "{base}/../admin",
        "javascript:alert(1)",
        "https://user:pw@{host}/fhir",
    ],
)
def test_iss_not_on_the_allowlist(smart: SmartHarness, iss: str) -> None:
    root = smart.auth.root_url
    iss = iss.format(base=smart.auth.fhir_base, root=root, host=root.split("//", 1)[1])
    before = len(smart.auth.authorize_requests)
    response = Flow(smart).launch(iss=iss, launch="abc")
    assert_error_page(response, 403, "not configured")
    assert "set-cookie" not in response.headers
    assert len(smart.auth.authorize_requests) == before


def test_http_iss_refused_unless_loopback_http_is_allowed(auth_server: SmartAuthServer) -> None:
    harness = make_harness(auth_server, allow_http_loopback=False)
    assert_error_page(Flow(harness).launch(iss=auth_server.fhir_base, launch="x"), 403, "not configured")


def test_iss_under_an_allowlisted_prefix_without_smart_configuration(smart: SmartHarness) -> None:
    response = Flow(smart).launch(iss=f"{smart.auth.fhir_base}/r4", launch="abc")
    assert_error_page(response, 502, "SMART configuration could not be read")


def test_authorization_denied(smart: SmartHarness) -> None:
    callback = Flow(smart).run(smart.auth.create_launch(patient="smart-likely-eligible", deny=True))
    assert_error_page(callback, 403, "Access was not granted")


def test_wrong_state_is_refused(smart: SmartHarness) -> None:
    flow = Flow(smart)
    started = flow.launch(
        iss=smart.auth.fhir_base, launch=smart.auth.create_launch(patient="smart-needs-review")
    )
    callback_url = flow.authorize(started.headers["location"])
    exchanges = len(smart.auth.token_requests)
    forged = callback_url.replace("state=", "state=x")
    assert_error_page(flow.get(forged), 400, "no longer valid")
    assert len(smart.auth.token_requests) == exchanges  # refused before any code exchange


def test_callback_in_another_browser_is_refused(smart: SmartHarness) -> None:
    flow = Flow(smart)
    started = flow.launch(
        iss=smart.auth.fhir_base, launch=smart.auth.create_launch(patient="smart-needs-review")
    )
    callback_url = flow.authorize(started.headers["location"])
    other = make_harness(smart.auth)
    assert_error_page(Flow(other).get(callback_url), 400, "no longer valid")


def test_state_expires_after_ten_minutes(smart: SmartHarness) -> None:
    flow = Flow(smart)
    started = flow.launch(
        iss=smart.auth.fhir_base, launch=smart.auth.create_launch(patient="smart-needs-review")
    )
    callback_url = flow.authorize(started.headers["location"])
    smart.clock.now += 601
    assert_error_page(flow.get(callback_url), 400, "no longer valid")


def test_token_endpoint_down(fhir_server: FhirServer, own_auth: SmartAuthServer) -> None:
    harness = make_harness(own_auth)
    flow = Flow(harness)
    started = flow.launch(iss=own_auth.fhir_base, launch=own_auth.create_launch(patient="smart-needs-review"))
    callback_url = flow.authorize(started.headers["location"])
    own_auth.stop()
    assert_error_page(flow.get(callback_url), 502, "sign-in service failed")


def test_patient_the_token_does_not_cover(smart: SmartHarness) -> None:
    page = Flow(smart).open_app(smart.auth.create_launch(patient="not-on-this-server"))
    assert_error_page(page, 403, "not available to the app")


def test_patient_the_fhir_server_forbids(smart: SmartHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(smart.auth, "forbidden_patients", {"smart-needs-review"})
    page = Flow(smart).open_app(smart.auth.create_launch(patient="smart-needs-review"))
    assert_error_page(page, 403, "not available to the app")


def test_fhir_server_refuses_the_token(smart: SmartHarness) -> None:
    page = Flow(smart).open_app(
        smart.auth.create_launch(patient="smart-needs-review", access_token="revoked")
    )
    assert_error_page(page, 401, "Access to the record has expired")


def test_fhir_server_unreachable(vector_patients: object) -> None:
    dead = SmartAuthServer(
        fhir_upstream=f"http://127.0.0.1:{free_port()}/fhir",
        access_token=FHIR_TEST_TOKEN,
        client_id=CLIENT_ID,
        redirect_uris=[REDIRECT_URI],
    )
    with dead:
        page = Flow(make_harness(dead)).open_app(dead.create_launch(patient="smart-needs-review"))
    assert_error_page(page, 502, "FHIR server did not answer")


def test_session_expires(smart: SmartHarness) -> None:
    flow = Flow(smart)
    callback = flow.run(smart.auth.create_launch(patient="smart-needs-review"))
    app_url = callback.headers["location"]
    assert flow.get(app_url).status_code == 200
    smart.clock.now += 3601
    assert_error_page(flow.get(app_url), 401, "session has expired")
    assert_error_page(flow.get(app_url.replace("/app", "/report.json")), 401, "session has expired")


def test_missing_session_or_context(smart: SmartHarness) -> None:
    flow = Flow(smart)
    assert_error_page(flow.get("/smart/app"), 401, "session has expired")
    callback = flow.run(smart.auth.create_launch(patient="smart-needs-review"))
    app_url = callback.headers["location"]
    assert_error_page(flow.get("/smart/app", ctx="someone-elses"), 401, "session has expired")
    stranger = make_harness(smart.auth)  # a browser without the cookie, with the page URL
    assert_error_page(Flow(stranger).get(app_url), 401, "session has expired")


def test_two_launches_in_one_browser_keep_their_own_patient(smart: SmartHarness) -> None:
    flow = Flow(smart)
    first = flow.run(smart.auth.create_launch(patient="smart-likely-eligible")).headers["location"]
    second = flow.run(smart.auth.create_launch(patient="smart-not-eligible")).headers["location"]
    assert "Ada Eligible" in flow.get(first).text
    assert "Nora Vaccinated" in flow.get(second).text


def test_create_app_serves_the_smart_app(tmp_path: Path, auth_server: SmartAuthServer) -> None:
    settings = Settings(
        feedback_db_url=f"sqlite:///{tmp_path / 'feedback.sqlite3'}",
        smart_iss_allowlist=[auth_server.fhir_base],
        allow_http_loopback=True,
    )
    with TestClient(create_app(settings), base_url=TEST_ORIGIN, follow_redirects=False) as client:
        assert_error_page(client.get("/smart/launch"), 400, "Open this app from the EHR")
        started = client.get("/smart/launch", params={"iss": auth_server.fhir_base, "launch": "x"})
        assert started.status_code == 302
        assert query(started.headers["location"])["redirect_uri"] == f"{TEST_ORIGIN}/smart/callback"
