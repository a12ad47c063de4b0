"""The SMART app's pure parts: allowlist matching, scopes, token responses, sessions, the view."""

from __future__ import annotations

import json
from datetime import date

import pytest

from cds_service.engine.evaluate import evaluate
from cds_service.portfolio import default_portfolio
from cds_service.record import build_record
from cds_service.settings import Settings
from cds_service.smart import errors, oauth
from cds_service.smart.router import frame_ancestors
from cds_service.smart.sessions import Launch, Pending, SessionStore
from cds_service.smart.urls import checked_iss, transport_allowed
from cds_service.smart.view import banner_view, patient_name, trial_views
from tests.conftest import packaged_catalog
from tests.smart.patients import TRIAL, vector_patient

ALLOW = Settings(smart_iss_allowlist=["https://ehr.example/fhir"])


@pytest.mark.parametrize(
    ("iss", "expected"),
    [
        ("https://ehr.example/fhir", "https://ehr.example/fhir"),
        ("https://EHR.example:443/fhir/", "https://ehr.example/fhir"),
        ("https://ehr.example/fhir/r4", "https://ehr.example/fhir/r4"),
        ("https://ehr.example/fhir-evil", None),
        ("https://ehr.example.evil/fhir", None),
        ("https://ehr.example/fhir/../admin", None),
        ("https://ehr.example/fhir/%2e%2e/admin", None),
        ("https://me@ehr.example/fhir", None),
        ("https://ehr.example/fhir?x=1", None),
        ("http://ehr.example/fhir", None),
        ("ftp://ehr.example/fhir", None),
        ("", None),
    ],
)
def test_iss_must_sit_under_an_allowlisted_prefix_on_a_path_boundary(iss: str, expected: str | None) -> None:
    assert checked_iss(iss, ALLOW) == expected


def test_empty_allowlist_admits_nothing_and_http_needs_loopback_and_the_setting() -> None:
    assert checked_iss("https://ehr.example/fhir", Settings()) is None
    loop = Settings(smart_iss_allowlist=["http://127.0.0.1:8080/fhir"], allow_http_loopback=True)
    assert checked_iss("http://127.0.0.1:8080/fhir", loop) == "http://127.0.0.1:8080/fhir"
    assert (
        checked_iss("http://127.0.0.1:8080/fhir", loop.model_copy(update={"allow_http_loopback": False}))
        is None
    )


@pytest.mark.parametrize(
    ("url", "loopback_ok", "allowed"),
    [
        ("https://auth.example/token", False, True),
        ("http://auth.example/token", True, False),
        ("http://127.0.0.1:9/token", True, True),
        ("http://localhost:9/token", False, False),
        ("https://u:p@auth.example/token", False, False),
        ("javascript:alert(1)", True, False),
    ],
)
def test_endpoints_must_be_https_or_allowed_loopback_http(url: str, loopback_ok: bool, allowed: bool) -> None:
    assert transport_allowed(url, allow_http_loopback=loopback_ok) is allowed


def test_scopes_cover_every_type_the_mappings_search() -> None:
    scopes = oauth.scopes(packaged_catalog(), style="v2", ehr_launch=True).split()
    assert scopes[:3] == ["launch", "openid", "fhirUser"]
    for rtype in ("Patient", "Condition", "Observation", "MedicationRequest", "Immunization", "Procedure"):
        assert f"patient/{rtype}.rs" in scopes
    assert len(scopes) == len(set(scopes))


def test_pkce_challenge_is_rfc7636_s256() -> None:
    # RFC 7636 appendix B
    assert oauth.pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk") == (
        "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    )


def test_token_response_is_read_strictly() -> None:
    good = {
        "access_token": "t",
        "token_type": "bearer",
        "patient": "p-1",
        "scope": "launch",
        "expires_in": 300,
    }
    grant = oauth._grant(json.dumps({**good, "appContext": '{"trial": "X"}'}).encode())
    assert (grant.patient, grant.expires_in, grant.app_context) == ("p-1", 300, {"trial": "X"})
    assert grant.need_patient_banner is True and "secret-tok" not in repr(grant)
    with pytest.raises(errors.SmartError) as missing:
        oauth._grant(json.dumps({**good, "patient": None}).encode())
    assert missing.value.status == 403
    for broken in ({**good, "token_type": "mac"}, {**good, "access_token": ""}, ["not", "an", "object"]):
        with pytest.raises(errors.SmartError):
            oauth._grant(json.dumps(broken).encode())


