"""Medications by ingredient or clinical drug: on it now, ever received, given in a window (washouts),
duration, daily dose and span, distinct courses, distinct lines of therapy.

Real EHR data codes medications as clinical drugs (RxNorm SCD) more often than as ingredients, so
value sets list both, and a clinical drug's per-unit strength (from the value set) turns "1 tablet
twice a day" into a daily dose (``dosing.daily_dose``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from cds_service.engine.context import Context
from cds_service.engine.dosing import course_end, daily_dose
from cds_service.engine.facts import (
    Finding,
    Verdict,
    concept_label,
    distinct_days,
    evidence,
    more,
    period_end,
    period_start,
    status_counts,
)
from cds_service.engine.lines import count_lines
from cds_service.engine.model import MedicationRule
from cds_service.engine.report import Evidence
from cds_service.engine.time import DayRange
from cds_service.engine.units import format_number, parse_quantity
from cds_service.engine.valuesets import CompiledValueSet
from cds_service.record import Resource


@dataclass(frozen=True)
class Course:
    """One medication order, statement or administration reduced to what the rules ask about."""

    resource: Resource
    label: str
    start: DayRange | None
    end: date | None  # None: open-ended (still active) or unknown
    active: bool
    coding: tuple[str, str]


def evaluate_medication(rule: MedicationRule, ctx: Context) -> Finding:
    valueset = ctx.valueset(rule.valueset)
    courses = [c for c in _courses(rule, valueset, ctx) if c.start is None or c.start.first <= ctx.as_of]
    if not courses:
        return Finding("absent", f"no {valueset.title} {_scope(rule)}")
    courses.sort(key=lambda c: (c.start.first if c.start else date.min, str(c.resource.get("id"))))
    if rule.lines is not None:
        return count_lines(rule, courses, valueset, ctx)
    judged = [(course, *_judge(course, rule, valueset, ctx.as_of)) for course in courses]
    qualifying = [(c, detail) for c, verdict, detail in judged if verdict == "meets"]
    unsure = [(c, detail) for c, verdict, detail in judged if verdict == "unsure"]
    misses = [detail for _, verdict, detail in judged if verdict == "fails"]
    enough = distinct_days([c.start for c, _ in qualifying]) >= rule.min_count
    if qualifying and enough:
        return _finding("found", qualifying, rule)
    if unsure:
        return _finding("undetermined", unsure, rule)
    if qualifying:
        count = distinct_days([c.start for c, _ in qualifying])
        detail = f"{count} of the {rule.min_count} courses needed: {qualifying[-1][1]}"
        return Finding("absent", detail, _proofs(qualifying))
    return Finding("absent", f"no {valueset.title} {_scope(rule)}: " + "; ".join(misses[-3:]))


def _scope(rule: MedicationRule) -> str:
    if rule.when == "active":
        return "active now" + (f" for at least {rule.min_duration}" if rule.min_duration else "")
    if rule.when == "ever":
        return "ever recorded"
    verb = "started" if rule.when == "started-within" else "taken"
    dose = f" at ≥ {rule.min_daily_dose}/day" if rule.min_daily_dose else ""
    span = f" for ≥ {rule.min_span}" if rule.min_span else ""
    return f"{verb} in the last {rule.window}{dose}{span}"


def _proofs(items: list[tuple[Course, str]]) -> tuple[Evidence, ...]:
    return tuple(evidence(c.resource, value=c.label, day=c.start) for c, _ in items)


def _finding(kind: str, items: list[tuple[Course, str]], rule: MedicationRule) -> Finding:
    _, detail = items[-1]
    count = f" ({len(items)} courses)" if rule.min_count > 1 else more(len(items) - 1)
    return Finding(kind, f"{detail}{count}", _proofs(items))  # type: ignore[arg-type]


def started_text(course: Course) -> str:
    return f"{course.label} started {course.start}" if course.start else f"{course.label} (no start date)"


def _judge(
    course: Course, rule: MedicationRule, valueset: CompiledValueSet, as_of: date
) -> tuple[Verdict, str]:
    started = started_text(course)
    if rule.when == "ever":
        return "meets", started
    if rule.when == "active":
        return _judge_active(course, rule, as_of, started)
    assert rule.window is not None  # the model requires a window with within / started-within
    first_day = rule.window.start(as_of)
    if course.start is None:
        return "unsure", f"{started}: cannot place it in the last {rule.window}"
    if rule.when == "started-within":
        if course.start.last < first_day:
            return "fails", f"{started}, before the last {rule.window}"
        if course.start.first < first_day:
            return "unsure", f"{started}: start date too imprecise for the last {rule.window}"
    latest_end = course.end or (as_of if course.active else course.start.last)
    earliest_end = course.end or (as_of if course.active else course.start.first)
    if latest_end < first_day:
        return "fails", f"{started}, ended before the last {rule.window}"
    if earliest_end < first_day:
        return "unsure", f"{started}: dated too imprecisely to tell whether it reaches the last {rule.window}"
    if rule.min_daily_dose is not None:
        return _judge_dose(course, rule, valueset, first_day=first_day, as_of=as_of, started=started)
    return "meets", started


def _judge_active(course: Course, rule: MedicationRule, as_of: date, started: str) -> tuple[Verdict, str]:
    if not course.active:
        return "fails", f"{course.label} is not active"
    if rule.min_duration is not None:
        if course.start is None:
            return "unsure", f"{started}: cannot tell how long it has been taken"
        need = rule.min_duration.start(as_of)
        if course.start.first > need:
            weeks = (as_of - course.start.last).days // 7
            return "fails", f"{started}, {weeks} weeks ago (needs ≥ {rule.min_duration})"
        if course.start.last > need:
            return "unsure", f"{started}: start date too imprecise to tell ≥ {rule.min_duration}"
    return "meets", f"{started}, active"


def _judge_dose(
    course: Course,
    rule: MedicationRule,
    valueset: CompiledValueSet,
    *,
    first_day: date,
    as_of: date,
    started: str,
) -> tuple[Verdict, str]:
    assert rule.min_daily_dose is not None and rule.window is not None
    limit = parse_quantity(rule.min_daily_dose)
    strength = valueset.strengths.get(course.coding)
    daily = daily_dose(course.resource, strength=strength, unit=limit.unit)
    if daily is None:
        return "unsure", f"{started}: daily dose cannot be worked out"
    dose_text = f"{format_number(daily)} {limit.unit}/day"
    if daily < limit.value:
        return "fails", f"{started} at {dose_text}"
    if rule.min_span is None:
        return "meets", f"{started} at {dose_text}"
    if course.end is None and not course.active:
        return "unsure", f"{started} at {dose_text}: end date unknown, span cannot be measured"
    assert course.start is not None
    end = min(course.end or as_of, as_of)
    days = (end - max(course.start.first, first_day)).days + 1
    need = rule.min_span.days_at(as_of)
    if days >= need:
        return "meets", f"{started} at {dose_text} for {days} days in the last {rule.window}"
    return "fails", f"{started} at {dose_text} for only {days} days (needs ≥ {rule.min_span})"


def _courses(rule: MedicationRule, valueset: CompiledValueSet, ctx: Context) -> list[Course]:
    found: list[Course] = []
    for resource in ctx.candidates(rule.valueset, rule.resources):
        if not status_counts(resource):
            continue
        coding = _matching_code(resource, valueset, ctx)
        if coding is not None:
            found.append(_course(resource, coding, valueset, ctx))
    return found


def _matching_code(resource: Resource, valueset: CompiledValueSet, ctx: Context) -> tuple[str, str] | None:
    """The first of the order's codes (its own, its Medication's, its ingredients') in the value set."""
    for system, code in ctx.record.medication_codes(resource):
        if valueset.contains(system, code):
            return system, code
    return None


