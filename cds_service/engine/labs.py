"""Laboratory criteria: thresholds in UCUM units or × the result's reference limit, scores, positive
findings and titers, coded answers.

Each result is read (``readings.read_value``) and judged into a verdict with the value as a clinician
would write it; then ``pick`` decides which results count: the latest (on the same day the later
time decides; results that cannot be ordered and disagree cannot decide), or any.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cds_service.engine.context import Context
from cds_service.engine.facts import (
    Finding,
    Verdict,
    When,
    evidence,
    more,
    plural,
)
from cds_service.engine.model import LabRule, Threshold
from cds_service.engine.readings import Value, is_null
from cds_service.engine.report import Evidence
from cds_service.engine.time import Placement, place
from cds_service.engine.units import convert, format_number
from cds_service.engine.valuesets import CompiledValueSet
from cds_service.record import Resource, codings

_OPS = {">": "above", ">=": "at or above", "<": "below", "<=": "at or below"}


@dataclass(frozen=True, slots=True)
class Reading:
    verdict: Verdict
    shown: str  # the value as read, e.g. "2.7 mg/dL (= 239 umol/L)", "1:320", "Positive"
    why: str = ""  # for unsure readings: what stopped us


@dataclass(frozen=True, slots=True)
class Item:
    resource: Resource
    when: When
    reading: Reading


def evaluate_lab(rule: LabRule, ctx: Context) -> Finding:
    valueset = ctx.valueset(rule.valueset)
    start = rule.window.start(ctx.as_of) if rule.window else None
    scope = valueset.title + (f" in the last {rule.window}" if rule.window else "")
    results = ctx.results(rule.valueset)  # newest first
    undated, empty = results.undated, 0
    dated: list[tuple[Resource, dict[str, Any], When, Placement]] = []
    for resource, part, when in results.dated:
        if start is not None and when.day.last < start:
            break  # newest first: everything after this is older still
        if rule.with_component and not _has_component(resource, rule, ctx):
            continue
        where = place(when.day, start=start, end=ctx.as_of)
        if where != "outside":
            dated.append((resource, part, when, where))
    items: list[Item] = []
    for resource, part, when, where in dated:
        if items and rule.pick == "latest" and when.day.last < items[0].when.day.last:
            break
        value = ctx.value(part)
        if value.absent:
            empty += 1
            continue
        reading = judge(value, rule, ctx)
        if where == "unsure":  # a partial date across the window's edge: it may not belong
            reading = Reading("unsure", reading.shown, f"dated {when.day}, too imprecise for the window")
        items.append(Item(resource, when, reading))
    note = _not_considered(undated, empty)
    if not items:
        return Finding("absent", f"no {scope}{note}")
    if rule.pick == "any":
        return _decide_any(items, rule, valueset.title, note)
    return _decide_latest(items, rule, valueset.title, note)


def _has_component(resource: Resource, rule: LabRule, ctx: Context) -> bool:
    assert rule.with_component is not None
    code = ctx.valueset(rule.with_component.code)
    answer = ctx.valueset(rule.with_component.answer)
    for component in resource.get("component") or ():
        if isinstance(component, dict) and code.matching_coding(codings(component.get("code"))):
            value = component.get("valueCodeableConcept")
            if answer.matching_coding(codings(value)) is not None:
                return True
            text = value.get("text") if isinstance(value, dict) else component.get("valueString")
            if answer.by_text(text) is not None:
                return True
    return False


def _not_considered(undated: int, empty: int) -> str:
    parts = [f"{plural(undated, 'result')} without a date"] if undated else []
    parts += [f"{plural(empty, 'result')} without a value"] if empty else []
    return f"; {' and '.join(parts)} not considered" if parts else ""


def latest_items(items: list[Item]) -> list[Item]:
    """The results that decide as the latest: the last day's, narrowed to the latest time of day
    when every result that day gives one."""
    last = max(item.when.day.last for item in items)
    same_day = [item for item in items if item.when.day.last == last]
    moments = [item.when.moment for item in same_day]
    if len(same_day) > 1 and all(m is not None for m in moments):
        top = max(m for m in moments if m is not None)
        same_day = [item for item in same_day if item.when.moment == top]
    return sorted(same_day, key=lambda item: str(item.resource.get("id")))


def _decide_latest(items: list[Item], rule: LabRule, title: str, note: str) -> Finding:
    latest = latest_items(items)
    proofs = tuple(evidence(i.resource, value=i.reading.shown, day=i.when) for i in latest)
    verdicts = {i.reading.verdict for i in latest}
    shown = ", ".join(i.reading.shown for i in latest)
    what = f"latest {title} {shown} on {latest[0].when}"
    if len(verdicts) > 1:
        return Finding("undetermined", f"{what}: results at that time disagree{note}", proofs)
    return _finding(verdicts.pop(), what, latest[0].reading, rule, note, proofs)


def _decide_any(items: list[Item], rule: LabRule, title: str, note: str) -> Finding:
    items.sort(key=lambda i: (i.when.day.last, str(i.resource.get("id"))), reverse=True)
    for verdict in ("meets", "unsure"):
        chosen = [i for i in items if i.reading.verdict == verdict]
        if chosen:
            first = chosen[0]
            what = f"{title} {first.reading.shown} on {first.when}{more(len(chosen) - 1)}"
            proofs = tuple(evidence(i.resource, value=i.reading.shown, day=i.when) for i in chosen)
            return _finding(verdict, what, first.reading, rule, note, proofs)
    first = items[0]
    what = f"all {plural(len(items), title + ' result')}, latest {first.reading.shown} on {first.when},"
    proofs = tuple(evidence(i.resource, value=i.reading.shown, day=i.when) for i in items)
    return _finding("fails", what, first.reading, rule, note, proofs)


def _finding(
    verdict: Verdict, what: str, reading: Reading, rule: LabRule, note: str, proofs: tuple[Evidence, ...]
) -> Finding:
    if verdict == "unsure":
        return Finding("undetermined", f"{what}: {reading.why}{note}", proofs)
    meets = verdict == "meets"
    kind = "found" if meets else "against"
    return Finding(kind, f"{what} {_test_text(rule, meets)}{note}", proofs)  # type: ignore[arg-type]


def _test_text(rule: LabRule, meets: bool) -> str:
    if rule.threshold is not None:
        op = _OPS[rule.threshold.op]
        limit = threshold_text(rule.threshold)
        return f"is {op} {limit}" if meets else f"is not {op} {limit}"
    if rule.finding == "recorded":
        return "is recorded" if meets else "cannot be read"
    if rule.finding is not None:
        return "is positive" if meets else "is negative/normal"
    return "is a qualifying answer" if meets else "is not a qualifying answer"


def threshold_text(threshold: Threshold) -> str:
    number = format_number(threshold.value)
    if threshold.relative_to == "upper-limit":
        return f"{number} × the upper limit of normal"
    if threshold.relative_to == "lower-limit":
        return f"{number} × the lower limit of normal"
    return f"{number} {threshold.unit}" if threshold.unit else number


def judge(value: Value, rule: LabRule, ctx: Context) -> Reading:
    if rule.threshold is not None:
        scale = ctx.valueset(rule.scale) if rule.scale else None
        return judge_threshold(value, rule.threshold, molar_mass=rule.molar_mass, scale=scale)
    if rule.answer is not None:
        against = ctx.valueset(rule.against) if rule.against else None
        return judge_answer(value, ctx.valueset(rule.answer), against)
    if rule.finding == "recorded":
        readable = value.number is not None or value.codes or value.text or value.boolean is not None
        return Reading("meets" if readable else "unsure", value.shown, "the result has no readable value")
    return judge_positive(value, rule.titer_cutoff)


# ---------------------------------------------------------------------------------------------
# Thresholds and scores


def judge_threshold(
    value: Value, threshold: Threshold, *, molar_mass: str | None, scale: CompiledValueSet | None
) -> Reading:
    number, unit, shown = value.number, value.unit, value.shown
    if number is None and scale is not None:
        key = next((k for k in value.codes if k in scale.scores), None)
        key = key or scale.by_text(value.text)
        if key is not None and key in scale.scores:
            number, unit = scale.scores[key], ""
            shown = f"{shown} (score {format_number(number)})"
    if number is None:
        why = "answer recorded as unknown" if is_null(value) else "no numeric value"
        return Reading("unsure", shown, why)
    if threshold.relative_to is not None:
        return _judge_relative(value, number, unit, shown, threshold)
    target = threshold.unit or "1"
    if not unit:
        unitless = _unitless(number, threshold)
        if isinstance(unitless, Reading):
            return Reading(unitless.verdict, shown, unitless.why)
        unit = unitless
    converted = convert(number, from_unit=unit or "1", to_unit=target, molar_mass=molar_mass)
    if converted is None:
        return Reading("unsure", shown, f"unit {unit!r} cannot be compared with {target}")
    converted = float(f"{converted:.10g}")  # no float noise at the limit
    if threshold.unit and (converted != number or unit != threshold.unit):
        shown += f" (= {format_number(converted)} {threshold.unit})"
    verdict = compare(converted, value.comparator, threshold.op, threshold.value)
    return Reading(verdict, shown, "the reported range straddles the limit")


def _unitless(number: float, threshold: Threshold) -> str | Reading:
    """The unit a number sent without one stands in, or why it cannot be told.

    A score (a threshold without a unit) is compared as it is. A percentage threshold reads a bare
    number above 1 as that many percent (LVEF 55); a bare number up to 1 could be a fraction or a
    percentage, so it cannot decide. A fraction threshold (a unitless limit ≤ 1, FEV1/FVC 0.70)
    cannot tell a bare number above 1 (probably a percentage) either. Any other unit: not given.
    """
    target = threshold.unit or "1"
    if target == "%":
        return "%" if number > 1 else Reading("unsure", "", "no unit given: a fraction or a percentage?")
    if target == "1":
        if 0 < threshold.value < 1 < number:
            return Reading("unsure", "", "no unit given: a percentage against a fraction limit?")
        return "1"
    return Reading("unsure", "", f"no unit given (needs {target})")


def _judge_relative(value: Value, number: float, unit: str, shown: str, threshold: Threshold) -> Reading:
    upper = threshold.relative_to == "upper-limit"
    limit = value.high if upper else value.low
    name = "upper limit of normal" if upper else "lower limit of normal"
    if limit is None:
        return Reading("unsure", shown, f"the result gives no {name} to compare with")
    in_unit = convert(limit.value, from_unit=limit.unit or unit or "1", to_unit=unit or "1")
    if in_unit is None:
        return Reading("unsure", shown, f"the {name} is in a unit the result is not")
    bound = float(f"{threshold.value * in_unit:.10g}")
    abbreviation = "ULN" if upper else "LLN"
    ratio = format_number(number / in_unit) if in_unit else "?"
    shown = f"{shown} ({ratio} × {abbreviation} {format_number(in_unit)})"
    verdict = compare(number, value.comparator, threshold.op, bound)
    return Reading(verdict, shown, "the reported range straddles the limit")


def compare(value: float, comparator: str | None, op: str, limit: float) -> Verdict:
    """Compare, honouring a result reported as '<5' or '>1000': the true value lies in a range, and
    the verdict is sure only when every value in that range gives the same answer."""
    if comparator is None:
        exact = {">": value > limit, ">=": value >= limit, "<": value < limit, "<=": value <= limit}[op]
        return "meets" if exact else "fails"
    inclusive = comparator in ("<=", ">=")
    if comparator in ("<", "<="):  # the true value lies below the reported one
        clearly_below = value < limit or (value == limit and (not inclusive or op in (">", "<=")))
        if op in (">", ">="):
            return "fails" if clearly_below else "unsure"
        return "meets" if clearly_below else "unsure"
    clearly_above = value > limit or (value == limit and (not inclusive or op in (">=", "<")))
    if op in (">", ">="):
        return "meets" if clearly_above else "unsure"
    return "fails" if clearly_above else "unsure"


# ---------------------------------------------------------------------------------------------
# Positive / negative findings and coded answers


def judge_positive(value: Value, cutoff: int) -> Reading:
    shown = value.shown
    polarity = value.polarity()
    if polarity is not None:
        return Reading("meets" if polarity else "fails", shown)
    if value.titer is not None:
        return Reading("meets" if value.titer >= cutoff else "fails", shown)
    flags = "/".join(sorted(value.flags))
    from cds_service.engine.readings import NEGATIVE_FLAGS, POSITIVE_FLAGS

    if value.flags & POSITIVE_FLAGS:
        return Reading("meets", f"{shown} (flagged {flags})")
    if value.flags & NEGATIVE_FLAGS:
        return Reading("fails", f"{shown} (flagged {flags})")
    return _against_reference_range(value)


def _against_reference_range(value: Value) -> Reading:
    if value.number is None:
        return Reading("unsure", value.shown, "result cannot be read as positive or negative")
    if value.high is None:
        return Reading("unsure", value.shown, "no reference range or interpretation to judge it by")
    limit = convert(
        value.high.value, from_unit=value.high.unit or value.unit or "1", to_unit=value.unit or "1"
    )
    if limit is None:
        return Reading("unsure", value.shown, "reference range unit differs from the result's")
    verdict = compare(value.number, value.comparator, ">", limit)
    where = {"meets": "above", "fails": "within", "unsure": "around"}[verdict]
    shown = f"{value.shown} ({where} reference range ≤ {format_number(limit)})"
    return Reading(verdict, shown, "the reported range straddles the upper limit")


def judge_answer(value: Value, answers: CompiledValueSet, against: CompiledValueSet | None) -> Reading:
    shown = value.shown
    if value.codes:
        if is_null(value):
            return Reading("unsure", shown, "answer recorded as unknown")
        if any(answers.contains(*key) for key in value.codes):
            return Reading("meets", shown)
        if against is None or any(against.contains(*key) for key in value.codes):
            return Reading("fails", shown)
        return Reading("unsure", shown, f"answer {shown!r} is not one this criterion reads")
    if value.text is not None:
        if answers.by_text(value.text) is not None:
            return Reading("meets", shown)
        if against is not None and against.by_text(value.text) is not None:
            return Reading("fails", shown)
        return Reading("unsure", shown, f"answer {shown!r} (text) is not one this criterion reads")
    return Reading("unsure", shown, "no coded answer")
