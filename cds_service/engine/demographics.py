"""Age and sex, from the Patient resource."""

from __future__ import annotations

from cds_service.engine.context import Context
from cds_service.engine.facts import Finding, evidence
from cds_service.engine.model import AgeRule, SexRule
from cds_service.engine.time import age_on, day_range

_GENDERS = {"female": "female", "male": "male"}


def evaluate_age(rule: AgeRule, ctx: Context) -> Finding:
    patient = ctx.record.patient
    born = day_range(patient.get("birthDate"))
    if born is None:
        return Finding("undetermined", "no birth date recorded")
    youngest, oldest = age_on(born.last, ctx.as_of), age_on(born.first, ctx.as_of)
    low = f"≥ {rule.min}" if rule.min is not None else ""
    high = f"≤ {rule.max}" if rule.max is not None else ""
    bounds = " and ".join(b for b in (low, high) if b)

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


def evaluate_sex(rule: SexRule, ctx: Context) -> Finding:
    """Patient.gender is administrative gender: 'other' and 'unknown' say nothing about sex."""
    patient = ctx.record.patient
    gender = patient.get("gender")
    if gender not in _GENDERS:
        shown = f"gender recorded as {gender!r}" if isinstance(gender, str) else "no gender recorded"
        return Finding("undetermined", f"{shown} (the trial enrols {rule.is_} patients)")
    proof = (evidence(patient, value=f"gender {gender}"),)
    if gender == rule.is_:
        return Finding("found", f"{gender} (the trial enrols {rule.is_} patients)", proof)
    return Finding("against", f"{gender} (the trial enrols {rule.is_} patients only)", proof)
