"""A real EHR launch in a real headless browser (Debian's chromium driven by Playwright).

uvicorn serves the whole service (``create_app``) on 127.0.0.1; the test auth server plays the EHR
in front of sekmet, which holds three patients built from NCT06888960's status vectors. For each,
the browser navigates to the launch URL, follows the real redirects (authorize, callback, app) with
the real session cookie, and we check what the page shows. Screenshots land in test-artifacts/.

Skips locally when chromium or Playwright is missing; fails instead when CI is set.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from pydantic import Field

from cds_service.app import create_app
from cds_service.settings import Settings
from tests.fhir_fixtures import FHIR_TEST_TOKEN
from tests.smart.conftest import CLIENT_ID
from tests.smart.patients import TRIAL, VectorPatient
from tests.support.browser import chromium
from tests.support.fhir_server import FhirServer
from tests.support.smart_auth_server import ServerThread, SmartAuthServer

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
EXPECTED = {
    "likely-eligible": ("Likely eligible", "Ada Eligible", "Creatinine"),
    "needs-review": ("Needs review", "Rita Review", "IgA"),
    "not-eligible": ("Not eligible", "Nora Vaccinated", "live"),
}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium(CHROMIUM_ARGS) as launched:
        yield launched


@pytest.fixture(scope="module")
def live(
    fhir_server: FhirServer,
    vector_patients: dict[str, VectorPatient],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, SmartAuthServer]]:
    """(the service's base URL, the EHR auth server): both really listening on 127.0.0.1."""
    auth = SmartAuthServer(
        fhir_upstream=fhir_server.base_url,
        access_token=FHIR_TEST_TOKEN,
        client_id=CLIENT_ID,
        redirect_uris=[],
    )
    with auth:
        ehr_origin = auth.root_url.replace("127.0.0.1", "localhost")  # another site than the app

        class FramedSettings(Settings):
            smart_frame_ancestors: list[str] = Field(default_factory=lambda: ["'self'", ehr_origin])

        settings = FramedSettings(
            feedback_db_url=f"sqlite:///{tmp_path_factory.mktemp('smart') / 'feedback.sqlite3'}",
            smart_client_id=CLIENT_ID,
            smart_iss_allowlist=[auth.fhir_base],
            allow_http_loopback=True,
        )
        service = ServerThread(create_app(settings))
        service.start()
        auth.redirect_uris = [f"{service.url}/smart/callback"]
        try:
            yield service.url, auth
        finally:
            service.stop()


def launch_url(base: str, auth: SmartAuthServer, patient: str, **launch: Any) -> str:
    launch_id = auth.create_launch(patient=patient, app_context=f'{{"trial": "{TRIAL}"}}', **launch)
    return f"{base}/smart/launch?{urlencode({'iss': auth.fhir_base, 'launch': launch_id})}"


@pytest.mark.parametrize("status", list(EXPECTED))
def test_ehr_launch_in_a_real_browser(
    browser: Any, live: tuple[str, SmartAuthServer], vector_patients: dict[str, VectorPatient], status: str
) -> None:
    base, auth = live
    label, name, criterion = EXPECTED[status]
    page = browser.new_page(viewport={"width": 1024, "height": 900})
    try:
        page.goto(launch_url(base, auth, vector_patients[status].id))
        page.wait_for_load_state("load")
        assert page.url.startswith(f"{base}/smart/app?ctx="), page.url
        assert page.locator("html").get_attribute("lang") == "en"
        assert page.locator("header.banner").inner_text().startswith(name)
        section = page.locator(f"#trial-{TRIAL}")
        assert section.locator(".status").inner_text() == label
        assert criterion.lower() in section.inner_text().lower()
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"smart-{status}.png"))  # what the frame shows first
        evidence = section.locator("ul.evidence a").first
        assert evidence.get_attribute("href").startswith("/smart/evidence?ctx=")
        boxes = section.locator("fieldset input[type=checkbox]")
        assert boxes.count() >= 3
        first_label = section.locator("fieldset label").first
        first_label.click()  # labels are wired to their boxes
        assert boxes.first.is_checked()
        cookies = page.context.cookies()
        assert [c["name"] for c in cookies] == ["cds_smart_session"]
        assert cookies[0]["httpOnly"] and cookies[0]["secure"] and cookies[0]["sameSite"] == "None"
        assert FHIR_TEST_TOKEN not in page.content()
        section.screenshot(path=str(ARTIFACTS / f"smart-{status}-trial.png"))  # the card's trial, whole
    finally:
        page.close()


def test_sidebar_width(
    browser: Any, live: tuple[str, SmartAuthServer], vector_patients: dict[str, VectorPatient]
) -> None:
    """At 360px (an EHR sidebar) the page does not scroll sideways."""
    base, auth = live
    page = browser.new_page(viewport={"width": 360, "height": 800})
    try:
        page.goto(launch_url(base, auth, vector_patients["needs-review"].id))
        page.wait_for_load_state("load")
        assert page.evaluate("document.documentElement.scrollWidth") <= 360
        # The card's trial is a link; the trials that rule the patient out fold into one line.
        nav = page.locator("nav.trials")
        assert nav.locator(":scope > ul a").all_inner_texts()[0] == "CC312 in SLE"
        folded = nav.locator("details.ruled-out")
        assert folded.locator("summary").inner_text().startswith("Not eligible for ")
        assert not folded.locator("ul").is_visible()
        assert page.locator(f"#trial-{TRIAL}").bounding_box()["y"] < 800  # the card's trial is in view
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "smart-needs-review-360.png"))
        page.locator(f"#trial-{TRIAL}").screenshot(path=str(ARTIFACTS / "smart-needs-review-360-trial.png"))
    finally:
        page.close()


