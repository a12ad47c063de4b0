"""Evaluate trials against a patient record: Kleene three-valued logic over data rules.

A data rule first reports what it saw (a Finding); the mapping's ``if_found`` / ``if_absent``
policy then turns that into met / not-met / unknown. ``any`` / ``all`` / ``not`` combine results
(Kleene), keeping the reasons and evidence of the children that decided.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date
from typing import Any

from cds_service.engine.conditions import evaluate_condition
from cds_service.engine.context import Context
from cds_service.engine.events import (
    evaluate_age,
    evaluate_allergy,
    evaluate_immunization,
    evaluate_procedure,
)
from cds_service.engine.facts import Finding
from cds_service.engine.labs import evaluate_lab
from cds_service.engine.loader import Catalog
from cds_service.engine.medications import evaluate_medication
from cds_service.engine.model import Criterion, Leaf, Rule, Trial
from cds_service.engine.report import (
    CriterionResult,
    EligibilityReport,
    Evidence,
    ResultValue,
    Status,
    TrialResult,
)
from cds_service.engine.time import day_range
from cds_service.record import PatientRecord

MANUAL_REASON = "requires clinician review"


@dataclass(frozen=True)
class Outcome:
    result: ResultValue
    reason: str
    evidence: tuple[Evidence, ...] = ()


_LEAVES: dict[str, Callable[[Any, Context], Finding]] = {
    "age": evaluate_age,
    "condition": evaluate_condition,
    "lab": evaluate_lab,
    "medication": evaluate_medication,
    "procedure": evaluate_procedure,
    "immunization": evaluate_immunization,
    "allergy": evaluate_allergy,
}


def evaluate(
    catalog: Catalog, record: PatientRecord, *, as_of: date, trial_ids: Iterable[str] | None = None
) -> EligibilityReport:
    """The eligibility report for every trial (or the named ones) on ``as_of``."""
    ctx = Context(record=record, valuesets=catalog.valuesets, as_of=as_of)
    chosen = [catalog.trial(t) for t in trial_ids] if trial_ids else list(catalog.trials.values())
    try:
        trials = [evaluate_trial(trial, ctx) for trial in chosen]
    except (TypeError, AttributeError, ValueError, KeyError):
        # The rules read resources leniently but not every malformed shape: find the resource that
        # is not valid FHIR and say so (InvalidResource); if all are valid, this is our bug.
        for resource in record.all_resources():
            record.validate(resource)
        raise
    return EligibilityReport(patient=record.reference, as_of=as_of.isoformat(), trials=trials)


def evaluate_trial(trial: Trial, ctx: Context) -> TrialResult:
    results = [evaluate_criterion(criterion, ctx) for criterion in trial.criteria]
    return TrialResult(
        trial=trial.trial,
        title=trial.title,
        status=trial_status(results, deceased=is_deceased(ctx)),
        criteria=results,
    )


def trial_status(results: list[CriterionResult], *, deceased: bool) -> Status:
    """not-eligible on any decisive failure; likely-eligible when only manual items remain."""
    if deceased:
        return "not-eligible"
    failing = {"inclusion": "not-met", "exclusion": "met"}
    passing = {"inclusion": "met", "exclusion": "not-met"}
    if any(r.result == failing[r.kind] for r in results):
        return "not-eligible"
    if all(r.result == passing[r.kind] or (r.manual and r.result == "unknown") for r in results):
        return "likely-eligible"
    return "needs-review"


def is_deceased(ctx: Context) -> bool:
    patient = ctx.record.patient
    if patient.get("deceasedBoolean") is True:
        return True
    died = day_range(patient.get("deceasedDateTime"))
    return died is not None and died.first <= ctx.as_of


def evaluate_criterion(criterion: Criterion, ctx: Context) -> CriterionResult:
    outcome = Outcome("unknown", MANUAL_REASON)
    if criterion.rule is not None:
        outcome = evaluate_rule(criterion.rule, ctx)
        if criterion.manual and outcome.result != "met":
            detail = f" ({outcome.reason})" if outcome.result != "unknown" else ""
            outcome = Outcome("unknown", f"{MANUAL_REASON}{detail}", ())
    for item in outcome.evidence:  # what a clinician is shown as proof must be valid FHIR R4
        resource = ctx.record.by_url.get(item.reference)
        if resource is not None:
            ctx.record.validate(resource)
    reason = outcome.reason
    if criterion.note:
        reason = f"{reason}; {criterion.note}"
    return CriterionResult(
        id=criterion.id,
        kind=criterion.kind,
        result=outcome.result,
        manual=criterion.manual,
        reason=reason,
        evidence=sorted(set(outcome.evidence), key=_evidence_order),
    )


def _evidence_order(item: Evidence) -> tuple[str, str, str]:
    return (item.date or "", item.reference, item.value or "")


def evaluate_rule(rule: Rule, ctx: Context) -> Outcome:
    if rule.any is not None:
        return _combine("any", [evaluate_rule(child, ctx) for child in rule.any])
    if rule.all is not None:
        return _combine("all", [evaluate_rule(child, ctx) for child in rule.all])
    if rule.not_ is not None:
        inner = evaluate_rule(rule.not_, ctx)
        flipped = {"met": "not-met", "not-met": "met", "unknown": "unknown"}[inner.result]
        return Outcome(flipped, f"not ({inner.reason})", inner.evidence)  # type: ignore[arg-type]
    for name, evaluator in _LEAVES.items():
        leaf = getattr(rule, name)
        if leaf is not None:
            return _apply_policy(leaf, evaluator(leaf, ctx), ctx, is_lab=name == "lab")
    raise AssertionError("unreachable: the model requires exactly one rule kind")


def _apply_policy(leaf: Any, finding: Finding, ctx: Context, *, is_lab: bool) -> Outcome:
    outcome = _policy_result(leaf, finding, ctx, is_lab=is_lab)
    note = getattr(leaf, "note", None)
    if note:
        return Outcome(outcome.result, f"{outcome.reason} ({note})", outcome.evidence)
    return outcome


def _policy_result(leaf: Any, finding: Finding, ctx: Context, *, is_lab: bool) -> Outcome:
    if finding.kind == "found":
        found = leaf.if_found if isinstance(leaf, Leaf) else "met"
        return Outcome(found, finding.reason, finding.evidence)
    if finding.kind == "against":
        return Outcome("not-met", finding.reason, finding.evidence)
    if finding.kind == "undetermined":
        return Outcome("unknown", finding.reason, finding.evidence)
    if not isinstance(leaf, Leaf):
        return Outcome("unknown", finding.reason)
    if leaf.absent_unknown_only_if is not None:
        guard = evaluate_rule(leaf.absent_unknown_only_if, ctx)
        if guard.result == "met":
            return Outcome("unknown", f"{finding.reason}, and {guard.reason}", guard.evidence)
        return Outcome("not-met", finding.reason)
    return Outcome(leaf.if_absent or ("unknown" if is_lab else "not-met"), finding.reason)


def _combine(mode: str, children: list[Outcome]) -> Outcome:
    """Kleene any/all, explaining the result by the children that decided it."""
    decisive = "met" if mode == "any" else "not-met"
    other = "not-met" if mode == "any" else "met"
    for wanted in (decisive, "unknown", other):
        chosen = [c for c in children if c.result == wanted]
        if chosen:
            if wanted == other and len(chosen) != len(children):
                continue
            reason = "; ".join(dict.fromkeys(c.reason for c in chosen))
            proofs = tuple(e for c in chosen for e in c.evidence)
            return Outcome(wanted, reason, proofs)  # type: ignore[arg-type]
    raise AssertionError("unreachable: any/all have at least one child")
