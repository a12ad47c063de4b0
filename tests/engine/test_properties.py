"""Invariants of the eligibility engine, checked with hypothesis over generated patient records.

Every property runs against the test-only trial (tests/data/all-constructs, which uses every construct
of the mapping format) and against the packaged NCT06888960 mapping when ``mappings/`` loads (that
parametrization is skipped, saying why, when it does not).

Records are small and random: a Patient with a birth date, plus Conditions, Observations,
MedicationRequests, Procedures and Immunizations whose codes are drawn from the catalog's own value
sets (so rules do fire) and from unrelated codes, with statuses, value shapes (quantities in several
units, titers as "1:N" and as ratios, coded positive/negative answers, interpretation flags) and
dates (exact, datetime, partial, undated, a few after the evaluation date) around ``AS_OF``.

Catalogs are built once per module (functools.cache), not in fixtures: hypothesis
re-runs a test body many times and function-scoped fixtures would be shared between examples.
"""

from __future__ import annotations

import calendar
from collections.abc import Callable
from datetime import date, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from cds_service.codes import (
    ALLERGY_VERIFICATION,
    CONDITION_CLINICAL,
    CONDITION_VERIFICATION,
    CVX,
    ICD10CM,
    LOINC,
    RXNORM,
    SNOMED,
    UCUM,
    V3_INTERPRETATION,
)
from cds_service.engine.context import Context
from cds_service.engine.evaluate import Outcome, combine, evaluate, evaluate_rule
from cds_service.engine.loader import Catalog, load_catalog
from cds_service.engine.model import LabRule, Rule, RuleModel, Threshold, walk
from cds_service.engine.report import EligibilityReport, Evidence
from cds_service.engine.units import convert
from cds_service.errors import MappingError
from cds_service.record import build_record

ALL_CONSTRUCTS = Path(__file__).resolve().parents[1] / "data" / "all-constructs"
AS_OF = date(2026, 6, 1)
TEST_ALL = "TEST-ALL"
NCT = "NCT06888960"
PATIENT_REF = {"reference": "Patient/p1"}

# Fast and quiet: 50 examples per property, no deadline (the first example of a catalog pays for
# fhir.resources model building), and no example database written into the working tree.
FAST = settings(max_examples=50, deadline=None, database=None)


# ---------------------------------------------------------------------------------------------
# Catalogs


@cache
def packaged_catalog() -> Catalog:
    return load_catalog()


@cache
def all_constructs_catalog() -> Catalog:
    return load_catalog(ALL_CONSTRUCTS)


def _packaged_problem() -> str | None:
    """Why the NCT06888960 parametrization cannot run yet, or None when it can."""
    try:
        catalog = packaged_catalog()
    except MappingError as exc:
        return f"mappings/ does not load yet (in progress?): {str(exc).splitlines()[0]}"
    if NCT not in catalog.trials:
        return f"mappings/trials/{NCT}.yaml is not there yet"
    return None


PACKAGED_PROBLEM = _packaged_problem()
CATALOGS = [
    pytest.param(TEST_ALL, id=TEST_ALL),
    pytest.param(
        NCT,
        id=NCT,
        marks=pytest.mark.skipif(PACKAGED_PROBLEM is not None, reason=PACKAGED_PROBLEM or ""),
    ),
]


def catalog_named(name: str) -> Catalog:
    return all_constructs_catalog() if name == TEST_ALL else packaged_catalog()


RULE = TypeAdapter(Rule)


def parse_rule(data: dict[str, Any]) -> RuleModel:
    return RULE.validate_python(data)


@cache
def threshold_of(name: str, valueset: str) -> Threshold | None:
    """The threshold of the catalog's lab rule on ``valueset`` (read, not copied, from the mapping)."""
    for trial in catalog_named(name).trials.values():
        for criterion in trial.criteria:
            for rule in walk(criterion.rule) if criterion.rule else ():
                if isinstance(rule, LabRule) and rule.valueset == valueset and rule.threshold:
                    return rule.threshold
    return None


# Codes in no value set of either catalog: noise a real record is full of.
OTHER_CODES: dict[str, tuple[str, ...]] = {
    SNOMED: ("38341003", "195662009", "10509002", "73211009"),
    ICD10CM: ("I10", "J06.9", "E78.5", "Z00.00"),
    LOINC: ("2345-7", "718-7", "8480-6", "33914-3"),
    RXNORM: ("197361", "310965", "314076"),
    CVX: ("140", "208", "115"),
}


