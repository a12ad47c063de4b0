"""The SMART launch end to end over HTTP: test auth server + real FHIR server + the app's router."""

from __future__ import annotations

import base64
import hashlib
import json
import re

import pytest
import requests
from sqlalchemy import select, update

from cds_service.smart.sessions import pending_table
from tests.fhir_fixtures import FHIR_TEST_TOKEN
from tests.smart.conftest import CLIENT_ID, REDIRECT_URI, SmartHarness, make_harness
from tests.smart.flow import Flow, query
from tests.smart.patients import TRIAL
from tests.support.smart_auth_server import SmartAuthServer


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def test_ehr_launch_redirects_to_authorize_with_pkce_state_v2_scopes_and_aud(smart: SmartHarness) -> None:
    flow = Flow(smart)
    launch_id = smart.auth.create_launch(patient="smart-likely-eligible")
    response = flow.launch(iss=smart.auth.fhir_base, launch=launch_id)
    assert response.status_code == 302
    location = response.headers["location"]
    assert location.startswith(f"{smart.auth.root_url}/authorize?")
    params = query(location)
    assert params["response_type"] == "code"
    assert params["client_id"] == CLIENT_ID
    assert params["redirect_uri"] == REDIRECT_URI
    assert params["code_challenge_method"] == "S256"
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", params["code_challenge"])
    assert len(params["state"]) >= 43  # 256 bits, well over the 122 the spec asks
    assert params["aud"] == smart.auth.fhir_base
    assert params["launch"] == launch_id
    scopes = params["scope"].split()
    assert {"launch", "openid", "fhirUser", "patient/Patient.rs", "patient/Observation.rs"} <= set(scopes)
    assert "patient/Immunization.rs" in scopes and not any(s.endswith(".read") for s in scopes)
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "Secure" in cookie and "SameSite=none" in cookie.replace("None", "none")
    assert params["state"] not in cookie


def test_full_ehr_launch_shows_the_report_and_never_leaks_the_token(smart: SmartHarness) -> None:
    flow = Flow(smart)
    launch_id = smart.auth.create_launch(
        patient="smart-likely-eligible", app_context=json.dumps({"trial": TRIAL})
    )
    callback = flow.run(launch_id)
    assert callback.status_code == 302
    assert callback.headers["location"].startswith("/smart/app?ctx=")
    page = flow.get(callback.headers["location"])
    assert page.status_code == 200
    html = page.text
    assert '<html lang="en">' in html
    assert "Ada Eligible" in html and "Female" in html and "Born " in html
    assert "Likely eligible" in html
    assert "Reviewer checklist" in html and 'type="checkbox"' in html
    assert 'href="/smart/evidence?ctx=' in html and "ref=Observation%2Fsmart-likely-eligible-cr" in html
    assert f'href="{smart.auth.fhir_base}' not in html  # never a raw FHIR link: it would answer 401
    assert "mg/dL" in html
    assert "clinicaltrials.gov" in html.lower()
    report = flow.get(f"/smart/report.json?{callback.headers['location'].split('?', 1)[1]}")
    assert report.status_code == 200
    body = report.json()
    assert body["patient"] == "Patient/smart-likely-eligible"
    (mine,) = [t for t in body["trials"] if t["trial"] == TRIAL]
    assert mine["status"] == "likely-eligible"
    flow.assert_token_never_sent(FHIR_TEST_TOKEN)


def test_pages_carry_security_headers_and_allow_the_ehr_frame(smart: SmartHarness) -> None:
    flow = Flow(smart)
    page = flow.open_app(smart.auth.create_launch(patient="smart-needs-review"))
    assert page.status_code == 200
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "unsafe-inline" not in csp
    assert f"frame-ancestors 'self' {smart.auth.root_url}" in csp
    assert "x-frame-options" not in page.headers
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["referrer-policy"] == "no-referrer"
    nonce = re.search(r"script-src 'nonce-([^']+)';", csp)
    assert nonce and f'<style nonce="{nonce.group(1)}">' in page.text
    assert f'<script nonce="{nonce.group(1)}">' in page.text
    assert "form-action 'self'" in csp and "connect-src 'self'" in csp
    assert "Needs review" in page.text and "To review" in page.text


