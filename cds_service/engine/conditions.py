"""Diagnoses (and coded findings): current, within a window, or ever; with stage, severity, body
site, onset window and episode counts."""

from __future__ import annotations

from dataclasses import dataclass, replace

from cds_service.engine.context import Context
from cds_service.engine.facts import (
    CONDITION_CURRENT,
    Finding,
    Verdict,
    concept_label,
    distinct_days,
    evidence,
    first_code,
    latest_first,
    more,
    period_end,
    period_start,
    status_counts,
)
from cds_service.engine.model import ConditionRule
from cds_service.engine.report import Evidence
from cds_service.engine.time import DayRange, place
from cds_service.record import Resource, codings


@dataclass(frozen=True)
class ConditionFacts:
    current: bool
    onset: DayRange | None
    abatement: DayRange | None


def condition_facts(resource: Resource, ctx: Context) -> ConditionFacts:
    """Current or history, by the specification's rule: clinical status and abatement date."""
    onset = ctx.day(resource.get("onsetDateTime")) or period_start(resource.get("onsetPeriod"), ctx.tz)
    if onset is None and not any(k.startswith("onset") for k in resource):
        onset = ctx.day(resource.get("recordedDate"))  # stands in only when no onset is given
    abatement = ctx.day(resource.get("abatementDateTime")) or period_end(
        resource.get("abatementPeriod"), ctx.tz
    )
    abated = any(k.startswith("abatement") for k in resource) and (
        abatement is None or abatement.first <= ctx.as_of
    )
    status = first_code(resource.get("clinicalStatus"))
    current = (status is None or status in CONDITION_CURRENT) and not abated
    return ConditionFacts(current=current, onset=onset, abatement=abatement)


@dataclass(frozen=True)
class Hit:
    resource: Resource
    verdict: Verdict
    label: str
    day: DayRange | None
    why: str = ""


def evaluate_condition(rule: ConditionRule, ctx: Context) -> Finding:
    valueset = ctx.valueset(rule.valueset)
    excluded = ctx.valueset(rule.except_valueset) if rule.except_valueset else None
    pool = ctx.candidates(rule.valueset, rule.resources)
    if "Observation" in rule.resources:
        known = {id(r) for r in pool}
        pool += [r for r in ctx.valued(rule.valueset) if id(r) not in known]
    hits: list[Hit] = []
    mismatched: list[Hit] = []  # the diagnosis is there, with another stage, severity or site
    for resource in pool:
        if not status_counts(resource):
            continue
        if excluded and excluded.matching_coding(codings(resource.get("code"))) is not None:
            continue
        hit = _judge(resource, rule, ctx)
        if hit.verdict != "fails":
            hits.append(hit)
        elif hit.why == QUALIFIER_MISMATCH:
            mismatched.append(hit)
    found = [h for h in hits if h.verdict == "meets"]
    unsure = [h for h in hits if h.verdict == "unsure"]
    if found and distinct_days([h.day for h in found]) >= rule.min_count:
        return _finding("found", found, ctx, rule)
    if unsure:
        return _finding("undetermined", unsure, ctx, rule)
    if found:  # too few episodes
        count = distinct_days([h.day for h in found])
        reason = f"{count} of the {rule.min_count} episodes needed: " + _describe(found, ctx)
        return Finding("absent", reason, _proofs(found))
    if mismatched:
        detail = _describe([replace(h, why="") for h in mismatched], ctx)
        needs = "; ".join(
            f"{name.replace('_', ' ')} {ctx.valueset(getattr(rule, name)).title}"
            for name, _ in _QUALIFIERS
            if getattr(rule, name) is not None
        )
        return Finding("absent", f"{detail} (the criterion needs {needs})", _proofs(mismatched))
    return Finding("absent", f"no {_scope_text(rule, valueset.title)}")


QUALIFIER_MISMATCH = "qualifier"


def _judge(resource: Resource, rule: ConditionRule, ctx: Context) -> Hit:
    if resource["resourceType"] == "Observation":
        return _judge_finding(resource, rule, ctx)
    facts = condition_facts(resource, ctx)
    label = concept_label(resource.get("code"), ctx.valueset(rule.valueset))
    if facts.onset is not None and facts.onset.first > ctx.as_of:
        return Hit(resource, "fails", label, facts.onset)  # not yet diagnosed on the evaluation date
    status = "current" if facts.current else "history"
    verdict, day = _placed(rule, facts, ctx)
    if verdict == "fails":
        return Hit(resource, "fails", label, day)
    qualifier = _qualifiers(resource, rule, ctx)
    if qualifier is not None:
        qualified, detail = qualifier
        label = f"{label}, {detail}"
        if qualified is False:
            return Hit(resource, "fails", label, day, why=QUALIFIER_MISMATCH)
        if qualified is None:
            verdict = "unsure"
    for check in (_onset_inside, _onset_long_enough):
        if verdict != "meets":
            break
        verdict, why = check(facts.onset, rule, ctx)
        if verdict == "unsure":
            return Hit(resource, "unsure", f"{label}, {status}", facts.onset, why)
        if verdict == "fails":
            return Hit(resource, "fails", label, facts.onset)
    why = (
        "" if verdict == "meets" else " (date too imprecise to place)" if not qualifier else " (needs review)"
    )
    return Hit(resource, verdict, f"{label}, {status}", day, why)