@cache
def code_groups(name: str) -> dict[str, tuple[tuple[str, ...], ...]]:
    """Per code system, the codes of each value set (one per prefix / range), and one group of noise.

    Drawing a group first, then a code in it, gives every value set the same chance of firing,
    however many codes the big ones (antibacterials, live vaccines) list.
    """
    groups: dict[str, set[tuple[str, ...]]] = {system: {codes} for system, codes in OTHER_CODES.items()}
    for valueset in catalog_named(name).valuesets.values():
        per_system: dict[str, set[str]] = {}
        for system, code in valueset.exact:
            per_system.setdefault(system, set()).add(code)
        for system, prefixes in valueset.prefixes.items():
            for prefix in prefixes:
                per_system.setdefault(system, set()).add(prefix + ("9" if "." in prefix else ".9"))
        for system, low, _high in valueset.ranges:
            per_system.setdefault(system, set()).add(low + ".9")
        for system, codes in per_system.items():
            groups.setdefault(system, set()).add(tuple(sorted(codes)))
    return {system: tuple(sorted(found)) for system, found in groups.items()}


def codes(name: str, system: str) -> st.SearchStrategy[str]:
    return st.sampled_from(code_groups(name)[system]).flatmap(st.sampled_from)


# ---------------------------------------------------------------------------------------------
# Strategies


def _concept(system: str, code: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code}]}


@st.composite
def fhir_date(draw: st.DrawFn, *, before_as_of: bool = False) -> str:
    """A FHIR date around AS_OF: mostly exact days, some datetimes, some partial (month / year).

    ``before_as_of``: every day the date could mean is before AS_OF (so that data added on AS_OF is
    unambiguously the latest).
    """
    latest = -1 if before_as_of else 20  # a few dates after AS_OF: data that did not exist yet
    offset = draw(st.one_of(st.integers(-120, latest), st.integers(-3000, -121)))
    day = AS_OF + timedelta(days=offset)
    precision = draw(st.sampled_from(["day", "day", "day", "datetime", "month", "year"]))
    if precision == "month":
        last = date(day.year, day.month, calendar.monthrange(day.year, day.month)[1])
        if not before_as_of or last < AS_OF:
            return day.isoformat()[:7]
    if precision == "year" and (not before_as_of or day.year < AS_OF.year):
        return str(day.year)
    if precision == "datetime":
        return f"{day.isoformat()}T{draw(st.integers(0, 23)):02d}:30:00+02:00"
    return day.isoformat()


def _maybe(draw: st.DrawFn, key: str, strategy: st.SearchStrategy[Any], into: dict[str, Any]) -> None:
    if draw(st.booleans()):
        into[key] = draw(strategy)


@st.composite
def conditions(draw: st.DrawFn, name: str, before_as_of: bool) -> dict[str, Any]:
    system = draw(st.sampled_from([SNOMED, ICD10CM]))
    resource: dict[str, Any] = {
        "resourceType": "Condition",
        "subject": PATIENT_REF,
        "code": _concept(system, draw(codes(name, system))),
    }
    status = draw(st.sampled_from(["active", "resolved", "inactive", "recurrence", None]))
    if status is not None:
        resource["clinicalStatus"] = _concept(CONDITION_CLINICAL, status)
    verification = draw(st.sampled_from(["confirmed", "unconfirmed", "provisional", None]))
    if verification is not None:
        resource["verificationStatus"] = _concept(CONDITION_VERIFICATION, verification)
    dates = fhir_date(before_as_of=before_as_of)
    _maybe(draw, "onsetDateTime", dates, resource)
    if status in ("resolved", "inactive"):
        _maybe(draw, "abatementDateTime", dates, resource)
    _maybe(draw, "recordedDate", dates, resource)
    return resource


QUANTITY_UNITS = ("mg/dL", "umol/L", "%", "g/L", "g/(24.h)", "mmol/L", "mg/mmol")
TITERS = (20, 40, 80, 160, 320, 640, 1280)
CODED_VALUES = (
    "10828004",  # Positive
    "52101004",  # Present
    "260373001",  # Detected
    "260385009",  # Negative
    "2667000",  # Absent
    "77176002",  # Smoker
    "77386006",  # Pregnant
    "8517006",  # Ex-smoker (no answer set has it)
)