def _course(resource: Resource, coding: tuple[str, str], valueset: CompiledValueSet, ctx: Context) -> Course:
    label = valueset.displays.get(coding) or concept_label(
        resource.get("medicationCodeableConcept"), valueset
    )
    resource_type = resource["resourceType"]
    if resource_type in ("MedicationStatement", "MedicationAdministration"):
        period = resource.get("effectivePeriod")
        start = period_start(period, ctx.tz) or ctx.day(resource.get("effectiveDateTime"))
        end_range = period_end(period, ctx.tz)
        if resource_type == "MedicationAdministration" and end_range is None:
            end_range = start  # one administration: given that day
        active = resource.get("status") in ("active", "in-progress")
    else:
        bounds = _bounds(resource)
        start = ctx.day(bounds.get("start")) or ctx.day(resource.get("authoredOn"))
        end_range = ctx.day(bounds.get("end"))
        active = resource.get("status") == "active"
    end = end_range.last if end_range else course_end(resource, start)
    if active and end is not None and end < ctx.as_of:
        active = False
    return Course(resource=resource, label=label, start=start, end=end, active=active, coding=coding)


def _bounds(resource: Resource) -> dict[str, object]:
    for dosage in resource.get("dosageInstruction") or ():
        timing = dosage.get("timing") if isinstance(dosage, dict) else None
        repeat = timing.get("repeat") if isinstance(timing, dict) else None
        if isinstance(repeat, dict) and isinstance(repeat.get("boundsPeriod"), dict):
            return dict(repeat["boundsPeriod"])
    return {}
