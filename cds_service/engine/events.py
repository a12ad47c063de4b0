"""Dated events and demographics: age, procedures, immunizations (given and planned), allergies."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import date

from cds_service.engine.context import Context
from cds_service.engine.facts import (
    CONDITION_IGNORED,
    Finding,
    candidates,
    concept_label,
    evidence,
    first_code,
    period_start,
    status_counts,
)
from cds_service.engine.model import AgeRule, AllergyRule, ImmunizationRule, ProcedureRule
from cds_service.engine.time import DayRange, WindowSpec, age_on, day_range, place
from cds_service.engine.valuesets import CompiledValueSet
from cds_service.record import Resource, codings, reference_of


def evaluate_age(rule: AgeRule, ctx: Context) -> Finding:
    patient = ctx.record.patient
    born = day_range(patient.get("birthDate"))
    if born is None:
        return Finding("undetermined", "no birth date recorded")
    youngest, oldest = age_on(born.last, ctx.as_of), age_on(born.first, ctx.as_of)
    bounds = f"{'≥ ' + str(rule.min) if rule.min is not None else ''}" + (
        f"{' and ' if rule.min is not None and rule.max is not None else ''}"
        f"{'≤ ' + str(rule.max) if rule.max is not None else ''}"
    )

    def fits(age: int) -> bool:
        return (rule.min is None or age >= rule.min) and (rule.max is None or age <= rule.max)

    age_text = str(youngest) if youngest == oldest else f"{youngest}-{oldest}"
    proof = (evidence(patient, value=f"born {born}", day=born),)
    reason = f"age {age_text} on {ctx.as_of.isoformat()}"
    if fits(youngest) and fits(oldest):
        return Finding("found", f"{reason} (needs {bounds})", proof)
    if not fits(youngest) and not fits(oldest):
        return Finding("against", f"{reason} (needs {bounds})", proof)
    return Finding("undetermined", f"{reason}: birth date too imprecise (needs {bounds})", proof)


def evaluate_procedure(rule: ProcedureRule, ctx: Context) -> Finding:
    codes = ctx.valueset(rule.valueset) if rule.valueset else None
    category = ctx.valueset(rule.category) if rule.category else None
    excluded = ctx.valueset(rule.except_valueset) if rule.except_valueset else None
    title = " / ".join(v.title for v in (codes, category) if v is not None)
    pool = candidates(ctx.record, codes, ("Procedure",)) if codes else iter(ctx.record.resources("Procedure"))
    hits = []
    for resource in pool:
        if not status_counts(resource) or resource.get("status") == "preparation":
            continue
        if category and not any(
            category.matching_coding(codings(c)) for c in _concepts(resource, "category")
        ):
            continue
        if excluded and excluded.matching_coding(codings(resource.get("code"))):
            continue
        day = day_range(resource.get("performedDateTime")) or period_start(resource.get("performedPeriod"))
        hits.append((resource, day))
    return _dated_events(hits, rule.window, ctx, title=title, valueset=codes)


def evaluate_immunization(rule: ImmunizationRule, ctx: Context) -> Finding:
    valueset = ctx.valueset(rule.valueset)
    hits = []
    for resource in candidates(ctx.record, valueset, ("Immunization",)):
        if resource.get("status") != "completed":
            continue  # not-done and entered-in-error doses were never given
        hits.append((resource, day_range(resource.get("occurrenceDateTime"))))
    given = _dated_events(hits, rule.window, ctx, title=valueset.title, valueset=valueset)
    if given.kind == "found" or not rule.planned:
        return given
    planned = sorted(_planned(valueset, ctx), key=lambda item: reference_of(item[0]))
    if planned:
        resource, label = planned[0]
        proofs = tuple(evidence(r, value=lbl) for r, lbl in planned)
        return Finding("found", f"{label} planned ({resource['resourceType']})", proofs)
    return Finding(given.kind, f"{given.reason}; none planned", given.evidence)


def _planned(valueset: CompiledValueSet, ctx: Context) -> Iterator[tuple[Resource, str]]:
    for resource in ctx.record.resources("ImmunizationRecommendation"):
        for item in resource.get("recommendation") or ():
            concepts = item.get("vaccineCode") or [] if isinstance(item, dict) else []
            matched = [c for c in concepts if valueset.matching_coding(codings(c))]
            if not matched or first_code(item.get("forecastStatus")) in (
                "complete",
                "contraindicated",
            ):
                continue
            dates = [
                day_range(d.get("value")) for d in item.get("dateCriterion") or () if isinstance(d, dict)
            ]
            if not dates or any(d is not None and d.last >= ctx.as_of for d in dates):
                yield resource, concept_label(matched[0], valueset)
    for resource in candidates(ctx.record, valueset, ("MedicationRequest", "ServiceRequest")):
        if resource.get("status") == "active" and resource.get("intent") != "proposal":
            code_field = (
                "code" if resource["resourceType"] == "ServiceRequest" else "medicationCodeableConcept"
            )
            yield resource, concept_label(resource.get(code_field), valueset)


def _concepts(resource: Resource, name: str) -> list[object]:
    """R4 gives Procedure one category; later versions and some EHRs send a list: accept both."""
    value = resource.get(name)
    return value if isinstance(value, list) else [value]


def _dated_events(
    hits: list[tuple[Resource, DayRange | None]],
    window: WindowSpec | None,
    ctx: Context,
    *,
    title: str,
    valueset: CompiledValueSet | None,
) -> Finding:
    start = window.start(ctx.as_of) if window is not None else None
    scope = f"{title} in the last {window}" if start else f"{title} recorded"
    inside: list[tuple[Resource, DayRange | None]] = []
    unsure: list[tuple[Resource, DayRange | None]] = []
    for resource, day in hits:
        if day is not None and day.first > ctx.as_of:
            continue
        where = (
            "inside"
            if start is None and day is None
            else ("unsure" if day is None else place(day, start=start, end=ctx.as_of))
        )
        if where != "outside":
            (inside if where == "inside" else unsure).append((resource, day))
    for kind, group in (("found", inside), ("undetermined", unsure)):
        if group:
            group.sort(key=lambda h: (h[1].last if h[1] else date.min, str(h[0].get("id"))))
            resource, day = group[-1]
            code_field = "vaccineCode" if resource["resourceType"] == "Immunization" else "code"
            label = concept_label(resource.get(code_field), valueset)
            when = f" on {day}" if day else " (undated)"
            more = f" (and {len(group) - 1} more)" if len(group) > 1 else ""
            suffix = "" if kind == "found" else ": date too imprecise for the window"
            proofs = tuple(
                evidence(r, value=concept_label(r.get(code_field), valueset), day=d) for r, d in group
            )
            return Finding(kind, f"{label}{when}{more}{suffix}", proofs)  # type: ignore[arg-type]
    return Finding("absent", f"no {scope}")


def evaluate_allergy(rule: AllergyRule, ctx: Context) -> Finding:
    valueset = ctx.valueset(rule.valueset) if rule.valueset else None
    patterns = [re.compile(p, re.IGNORECASE) for p in rule.text_patterns]
    hits = []
    for resource in ctx.record.resources("AllergyIntolerance"):
        if first_code(resource.get("verificationStatus")) in CONDITION_IGNORED:
            continue
        severe = resource.get("criticality") == "high" or any(
            isinstance(r, dict) and r.get("severity") == "severe" for r in resource.get("reaction") or ()
        )
        named = _names_substance(resource, valueset, patterns)
        if severe and named:
            hits.append((resource, named))
    if not hits:
        return Finding("absent", "no severe allergy to a listed substance recorded")
    hits.sort(key=lambda h: str(h[0].get("id")))
    proofs = tuple(evidence(r, value=name) for r, name in hits)
    return Finding("found", f"severe allergy recorded: {hits[0][1]}", proofs)


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
