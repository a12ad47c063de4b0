"""Property-based fuzzing of the CDS Hooks API: no input, however malformed, gets a 5xx.

Two layers, both in-process against the ASGI app. No network: with ``allow_unsigned`` and no FHIR
allowlist a generated ``fhirServer`` is refused (412) before any call is made.

* schemathesis generates requests from the app's OpenAPI document (every operation except the SMART
  app's ``/smart/*``), valid and invalid, and runs its ``not_a_server_error`` check on each answer.
* hypothesis puts random JSON under the prefetch keys, in Bundle entries and in resource fields
  (Observation values, dates, codings...) of an otherwise valid hook call. The answer must be 200,
  or 400/412 with a JSON ``error`` message.

Each test is capped by ``max_examples`` and derandomized, so the module takes seconds and a failure
reproduces on every run; ``CDS_FUZZ_EXAMPLES=N`` runs a deeper randomised search.
"""

from __future__ import annotations

import atexit
import copy
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error

from cds_service.app import create_app
from cds_service.settings import Settings
from tests.hooks.test_service import bundle_of, status_case
from tests.support.prefetch import patient_id, prefetch_from_bundle

SERVICE = "/cds-services/trial-eligibility"
# What a CDS client may get for a JSON object body: 413 only if it is over the size limit. 401 is
# not here: with allow_unsigned, a call without Authorization is accepted.
HOOK_STATUSES = {200, 400, 412, 413}
# CDS_FUZZ_EXAMPLES=2000 runs a deeper, randomised search (the default run is small and derandomized).
_DEEP = os.environ.get("CDS_FUZZ_EXAMPLES")
FUZZ = settings(
    max_examples=int(_DEEP or 60),
    deadline=None,
    derandomize=not _DEEP,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)


def make_app(tmp: Path) -> FastAPI:
    return create_app(Settings(allow_unsigned=True, feedback_db_url=f"sqlite:///{tmp}/feedback.sqlite3"))


def assert_json_error(response: Any) -> None:
    content_type = response.headers.get("content-type") or ""
    if isinstance(content_type, list):  # schemathesis' Response: every header is a list
        content_type = content_type[0] if content_type else ""
    assert content_type.startswith("application/json"), response.headers
    body = response.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], body


# --- schemathesis: the OpenAPI document -------------------------------------------------------


# Loaded at import: ``schema.parametrize()`` needs it at collection (``schemathesis.pytest.from_fixture``
# cannot be used, it fails on pytest 9.2: "'Function' object has no attribute '_nodeid'"). The
# feedback DB is in a temporary directory removed at exit.
_TMP = tempfile.mkdtemp(prefix="cds-fuzz-")
atexit.register(shutil.rmtree, _TMP, ignore_errors=True)
_APP = make_app(Path(_TMP))
schema = schemathesis.openapi.from_asgi("/openapi.json", _APP).exclude(path_regex=r"^/smart(/|$)")


@schema.parametrize()
@FUZZ
def test_openapi_fuzz_never_answers_5xx(case: Any) -> None:
    response = case.call()
    case.validate_response(response, checks=[not_a_server_error])
    assert response.status_code < 500, response.text
    if case.method.upper() == "POST" and case.path.startswith("/cds-services/"):
        assert response.status_code in HOOK_STATUSES, (response.status_code, response.text)
        if response.status_code != 200:
            assert_json_error(response)


def test_openapi_fuzz_generates_request_bodies() -> None:
    """Guard: the fuzzing above exercises the hook and feedback bodies, not only the routes."""
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    posts = [op for op in operations if op.method == "post"]
    assert {op.path for op in posts} == {SERVICE, f"{SERVICE}/feedback"}
    assert all(op.body.items for op in posts)


def test_openapi_request_body_refs_resolve() -> None:
    """Regression: the request bodies' schemas once kept ``#/$defs/...`` refs (from
    ``model_json_schema()``), which resolve to nothing in an OpenAPI document, so schemathesis
    (or any client generator) silently generated no body at all."""
    doc = _APP.openapi()
    unresolved = sorted({ref for ref in _refs(doc) if _resolve(doc, ref) is None})
    assert not unresolved, f"$refs that resolve to nothing in /openapi.json: {unresolved}"


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


# --- hypothesis: garbage in the prefetch ------------------------------------------------------

LIKELY_ELIGIBLE = bundle_of(status_case("likely eligible"))

