"""The evidence view and the saved checklist over HTTP, with what an attacker or a stale page tries:
another patient's entry, references that are not ``Type/id``, a form without this launch's CSRF
token, a form from another browser, fields the page never had."""

from __future__ import annotations

import json
import re
from urllib.parse import urlencode

import httpx2 as httpx
import pytest

from tests.fhir_fixtures import FHIR_TEST_TOKEN
from tests.smart.conftest import SmartHarness, make_harness
from tests.smart.flow import Flow, query
from tests.smart.patients import TRIAL
from tests.support.smart_auth_server import SmartAuthServer


def _open(smart: SmartHarness, patient: str = "smart-likely-eligible") -> tuple[Flow, str, str]:
    """(the flow, the app page's ctx, its HTML) after a full EHR launch for ``patient``."""
    flow = Flow(smart)
    launch_id = smart.auth.create_launch(patient=patient, app_context=json.dumps({"trial": TRIAL}))
    page = flow.open_app(launch_id)
    assert page.status_code == 200, page.text
    return flow, query(str(page.request.url))["ctx"], page.text


def _card_form(html: str) -> str:
    """The card trial's checklist form (the page shows the card's trial first)."""
    start = html.index('<form class="checklist"')
    return html[start : html.index("</form>", start)]


def _form(html: str) -> dict[str, str]:
    """The hidden fields of the card trial's checklist form, as the page rendered them."""
    form = _card_form(html)
    fields = dict(re.findall(r'<input type="hidden" name="(ctx|csrf|trial)" value="([^"]*)"', form))
    assert fields.get("trial") == TRIAL, fields
    return fields


def _post(flow: Flow, fields: dict[str, str], *extra: tuple[str, str]) -> httpx.Response:
    body = list(fields.items()) + list(extra)
    response = flow.harness.client.post(
        "/smart/checklist",
        content=urlencode(body),
        headers={"content-type": "application/x-www-form-urlencoded", "accept": "application/json"},
    )
    flow.seen.append(response)
    return response


def _first_manual(html: str) -> str:
    found = re.search(r'<input type="checkbox" name="done" value="([^"]+)"', _card_form(html))
    assert found, "no checklist item on the page"
    return found.group(1)


def test_evidence_of_the_launch_patient_is_shown_readably_and_the_token_stays_server_side(
    smart: SmartHarness,
) -> None:
    flow, ctx, _ = _open(smart)
    page = flow.get("/smart/evidence", ctx=ctx, ref="Observation/smart-likely-eligible-cr")
    assert page.status_code == 200, page.text
    assert "Creatinine" in page.text and "mg/dL" in page.text
    assert "Raw FHIR" in page.text and "Ada Eligible" in page.text
    flow.assert_token_never_sent(FHIR_TEST_TOKEN)


def test_evidence_about_another_patient_is_refused_and_not_shown(smart: SmartHarness) -> None:
    """The token may read it (the test FHIR server lets it); the app still shows only this patient."""
    flow, ctx, _ = _open(smart)
    page = flow.get("/smart/evidence", ctx=ctx, ref="Immunization/smart-not-eligible-v1")
    assert page.status_code == 403
    assert "smart-not-eligible" not in page.text and "Nora" not in page.text


@pytest.mark.parametrize(
    "ref",
    [
        "Patient/smart-not-eligible",  # not evidence: a Patient read (or search) is never proxied
        "Observation/../Patient",
        "Observation/smart-likely-eligible-cr/_history/1",
        "http://evil.example/fhir/Observation/x",
        "Observation/a b",
        "Observation",
        "Binary/x",
        "",
    ],
)
def test_references_that_are_not_a_clinical_type_and_id_are_a_400(smart: SmartHarness, ref: str) -> None:
    flow, ctx, _ = _open(smart)
    page = flow.get("/smart/evidence", ctx=ctx, ref=ref)
    assert page.status_code == 400, (ref, page.status_code)


def test_an_unknown_entry_is_a_404_page(smart: SmartHarness) -> None:
    flow, ctx, _ = _open(smart)
    assert flow.get("/smart/evidence", ctx=ctx, ref="Observation/no-such-entry").status_code == 404


def test_the_checklist_is_saved_with_this_launchs_token_and_comes_back(smart: SmartHarness) -> None:
    flow, _ctx, html = _open(smart)
    item = _first_manual(html)
    saved = _post(flow, _form(html), ("done", item), (f"note-{item}", "Asked the patient"))
    assert saved.status_code == 200, saved.text
    assert saved.json()["saved"] is True
    again, _, html_again = _open(smart)  # a new launch by the same user (the same id_token sub)
    assert f'value="{item}" id="check-{TRIAL}-{item}" checked' in html_again.replace("\n", " ")
    assert 'value="Asked the patient"' in html_again
    again.assert_token_never_sent(FHIR_TEST_TOKEN)


def test_a_form_without_this_launchs_csrf_token_saves_nothing(smart: SmartHarness) -> None:
    flow, _ctx, html = _open(smart)
    item = _first_manual(html)
    forged = dict(_form(html), csrf="x" * 43)
    refused = _post(flow, forged, ("done", item))
    assert refused.status_code == 403
    _, _, html_again = _open(smart)
    assert f'value="{item}" id="check-{TRIAL}-{item}" checked' not in html_again


def test_another_browser_cannot_post_to_a_launch_it_does_not_hold(
    smart: SmartHarness, auth_server: SmartAuthServer
) -> None:
    """The form's ctx and token copied to a browser without the launch's session cookie."""
    _flow, _ctx, html = _open(smart)
    stranger = make_harness(auth_server, sessions=smart.sessions)
    with stranger.client:
        response = _post(Flow(stranger), _form(html), ("done", _first_manual(html)))
    assert response.status_code in (401, 403), response.status_code


@pytest.mark.parametrize(
    "extra",
    [
        ("done", "no-such-criterion"),
        ("note-no-such-criterion", "x"),
        ("colour", "blue"),
    ],
)
def test_a_form_with_fields_the_page_never_had_is_a_400(smart: SmartHarness, extra: tuple[str, str]) -> None:
    flow, _ctx, html = _open(smart)
    assert _post(flow, _form(html), extra).status_code == 400


def test_an_overlong_note_is_a_400_not_cut(smart: SmartHarness) -> None:
    flow, _ctx, html = _open(smart)
    item = _first_manual(html)
    assert _post(flow, _form(html), ("done", item), (f"note-{item}", "x" * 201)).status_code == 400
