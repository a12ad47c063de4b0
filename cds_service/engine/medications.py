"""Medications by ingredient or clinical drug: active now, in a window, duration, daily dose, span.

Real EHR data codes medications as clinical drugs (RxNorm SCD) more often than as ingredients, so
value sets list both, and a clinical drug's per-unit strength (from the value set) turns "1 tablet
twice a day" into a daily dose.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from cds_service.codes import UCUM
from cds_service.engine.context import Context
from cds_service.engine.facts import (
    Finding,
    concept_label,
    evidence,
    period_end,
    period_start,
    status_counts,
)
from cds_service.engine.model import MedicationRule
from cds_service.engine.time import DayRange, day_range
from cds_service.engine.units import convert, format_number, parse_quantity
from cds_service.engine.valuesets import CompiledValueSet
from cds_service.record import Resource

_PERIOD_DAYS = {"s": 1 / 86400, "min": 1 / 1440, "h": 1 / 24, "d": 1, "wk": 7, "mo": 30, "a": 365}
_DOSE_UNITS = frozenset({"", "1", "{tbl}", "{tablet}", "tablet", "tab", "{capsule}", "capsule"})


@dataclass(frozen=True)
class Course:
    """One medication order or statement reduced to what the rules ask about."""

    resource: Resource
    label: str
    start: DayRange | None
    end: date | None  # None: open-ended (still active) or unknown
    active: bool
    coding: tuple[str, str] | None


def evaluate_medication(rule: MedicationRule, ctx: Context) -> Finding:
    valueset = ctx.valueset(rule.valueset)
    courses = [c for c in _courses(rule, valueset, ctx) if c.start is None or c.start.first <= ctx.as_of]
    title = valueset.title
    if not courses:
        return Finding("absent", f"no {title} {_scope(rule)}")
    qualifying: list[tuple[Course, str]] = []
    unsure: list[tuple[Course, str]] = []
    misses: list[str] = []
    for course in sorted(
        courses, key=lambda c: (c.start.first if c.start else date.min, str(c.resource.get("id")))
    ):
        verdict, detail = _judge(course, rule, valueset, ctx.as_of)
        if verdict == "found":
            qualifying.append((course, detail))
        elif verdict == "unsure":
            unsure.append((course, detail))
        else:
            misses.append(detail)
    if qualifying:
        return _finding("found", qualifying)
    if unsure:
        return _finding("undetermined", unsure)
    return Finding("absent", f"no {title} {_scope(rule)}: " + "; ".join(misses[-3:]))


def _scope(rule: MedicationRule) -> str:
    if rule.when == "active":
        return "active now" + (f" for at least {rule.min_duration}" if rule.min_duration else "")
    verb = "started" if rule.when == "started-within" else "taken"
    dose = f" at ≥ {rule.min_daily_dose}/day" if rule.min_daily_dose else ""
    span = f" for ≥ {rule.min_span}" if rule.min_span else ""
    return f"{verb} in the last {rule.window}{dose}{span}"


def _finding(kind: str, items: list[tuple[Course, str]]) -> Finding:
    _, detail = items[-1]
    more = f" (and {len(items) - 1} more)" if len(items) > 1 else ""
    proofs = tuple(evidence(c.resource, value=c.label, day=c.start) for c, _ in items)
    return Finding("found" if kind == "found" else "undetermined", f"{detail}{more}", proofs)


def _judge(course: Course, rule: MedicationRule, valueset: CompiledValueSet, as_of: date) -> tuple[str, str]:
    started = f"{course.label} started {course.start}" if course.start else f"{course.label} (no start date)"
    if rule.when == "active":
        if not course.active:
            return "miss", f"{course.label} is not active"
        if rule.min_duration is not None:
            if course.start is None:
                return "unsure", f"{started}: cannot tell how long it has been taken"
            need = rule.min_duration.start(as_of)
            if course.start.last > need:
                weeks = (as_of - course.start.last).days // 7
                return "miss", f"{started}, {weeks} weeks ago (needs ≥ {rule.min_duration})"
        return "found", f"{started}, active"
    assert rule.window is not None  # the model requires a window unless when is active
    first_day = rule.window.start(as_of)
    if course.start is None:
        return "unsure", f"{started}: cannot place it in the last {rule.window}"
    if rule.when == "started-within" and not (first_day <= course.start.first and course.start.last <= as_of):
        return "miss", f"{started}, before the last {rule.window}"
    end = course.end or (as_of if course.active else course.start.last)
    if end < first_day:
        return "miss", f"{started}, ended before the last {rule.window}"
    if rule.min_daily_dose is not None:
        return _judge_dose(course, rule, valueset, first_day=first_day, as_of=as_of, started=started)
    return "found", started


def _judge_dose(
    course: Course,
    rule: MedicationRule,
    valueset: CompiledValueSet,
    *,
    first_day: date,
    as_of: date,
    started: str,
) -> tuple[str, str]:
    assert rule.min_daily_dose is not None
    limit = parse_quantity(rule.min_daily_dose)
    daily = daily_dose(course, valueset, unit=limit.unit)
    if daily is None:
        return "unsure", f"{started}: daily dose cannot be worked out"
    dose_text = f"{format_number(daily)} {limit.unit}/day"
    if daily < limit.value:
        return "miss", f"{started} at {dose_text}"
    if rule.min_span is None:
        return "found", f"{started} at {dose_text}"
    if course.end is None and not course.active:
        return "unsure", f"{started} at {dose_text}: end date unknown, span cannot be measured"
    assert course.start is not None
    end = min(course.end or as_of, as_of)
    days = (end - max(course.start.first, first_day)).days + 1
    need = rule.min_span.days_at(as_of)
    if days >= need:
        return "found", f"{started} at {dose_text} for {days} days in the last {rule.window}"
    return "miss", f"{started} at {dose_text} for only {days} days (needs ≥ {rule.min_span})"


def daily_dose(course: Course, valueset: CompiledValueSet, *, unit: str) -> float | None:
    """Dose per day in ``unit`` from the first dosage instruction, or None when it cannot be known."""
    for dosage in course.resource.get("dosageInstruction") or course.resource.get("dosage") or ():
        if not isinstance(dosage, dict):
            continue
        per_dose = _dose_amount(dosage, course, valueset, unit=unit)
        per_day = _times_per_day(dosage)
        if per_dose is not None and per_day is not None:
            return per_dose * per_day
    return None


def _dose_amount(
    dosage: dict[str, Any], course: Course, valueset: CompiledValueSet, *, unit: str
) -> float | None:
    for rate in dosage.get("doseAndRate") or ():
        quantity = rate.get("doseQuantity") if isinstance(rate, dict) else None
        if not isinstance(quantity, dict) or not isinstance(quantity.get("value"), int | float):
            continue
        dose_unit = str(
            quantity.get("code")
            if quantity.get("system") == UCUM
            else quantity.get("unit") or quantity.get("code") or ""
        )
        value = float(quantity["value"])
        if dose_unit.strip().lower() in _DOSE_UNITS:
            strength = valueset.strengths.get(course.coding) if course.coding else None
            if strength is None:
                return None
            converted = convert(strength.value, from_unit=strength.unit, to_unit=unit)
            return None if converted is None else value * converted
        return convert(value, from_unit=dose_unit, to_unit=unit)
    return None


def _times_per_day(dosage: dict[str, Any]) -> float | None:
    timing = dosage.get("timing")
    repeat = timing.get("repeat") if isinstance(timing, dict) else None
    if not isinstance(repeat, dict):
        return 1.0 if not timing else None  # no timing given: a once-daily order
    frequency = repeat.get("frequency", 1)
    period = repeat.get("period", 1)
    unit = repeat.get("periodUnit", "d")
    if not isinstance(frequency, int | float) or not isinstance(period, int | float) or period <= 0:
        return None
    days = _PERIOD_DAYS.get(str(unit))
    return None if days is None else float(frequency) / (float(period) * days)


def _courses(rule: MedicationRule, valueset: CompiledValueSet, ctx: Context) -> list[Course]:
    found: list[Course] = []
    for resource_type in rule.resources:
        for resource in ctx.record.resources(resource_type):
            coding = _matching_code(resource, valueset, ctx)
            if coding is None or not status_counts(resource):
                continue
            found.append(_course(resource, coding, valueset, ctx.as_of))
    return found


def _matching_code(resource: Resource, valueset: CompiledValueSet, ctx: Context) -> tuple[str, str] | None:
    """The first of the order's codes (its own, its Medication's, its ingredients') in the value set."""
    for system, code in ctx.record.medication_codes(resource):
        if valueset.contains(system, code):
            return system, code
    return None