@st.composite
def observation_values(draw: st.DrawFn) -> dict[str, Any]:
    shape = draw(st.sampled_from(["quantity", "quantity", "titer-string", "titer-ratio", "coded", "word"]))
    if shape == "quantity":
        unit = draw(st.sampled_from(QUANTITY_UNITS))
        value = draw(st.integers(min_value=0, max_value=80000)) / 100
        quantity: dict[str, Any] = {"value": value, "unit": unit, "system": UCUM, "code": unit}
        _maybe(draw, "comparator", st.sampled_from(["<", ">"]), quantity)
        return {"valueQuantity": quantity}
    if shape == "titer-string":
        return {"valueString": f"1:{draw(st.sampled_from(TITERS))}"}
    if shape == "titer-ratio":
        return {
            "valueRatio": {"numerator": {"value": 1}, "denominator": {"value": draw(st.sampled_from(TITERS))}}
        }
    if shape == "coded":
        return {"valueCodeableConcept": _concept(SNOMED, draw(st.sampled_from(CODED_VALUES)))}
    return {"valueString": draw(st.sampled_from(["Positive", "negative", "Not detected", "equivocal"]))}


@st.composite
def observations(draw: st.DrawFn, name: str, before_as_of: bool) -> dict[str, Any]:
    system = draw(st.sampled_from([LOINC, LOINC, LOINC, SNOMED]))  # SNOMED: coded findings
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "status": draw(st.sampled_from(["final", "final", "amended", "preliminary", "registered"])),
        "subject": PATIENT_REF,
        "code": _concept(system, draw(codes(name, system))),
        **draw(observation_values()),
    }
    if draw(st.integers(0, 9)) > 0:  # one in ten is undated
        resource["effectiveDateTime"] = draw(fhir_date(before_as_of=before_as_of))
    if draw(st.booleans()):
        flag = draw(st.sampled_from(["POS", "NEG", "H", "N", "A"]))
        resource["interpretation"] = [_concept(V3_INTERPRETATION, flag)]
    return resource


@st.composite
def medication_requests(draw: st.DrawFn, name: str, before_as_of: bool) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "status": draw(st.sampled_from(["active", "active", "completed", "stopped", "on-hold"])),
        "intent": draw(st.sampled_from(["order", "order", "plan"])),
        "subject": PATIENT_REF,
        "medicationCodeableConcept": _concept(RXNORM, draw(codes(name, RXNORM))),
    }
    if draw(st.integers(0, 5)) == 0:  # a vaccine order: a planned dose for immunization rules
        resource["medicationCodeableConcept"] = _concept(CVX, draw(codes(name, CVX)))
    _maybe(draw, "authoredOn", fhir_date(before_as_of=before_as_of), resource)
    if draw(st.booleans()):
        dose = (
            {"value": draw(st.integers(1, 4)), "unit": "tablet"}
            if draw(st.booleans())
            else {"value": draw(st.integers(5, 1000)), "unit": "mg", "system": UCUM, "code": "mg"}
        )
        frequency = draw(st.integers(1, 3))
        resource["dosageInstruction"] = [
            {
                "timing": {"repeat": {"frequency": frequency, "period": 1, "periodUnit": "d"}},
                "doseAndRate": [{"doseQuantity": dose}],
            }
        ]
    return resource


@st.composite
def procedures(draw: st.DrawFn, name: str, before_as_of: bool) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Procedure",
        "status": draw(st.sampled_from(["completed", "completed", "in-progress", "not-done"])),
        "subject": PATIENT_REF,
        "code": _concept(SNOMED, draw(codes(name, SNOMED))),
    }
    if draw(st.booleans()):
        resource["category"] = _concept(SNOMED, "387713003")  # Surgical procedure
    _maybe(draw, "performedDateTime", fhir_date(before_as_of=before_as_of), resource)
    return resource


@st.composite
def immunizations(draw: st.DrawFn, name: str, before_as_of: bool) -> dict[str, Any]:
    return {
        "resourceType": "Immunization",
        "status": draw(st.sampled_from(["completed", "completed", "not-done"])),
        "patient": PATIENT_REF,
        "vaccineCode": _concept(CVX, draw(codes(name, CVX))),
        "occurrenceDateTime": draw(fhir_date(before_as_of=before_as_of)),
    }


def clinical_resources(name: str, *, before_as_of: bool = False) -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(
        conditions(name, before_as_of),
        observations(name, before_as_of),
        medication_requests(name, before_as_of),
        procedures(name, before_as_of),
        immunizations(name, before_as_of),
    )