def _placed(rule: ConditionRule, facts: ConditionFacts, ctx: Context) -> tuple[Verdict, DayRange | None]:
    if rule.when == "ever" or (rule.when in ("current", "within") and facts.current):
        return "meets", facts.onset
    if rule.when == "current":
        return "fails", facts.onset
    assert rule.window is not None  # guaranteed by the model: within needs a window
    start = rule.window.start(ctx.as_of)
    placements = [place(d, start=start, end=ctx.as_of) for d in (facts.onset, facts.abatement) if d]
    day = facts.abatement or facts.onset
    if "inside" in placements:
        return "meets", day
    return ("unsure" if "unsure" in placements else "fails"), day


def _onset_inside(onset: DayRange | None, rule: ConditionRule, ctx: Context) -> tuple[Verdict, str]:
    if rule.onset_within is None:
        return "meets", ""
    if onset is None:
        return "unsure", f" (no onset date: cannot tell whether it began in the last {rule.onset_within})"
    where = place(onset, start=rule.onset_within.start(ctx.as_of), end=ctx.as_of)
    if where == "inside":
        return "meets", ""
    if where == "unsure":
        return "unsure", " (onset date too imprecise to place)"
    return "fails", ""


def _onset_long_enough(onset: DayRange | None, rule: ConditionRule, ctx: Context) -> tuple[Verdict, str]:
    """``at_least_ago``: diagnosed at least that long before the evaluation date."""
    if rule.at_least_ago is None:
        return "meets", ""
    if onset is None:
        return "unsure", f" (no onset date: cannot tell whether it began at least {rule.at_least_ago} ago)"
    latest = rule.at_least_ago.start(ctx.as_of)
    if onset.last <= latest:
        return "meets", ""
    if onset.first > latest:
        return "fails", ""
    return "unsure", " (onset date too imprecise to tell)"


def _qualifiers(resource: Resource, rule: ConditionRule, ctx: Context) -> tuple[bool | None, str] | None:
    """Stage, severity and body site where the rule asks for them: (True | False | None, detail)."""
    asked = [(name, field) for name, field in _QUALIFIERS if getattr(rule, name) is not None]
    if not asked:
        return None
    details = []
    verdict: bool | None = True
    for name, field in asked:
        valueset = ctx.valueset(getattr(rule, name))
        concepts = _qualifier_concepts(resource, field)
        if not any(codings(c) or (isinstance(c, dict) and c.get("text")) for c in concepts):
            details.append(f"{name.replace('_', ' ')} not recorded")
            verdict = None if verdict is not False else False
            continue
        matched = next((c for c in concepts if valueset.matching_coding(codings(c))), None)
        if matched is None and not any(codings(c) for c in concepts):  # text only: a human reads it
            details.append(f"{name.replace('_', ' ')} recorded as text only")
            verdict = None if verdict is not False else False
        elif matched is None:
            details.append(f"{name.replace('_', ' ')} {concept_label(concepts[0])}")
            verdict = False
        else:
            details.append(f"{name.replace('_', ' ')} {concept_label(matched, valueset)}")
    return verdict, "; ".join(details)


_QUALIFIERS = (("stage", "stage"), ("severity", "severity"), ("body_site", "bodySite"))


def _qualifier_concepts(resource: Resource, field: str) -> list[object]:
    value = resource.get(field)
    if field == "stage":
        stages = value if isinstance(value, list) else [value]
        return [s.get("summary") for s in stages if isinstance(s, dict)]
    return value if isinstance(value, list) else [value]


def _judge_finding(resource: Resource, rule: ConditionRule, ctx: Context) -> Hit:
    valueset = ctx.valueset(rule.valueset)
    value = resource.get("valueCodeableConcept")
    concept = value if valueset.matching_coding(codings(value)) else resource.get("code")
    label = concept_label(concept, valueset)
    when = ctx.when(resource)
    day = when.day if when else None
    if day is None or day.first > ctx.as_of or rule.when == "current":
        return Hit(resource, "fails", label, day)  # a finding is an event, never "current"
    start = rule.window.start(ctx.as_of) if rule.window else None
    where = place(day, start=start, end=ctx.as_of)
    verdict: Verdict = {"inside": "meets", "outside": "fails", "unsure": "unsure"}[where]  # type: ignore[assignment]
    return Hit(resource, verdict, label, day, "" if where == "inside" else " (date too imprecise to place)")


def _scope_text(rule: ConditionRule, title: str) -> str:
    if rule.when == "current":
        text = f"current {title} recorded"
    elif rule.when == "ever":
        text = f"{title} recorded"
    else:
        text = f"{title} in the last {rule.window}"
    if rule.onset_within is not None:
        text += f" that began in the last {rule.onset_within}"
    if rule.at_least_ago is not None:
        text += f" that began at least {rule.at_least_ago} ago"
    return text


def _describe(items: list[Hit], ctx: Context) -> str:
    items = sorted(items, key=lambda h: (h.day.last if h.day else ctx.as_of, str(h.resource.get("id"))))
    latest = items[-1]
    when = f", dated {latest.day}" if latest.day else ""
    return f"{latest.label}{when}{more(len(items) - 1)}{latest.why}"


def _proofs(items: list[Hit]) -> tuple[Evidence, ...]:
    ordered = sorted(items, key=lambda h: (latest_first(h.day), str(h.resource.get("id"))))
    return tuple(evidence(h.resource, value=h.label.split(",")[0], day=h.day) for h in ordered)


def _finding(kind: str, items: list[Hit], ctx: Context, rule: ConditionRule) -> Finding:
    return Finding(kind, _describe(items, ctx), _proofs(items))  # type: ignore[arg-type]
