"""Dated events: procedures, immunizations (given and planned), encounters, and allergies."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import date

from cds_service.engine.context import Context
from cds_service.engine.facts import (
    CONDITION_IGNORED,
    Finding,
    concept_label,
    distinct_days,
    evidence,
    first_code,
    more,
    period_end,
    period_start,
    plural,
    status_counts,
)
from cds_service.engine.model import AllergyRule, EncounterRule, ImmunizationRule, ProcedureRule
from cds_service.engine.report import Evidence
from cds_service.engine.time import DayRange, WindowSpec, place
from cds_service.engine.valuesets import CompiledValueSet
from cds_service.record import Resource, codings, reference_of

Hit = tuple[Resource, DayRange | None, str]


def evaluate_procedure(rule: ProcedureRule, ctx: Context) -> Finding:
    codes = ctx.valueset(rule.valueset) if rule.valueset else None
    category = ctx.valueset(rule.category) if rule.category else None
    excluded = ctx.valueset(rule.except_valueset) if rule.except_valueset else None
    title = " / ".join(v.title for v in (codes, category) if v is not None)
    pool = (
        ctx.candidates(rule.valueset, ("Procedure",)) if rule.valueset else ctx.record.resources("Procedure")
    )
    hits: list[Hit] = []
    imprecise: list[Hit] = []  # at_least_ago cannot be told for these
    for resource in pool:
        if not status_counts(resource) or resource.get("status") == "preparation":
            continue
        if category and not any(
            category.matching_coding(codings(c)) for c in _concepts(resource, "category")
        ):
            continue
        if excluded and excluded.matching_coding(codings(resource.get("code"))):
            continue
        day, label = procedure_day(resource, codes, ctx)
        age = _old_enough(day, rule, ctx)
        if age == "fails":
            continue  # too recent: the protocol asks for one at least that long ago
        (hits if age == "meets" else imprecise).append((resource, day, label))
    done = dated_events(hits, rule.window, ctx, title=title, min_count=rule.min_count)
    if done.kind != "found" and imprecise:
        what = (
            f"{title}: {_last(imprecise)}: date too imprecise to tell it was at least {rule.at_least_ago} ago"
        )
        return Finding("undetermined", what, _proofs(imprecise))
    if done.kind == "found" or not rule.planned or rule.valueset is None:
        return done
    return _planned_procedure(rule.valueset, codes, done, ctx)


def procedure_day(
    resource: Resource, codes: CompiledValueSet | None, ctx: Context
) -> tuple[DayRange | None, str]:
    """The days the procedure's last session could fall on, and its label: a course ends on its
    period's end; one still in progress reaches the evaluation date; a course recorded with a
    start and no end may have gone on to the evaluation date (so a window check can only be sure
    when the start itself is inside); a single date is that day."""
    label = concept_label(resource.get("code"), codes)
    period = resource.get("performedPeriod")
    end = period_end(period, ctx.tz)
    start = ctx.day(resource.get("performedDateTime")) or period_start(period, ctx.tz)
    if resource.get("status") == "in-progress" and end is None:
        return DayRange(ctx.as_of, ctx.as_of), f"{label}, in progress" + (f" since {start}" if start else "")
    if end is None and isinstance(period, dict) and start is not None and start.first <= ctx.as_of:
        return DayRange(start.first, ctx.as_of), f"{label}, started {start}, end not recorded"
    return end or start, label


def _old_enough(day: DayRange | None, rule: ProcedureRule, ctx: Context) -> str:
    if rule.at_least_ago is None:
        return "meets"
    latest = rule.at_least_ago.start(ctx.as_of)
    if day is None:
        return "unsure"
    if day.last <= latest:
        return "meets"
    return "fails" if day.first > latest else "unsure"


def _planned_procedure(name: str, codes: CompiledValueSet | None, done: Finding, ctx: Context) -> Finding:
    planned = [
        r
        for r in ctx.candidates(name, ("ServiceRequest",))
        if r.get("status") == "active" and r.get("intent") != "proposal"
    ]
    if not planned:
        return Finding(done.kind, f"{done.reason}; none planned", done.evidence)
    planned.sort(key=reference_of)
    proofs = tuple(evidence(r, value=concept_label(r.get("code"), codes)) for r in planned)
    label = concept_label(planned[0].get("code"), codes)
    return Finding("found", f"{label} planned (ServiceRequest)", proofs)


def evaluate_immunization(rule: ImmunizationRule, ctx: Context) -> Finding:
    valueset = ctx.valueset(rule.valueset)
    hits: list[Hit] = []
    for resource in ctx.candidates(rule.valueset, ("Immunization",)):
        if resource.get("status") != "completed":
            continue  # not-done and entered-in-error doses were never given
        label = concept_label(resource.get("vaccineCode"), valueset)
        hits.append((resource, ctx.day(resource.get("occurrenceDateTime")), label))
    given = dated_events(hits, rule.window, ctx, title=valueset.title)
    if given.kind == "found" or not rule.planned:
        return given
    planned = sorted(_planned(rule.valueset, valueset, ctx), key=lambda item: reference_of(item[0]))
    if planned:
        resource, label = planned[0]
        proofs = tuple(evidence(r, value=lbl) for r, lbl in planned)
        return Finding("found", f"{label} planned ({resource['resourceType']})", proofs)
    return Finding(given.kind, f"{given.reason}; none planned", given.evidence)


def _planned(name: str, valueset: CompiledValueSet, ctx: Context) -> Iterator[tuple[Resource, str]]:
    for resource in ctx.record.resources("ImmunizationRecommendation"):
        for item in resource.get("recommendation") or ():
            concepts = (item.get("vaccineCode") or []) if isinstance(item, dict) else []
            matched = [c for c in concepts if valueset.matching_coding(codings(c))]
            if not matched or first_code(item.get("forecastStatus")) in ("complete", "contraindicated"):
                continue
            dates = [ctx.day(d.get("value")) for d in item.get("dateCriterion") or () if isinstance(d, dict)]
            if not dates or any(d is not None and d.last >= ctx.as_of for d in dates):
                yield resource, concept_label(matched[0], valueset)
    for resource in ctx.candidates(name, ("MedicationRequest", "ServiceRequest")):
        if resource.get("status") == "active" and resource.get("intent") != "proposal":
            code_field = (
                "code" if resource["resourceType"] == "ServiceRequest" else "medicationCodeableConcept"
            )
            yield resource, concept_label(resource.get(code_field), valueset)


def evaluate_encounter(rule: EncounterRule, ctx: Context) -> Finding:
    reason = ctx.valueset(rule.reason) if rule.reason else None
    classes = " or ".join(_CLASS_NAMES.get(c, c) for c in rule.classes)
    title = f"{classes} encounter" + (f" for {reason.title}" if reason else "")
    hits: list[Hit] = []
    for resource in ctx.record.resources("Encounter"):
        if resource.get("status") in ("cancelled", "entered-in-error", "planned"):
            continue
        encounter_class = resource.get("class")
        if not isinstance(encounter_class, dict) or encounter_class.get("code") not in rule.classes:
            continue
        label = _CLASS_NAMES.get(str(encounter_class.get("code")), "encounter")
        if reason is not None:
            matched = _encounter_reason(resource, reason, ctx)
            if matched is None:
                continue
            label = f"{label} for {matched}"
        day = period_start(resource.get("period"), ctx.tz)
        hits.append((resource, day, label))
    return dated_events(hits, rule.window, ctx, title=title, min_count=rule.min_count)


_CLASS_NAMES = {"IMP": "inpatient", "EMER": "emergency", "ACUTE": "inpatient acute", "OBSENC": "observation",
                "AMB": "ambulatory", "HH": "home health", "VR": "virtual", "SS": "short stay",
                "NONAC": "inpatient non-acute", "PRENC": "pre-admission", "FLD": "field"}  # fmt: skip


def _encounter_reason(resource: Resource, reason: CompiledValueSet, ctx: Context) -> str | None:
    """The encounter's reason (reasonCode) or a diagnosis it names (a Condition) in the set."""
    for concept in resource.get("reasonCode") or ():
        if reason.matching_coding(codings(concept)):
            return concept_label(concept, reason)
    for link in [*(resource.get("diagnosis") or ()), *(resource.get("reasonReference") or ())]:
        target = link.get("condition", link) if isinstance(link, dict) else None
        condition = ctx.record.resolve(target, within=resource)
        code = condition.get("code") if condition is not None and status_counts(condition) else None
        if code is not None and reason.matching_coding(codings(code)):
            return concept_label(code, reason)
    return None