@st.composite
def patients(draw: st.DrawFn) -> dict[str, Any]:
    age = draw(st.one_of(st.integers(18, 79), st.integers(10, 95)))
    born = AS_OF - timedelta(days=365 * age + draw(st.integers(0, 364)))
    birth = str(born.year) if draw(st.integers(0, 9)) == 0 else born.isoformat()
    return {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": birth}


def with_ids(resources: list[dict[str, Any]], prefix: str = "r") -> list[dict[str, Any]]:
    """Give each resource a unique id (a record keeps only the first of two same Type/id)."""
    return [{**resource, "id": f"{prefix}{index}"} for index, resource in enumerate(resources)]


def core(name: str) -> list[dict[str, Any]]:
    """Data meeting the trial's inclusions (all dated before AS_OF), so that generated records
    reach every trial status, not only not-eligible."""
    if name == TEST_ALL:
        return [
            _condition(ICD10CM, "E11.9", onset_days_ago=4000),
            _lab("4548-4", _quantity(7.4, "%"), days_ago=60),
            _lab("14682-9", _quantity(90, "umol/L"), days_ago=30),
            _medication("861007", days_ago=500, per_day=2),
        ]
    return [
        _condition(SNOMED, "55464009", onset_days_ago=2000),
        _lab("5048-4", {"valueString": "1:320"}, days_ago=400),
        _medication("979092", days_ago=500, per_day=2),
        _lab("2160-0", _quantity(0.8, "mg/dL"), days_ago=20),
        _lab("2458-8", _quantity(200, "mg/dL"), days_ago=200),
    ]


@st.composite
def records(draw: st.DrawFn, name: str, *, before_as_of: bool = False) -> list[dict[str, Any]]:
    """A patient's resources, Patient first: what build_record takes. Half of them start from
    core(name), the data of a likely-eligible patient, then get random data on top."""
    resources = draw(st.lists(clinical_resources(name, before_as_of=before_as_of), max_size=12))
    base = with_ids(core(name), prefix="core") if draw(st.booleans()) else []
    return [draw(patients()), *base, *with_ids(resources)]


def report_of(name: str, resources: list[dict[str, Any]]) -> EligibilityReport:
    return evaluate(catalog_named(name), build_record(resources), as_of=AS_OF)


def decisions(report: EligibilityReport) -> dict[str, Any]:
    """Per trial, the status and every criterion's result (not reasons nor evidence)."""
    return {
        t.trial: {"status": t.status, "criteria": {c.id: c.result for c in t.criteria}} for t in report.trials
    }


# ---------------------------------------------------------------------------------------------
# Data that makes one exclusion met whatever else the record holds (dated on AS_OF or shortly before,
# so that it is the latest result when the rest of the record is dated before AS_OF).


def _day(days_before: int) -> str:
    return (AS_OF - timedelta(days=days_before)).isoformat()


def _condition(system: str, code: str, *, onset_days_ago: int = 30) -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "subject": PATIENT_REF,
        "clinicalStatus": _concept(CONDITION_CLINICAL, "active"),
        "code": _concept(system, code),
        "onsetDateTime": _day(onset_days_ago),
    }


def _lab(code: str, value: dict[str, Any], *, days_ago: int = 0) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "subject": PATIENT_REF,
        "code": _concept(LOINC, code),
        "effectiveDateTime": _day(days_ago),
        **value,
    }


def _quantity(value: float, unit: str) -> dict[str, Any]:
    return {"valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit}}


def _medication(code: str, *, days_ago: int, tablets: int = 1, per_day: int = 1) -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "status": "active",
        "intent": "order",
        "subject": PATIENT_REF,
        "medicationCodeableConcept": _concept(RXNORM, code),
        "authoredOn": _day(days_ago),
        "dosageInstruction": [
            {
                "timing": {"repeat": {"frequency": per_day, "period": 1, "periodUnit": "d"}},
                "doseAndRate": [{"doseQuantity": {"value": tablets, "unit": "tablet"}}],
            }
        ],
    }


def _procedure(code: str, *, days_ago: int, surgical: bool = False) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Procedure",
        "status": "completed",
        "subject": PATIENT_REF,
        "code": _concept(SNOMED, code),
        "performedDateTime": _day(days_ago),
    }
    if surgical:
        resource["category"] = _concept(SNOMED, "387713003")
    return resource


def _vaccine(code: str, *, days_ago: int) -> dict[str, Any]:
    return {
        "resourceType": "Immunization",
        "status": "completed",
        "patient": PATIENT_REF,
        "vaccineCode": _concept(CVX, code),
        "occurrenceDateTime": _day(days_ago),
    }


def _allergy(concept: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "AllergyIntolerance",
        "patient": PATIENT_REF,
        "criticality": "high",
        "code": concept,
    }


