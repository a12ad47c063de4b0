"""Measures the engine computes from the record, every input shown as evidence.

- **eGFR, CKD-EPI 2021 creatinine equation (race-free)** — Inker LA et al., "New Creatinine- and
  Cystatin C-Based Equations to Estimate GFR without Race", N Engl J Med 2021;385:1737-49:
  eGFR = 142 × min(Scr/κ, 1)^α × max(Scr/κ, 1)^-1.200 × 0.9938^age × 1.012 [female],
  κ = 0.7 (female) / 0.9 (male), α = -0.241 (female) / -0.302 (male); Scr in mg/dL, age in years,
  mL/min/1.73 m². Defined for adults (≥ 18).
- **Body-mass index** — weight (kg) / height (m)², kg/m² (WHO).
- **Creatinine clearance, Cockcroft–Gault** — Cockcroft DW, Gault MH, "Prediction of creatinine
  clearance from serum creatinine", Nephron 1976;16:31-41: CrCl = (140 - age) × weight (kg) /
  (72 × Scr mg/dL), × 0.85 if female; mL/min (actual body weight, as the original).

An input that is missing, outside its window, on a day whose results disagree, reported with a
comparator ("<0.5"), or in a unit that cannot be converted makes the measure ``unknown``, saying
which input and why. Sex comes from Patient.gender: ``other``/``unknown`` cannot choose the
equation's coefficients, so the measure is unknown.
"""

from __future__ import annotations

from dataclasses import dataclass

from cds_service.engine.context import Context
from cds_service.engine.facts import Finding, evidence
from cds_service.engine.labs import Item, Reading, compare, latest_items
from cds_service.engine.model import MEASURE_UNITS, ComputedRule, MeasureInput
from cds_service.engine.readings import Value
from cds_service.engine.report import Evidence
from cds_service.engine.time import age_on, day_range, place
from cds_service.engine.units import convert, format_number

CREATININE_MOLAR_MASS = "113.12 g/mol"
_INPUT_UNITS = {"creatinine": "mg/dL", "weight": "kg", "height": "m"}
_NAMES = {
    "egfr-ckd-epi-2021": "eGFR (CKD-EPI 2021)",
    "bmi": "BMI",
    "crcl-cockcroft-gault": "CrCl (Cockcroft–Gault)",
}
_OPS = {">": "above", ">=": "at or above", "<": "below", "<=": "at or below"}


class Missing(Exception):
    """An input the measure cannot be computed without; the message says which and why."""

    def __init__(self, message: str, proofs: tuple[Evidence, ...] = ()) -> None:
        super().__init__(message)
        self.proofs = proofs


@dataclass(frozen=True)
class Input:
    value: float  # in _INPUT_UNITS
    shown: str
    proof: Evidence


def evaluate_computed(rule: ComputedRule, ctx: Context) -> Finding:
    try:
        inputs = {
            n: _input(n, getattr(rule, n), ctx)
            for n in ("creatinine", "weight", "height")
            if getattr(rule, n)
        }
        values, patient_text, patient_proof = _compute(rule, inputs, ctx)
    except Missing as exc:
        reason = f"{_NAMES[rule.measure]} cannot be computed: {exc}"
        return Finding("undetermined" if exc.proofs else "absent", reason, exc.proofs)
    proofs = (*(i.proof for i in inputs.values()), *patient_proof)
    threshold = rule.threshold
    unit = threshold.unit or MEASURE_UNITS[rule.measure]
    reported = sorted({round(v, _DECIMALS[rule.measure]) for v in values})  # as a lab would report it
    shown = " to ".join(format_number(v) for v in reported)
    from_text = ", ".join(f"{n} {i.shown}" for n, i in inputs.items())
    what = f"{_NAMES[rule.measure]} {shown} {_unit_text(rule.measure)} (from {from_text}{patient_text})"
    verdicts = set()
    for value in reported:
        converted = convert(value, from_unit=MEASURE_UNITS[rule.measure], to_unit=unit)
        assert converted is not None  # the model checked the threshold's unit at load
        verdicts.add(compare(converted, None, threshold.op, threshold.value))
    limit = f"{format_number(threshold.value)} {_UNIT_SHOWN.get(unit, unit)}"
    if len(verdicts) > 1:
        return Finding("undetermined", f"{what}: birth date too imprecise to tell", proofs)
    verdict = verdicts.pop()
    if verdict == "meets":
        return Finding("found", f"{what} is {_OPS[threshold.op]} {limit}", proofs)
    return Finding("against", f"{what} is not {_OPS[threshold.op]} {limit}", proofs)


# Reported as labs report them (eGFR and clearance in whole mL/min, BMI to one decimal), and
# compared as reported, so that the figure a clinician reads is the figure that decided.
_DECIMALS = {"egfr-ckd-epi-2021": 0, "bmi": 1, "crcl-cockcroft-gault": 0}
_UNIT_SHOWN = {"mL/min/{1.73_m2}": "mL/min/1.73 m²", "kg/m2": "kg/m²"}