def _concepts(resource: Resource, name: str) -> list[object]:
    """R4 gives Procedure one category; later versions and some EHRs send a list: accept both."""
    value = resource.get(name)
    return value if isinstance(value, list) else [value]


def dated_events(
    hits: list[Hit], window: WindowSpec | None, ctx: Context, *, title: str, min_count: int = 1
) -> Finding:
    """At least ``min_count`` events (distinct days) in the window: found; one that may be: unsure."""
    start = window.start(ctx.as_of) if window is not None else None
    scope = f"{title} in the last {window}" if start else f"{title} recorded"
    inside: list[Hit] = []
    unsure: list[Hit] = []
    for hit in hits:
        day = hit[1]
        if day is not None and day.first > ctx.as_of:
            continue
        if day is None:
            where = "inside" if start is None else "unsure"
        else:
            where = place(day, start=start, end=ctx.as_of)
        if where != "outside":
            (inside if where == "inside" else unsure).append(hit)
    inside.sort(key=_order)
    unsure.sort(key=_order)
    count = distinct_days([h[1] for h in inside])
    if inside and count >= min_count:
        return _events_finding("found", inside, min_count)
    if unsure and count + distinct_days([h[1] for h in unsure]) >= min_count:
        return _events_finding(
            "undetermined", unsure, min_count, suffix=": date too imprecise for the window"
        )
    if inside:
        reason = f"{plural(count, title)} in the window, {min_count} needed: " + _last(inside)
        return Finding("absent", reason, _proofs(inside))
    return Finding("absent", f"no {scope}")