json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
bad_dates = st.sampled_from(
    [
        "2026-13-45",
        "2026-02-30",
        "2026-00-00",
        "0000-01-01",
        "9999-12-31T23:59:59Z",
        "2026-05-12T25:61:00Z",
        "2026-05-12T10:00:00+99:00",
        "2026",
        "2026-05",
        "20260512",
        "",
        "not a date",
        "-2026-01-01",
        "12026-01-01",
    ]
)
bad_quantities = st.one_of(
    json_value,
    st.fixed_dictionaries(
        {},
        optional={
            "value": json_value | st.sampled_from([0, -1, 1e308, -1e-308, 10**30, "1.5", "NaN"]),
            "unit": json_value | st.sampled_from(["mg/dL", "", "%", "10*3/uL", "{copies}/mL", "kg/m2/s"]),
            "system": json_value | st.just("http://unitsofmeasure.org"),
            "code": json_value | st.sampled_from(["mg/dL", "g/L", "umol/L", "[iU]/mL", "m(", "1/0"]),
            "comparator": json_value | st.sampled_from(["<", "<=", ">=", ">", "ad"]),
        },
    ),
)
bad_codings = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "system": json_value | st.sampled_from(["http://loinc.org", "http://snomed.info/sct", ""]),
            "code": json_value | st.sampled_from(["2160-0", "55464009", "", " 2160-0 "]),
            "display": json_value,
        },
    )
    | json_value,
    max_size=3,
)
# Fields the record and the engine read, and what to put there.
TARGETED: dict[str, st.SearchStrategy[Any]] = {
    "valueQuantity": bad_quantities,
    "valueCodeableConcept": json_value | st.fixed_dictionaries({"coding": bad_codings}),
    "valueString": json_value,
    "code": json_value | st.fixed_dictionaries({"coding": bad_codings}),
    "medicationCodeableConcept": json_value | st.fixed_dictionaries({"coding": bad_codings}),
    "clinicalStatus": json_value | st.fixed_dictionaries({"coding": bad_codings}),
    "verificationStatus": json_value | st.fixed_dictionaries({"coding": bad_codings}),
    "effectiveDateTime": bad_dates | json_value,
    "effectivePeriod": json_value
    | st.fixed_dictionaries({}, optional={"start": bad_dates, "end": bad_dates}),
    "onsetDateTime": bad_dates | json_value,
    "recordedDate": bad_dates | json_value,
    "authoredOn": bad_dates | json_value,
    "issued": bad_dates | json_value,
    "birthDate": bad_dates | json_value,
    "deceasedDateTime": bad_dates | json_value,
    "deceasedBoolean": json_value,
    "gender": json_value,
    "status": json_value,
    "subject": json_value | st.fixed_dictionaries({"reference": json_value}),
    "dosageInstruction": json_value,
    "interpretation": json_value,
    "referenceRange": json_value,
    "component": json_value,
    "id": json_value,
    "resourceType": json_value | st.sampled_from(["Bundle", "Patient", "Observation", "Nope", ""]),
}


@pytest.fixture(scope="module")
def hook_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    app = make_app(tmp_path_factory.mktemp("fuzz-prefetch"))
    with TestClient(app, raise_server_exceptions=False) as client:  # a crash is a 500 to assert on
        yield client


@pytest.fixture(scope="module")
def valid_body(hook_client: TestClient) -> dict[str, Any]:
    templates = hook_client.get("/cds-services").json()["services"][0]["prefetch"]
    body = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/example", "patientId": patient_id(LIKELY_ELIGIBLE)},
        "prefetch": prefetch_from_bundle(LIKELY_ELIGIBLE, templates),
    }
    response = hook_client.post(SERVICE, json=body)
    assert response.status_code == 200 and response.json()["cards"], response.text  # the baseline works
    return body


def post_hook(client: TestClient, body: dict[str, Any]) -> Any:
    response = client.post(SERVICE, content=json.dumps(body), headers={"content-type": "application/json"})
    assert response.status_code in {200, 400, 412}, (response.status_code, response.text)
    if response.status_code != 200:
        assert_json_error(response)
    return response


def resources_in(body: dict[str, Any]) -> list[dict[str, Any]]:
    """Every resource of the prefetch: the values themselves and their Bundle entries' resources."""
    found = []
    for value in body["prefetch"].values():
        if not isinstance(value, dict):
            continue
        if value.get("resourceType") != "Bundle":
            found.append(value)
            continue
        for entry in value.get("entry") or ():
            if isinstance(entry, dict) and isinstance(entry.get("resource"), dict):
                found.append(entry["resource"])
    return found


@FUZZ
@given(data=st.data())
def test_garbage_prefetch_values_never_5xx(
    hook_client: TestClient, valid_body: dict[str, Any], data: st.DataObject
) -> None:
    body = copy.deepcopy(valid_body)
    keys = sorted(body["prefetch"])
    for key in data.draw(st.lists(st.sampled_from(keys), min_size=1, max_size=3, unique=True), label="keys"):
        body["prefetch"][key] = data.draw(
            json_value
            | st.fixed_dictionaries(
                {"resourceType": json_value | st.just("Bundle")},
                optional={
                    "entry": json_value,
                    "link": json_value,
                    "type": json_value,
                    "total": json_value,
                },
            ),
            label=key,
        )
    post_hook(hook_client, body)