def test_code_verifier_sent_to_the_token_endpoint_matches_the_challenge(smart: SmartHarness) -> None:
    flow = Flow(smart)
    started = flow.launch(
        iss=smart.auth.fhir_base, launch=smart.auth.create_launch(patient="smart-not-eligible")
    )
    challenge = query(started.headers["location"])["code_challenge"]
    callback = flow.get(flow.authorize(started.headers["location"]))
    assert callback.status_code == 302
    sent = smart.auth.token_requests[-1]
    assert sent["client_id"] == CLIENT_ID and sent["grant_type"] == "authorization_code"
    assert s256(sent["code_verifier"]) == challenge
    assert "code_verifier" not in started.headers["location"]


def test_app_context_trial_and_no_banner_when_the_ehr_shows_one(smart: SmartHarness) -> None:
    launch_id = smart.auth.create_launch(
        patient="smart-not-eligible", app_context='{"trial": "NCT06888960"}', need_patient_banner=False
    )
    page = Flow(smart).open_app(launch_id)
    assert page.status_code == 200
    assert 'aria-label="Patient"' not in page.text and "Nora Vaccinated" not in page.text
    assert "Not eligible" in page.text and "Rules the patient out" in page.text


def test_standalone_launch_asks_for_launch_patient(
    smart: SmartHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(smart.auth, "standalone_patient", "smart-needs-review")
    flow = Flow(smart)
    started = flow.launch(iss=smart.auth.fhir_base)
    scopes = query(started.headers["location"])["scope"].split()
    assert "launch/patient" in scopes and "launch" not in scopes
    assert "launch" not in query(started.headers["location"])
    callback = flow.get(flow.authorize(started.headers["location"]))
    page = flow.get(callback.headers["location"])
    assert page.status_code == 200 and "Rita Review" in page.text


def test_v1_scope_style_asks_for_read_scopes(auth_server: SmartAuthServer, vector_patients: object) -> None:
    harness = make_harness(auth_server, smart_scope_style="v1")
    started = Flow(harness).launch(iss=auth_server.fhir_base, launch=auth_server.create_launch(patient="x"))
    scopes = query(started.headers["location"])["scope"].split()
    assert "patient/Observation.read" in scopes and not any(s.endswith(".rs") for s in scopes)


def test_confidential_client_authenticates_with_http_basic(
    auth_server: SmartAuthServer, vector_patients: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auth_server, "client_secret", "s3cret-for-tests")
    harness = make_harness(auth_server, smart_client_secret="s3cret-for-tests")
    page = Flow(harness).open_app(auth_server.create_launch(patient="smart-likely-eligible"))
    assert page.status_code == 200
    assert "client_id" not in auth_server.token_requests[-1]
    assert "s3cret-for-tests" not in page.text


def test_ehr_token_endpoint_refuses_a_replayed_code(smart: SmartHarness) -> None:
    flow = Flow(smart)
    started = flow.launch(
        iss=smart.auth.fhir_base, launch=smart.auth.create_launch(patient="smart-not-eligible")
    )
    callback_url = flow.authorize(started.headers["location"])
    assert flow.get(callback_url).status_code == 302
    first = smart.auth.token_requests[-1]
    replay = requests.post(f"{smart.auth.root_url}/token", data=first, timeout=10)
    assert replay.status_code == 400 and replay.json() == {"error": "invalid_grant"}
    again = flow.get(callback_url)  # the app itself: that state was used up
    assert again.status_code == 400 and "no longer valid" in again.text


def test_pkce_verifier_mismatch_is_refused(smart: SmartHarness) -> None:
    flow = Flow(smart)
    started = flow.launch(
        iss=smart.auth.fhir_base, launch=smart.auth.create_launch(patient="smart-not-eligible")
    )
    callback_url = flow.authorize(started.headers["location"])
    store = smart.sessions
    with store.engine.begin() as conn:  # tamper with the stored verifier (sealed, as the store does)
        for (state_hash,) in conn.execute(select(pending_table.c.state_hash)).all():
            sealed = store.sealer.seal("x" * 43, row=state_hash)
            conn.execute(
                update(pending_table).where(pending_table.c.state_hash == state_hash).values(verifier=sealed)
            )
    page = flow.get(callback_url)
    assert page.status_code == 502 and "sign-in service failed" in page.text
    assert requests.post(
        f"{smart.auth.root_url}/token",
        data={**smart.auth.token_requests[-1], "code_verifier": "y" * 43},
        timeout=10,
    ).json() == {"error": "invalid_grant"}