EXCLUSION_TRIGGERS: dict[str, dict[str, Callable[[], dict[str, Any]]]] = {
    TEST_ALL: {
        "cancer": lambda: _condition(ICD10CM, "C50.912", onset_days_ago=400),
        "kidney": lambda: _lab("2160-0", _quantity(3.4, "mg/dL"), days_ago=3),
        "ana-positive": lambda: _lab("5048-4", {"valueString": "1:640"}),
        "smoker": lambda: _lab("72166-2", {"valueCodeableConcept": _concept(SNOMED, "77176002")}),
        "metformin-high-dose": lambda: _medication("861007", days_ago=30, tablets=2, per_day=2),
        "new-metformin": lambda: _medication("6809", days_ago=3),
        "surgery": lambda: _procedure("38102005", days_ago=5, surgical=True),  # cholecystectomy
        "appendectomy-ever": lambda: _procedure("80146002", days_ago=900),
        "live-flu-vaccine": lambda: _vaccine("111", days_ago=7),
        "penicillin-allergy": lambda: _allergy(_concept(RXNORM, "7980")),
    },
    NCT: {
        "severe-lupus-nephritis": lambda: _lab("14682-9", _quantity(400, "umol/L"), days_ago=10),
        "cns-disorder": lambda: _condition(SNOMED, "84757009"),
        "transplant-history": lambda: _procedure("70536003", days_ago=2000),
        "iga-deficiency": lambda: _condition(ICD10CM, "D80.2", onset_days_ago=3000),
        "live-vaccine": lambda: _vaccine("03", days_ago=10),
        "severe-allergy": lambda: _allergy({"text": "Polysorbate 80"}),
        "substance-abuse": lambda: _condition(ICD10CM, "F10.20"),
        "recent-surgery": lambda: _procedure("38102005", days_ago=5, surgical=True),
        "cardiovascular": lambda: _condition(SNOMED, "22298006", onset_days_ago=60),
        "malignancy": lambda: _condition(SNOMED, "363346000", onset_days_ago=700),
        "pregnancy-breastfeeding": lambda: _lab(
            "2106-3", {"valueCodeableConcept": _concept(SNOMED, "10828004")}
        ),
        "infection-serology": lambda: _condition(ICD10CM, "B20", onset_days_ago=1500),
        "tuberculosis": lambda: _condition(ICD10CM, "Z22.7", onset_days_ago=1500),
    },
}


def withdrawn(resource: dict[str, Any], how: str) -> dict[str, Any]:
    """The same data, withdrawn: entered-in-error, or refuted (Conditions and allergies only)."""
    if resource["resourceType"] in ("Condition", "AllergyIntolerance"):
        system = CONDITION_VERIFICATION if resource["resourceType"] == "Condition" else ALLERGY_VERIFICATION
        result = {**resource, "verificationStatus": _concept(system, how)}
        if how == "entered-in-error":  # FHIR: no clinicalStatus on an entered-in-error record
            result.pop("clinicalStatus", None)
        return result
    return {**resource, "status": "entered-in-error"}


@st.composite
def withdrawn_resources(draw: st.DrawFn, name: str) -> list[dict[str, Any]]:
    """1-4 entered-in-error / refuted resources, many of them data that would otherwise decide."""
    potent = st.sampled_from(sorted(EXCLUSION_TRIGGERS[name])).map(
        lambda cid: EXCLUSION_TRIGGERS[name][cid]()
    )
    chosen = draw(st.lists(st.one_of(potent, clinical_resources(name)), min_size=1, max_size=4))
    result = []
    for resource in chosen:
        refutable = resource["resourceType"] in ("Condition", "AllergyIntolerance")
        how = draw(st.sampled_from(["entered-in-error", "refuted"])) if refutable else "entered-in-error"
        result.append(withdrawn(resource, how))
    return with_ids(result, prefix="withdrawn")


# ---------------------------------------------------------------------------------------------
# Properties over whole records


@pytest.mark.parametrize("name", CATALOGS)
@FAST
@given(data=st.data())
def test_withdrawn_data_changes_nothing(name: str, data: st.DataObject) -> None:
    """Adding entered-in-error data (a Condition or AllergyIntolerance whose verificationStatus is
    entered-in-error, an Observation / MedicationRequest / Procedure / Immunization whose status is
    entered-in-error) or a refuted Condition / AllergyIntolerance changes no criterion result and no
    trial status; in fact the whole report (reasons and evidence included) stays the same, even when
    the withdrawn data would have met an exclusion had it counted."""
    resources = data.draw(records(name), label="record")
    extra = data.draw(withdrawn_resources(name), label="withdrawn")
    before = report_of(name, resources)
    after = report_of(name, [*resources, *extra])
    assert decisions(after) == decisions(before)
    assert after.to_json_dict() == before.to_json_dict()


