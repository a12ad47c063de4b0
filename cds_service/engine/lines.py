"""Counting lines (regimens) of therapy from medication history.

A line begins with the first drug given; drugs first given within ``same_line_within`` of a line's
start join it (a combination regimen); a later start of a drug that is not already in the current
line begins a new line; a drug the line already holds, started again, continues that line. Drugs
are told apart by the value set's ``group`` (the ingredient a clinical drug stands for), so that
"oxaliplatin 100 mg injection" and the ingredient oxaliplatin are one drug.

This is the common working definition in oncology real-world-data studies; it cannot see
maintenance switches or re-challenge decisions, so counts near a protocol's limit deserve review.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

from cds_service.engine.facts import Finding, evidence, plural
from cds_service.engine.time import DayRange

if TYPE_CHECKING:
    from cds_service.engine.context import Context
    from cds_service.engine.medications import Course
    from cds_service.engine.model import MedicationRule
    from cds_service.engine.valuesets import CompiledValueSet


@dataclass
class Line:
    start: DayRange
    drugs: list[str] = field(default_factory=list)
    courses: list[Course] = field(default_factory=list)


def build_lines(courses: list[Course], valueset: CompiledValueSet, *, same_line_days: int) -> list[Line]:
    lines: list[Line] = []
    for course in courses:
        assert course.start is not None
        drug = valueset.groups.get(course.coding, course.coding[1])
        current = lines[-1] if lines else None
        joins = current is not None and (
            course.start.first <= current.start.last + timedelta(days=same_line_days) or drug in current.drugs
        )
        if current is None or not joins:
            current = Line(start=course.start)
            lines.append(current)
        if drug not in current.drugs:
            current.drugs.append(drug)
        current.courses.append(course)
    return lines


def count_lines(
    rule: MedicationRule, courses: list[Course], valueset: CompiledValueSet, ctx: Context
) -> Finding:
    assert rule.lines is not None
    spec = rule.lines
    start = rule.window.start(ctx.as_of) if rule.window else None
    dated = [c for c in courses if c.start is not None]
    undated = [c for c in courses if c.start is None]
    lines = build_lines(dated, valueset, same_line_days=spec.same_line_within.days_at(ctx.as_of))
    if start is not None:
        lines = [line for line in lines if line.start.last >= start]
    count = len(lines)
    described = "; ".join(f"{' + '.join(line.drugs)} from {line.start}" for line in lines[-4:])
    what = f"{plural(count, 'line')} of {valueset.title}" + (f": {described}" if described else "")
    proofs = tuple(evidence(c.resource, value=c.label, day=c.start) for line in lines for c in line.courses)
    low_ok = spec.min is None or count >= spec.min
    high_ok = spec.max is None or count <= spec.max
    needs = _needs(spec.min, spec.max)
    if undated and (not low_ok or (spec.max is not None and count + len(undated) > spec.max)):
        reason = (
            f"{what}; {plural(len(undated), 'course')} without a start date could change the count ({needs})"
        )
        return Finding("undetermined", reason, proofs)
    if low_ok and high_ok:
        return Finding("found", f"{what} ({needs})", proofs)
    if not high_ok:
        return Finding("against", f"{what}: more than {spec.max} ({needs})", proofs)
    return Finding("absent", f"{what} ({needs})", proofs)


def _needs(low: int | None, high: int | None) -> str:
    if low is not None and high is not None:
        return f"needs {low}–{high}"
    return f"needs ≥ {low}" if low is not None else f"needs ≤ {high}"