def _course(resource: Resource, coding: tuple[str, str], valueset: CompiledValueSet, as_of: date) -> Course:
    label = valueset.displays.get(coding) or concept_label(
        resource.get("medicationCodeableConcept"), valueset
    )
    if resource["resourceType"] == "MedicationStatement":
        period = resource.get("effectivePeriod")
        start = period_start(period) or day_range(resource.get("effectiveDateTime"))
        end_range = period_end(period)
        active = resource.get("status") == "active"
    else:
        bounds = _bounds(resource)
        start = day_range(bounds.get("start")) or day_range(resource.get("authoredOn"))
        end_range = day_range(bounds.get("end"))
        active = resource.get("status") == "active"
    end = end_range.last if end_range else _end_from_duration(resource, start)
    if active and end is not None and end < as_of:
        active = False
    return Course(resource=resource, label=label, start=start, end=end, active=active, coding=coding)


def _bounds(resource: Resource) -> dict[str, Any]:
    for dosage in resource.get("dosageInstruction") or ():
        timing = dosage.get("timing") if isinstance(dosage, dict) else None
        repeat = timing.get("repeat") if isinstance(timing, dict) else None
        if isinstance(repeat, dict) and isinstance(repeat.get("boundsPeriod"), dict):
            return dict(repeat["boundsPeriod"])
    return {}


def _end_from_duration(resource: Resource, start: DayRange | None) -> date | None:
    """boundsDuration or the dispense's expected supply, counted from the start day."""
    if start is None:
        return None
    durations = []
    for dosage in resource.get("dosageInstruction") or ():
        repeat = ((dosage.get("timing") or {}).get("repeat") or {}) if isinstance(dosage, dict) else {}
        durations.append(repeat.get("boundsDuration"))
    dispense = resource.get("dispenseRequest")
    if isinstance(dispense, dict):
        durations.append(dispense.get("expectedSupplyDuration"))
    for duration in durations:
        if isinstance(duration, dict) and isinstance(duration.get("value"), int | float):
            days = convert(
                float(duration["value"]),
                from_unit=str(duration.get("code") or duration.get("unit") or "d"),
                to_unit="d",
            )
            if days is not None:
                return start.first + timedelta(days=max(int(days) - 1, 0))
    return None