@pytest.mark.parametrize("name", CATALOGS)
@FAST
@given(data=st.data())
def test_resource_order_does_not_matter(name: str, data: st.DataObject) -> None:
    """The report (statuses, results, reasons, evidence and its order: the full to_json_dict())
    is the same whatever order the record's resources come in."""
    resources = data.draw(records(name), label="record")
    shuffled = data.draw(st.permutations(resources), label="shuffled")
    assert report_of(name, shuffled).to_json_dict() == report_of(name, resources).to_json_dict()


# 1 mg/dL creatinine = 10 mg/L / 113.12 g/mol = 88.40 µmol/L (the trial specification's factor).
CREATININE_UMOL_PER_MG_DL = 10_000 / 113.12
# Generated values stay at least this far from the criterion's limit, so that rounding the converted
# value (to 0.01 µmol/L, i.e. ~0.0001 mg/dL) can never move a value across the limit: the property is
# about unit handling, not about which side of the limit a rounding error lands on.
CREATININE_MARGIN_MG_DL = 0.01
IGA_MARGIN_MG_DL = 0.05


def test_creatinine_factor_is_the_specifications() -> None:
    """The engine's UCUM + molar-mass bridge gives 1 mg/dL = 88.4 µmol/L for creatinine."""
    factor = convert(1.0, from_unit="mg/dL", to_unit="umol/L", molar_mass="113.12 g/mol")
    assert factor == pytest.approx(88.4017, abs=1e-4)
    assert convert(1.0, from_unit="g/L", to_unit="mg/dL") == pytest.approx(100.0)


@pytest.mark.parametrize("name", CATALOGS)
@FAST
@given(data=st.data())
def test_creatinine_in_mg_dl_or_umol_l_decides_the_same(name: str, data: st.DataObject) -> None:
    """A creatinine result in mg/dL, or the same amount in µmol/L (× 88.4, molar mass 113.12
    g/mol), gives the same result for every criterion and the same trial status. Values are kept
    at least CREATININE_MARGIN_MG_DL away from the criterion's limit (exactly-at-limit values are
    pinned by the test vectors, not here)."""
    threshold = threshold_of(name, "creatinine")
    assert threshold is not None and threshold.unit == "mg/dL", "the catalog's creatinine rule moved"
    mg_dl = data.draw(st.integers(min_value=5, max_value=1500), label="centi-mg/dL") / 100
    if abs(mg_dl - threshold.value) < CREATININE_MARGIN_MG_DL:
        mg_dl = threshold.value + data.draw(st.sampled_from([-1, 1])) * 2 * CREATININE_MARGIN_MG_DL
    umol_l = round(mg_dl * CREATININE_UMOL_PER_MG_DL, 2)
    days_ago = data.draw(st.integers(min_value=0, max_value=50), label="days ago")
    resources = data.draw(records(name), label="record")
    mass = with_ids([_lab("2160-0", _quantity(mg_dl, "mg/dL"), days_ago=days_ago)], prefix="cr")
    molar = with_ids([_lab("14682-9", _quantity(umol_l, "umol/L"), days_ago=days_ago)], prefix="cr")
    assert decisions(report_of(name, [*resources, *molar])) == decisions(report_of(name, [*resources, *mass]))


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(
            NCT, id=NCT, marks=pytest.mark.skipif(PACKAGED_PROBLEM is not None, reason=PACKAGED_PROBLEM or "")
        )
    ],
)
@FAST
@given(data=st.data())
def test_iga_in_g_l_or_mg_dl_decides_the_same(name: str, data: st.DataObject) -> None:
    """A serum IgA result in mg/dL, or the same amount in g/L (÷ 100), gives the same result for
    every criterion and the same trial status; values stay IGA_MARGIN_MG_DL away from the limit."""
    threshold = threshold_of(name, "iga")
    assert threshold is not None and threshold.unit == "mg/dL", "the catalog's IgA rule moved"
    mg_dl = data.draw(st.integers(min_value=10, max_value=8000), label="centi-mg/dL") / 100
    if abs(mg_dl - threshold.value) < IGA_MARGIN_MG_DL:
        mg_dl = threshold.value + data.draw(st.sampled_from([-1, 1])) * 2 * IGA_MARGIN_MG_DL
    days_ago = data.draw(st.integers(min_value=0, max_value=2000), label="days ago")
    resources = data.draw(records(name), label="record")
    in_mg_dl = with_ids([_lab("2458-8", _quantity(mg_dl, "mg/dL"), days_ago=days_ago)], prefix="iga")
    in_g_l = with_ids(
        [_lab("2458-8", _quantity(round(mg_dl / 100, 6), "g/L"), days_ago=days_ago)], prefix="iga"
    )
    assert decisions(report_of(name, [*resources, *in_g_l])) == decisions(
        report_of(name, [*resources, *in_mg_dl])
    )


