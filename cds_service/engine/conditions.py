"""Diagnoses (and coded findings): current, within a window, or ever."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from cds_service.engine.context import Context
from cds_service.engine.facts import (
    CONDITION_CURRENT,
    Finding,
    candidates,
    concept_label,
    evidence,
    first_code,
    observation_day,
    period_end,
    period_start,
    status_counts,
    valued_observations,
)
from cds_service.engine.model import ConditionRule
from cds_service.engine.time import DayRange, Placement, day_range, place
from cds_service.engine.valuesets import CompiledValueSet
from cds_service.record import Resource, codings


@dataclass(frozen=True)
class ConditionFacts:
    current: bool
    onset: DayRange | None
    abatement: DayRange | None


def condition_facts(resource: Resource, as_of: date) -> ConditionFacts:
    """Current or history, by the specification's rule: clinical status and abatement date."""
    onset = day_range(resource.get("onsetDateTime")) or period_start(resource.get("onsetPeriod"))
    if onset is None and not any(k.startswith("onset") for k in resource):
        onset = day_range(resource.get("recordedDate"))  # stands in only when no onset is given
    abatement = day_range(resource.get("abatementDateTime")) or period_end(resource.get("abatementPeriod"))
    abated = any(k.startswith("abatement") for k in resource) and (
        abatement is None or abatement.first <= as_of
    )
    status = first_code(resource.get("clinicalStatus"))
    current = (status is None or status in CONDITION_CURRENT) and not abated
    return ConditionFacts(current=current, onset=onset, abatement=abatement)


def evaluate_condition(rule: ConditionRule, ctx: Context) -> Finding:
    valueset = ctx.valueset(rule.valueset)
    excluded = ctx.valueset(rule.except_valueset) if rule.except_valueset else None
    scope = _scope_text(rule, valueset.title)
    found: list[tuple[Resource, str, DayRange | None]] = []
    unsure: list[tuple[Resource, str, DayRange | None]] = []
    pool = list(candidates(ctx.record, valueset, rule.resources))
    if "Observation" in rule.resources:
        known = {id(r) for r in pool}
        pool += [r for r in valued_observations(ctx.record, valueset) if id(r) not in known]
    for resource in pool:
        if not status_counts(resource):
            continue
        if excluded and _coded_in(resource, excluded):
            continue
        verdict, label, day = _judge(resource, rule, ctx)
        if verdict == "inside":
            found.append((resource, label, day))
        elif verdict == "unsure":
            unsure.append((resource, label, day))
    if found:
        return _finding("found", found, ctx, rule)
    if unsure:
        return _finding("undetermined", unsure, ctx, rule, suffix=" (date too imprecise to place)")
    return Finding("absent", f"no {scope}")


def _judge(resource: Resource, rule: ConditionRule, ctx: Context) -> tuple[Placement, str, DayRange | None]:
    if resource["resourceType"] == "Observation":
        day = observation_day(resource)
        label = _observation_label(resource, ctx, rule)
        if day is None or day.first > ctx.as_of:
            return "outside", label, day
        if rule.when == "current":
            return "outside", label, day  # a finding is an event, never "current"
        start = rule.window.start(ctx.as_of) if rule.window else None
        return place(day, start=start, end=ctx.as_of), label, day
    facts = condition_facts(resource, ctx.as_of)
    label = concept_label(resource.get("code"), ctx.valueset(rule.valueset))
    if facts.onset is not None and facts.onset.first > ctx.as_of:
        return "outside", label, facts.onset  # not yet diagnosed on the evaluation date
    if rule.when == "ever" or (rule.when in ("current", "within") and facts.current):
        status = "current" if facts.current else "history"
        return "inside", f"{label}, {status}", facts.onset
    if rule.when == "current":
        return "outside", label, facts.onset
    assert rule.window is not None  # guaranteed by the model: within needs a window
    start = rule.window.start(ctx.as_of)
    placements = [place(d, start=start, end=ctx.as_of) for d in (facts.onset, facts.abatement) if d]
    day = facts.abatement or facts.onset
    if "inside" in placements:
        return "inside", f"{label}, history", day
    return ("unsure" if "unsure" in placements else "outside"), label, day


def _observation_label(resource: Resource, ctx: Context, rule: ConditionRule) -> str:
    valueset = ctx.valueset(rule.valueset)
    value = resource.get("valueCodeableConcept")
    if valueset.matching_coding(codings(value)):
        return concept_label(value, valueset)
    return concept_label(resource.get("code"), valueset)


def _coded_in(resource: Resource, excluded: CompiledValueSet) -> bool:
    return excluded.matching_coding(codings(resource.get("code"))) is not None


def _scope_text(rule: ConditionRule, title: str) -> str:
    if rule.when == "current":
        return f"current {title} recorded"
    if rule.when == "ever":
        return f"{title} recorded"
    return f"{title} in the last {rule.window}"


def _finding(
    kind: str,
    items: list[tuple[Resource, str, DayRange | None]],
    ctx: Context,
    rule: ConditionRule,
    suffix: str = "",
) -> Finding:
    items.sort(key=lambda item: (item[2].last if item[2] else ctx.as_of, str(item[0].get("id"))))
    latest = items[-1]
    when = f", dated {latest[2]}" if latest[2] else ""
    more = f" (and {len(items) - 1} more)" if len(items) > 1 else ""
    reason = f"{latest[1]}{when}{more}{suffix}"
    proofs = tuple(evidence(r, value=label.split(",")[0], day=d) for r, label, d in items)
    return Finding("found" if kind == "found" else "undetermined", reason, proofs)
