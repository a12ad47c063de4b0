"""An entry that decided a criterion but is not valid FHIR R4: that criterion is ``unknown`` with a
reason naming the resource type and the field, the rest of the report stands, and no trial becomes
likely-eligible because of it (a malformed record moves a patient toward review, never toward a
card that says "likely eligible")."""

from __future__ import annotations

import copy
from datetime import date
from typing import Any

import pytest

from cds_service.engine.evaluate import evaluate
from cds_service.engine.report import EligibilityReport
from cds_service.record import build_record
from tests.conftest import REPO, packaged_catalog

AS_OF = date(2026, 6, 1)
TRIAL = "NCT06888960"


def _vector_cases() -> list[tuple[str, str, list[dict[str, Any]], date]]:
    """(trial, case name, resources, as_of) of every packaged trial's status vectors."""
    from cds_service.engine.vectors import load_vectors

    return [
        (c.trial, c.case.name, c.case.parts(), date.fromisoformat(c.case.as_of))
        for c in load_vectors(REPO / "mappings")
        if c.path.stem == "status"
    ]


def _report(resources: list[dict[str, Any]], as_of: date, trial: str) -> EligibilityReport:
    record = build_record(copy.deepcopy(resources))
    return evaluate(packaged_catalog(), record, as_of=as_of, trial_ids=[trial])


def _broken(resources: list[Any], reference: str) -> list[Any]:
    """The same resources with ``reference`` made invalid FHIR R4 (``meta.lastUpdated`` not an
    instant: a field no rule reads, so only validation can notice)."""
    out = copy.deepcopy(resources)
    for part in out:
        for resource in [e["resource"] for e in part.get("entry", [])] if "entry" in part else [part]:
            if f"{resource.get('resourceType')}/{resource.get('id')}" == reference:
                resource["meta"] = {"lastUpdated": "yesterday"}
    return out


CASES = _vector_cases()


@pytest.mark.parametrize(
    ("trial", "name", "resources", "as_of"), CASES, ids=[f"{c[0]}:{c[1]}" for c in CASES]
)
def test_breaking_any_deciding_entry_never_makes_a_trial_likely_eligible(
    trial: str, name: str, resources: list[dict[str, Any]], as_of: date
) -> None:
    before = _report(resources, as_of, trial).trials[0]
    references = sorted(
        {e.reference for c in before.criteria for e in c.evidence if not e.reference.startswith("Patient/")}
    )
    for reference in references:
        after = _report(_broken(resources, reference), as_of, trial).trials[0]
        if after.status == "likely-eligible":
            assert before.status == "likely-eligible", (name, reference)
        for old, new in zip(before.criteria, after.criteria, strict=True):
            if any(e.reference == reference for e in old.evidence):
                assert new.result == "unknown" and not new.evidence, (name, reference, new)
                if not old.manual:
                    kind = reference.split("/", 1)[0]
                    assert f"the {kind} it rests on is not valid FHIR R4 (meta.lastUpdated)" in new.reason
            elif not any(e.reference == reference for e in new.evidence):
                assert new.result == old.result, (name, reference, new.id)


def test_the_reason_names_no_id_and_an_invalid_entry_is_validated_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import cds_service.record as record_module

    (likely,) = [c for c in CASES if c[0] == TRIAL and c[1].startswith("likely eligible")]
    every = evaluate(packaged_catalog(), build_record(copy.deepcopy(likely[2])), as_of=likely[3]).trials
    uses: dict[str, int] = {}
    for result in every:
        for criterion in result.criteria:
            for ref in {e.reference for e in criterion.evidence if not e.reference.startswith("Patient/")}:
                uses[ref] = uses.get(ref, 0) + 1
    reference = max(sorted(uses), key=lambda r: uses[r])  # the entry the most criteria rest on
    assert uses[reference] >= 2, uses
    calls: list[str] = []
    original = record_module.validate_resource

    def counting(resource: dict[str, Any]) -> None:
        calls.append(f"{resource['resourceType']}/{resource['id']}")
        original(resource)

    monkeypatch.setattr(record_module, "validate_resource", counting)
    after = evaluate(packaged_catalog(), build_record(_broken(likely[2], reference)), as_of=likely[3]).trials
    reasons = [c.reason for t in after for c in t.criteria if "not valid FHIR R4" in c.reason]
    assert len(reasons) >= 2 and all(reference not in r for r in reasons)
    assert calls.count(reference) == 1


def test_an_invalid_patient_is_still_refused() -> None:
    from cds_service.errors import InvalidResource

    (likely,) = [c for c in CASES if c[0] == TRIAL and c[1].startswith("likely eligible")]
    patient = next(r for r in likely[2] if r.get("resourceType") == "Patient")
    with pytest.raises(InvalidResource, match=r"Patient/.* is not valid FHIR R4: meta\.lastUpdated"):
        build_record(_broken(likely[2], f"Patient/{patient['id']}"))


SHAPES: dict[str, Any] = {
    "status not a code": ("status", 3),
    "value text in a Quantity": ("valueQuantity", {"value": "abc", "unit": "mg/dL"}),
    "Quantity as a list": ("valueQuantity", [1]),
    "date as a number": ("effectiveDateTime", 12345),
    "coding not a list": ("code", {"coding": {"system": "x"}}),
    "code as a string": ("code", "2160-0"),
    "reference range as text": ("referenceRange", "0.5-1.2"),
    "component not a list": ("component", {"a": 1}),
    "interpretation as text": ("interpretation", "H"),
}


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("resource_type", ["Observation", "Condition", "MedicationRequest"])
def test_malformed_shapes_are_evaluated_and_never_read_as_likely_eligible(
    shape: str, resource_type: str
) -> None:
    """What an EHR export really holds, one field at a time: the engine answers (no exception for the
    hook to turn into a 400) and a likely-eligible patient is at best left to review."""
    (likely,) = [c for c in CASES if c[0] == TRIAL and c[1].startswith("likely eligible")]
    resources = copy.deepcopy(likely[2])
    target = next(r for r in resources if r.get("resourceType") == resource_type)
    name, value = SHAPES[shape]
    target[name] = value
    assert _report(likely[2], likely[3], TRIAL).trials[0].status == "likely-eligible"
    assert _report(resources, likely[3], TRIAL).trials[0].status in ("needs-review", "not-eligible")
