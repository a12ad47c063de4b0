"""Properties of the extended format: the at_least combinator's Kleene laws, and results that decide
the same however an EHR re-expresses them (LOINC answer code, SNOMED code, text, boolean, a
component of a panel, a contained panel member, another unit)."""

from __future__ import annotations

from datetime import date
from functools import cache
from itertools import permutations
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from cds_service.codes import LOINC, SNOMED, UCUM
from cds_service.engine.context import Context
from cds_service.engine.evaluate import Outcome, at_least, combine, evaluate_rule
from cds_service.engine.loader import Catalog
from cds_service.engine.model import Rule, RuleModel
from cds_service.engine.report import Evidence, ResultValue
from cds_service.record import build_record
from tests.conftest import packaged_catalog

FAST = settings(max_examples=60, deadline=None, database=None)
VALUES = ("met", "not-met", "unknown")
AS_OF = date(2026, 6, 1)
PATIENT = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1980-01-01"}
RULE = TypeAdapter(Rule)


def outcomes(results: list[str]) -> list[Outcome]:
    return [_outcome(i, r) for i, r in enumerate(results)]


def _outcome(index: int, result: str) -> Outcome:
    value: ResultValue = result  # type: ignore[assignment]
    return Outcome(value, f"child {index} {result}", (Evidence(reference=f"Observation/{index}"),))


def brute_force(n: int, results: list[str]) -> str:
    """Kleene's strong reading, by counting: met when n are surely met, not-met when n can no
    longer be reached however the unknown children turn out, otherwise unknown."""
    met = results.count("met")
    possible = len(results) - results.count("not-met")
    if met >= n:
        return "met"
    if possible < n:
        return "not-met"
    return "unknown"


@FAST
@given(results=st.lists(st.sampled_from(VALUES), min_size=2, max_size=7), data=st.data())
def test_at_least_counts_met_and_reachable(results: list[str], data: st.DataObject) -> None:
    n = data.draw(st.integers(1, len(results)))
    assert at_least(n, outcomes(results)).result == brute_force(n, results)


@FAST
@given(results=st.lists(st.sampled_from(VALUES), min_size=2, max_size=7))
def test_at_least_one_is_any_and_at_least_all_is_all(results: list[str]) -> None:
    assert at_least(1, outcomes(results)).result == combine("any", outcomes(results)).result
    assert at_least(len(results), outcomes(results)).result == combine("all", outcomes(results)).result


@FAST
@given(results=st.lists(st.sampled_from(VALUES), min_size=2, max_size=7), data=st.data())
def test_at_least_is_monotone_in_knowledge(results: list[str], data: st.DataObject) -> None:
    """Learning an unknown child's value never turns a decided at_least around (Kleene monotonicity)."""
    n = data.draw(st.integers(1, len(results)))
    before = at_least(n, outcomes(results)).result
    unknowns = [i for i, r in enumerate(results) if r == "unknown"]
    if not unknowns or before == "unknown":
        return
    refined = list(results)
    refined[data.draw(st.sampled_from(unknowns))] = data.draw(st.sampled_from(["met", "not-met"]))
    assert at_least(n, outcomes(refined)).result == before


@FAST
@given(results=st.lists(st.sampled_from(VALUES), min_size=2, max_size=6), data=st.data())
def test_at_least_does_not_depend_on_order(results: list[str], data: st.DataObject) -> None:
    n = data.draw(st.integers(1, len(results)))
    shuffled = data.draw(st.permutations(results))
    assert at_least(n, outcomes(results)).result == at_least(n, outcomes(shuffled)).result


def test_at_least_explains_by_the_children_that_decided() -> None:
    result = at_least(2, outcomes(["met", "not-met", "met", "unknown"]))
    assert result.result == "met" and "2 of 4" in result.reason
    assert {e.reference for e in result.evidence} == {"Observation/0", "Observation/2"}


# ---------------------------------------------------------------------------------------------
# Re-expressions of one result decide the same


@cache
def catalog() -> Catalog:
    return packaged_catalog()


def outcome_of(rule: dict[str, Any], resources: list[dict[str, Any]], tz: str = "UTC") -> str:
    parsed: RuleModel = RULE.validate_python(rule)
    record = build_record([PATIENT, *resources])
    ctx = Context(record=record, catalog=catalog(), as_of=AS_OF, tz=ZoneInfo(tz))
    return evaluate_rule(parsed, ctx).result


def _observation(
    code: str, value: dict[str, Any], rid: str = "o1", when: str = "2026-05-20"
) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": rid,
        "status": "final",
        "subject": {"reference": "Patient/p1"},
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "effectiveDateTime": when,
        **value,
    }


def _coded(system: str, code: str) -> dict[str, Any]:
    return {"valueCodeableConcept": {"coding": [{"system": system, "code": code}]}}


