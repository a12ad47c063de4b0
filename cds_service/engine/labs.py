"""Laboratory criteria: thresholds in UCUM units, positive findings, titers, coded answers.

Each result is read into a small verdict (meets / does not meet / cannot tell, with the value as
a clinician would write it); then ``pick`` decides which results count: the latest (ties on the
same day that disagree cannot decide), or any.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from cds_service.codes import SNOMED, UCUM, V3_INTERPRETATION
from cds_service.engine.context import Context
from cds_service.engine.facts import (
    Finding,
    candidates,
    evidence,
    observation_day,
    plural,
    status_counts,
)
from cds_service.engine.model import LabRule, Threshold
from cds_service.engine.time import DayRange, place
from cds_service.engine.units import convert, format_number
from cds_service.record import Resource, codings

Verdict = Literal["meets", "fails", "unsure"]

POSITIVE_VALUES = frozenset({"10828004", "52101004", "260373001"})
NEGATIVE_VALUES = frozenset({"260385009", "2667000", "260415000"})
# v3 ObservationInterpretation, its v2 table 0078 ancestor, and codes sent with no system at all.
_FLAG_SYSTEMS = frozenset({V3_INTERPRETATION, "http://terminology.hl7.org/CodeSystem/v2-0078", None})
POSITIVE_FLAGS = frozenset({"POS", "DET", "A", "H", "HH"})
NEGATIVE_FLAGS = frozenset({"NEG", "ND", "N"})
_TITER = re.compile(r"^\s*1\s*:\s*(\d+(?:\.\d+)?)\s*$")
_WORDS = {
    "positive": "meets",
    "detected": "meets",
    "reactive": "meets",
    "present": "meets",
    "negative": "fails",
    "not detected": "fails",
    "non-reactive": "fails",
    "nonreactive": "fails",
    "absent": "fails",
}
_OPS = {">": "above", ">=": "at or above", "<": "below", "<=": "at or below"}


@dataclass(frozen=True)
class Reading:
    verdict: Verdict
    shown: str  # the value as read, e.g. "2.7 mg/dL", "1:320", "Positive"
    why: str = ""  # for unsure readings: what stopped us


def evaluate_lab(rule: LabRule, ctx: Context) -> Finding:
    valueset = ctx.valueset(rule.valueset)
    start = rule.window.start(ctx.as_of) if rule.window else None
    scope = valueset.title + (f" in the last {rule.window}" if rule.window else "")
    readings: list[tuple[Resource, DayRange, Reading]] = []
    undated = 0
    for resource in candidates(ctx.record, valueset, ("Observation",)):
        if not status_counts(resource):
            continue
        day = observation_day(resource)
        if day is None:
            undated += 1
            continue
        where = place(day, start=start, end=ctx.as_of)
        if day.first > ctx.as_of or where == "outside":
            continue
        reading = read_result(resource, rule, ctx)
        if where == "unsure":  # a partial date across the window's edge: it may not belong
            reading = Reading("unsure", reading.shown, f"dated {day}, too imprecise for the window")
        readings.append((resource, day, reading))
    note = f"; {plural(undated, 'result')} without a date not considered" if undated else ""
    if not readings:
        return Finding("absent", f"no {scope}{note}")
    if rule.pick == "any":
        return _decide_any(readings, rule, valueset.title, note)
    return _decide_latest(readings, rule, valueset.title, note)


def _decide_latest(
    readings: list[tuple[Resource, DayRange, Reading]], rule: LabRule, title: str, note: str
) -> Finding:
    last_day = max(day.last for _, day, _ in readings)
    latest = sorted((r for r in readings if r[1].last == last_day), key=lambda r: str(r[0].get("id")))
    proofs = tuple(evidence(res, value=reading.shown, day=day) for res, day, reading in latest)
    verdicts = {reading.verdict for _, _, reading in latest}
    shown = ", ".join(reading.shown for _, _, reading in latest)
    what = f"latest {title} {shown} on {latest[0][1]}"
    if len(verdicts) > 1:
        return Finding("undetermined", f"{what}: results on that day disagree{note}", proofs)
    verdict = verdicts.pop()
    return _finding(verdict, what, latest[0][2], rule, note, proofs)


def _decide_any(
    readings: list[tuple[Resource, DayRange, Reading]], rule: LabRule, title: str, note: str
) -> Finding:
    readings.sort(key=lambda r: (r[1].last, str(r[0].get("id"))), reverse=True)
    for verdict in ("meets", "unsure"):
        chosen = [r for r in readings if r[2].verdict == verdict]
        if chosen:
            _, day, reading = chosen[0]
            more = f" (and {len(chosen) - 1} more)" if len(chosen) > 1 else ""
            what = f"{title} {reading.shown} on {day}{more}"
            proofs = tuple(evidence(r, value=rd.shown, day=d) for r, d, rd in chosen)
            return _finding(verdict, what, reading, rule, note, proofs)
    _, day, reading = readings[0]
    what = f"all {plural(len(readings), title + ' result')}, latest {reading.shown} on {day},"
    proofs = tuple(evidence(r, value=rd.shown, day=d) for r, d, rd in readings)
    return _finding("fails", what, reading, rule, note, proofs)


def _finding(
    verdict: Verdict, what: str, reading: Reading, rule: LabRule, note: str, proofs: tuple[Any, ...]
) -> Finding:
    if verdict == "unsure":
        return Finding("undetermined", f"{what}: {reading.why}{note}", proofs)
    meets = verdict == "meets"
    return Finding("found" if meets else "against", f"{what} {_test_text(rule, meets)}{note}", proofs)


def _test_text(rule: LabRule, meets: bool) -> str:
    if rule.threshold is not None:
        op = _OPS[rule.threshold.op]
        limit = f"{format_number(rule.threshold.value)} {rule.threshold.unit}"
        return f"is {op} {limit}" if meets else f"is not {op} {limit}"
    if rule.finding is not None:
        return "is positive" if meets else "is negative/normal"
    return "is a qualifying answer" if meets else "is not a qualifying answer"


def read_result(resource: Resource, rule: LabRule, ctx: Context) -> Reading:
    if rule.threshold is not None:
        return _read_threshold(resource, rule.threshold, rule.molar_mass)
    if rule.answer is not None:
        answers = ctx.valueset(rule.answer)
        value = resource.get("valueCodeableConcept")
        if not codings(value):
            return Reading("unsure", _shown(resource), "no coded answer")
        meets = answers.matching_coding(codings(value)) is not None
        return Reading("meets" if meets else "fails", _shown(resource))
    return _read_positive(resource, rule.titer_cutoff)


def _quantity(resource: Resource) -> tuple[float, str, str | None] | None:
    quantity = resource.get("valueQuantity")
    if not isinstance(quantity, dict) or not isinstance(quantity.get("value"), int | float):
        return None
    unit = quantity.get("code") if quantity.get("system") == UCUM else None
    unit = unit or quantity.get("unit") or quantity.get("code") or ""
    comparator = quantity.get("comparator")
    return float(quantity["value"]), str(unit), comparator if isinstance(comparator, str) else None


def _read_threshold(resource: Resource, threshold: Threshold, molar_mass: str | None) -> Reading:
    quantity = _quantity(resource)
    if quantity is None:
        return Reading("unsure", _shown(resource), "no numeric value")
    value, unit, comparator = quantity
    shown = f"{comparator or ''}{format_number(value)} {unit}".strip()
    converted = convert(value, from_unit=unit, to_unit=threshold.unit, molar_mass=molar_mass)
    if converted is None:
        return Reading("unsure", shown, f"unit {unit!r} cannot be compared with {threshold.unit}")
    converted = float(f"{converted:.10g}")  # no float noise at the limit
    if converted != value or unit != threshold.unit:
        shown += f" (= {format_number(converted)} {threshold.unit})"
    return Reading(
        _compare(converted, comparator, threshold), shown, "the reported range straddles the limit"
    )


def _compare(value: float, comparator: str | None, threshold: Threshold) -> Verdict:
    """Compare, honouring a result reported as '<5' or '>1000' (a range, not a point)."""
    tests = {
        ">": value > threshold.value,
        ">=": value >= threshold.value,
        "<": value < threshold.value,
        "<=": value <= threshold.value,
    }
    exact = tests[threshold.op]
    if comparator is None:
        return "meets" if exact else "fails"
    upward = threshold.op in (">", ">=")
    if comparator in ("<", "<="):  # the true value lies below the reported one
        sure = value <= threshold.value
        verdict: Verdict = "fails" if upward else "meets"
    else:  # '>' or '>=': the true value lies above it
        sure = value >= threshold.value
        verdict = "meets" if upward else "fails"
    return verdict if sure else "unsure"


def _read_positive(resource: Resource, cutoff: int) -> Reading:
    shown = _shown(resource)
    for coding in codings(resource.get("valueCodeableConcept")):
        if coding.get("system") == SNOMED and coding.get("code") in POSITIVE_VALUES:
            return Reading("meets", shown)
        if coding.get("system") == SNOMED and coding.get("code") in NEGATIVE_VALUES:
            return Reading("fails", shown)
    titer = _titer(resource)
    if titer is not None:
        return Reading("meets" if titer >= cutoff else "fails", shown)
    flags = {
        str(c.get("code"))
        for concept in resource.get("interpretation") or ()
        for c in codings(concept)
        if c.get("system") in _FLAG_SYSTEMS
    }
    if flags & POSITIVE_FLAGS:
        return Reading("meets", shown + " (flagged " + "/".join(sorted(flags)) + ")")
    if flags & NEGATIVE_FLAGS:
        return Reading("fails", shown + " (flagged " + "/".join(sorted(flags)) + ")")
    text = resource.get("valueString")
    if isinstance(text, str) and text.strip().lower() in _WORDS:
        return Reading("meets" if _WORDS[text.strip().lower()] == "meets" else "fails", shown)
    return _against_reference_range(resource, shown)


def _titer(resource: Resource) -> float | None:
    ratio = resource.get("valueRatio")
    if isinstance(ratio, dict):
        num = (ratio.get("numerator") or {}).get("value")
        den = (ratio.get("denominator") or {}).get("value")
        if isinstance(num, int | float) and isinstance(den, int | float) and num > 0:
            return float(den) / float(num)
    text = resource.get("valueString")
    match = _TITER.match(text) if isinstance(text, str) else None
    return float(match.group(1)) if match else None


def _against_reference_range(resource: Resource, shown: str) -> Reading:
    quantity = _quantity(resource)
    if quantity is None:
        return Reading("unsure", shown, "result cannot be read as positive or negative")
    value, unit, _ = quantity
    for ref_range in resource.get("referenceRange") or ():
        high = ref_range.get("high") if isinstance(ref_range, dict) else None
        if isinstance(high, dict) and isinstance(high.get("value"), int | float):
            high_unit = high.get("code") or high.get("unit") or unit
            limit = convert(float(high["value"]), from_unit=str(high_unit), to_unit=unit)
            if limit is None:
                return Reading("unsure", shown, "reference range unit differs from the result's")
            above = value > limit
            return Reading(
                "meets" if above else "fails",
                f"{shown} ({'above' if above else 'within'} reference range ≤ {format_number(limit)})",
            )
    return Reading("unsure", shown, "no reference range or interpretation to judge it by")


def _shown(resource: Resource) -> str:
    quantity = _quantity(resource)
    if quantity is not None:
        value, unit, comparator = quantity
        return f"{comparator or ''}{format_number(value)} {unit}".strip()
    concept = resource.get("valueCodeableConcept")
    for coding in codings(concept):
        if coding.get("display"):
            return str(coding["display"])
    if isinstance(concept, dict) and concept.get("text"):
        return str(concept["text"])
    ratio = _titer(resource)
    if ratio is not None and isinstance(resource.get("valueRatio"), dict):
        return f"1:{format_number(ratio)}"
    for key in ("valueString", "valueBoolean", "valueInteger"):
        if key in resource:
            return str(resource[key])
    return "no value"