def _order(hit: Hit) -> tuple[date, str]:
    return (hit[1].last if hit[1] else date.min, str(hit[0].get("id")))


def _last(group: list[Hit]) -> str:
    _, day, label = group[-1]
    when = f" on {day}" if day else " (undated)"
    return f"{label}{when}"


def _proofs(group: list[Hit]) -> tuple[Evidence, ...]:
    return tuple(evidence(r, value=label, day=d) for r, d, label in group)


def _events_finding(kind: str, group: list[Hit], min_count: int, suffix: str = "") -> Finding:
    count = f" ({distinct_days([h[1] for h in group])} in all)" if min_count > 1 else more(len(group) - 1)
    return Finding(kind, f"{_last(group)}{count}{suffix}", _proofs(group))  # type: ignore[arg-type]


def evaluate_allergy(rule: AllergyRule, ctx: Context) -> Finding:
    valueset = ctx.valueset(rule.valueset) if rule.valueset else None
    patterns = [re.compile(p, re.IGNORECASE) for p in rule.text_patterns]
    hits = []
    for resource in ctx.record.resources("AllergyIntolerance"):
        if first_code(resource.get("verificationStatus")) in CONDITION_IGNORED:
            continue
        severe = (
            rule.severity == "any"
            or resource.get("criticality") == "high"
            or any(
                isinstance(r, dict) and r.get("severity") == "severe" for r in resource.get("reaction") or ()
            )
        )
        named = _names_substance(resource, valueset, patterns)
        if severe and named:
            hits.append((resource, named))
    what = "severe allergy" if rule.severity == "severe" else "allergy or intolerance"
    if not hits:
        return Finding("absent", f"no {what} to a listed substance recorded")
    hits.sort(key=lambda h: str(h[0].get("id")))
    proofs = tuple(evidence(r, value=name) for r, name in hits)
    return Finding("found", f"{what} recorded: {hits[0][1]}", proofs)


def _names_substance(
    resource: Resource, valueset: CompiledValueSet | None, patterns: list[re.Pattern[str]]
) -> str | None:
    concepts = [resource.get("code")] + [
        r.get("substance") for r in resource.get("reaction") or () if isinstance(r, dict)
    ]
    for concept in concepts:
        if valueset and valueset.matching_coding(codings(concept)):
            return concept_label(concept, valueset)
        texts = [c.get("display") for c in codings(concept)]
        texts.append(concept.get("text") if isinstance(concept, dict) else None)
        for text in texts:
            if isinstance(text, str) and any(p.search(text) for p in patterns):
                return text
    return None