def _unit_text(measure: str) -> str:
    return {"egfr-ckd-epi-2021": "mL/min/1.73 m²", "bmi": "kg/m²", "crcl-cockcroft-gault": "mL/min"}[measure]


def _input(name: str, spec: MeasureInput, ctx: Context) -> Input:
    """The latest result of the input's value set in its window, in the unit the formula needs."""
    valueset = ctx.valueset(spec.valueset)
    start = spec.window.start(ctx.as_of) if spec.window else None
    dated = [  # newest first: only the newest readable day decides
        (resource, part, when)
        for resource, part, when in ctx.results(spec.valueset).dated
        if place(when.day, start=start, end=ctx.as_of) != "outside"
    ]
    items: list[Item] = []
    values: dict[int, Value] = {}
    for resource, part, when in dated:
        if items and when.day.last < items[0].when.day.last:
            break
        value = ctx.value(part)
        if not value.absent:
            item = Item(resource, when, Reading("meets", value.shown))
            items.append(item)
            values[id(item)] = value
    scope = valueset.title + (f" in the last {spec.window}" if spec.window else "")
    if not items:
        raise Missing(f"no {scope}")
    latest = latest_items(items)
    proofs = tuple(evidence(i.resource, value=i.reading.shown, day=i.when) for i in latest)
    if place(latest[0].when.day, start=start, end=ctx.as_of) == "unsure":
        raise Missing(f"{valueset.title} dated {latest[0].when}, too imprecise for the window", proofs)
    converted = {_convert(name, values[id(i)], i, valueset.title) for i in latest}
    if len(converted) > 1:
        raise Missing(f"{valueset.title} results on {latest[0].when} disagree", proofs)
    shown = f"{latest[0].reading.shown} on {latest[0].when}"
    return Input(value=converted.pop(), shown=shown, proof=proofs[0])


def _convert(name: str, value: Value, item: Item, title: str) -> float:
    proof = (evidence(item.resource, value=value.shown, day=item.when),)
    if value.number is None:
        raise Missing(f"{title} {value.shown} on {item.when} is not a number", proof)
    if value.comparator is not None:
        raise Missing(f"{title} {value.shown} on {item.when} is a bound, not a value", proof)
    molar = CREATININE_MOLAR_MASS if name == "creatinine" else None
    converted = convert(
        value.number, from_unit=value.unit or "1", to_unit=_INPUT_UNITS[name], molar_mass=molar
    )
    if converted is None or converted <= 0:
        raise Missing(f"{title} unit {value.unit!r} cannot be converted to {_INPUT_UNITS[name]}", proof)
    return converted


def _compute(
    rule: ComputedRule, inputs: dict[str, Input], ctx: Context
) -> tuple[list[float], str, tuple[Evidence, ...]]:
    if rule.measure == "bmi":
        return [inputs["weight"].value / inputs["height"].value ** 2], "", ()
    patient = ctx.record.patient
    born = day_range(patient.get("birthDate"))
    gender = patient.get("gender")
    if born is None:
        raise Missing("no birth date recorded (the equation needs age)")
    if gender not in ("female", "male"):
        raise Missing("sex not recorded as female or male (the equation needs it)")
    ages = sorted({age_on(born.last, ctx.as_of), age_on(born.first, ctx.as_of)})
    proof = (evidence(patient, value=f"born {born}, {gender}", day=born),)
    female = gender == "female"
    creatinine = inputs["creatinine"].value
    if rule.measure == "egfr-ckd-epi-2021":
        if ages[0] < 18:
            raise Missing(f"age {ages[0]}: CKD-EPI 2021 is for adults", proof)
        values = [ckd_epi_2021(creatinine, age=a, female=female) for a in ages]
    else:
        values = [
            cockcroft_gault(creatinine, age=a, weight_kg=inputs["weight"].value, female=female) for a in ages
        ]
    age_text = "-".join(str(a) for a in ages)
    return values, f", age {age_text}, {gender}", proof


def ckd_epi_2021(creatinine_mg_dl: float, *, age: int, female: bool) -> float:
    """CKD-EPI 2021 creatinine equation (Inker 2021), mL/min/1.73 m²."""
    kappa, alpha = (0.7, -0.241) if female else (0.9, -0.302)
    ratio = creatinine_mg_dl / kappa
    value: float = 142 * min(ratio, 1.0) ** alpha * max(ratio, 1.0) ** -1.200 * 0.9938**age
    return value * 1.012 if female else value


def cockcroft_gault(creatinine_mg_dl: float, *, age: int, weight_kg: float, female: bool) -> float:
    """Cockcroft–Gault creatinine clearance (1976), mL/min."""
    value = (140 - age) * weight_kg / (72 * creatinine_mg_dl)
    return value * 0.85 if female else value