@pytest.mark.parametrize("name", CATALOGS)
@FAST
@given(data=st.data())
def test_a_met_exclusion_makes_and_keeps_the_patient_not_eligible(name: str, data: st.DataObject) -> None:
    """Adding data that makes an exclusion met (a recent malignancy, a high creatinine, a live
    vaccine, ...; the rest of the record dated before the evaluation day) makes that exclusion met
    and the trial not-eligible; in particular a record that was not-eligible stays not-eligible.
    And whenever any exclusion is met, the trial is not-eligible."""
    triggers = EXCLUSION_TRIGGERS[name]
    trial_id = name  # each parametrization is named after its trial
    trial = catalog_named(name).trial(trial_id)
    assert set(triggers) <= {c.id for c in trial.criteria if c.kind == "exclusion"}
    criterion_id = data.draw(st.sampled_from(sorted(triggers)), label="exclusion")
    resources = data.draw(records(name, before_as_of=True), label="record")
    added = with_ids([triggers[criterion_id]()], prefix="trigger")

    before = report_of(name, resources).trials
    after = report_of(name, [*resources, *added]).trials
    by_trial = {t.trial: t for t in after}
    assert by_trial[trial_id].criterion(criterion_id).result == "met", by_trial[trial_id].criterion(
        criterion_id
    )
    assert by_trial[trial_id].status == "not-eligible"
    for old in before:
        if old.status == "not-eligible" and old.trial == trial_id:
            assert by_trial[old.trial].status == "not-eligible"
    for result in [*before, *after]:
        if any(c.kind == "exclusion" and c.result == "met" for c in result.criteria):
            assert result.status == "not-eligible", result


# ---------------------------------------------------------------------------------------------
# Kleene three-valued logic

MET, NOT_MET, UNKNOWN = "met", "not-met", "unknown"
VALUES = (MET, NOT_MET, UNKNOWN)
# Kleene's strong three-valued logic, written out (not derived) so that it is the specification.
KLEENE_OR = {
    (MET, MET): MET, (MET, UNKNOWN): MET, (MET, NOT_MET): MET,
    (UNKNOWN, MET): MET, (UNKNOWN, UNKNOWN): UNKNOWN, (UNKNOWN, NOT_MET): UNKNOWN,
    (NOT_MET, MET): MET, (NOT_MET, UNKNOWN): UNKNOWN, (NOT_MET, NOT_MET): NOT_MET,
}  # fmt: skip
KLEENE_AND = {
    (MET, MET): MET, (MET, UNKNOWN): UNKNOWN, (MET, NOT_MET): NOT_MET,
    (UNKNOWN, MET): UNKNOWN, (UNKNOWN, UNKNOWN): UNKNOWN, (UNKNOWN, NOT_MET): NOT_MET,
    (NOT_MET, MET): NOT_MET, (NOT_MET, UNKNOWN): NOT_MET, (NOT_MET, NOT_MET): NOT_MET,
}  # fmt: skip
KLEENE_NOT = {MET: NOT_MET, NOT_MET: MET, UNKNOWN: UNKNOWN}


def _fold(table: dict[tuple[str, str], str], values: list[str]) -> str:
    result = values[0]
    for value in values[1:]:
        result = table[(result, value)]
    return result


@FAST
@given(
    mode=st.sampled_from(["any", "all"]),
    results=st.lists(st.sampled_from(VALUES), min_size=1, max_size=6),
)
def test_combine_follows_the_kleene_truth_table(mode: str, results: list[str]) -> None:
    """``any`` / ``all`` of n results is the left fold of Kleene's OR / AND table, and the
    explanation (reason, evidence) comes only from children that have the combined result."""
    children = [
        Outcome(value, f"child {i} is {value}", (Evidence(reference=f"Observation/{i}"),))  # type: ignore[arg-type]
        for i, value in enumerate(results)
    ]
    combined = combine(mode, children)
    assert combined.result == _fold(KLEENE_OR if mode == "any" else KLEENE_AND, results)
    deciding = [c for c in children if c.result == combined.result]
    assert deciding, "the result must be explained by at least one child"
    assert set(combined.evidence) == {e for c in deciding for e in c.evidence}
    assert all(part in {c.reason for c in deciding} for part in combined.reason.split("; "))