@FUZZ
@given(data=st.data())
def test_garbage_bundle_entries_never_5xx(
    hook_client: TestClient, valid_body: dict[str, Any], data: st.DataObject
) -> None:
    body = copy.deepcopy(valid_body)
    bundles = sorted(k for k, v in body["prefetch"].items() if v.get("resourceType") == "Bundle")
    key = data.draw(st.sampled_from(bundles), label="key")
    entries: list[Any] = body["prefetch"][key].setdefault("entry", [])
    garbage = data.draw(
        json_value
        | st.fixed_dictionaries(
            {"resource": json_value}, optional={"fullUrl": json_value, "search": json_value}
        )
        | st.fixed_dictionaries(
            {
                "resource": st.dictionaries(st.text(max_size=8), json_value, max_size=4).map(
                    lambda r: {"resourceType": "Observation", **r}
                )
            },
        ),
        label="entry",
    )
    if entries and data.draw(st.booleans(), label="replace"):  # type: ignore[arg-type]
        entries[data.draw(st.integers(0, len(entries) - 1), label="at")] = garbage
    else:
        entries.append(garbage)
    post_hook(hook_client, body)


@FUZZ
@given(data=st.data())
def test_garbage_resource_fields_never_5xx(
    hook_client: TestClient, valid_body: dict[str, Any], data: st.DataObject
) -> None:
    body = copy.deepcopy(valid_body)
    resources = resources_in(body)
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        resource = data.draw(st.sampled_from(resources), label="resource")
        field = data.draw(st.sampled_from(sorted({*TARGETED, *resource})), label="field")
        resource[field] = data.draw(TARGETED.get(field, json_value), label=field)
    post_hook(hook_client, body)


@FUZZ
@given(
    quantity=bad_quantities,
    when=bad_dates,
    coding=bad_codings,
    value_key=st.sampled_from(["valueQuantity", "valueCodeableConcept", "valueString", "valueBoolean"]),
)
def test_garbage_lab_observation_never_5xx(
    hook_client: TestClient,
    valid_body: dict[str, Any],
    quantity: Any,
    when: str,
    coding: list[Any],
    value_key: str,
) -> None:
    """A lab the engine reads (creatinine, LOINC 2160-0) with garbage value, date and codings."""
    body = copy.deepcopy(valid_body)
    value = {"coding": coding} if value_key == "valueCodeableConcept" else quantity
    lab = {
        "resourceType": "Observation",
        "id": "fuzz-lab",
        "status": "final",
        "subject": {"reference": f"Patient/{body['context']['patientId']}"},
        "code": {"coding": [{"system": "http://loinc.org", "code": "2160-0"}, *coding]},
        "effectiveDateTime": when,
        value_key: value,
    }
    body["prefetch"]["observations"]["entry"].append({"fullUrl": "Observation/fuzz-lab", "resource": lab})
    post_hook(hook_client, body)


# --- 5xx found by the fuzzing above, minimised ---------------------------------------------------

MINIMAL_5XX = [
    ("observations", {"code": {"coding": [{"system": "http://loinc.org", "code": "2160-0"}]}}, "Observation"),
    ("procedures", {}, "Procedure"),
    (
        "medicationRequests",
        {
            "intent": "order",
            "medicationCodeableConcept": {
                "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "979092"}]
            },
        },
        "MedicationRequest",
    ),
]


@pytest.mark.parametrize("status", [[], {}], ids=["list", "object"])
@pytest.mark.parametrize(("key", "fields", "resource_type"), MINIMAL_5XX, ids=[c[2] for c in MINIMAL_5XX])
def test_regression_unhashable_status_is_not_a_5xx(
    hook_client: TestClient, key: str, fields: dict[str, Any], resource_type: str, status: Any
) -> None:
    """Found by test_garbage_resource_fields_never_5xx: engine/facts.py status_counts did
    ``status in frozenset`` on a list/object status (TypeError: unhashable type, a 500)."""
    templates = hook_client.get("/cds-services").json()["services"][0]["prefetch"]
    prefetch: dict[str, Any] = dict.fromkeys(templates)
    prefetch["patient"] = {"resourceType": "Patient", "id": "p1"}
    resource = {
        "resourceType": resource_type,
        "id": "x",
        "status": status,
        "subject": {"reference": "Patient/p1"},
    }
    prefetch[key] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": resource | fields}],
    }
    body = {
        "hook": "patient-view",
        "hookInstance": "regression",
        "context": {"userId": "Practitioner/example", "patientId": "p1"},
        "prefetch": prefetch,
    }
    post_hook(hook_client, body)


@pytest.mark.parametrize("value", [True, 1, 1.5])
@pytest.mark.parametrize("field", ["entry", "link"])
def test_regression_scalar_bundle_entry_or_link_is_not_a_5xx(
    hook_client: TestClient, field: str, value: Any
) -> None:
    templates = hook_client.get("/cds-services").json()["services"][0]["prefetch"]
    prefetch: dict[str, Any] = dict.fromkeys(templates)
    prefetch["patient"] = {"resourceType": "Patient", "id": "p1"}
    prefetch["allergies"] = {"resourceType": "Bundle", "type": "searchset", field: value}
    body = {
        "hook": "patient-view",
        "hookInstance": "regression",
        "context": {"userId": "Practitioner/example", "patientId": "p1"},
        "prefetch": prefetch,
    }
    post_hook(hook_client, body)