QUALITATIVE = {
    True: [
        _coded(SNOMED, "10828004"),
        _coded(LOINC, "LA6576-8"),
        _coded(LOINC, "LA11882-0"),
        {"valueString": "Positive"},
        {"valueString": "POS"},
        {"valueString": "Reactive"},
        {"valueCodeableConcept": {"text": "Detected"}},
        {"valueBoolean": True},
    ],
    False: [
        _coded(SNOMED, "260385009"),
        _coded(LOINC, "LA6577-6"),
        _coded(LOINC, "LA11883-8"),
        {"valueString": "Negative"},
        {"valueString": "NEG"},
        {"valueString": "Non-reactive"},
        {"valueCodeableConcept": {"text": "Not detected"}},
        {"valueBoolean": False},
    ],
}


def _wrapped(code: str, value: dict[str, Any], how: str) -> list[dict[str, Any]]:
    """The same result as a plain Observation, a component of a panel, or a contained member."""
    if how == "plain":
        return [_observation(code, value)]
    panel = {key: val for key, val in _observation("24362-6", {}).items() if key != "code"}
    panel["code"] = {"text": "panel"}
    if how == "component":
        return [{**panel, "component": [{"code": {"coding": [{"system": LOINC, "code": code}]}, **value}]}]
    member = {
        "resourceType": "Observation",
        "id": "m",
        "status": "final",
        "code": _observation(code, {})["code"],
        **value,
    }
    return [{**panel, "contained": [member], "hasMember": [{"reference": "#m"}]}]


@FAST
@given(
    positive=st.booleans(),
    data=st.data(),
    how=st.sampled_from(["plain", "component", "member"]),
)
def test_a_qualitative_result_decides_the_same_however_it_is_expressed(
    positive: bool, data: st.DataObject, how: str
) -> None:
    value = data.draw(st.sampled_from(QUALITATIVE[positive]))
    rule = {"lab": {"valueset": "hiv-ab", "finding": "positive"}}
    wanted = "met" if positive else "not-met"
    assert outcome_of(rule, _wrapped("31201-7", value, how)) == wanted


def _iga(mg_dl: float, form: str) -> dict[str, Any]:
    if form == "mg/dL":
        return {"valueQuantity": {"value": mg_dl, "unit": "mg/dL", "system": UCUM, "code": "mg/dL"}}
    if form == "g/L":
        return {"valueQuantity": {"value": mg_dl / 100, "unit": "g/L", "system": UCUM, "code": "g/L"}}
    return {"valueString": f"{mg_dl:g} mg/dL"}


@FAST
@given(
    mg_dl=st.sampled_from([2.0, 5.5, 9.0, 11.0, 40.0, 250.0]),
    form=st.sampled_from(["mg/dL", "g/L", "text"]),
    how=st.sampled_from(["plain", "component", "member"]),
)
def test_a_numeric_result_decides_the_same_in_any_unit_text_or_panel(
    mg_dl: float, form: str, how: str
) -> None:
    rule = {"lab": {"valueset": "iga", "threshold": {"op": "<", "value": 10, "unit": "mg/dL"}}}
    wanted = "met" if mg_dl < 10 else "not-met"
    assert outcome_of(rule, _wrapped("2458-8", _iga(mg_dl, form), how)) == wanted


def test_same_day_results_with_times_are_ordered_whatever_the_bundle_order() -> None:
    rule = {"lab": {"valueset": "iga", "threshold": {"op": "<", "value": 10, "unit": "mg/dL"}}}
    morning = _observation("2458-8", _iga(5, "mg/dL"), rid="a", when="2026-05-20T08:00:00+00:00")
    evening = _observation("2458-8", _iga(80, "mg/dL"), rid="b", when="2026-05-20T19:00:00+00:00")
    for order in permutations([morning, evening]):
        assert outcome_of(rule, list(order)) == "not-met"


def test_an_instant_is_placed_on_the_site_calendar() -> None:
    """A positive hCG at 23:30 in New York on 3 May is 4 May in UTC: inside the 4-week window that
    starts on 4 May for a UTC site, outside it for a New York site."""
    rule = {"lab": {"valueset": "hcg", "window": "4w", "finding": "positive"}}
    late = _observation("2106-3", _coded(SNOMED, "10828004"), when="2026-05-03T23:30:00-04:00")
    assert outcome_of(rule, [late], tz="UTC") == "met"
    assert outcome_of(rule, [late], tz="America/New_York") == "unknown"


def test_a_reason_names_a_system_sent_as_an_oid() -> None:
    """Codes sent with an OID system are matched (``codes.normalize``); the reason line names the
    system too, not "code"."""
    from cds_service.engine.facts import concept_label

    oid = {"coding": [{"system": "urn:oid:2.16.840.1.113883.6.96", "code": "55464009"}]}
    assert concept_label(oid).endswith("(SNOMED 55464009)")