def test_framed_by_an_allowed_ehr_on_another_site(
    browser: Any, live: tuple[str, SmartAuthServer], vector_patients: dict[str, VectorPatient]
) -> None:
    """Inside a cross-site EHR frame the launch completes: the SameSite=None cookie travels."""
    base, auth = live
    page = browser.new_page(viewport={"width": 800, "height": 1000})
    try:
        ehr = auth.root_url.replace("127.0.0.1", "localhost")
        src = launch_url(base, auth, vector_patients["likely-eligible"].id)
        page.goto(f"{ehr}/ehr/frame?{urlencode({'src': src})}")
        frame = page.frame_locator("#app")
        assert frame.locator(".status").first.inner_text() == "Likely eligible"
    finally:
        page.close()


def test_framing_by_a_site_not_listed_is_blocked(
    browser: Any, live: tuple[str, SmartAuthServer], vector_patients: dict[str, VectorPatient]
) -> None:
    """frame-ancestors keeps the page out of frames of origins not configured."""
    base, auth = live
    page = browser.new_page()
    try:
        src = launch_url(base, auth, vector_patients["likely-eligible"].id)
        page.goto(f"{auth.root_url}/ehr/frame?{urlencode({'src': src})}")  # 127.0.0.1: not listed
        page.wait_for_timeout(1500)
        app_frames = [f for f in page.frames if f.url.startswith(f"{base}/smart/app")]
        assert all(f.locator(".status").count() == 0 for f in app_frames)
    finally:
        page.close()


def test_evidence_view_and_checklist_kept_across_launches(
    browser: Any, live: tuple[str, SmartAuthServer], vector_patients: dict[str, VectorPatient]
) -> None:
    """A clinician opens an evidence entry inside the app, ticks a checklist item with a note, opens
    the app again from the EHR (a new launch, a new browser session) and finds both kept."""
    base, auth = live
    patient, user = vector_patients["likely-eligible"].id, "browser-reviewer"
    ARTIFACTS.mkdir(exist_ok=True)
    first = browser.new_context(viewport={"width": 1024, "height": 900})
    try:
        page = first.new_page()
        page.goto(launch_url(base, auth, patient, user=user))
        section = page.locator(f"#trial-{TRIAL}")
        creatinine = section.locator("li", has_text="Creatinine").locator("ul.evidence a").first
        creatinine.click()
        page.wait_for_load_state("load")
        assert page.url.startswith(f"{base}/smart/evidence?ctx="), page.url
        assert "creatinine" in page.locator("h1").inner_text().lower()
        facts = page.locator("dl.facts").first.inner_text()
        assert "Value" in facts and "mg/dL" in facts and "Status" in facts
        assert not page.locator("details.raw").evaluate("d => d.open")  # the JSON stays folded
        assert page.locator("header.banner").inner_text().startswith("Ada Eligible")
        page.screenshot(path=str(ARTIFACTS / "smart-evidence.png"), full_page=True)
        page.locator("p.back a").click()
        page.wait_for_load_state("load")
        assert page.url.startswith(f"{base}/smart/app?ctx=")
        form = page.locator(f"#trial-{TRIAL} form.checklist")
        box = form.locator("input[type=checkbox]").first
        assert not box.is_checked()
        box.check()
        page.wait_for_function(
            "s => s.textContent === 'Saved.'", arg=form.locator(".save-status").element_handle()
        )
        note = form.locator("input[type=text]").first
        note.fill("Discussed with the patient on the phone")
        note.press("Tab")  # change fires on leaving the field: saved again
        page.wait_for_timeout(300)
        page.wait_for_function(
            "s => s.textContent === 'Saved.'", arg=form.locator(".save-status").element_handle()
        )
        assert "Kept for you" in form.inner_text()
        form.screenshot(path=str(ARTIFACTS / "smart-checklist-saved.png"))
    finally:
        first.close()
    again = browser.new_context(viewport={"width": 1024, "height": 900})
    try:
        page = again.new_page()
        page.goto(launch_url(base, auth, patient, user=user))
        form = page.locator(f"#trial-{TRIAL} form.checklist")
        assert form.locator("input[type=checkbox]").first.is_checked()
        assert (
            form.locator("input[type=text]").first.input_value() == "Discussed with the patient on the phone"
        )
        assert form.locator("input[type=checkbox]:checked").count() == 1
        form.screenshot(path=str(ARTIFACTS / "smart-checklist-restored.png"))
    finally:
        again.close()


def test_checklist_saves_without_script(
    browser: Any, live: tuple[str, SmartAuthServer], vector_patients: dict[str, VectorPatient]
) -> None:
    """With JavaScript off, the Save button posts the form and the page comes back with it saved."""
    base, auth = live
    context = browser.new_context(java_script_enabled=False, viewport={"width": 1024, "height": 900})
    try:
        page = context.new_page()
        page.goto(launch_url(base, auth, vector_patients["needs-review"].id, user="no-script-reviewer"))
        form = page.locator(f"#trial-{TRIAL} form.checklist")
        form.locator("input[type=checkbox]").nth(1).check()
        form.locator("button[type=submit]").click()
        page.wait_for_load_state("load")
        assert "saved=" in page.url
        form = page.locator(f"#trial-{TRIAL} form.checklist")
        assert form.locator("input[type=checkbox]").nth(1).is_checked()
        assert not form.locator("input[type=checkbox]").first.is_checked()
        assert form.locator(".save-status").inner_text() == "Saved."
    finally:
        context.close()