@pytest.mark.parametrize("value", [None, 3, "not json", "[1]", '"x"'])
def test_app_context_that_is_not_a_json_object_is_ignored(value: object) -> None:
    assert oauth.parse_app_context(value) == {}


def _pending(store: SessionStore) -> Pending:
    return Pending(
        iss="i", verifier="v", token_endpoint="t", redirect_uri="r", expires_at=store.pending_expiry()
    )


def test_session_ids_rotate_and_pending_state_is_single_use() -> None:
    now = [0.0]
    store = SessionStore(clock=lambda: now[0])
    sid = store.begin_authorization(None, _pending(store), "state-1")
    assert store.begin_authorization(sid, _pending(store), "state-2") == sid
    assert store.take_pending(sid, "state-1") is not None
    assert store.take_pending(sid, "state-1") is None
    assert store.take_pending("other", "state-2") is None
    launch = Launch(
        iss="i", patient="p", access_token="tok", need_patient_banner=True, app_context={}, expires_at=60
    )
    new_sid, ctx = store.complete(sid, launch)
    assert new_sid != sid and store.launch(sid, ctx) is None
    assert store.launch(new_sid, ctx) == launch  # read back from the database, token decrypted
    assert store.take_pending(new_sid, "state-2") is not None  # other tabs' launches carry over
    now[0] = 61
    assert store.launch(new_sid, ctx) is None
    assert "tok" not in repr(launch)


def test_pending_authorizations_are_bounded() -> None:
    store = SessionStore(max_pending=3)
    ids = [store.begin_authorization(None, _pending(store), f"s{i}") for i in range(5)]
    assert store.take_pending(ids[0], "s0") is None and store.take_pending(ids[4], "s4") is not None
    assert store.counts()["smart_pending"] == 2  # s2 and s3 (s4 was taken)


def test_frame_ancestors_default_to_self_and_the_allowlisted_ehrs() -> None:
    assert frame_ancestors(ALLOW) == ["'self'", "https://ehr.example"]


def test_patient_name_prefers_the_official_name() -> None:
    patient = {
        "name": [
            {"use": "usual", "given": ["Bea"]},
            {"use": "official", "family": "Smith", "given": ["Beatrice", "A"]},
        ]
    }
    assert patient_name(patient) == "Beatrice A Smith"
    assert patient_name({"name": [{"text": " Dr. Who "}]}) == "Dr. Who"
    assert patient_name({}) == "Unnamed patient"
    bare = banner_view({"gender": "female"}, as_of=date(2026, 1, 1))
    assert (bare.birth_date, bare.age, bare.identifier) == ("unknown", "age unknown", None)
    named = banner_view(
        {
            "birthDate": "1985-06-15",
            "identifier": [
                {"system": "urn:x", "value": "A-1"},
                {"type": {"coding": [{"code": "MR"}]}, "value": "12345"},
            ],
        },
        as_of=date(2026, 6, 14),
    )
    assert (named.age, named.identifier) == ("40 years", "MRN 12345")
    assert banner_view({"birthDate": "1985"}, as_of=date(2026, 6, 14)).age == "40–41 years"


def test_view_groups_criteria_and_puts_the_card_trial_first() -> None:
    bundle = vector_patient("not-eligible").bundle
    record = build_record([e["resource"] for e in bundle["entry"]])
    report = evaluate(packaged_catalog(), record, as_of=date.today(), trial_ids=[TRIAL])
    [trial] = trial_views(
        report,
        catalog=packaged_catalog(),
        portfolio=default_portfolio(packaged_catalog()),
        evidence_url="/smart/evidence?ctx=c1",
        first=TRIAL,
    )
    assert trial.status_label == "Not eligible"
    assert [g.heading for g in trial.groups] == [
        "Rules the patient out",
        "Meets",
        "Absent — in the patient's favour",
    ]
    assert [c.id for c in trial.ruled_out_by] == ["live-vaccine"]
    assert all(c.result == "unknown" for c in trial.checklist) and len(trial.checklist) == 5
    hrefs = [e.href for g in trial.groups for c in g.items for e in c.evidence]
    assert any(
        h and h.startswith("/smart/evidence?ctx=c1&") and "Immunization%2Fsmart-not-eligible-v1" in h
        for h in hrefs
    )
    assert not any(h and h.startswith("http") for h in hrefs)