# Leaves with a known result on any record holding only a Patient born 1980-01-01.
LEAF_RULES: dict[str, dict[str, Any]] = {
    MET: {"age": {"min": 0}},
    NOT_MET: {"condition": {"valueset": "diabetes", "when": "ever", "if_absent": "not-met"}},
    UNKNOWN: {"condition": {"valueset": "diabetes", "when": "ever", "if_absent": "unknown"}},
}


def _rule_trees(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    lists = st.lists(children, min_size=1, max_size=4)
    return st.one_of(
        lists.map(lambda items: ("any", items)),
        lists.map(lambda items: ("all", items)),
        children.map(lambda item: ("not", item)),
    )


RULE_TREES = st.recursive(st.sampled_from(VALUES), _rule_trees, max_leaves=10)


def _as_rule(tree: Any) -> dict[str, Any]:
    if isinstance(tree, str):
        return LEAF_RULES[tree]
    op, inner = tree
    return {"not": _as_rule(inner)} if op == "not" else {op: [_as_rule(child) for child in inner]}


def _expected(tree: Any) -> str:
    if isinstance(tree, str):
        return tree
    op, inner = tree
    if op == "not":
        return KLEENE_NOT[_expected(inner)]
    return _fold(KLEENE_OR if op == "any" else KLEENE_AND, [_expected(child) for child in inner])


@cache
def _bare_context() -> Context:
    record = build_record([{"resourceType": "Patient", "id": "p1", "birthDate": "1980-01-01"}])
    return Context(record=record, catalog=all_constructs_catalog(), as_of=AS_OF)


def test_leaf_rules_have_the_results_the_tree_test_assumes() -> None:
    """The three leaves of the rule-tree property really are met / not-met / unknown."""
    for wanted, rule in LEAF_RULES.items():
        assert evaluate_rule(parse_rule(rule), _bare_context()).result == wanted


@FAST
@given(tree=RULE_TREES)
def test_nested_any_all_not_follow_kleene_logic(tree: Any) -> None:
    """Any nesting of ``any`` / ``all`` / ``not`` rules over met / not-met / unknown leaves evaluates
    as Kleene's strong three-valued logic (not(unknown) is unknown; unknown OR met is met; unknown
    AND not-met is not-met)."""
    rule = parse_rule(_as_rule(tree))
    assert evaluate_rule(rule, _bare_context()).result == _expected(tree)


# ---------------------------------------------------------------------------------------------
# Engine bugs the properties led to, pinned as minimal records (both fixed).


def _creatinine(resource_id: str, when: str, mg_dl: float) -> dict[str, Any]:
    return {**_lab("2160-0", _quantity(mg_dl, "mg/dL")), "id": resource_id, "effectiveDateTime": when}


def test_lab_result_with_a_partial_date_at_the_window_edge_cannot_decide() -> None:
    """Creatinine 3 mg/dL dated "2026-04" on 2026-06-01: the 8-week window starts 2026-04-06, so the
    result may or may not be inside it; the exclusion cannot be met on it, only unknown."""
    patient = {"resourceType": "Patient", "id": "p1", "birthDate": "1970-06-01"}
    report = report_of(TEST_ALL, [patient, _creatinine("cr", "2026-04", 3.0)])
    assert report.trials[0].criterion("kidney").result == "unknown"


def test_planned_vaccine_reason_does_not_depend_on_resource_order() -> None:
    """Two active orders for the same live vaccine, displayed differently: the reason (and so the
    report) must not depend on which comes first in the Bundle."""

    def order(resource_id: str, display: str) -> dict[str, Any]:
        coding = {"system": CVX, "code": "111", "display": display}
        return {
            "resourceType": "MedicationRequest",
            "id": resource_id,
            "status": "active",
            "intent": "order",
            "subject": PATIENT_REF,
            "medicationCodeableConcept": {"coding": [coding]},
        }

    patient = {"resourceType": "Patient", "id": "p1", "birthDate": "1970-06-01"}
    first, second = order("a", "FluMist"), order("b", "LAIV intranasal")
    one = report_of(TEST_ALL, [patient, first, second]).to_json_dict()
    other = report_of(TEST_ALL, [patient, second, first]).to_json_dict()
    assert one == other
