"""Evaluate trials against a patient record: Kleene three-valued logic over data rules.

A data rule first reports what it saw (a Finding); the mapping's ``if_found`` / ``if_absent``
policy then turns that into met / not-met / unknown. ``any`` / ``all`` / ``not`` / ``at_least``
combine results (Kleene), keeping the reasons and evidence of the children that decided; a rule's
``note`` joins its reason only when that rule's own data decided it.

Work the trials share is done once per patient: equal rules (by their canonical form, computed at
load) and equal criteria are evaluated once and their results reused, so fifty trials built from
the same building blocks cost little more than one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, tzinfo

from cds_service.engine.context import Context
from cds_service.engine.facts import Finding
from cds_service.engine.kinds import EVALUATORS
from cds_service.engine.loader import Catalog
from cds_service.engine.model import AllRule, AnyRule, AtLeastRule, Criterion, Leaf, NotRule, RuleModel, Trial
from cds_service.engine.report import (
    CriterionResult,
    EligibilityReport,
    Evidence,
    ResultValue,
    Status,
    TrialResult,
)
from cds_service.engine.time import day_range
from cds_service.errors import InvalidResource
from cds_service.record import PatientRecord

MANUAL_REASON = "requires clinician review"
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Outcome:
    result: ResultValue
    reason: str
    evidence: tuple[Evidence, ...] = ()


def evaluate(
    catalog: Catalog,
    record: PatientRecord,
    *,
    as_of: date,
    trial_ids: Iterable[str] | None = None,
    tz: tzinfo = UTC,
) -> EligibilityReport:
    """The eligibility report for every trial (or the named ones) on ``as_of`` (the site's date)."""
    ctx = Context(record=record, catalog=catalog, as_of=as_of, tz=tz)
    chosen = list(catalog.trials.values()) if trial_ids is None else [catalog.trial(t) for t in trial_ids]
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
        version=trial.version,
        effective=trial.effective.isoformat(),
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
    died = day_range(patient.get("deceasedDateTime"), ctx.tz)
    return died is not None and died.first <= ctx.as_of


def evaluate_criterion(criterion: Criterion, ctx: Context) -> CriterionResult:
    key = ctx.catalog.key(criterion)  # equal criteria (a copied trial's) share one evaluation
    cached = ctx.memo.get(key)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    result = _evaluate_criterion(criterion, ctx)
    ctx.memo[key] = result
    return result


def _with_valid_evidence(outcome: Outcome, ctx: Context) -> Outcome:
    """What a clinician is shown as proof must be valid FHIR R4. When an entry that decided is not,
    the criterion is not decided by it: ``unknown``, naming the entry and its first bad field, so
    a malformed record moves a patient toward review, never toward eligible, and the rest of the
    report (and every other trial's card) still stands."""
    for item in outcome.evidence:
        resource = ctx.record.by_url.get(item.reference)
        if resource is None:
            continue
        try:
            ctx.record.validate(resource)
        except InvalidResource as exc:
            log.warning("evidence not valid FHIR R4 (%s.%s): criterion left unknown", _type(exc), exc.field)
            reason = f"not decided: the {_type(exc)} it rests on is not valid FHIR R4 ({exc.field})"
            return Outcome("unknown", f"{reason}; check it in the chart")
    return outcome


def _type(exc: InvalidResource) -> str:
    return exc.reference.split("/", 1)[0]


def _evaluate_criterion(criterion: Criterion, ctx: Context) -> CriterionResult:
    outcome = Outcome("unknown", MANUAL_REASON)
    if criterion.hint is not None:  # shown to the reviewer, never deciding
        hint = evaluate_rule(criterion.hint, ctx)
        if hint.evidence or hint.result != "not-met":
            outcome = Outcome("unknown", f"{MANUAL_REASON}; recorded: {hint.reason}", hint.evidence)
    if criterion.rule is not None:
        outcome = evaluate_rule(criterion.rule, ctx)
        if criterion.manual and outcome.result != "met":
            detail = f" ({outcome.reason})" if outcome.result != "unknown" else ""
            outcome = Outcome("unknown", f"{MANUAL_REASON}{detail}", ())
    outcome = _with_valid_evidence(outcome, ctx)
    reason = f"{outcome.reason}; {criterion.note}" if criterion.note else outcome.reason
    return CriterionResult(
        id=criterion.id,
        label=criterion.short_label(),
        kind=criterion.kind,
        result=outcome.result,
        manual=criterion.manual,
        reason=reason,
        evidence=sorted(set(outcome.evidence), key=_evidence_order),
    )


def _evidence_order(item: Evidence) -> tuple[str, str, str]:
    return (item.date or "", item.reference, item.value or "")


def evaluate_rule(rule: RuleModel, ctx: Context) -> Outcome:
    """The rule's outcome for this patient, worked out once per distinct rule."""
    key = ctx.catalog.rule_keys.get(id(rule))
    if key is not None:
        cached = ctx.memo.get(key)
        if cached is not None:
            return cached  # type: ignore[no-any-return]
    outcome = _evaluate_rule(rule, ctx)
    if key is not None:
        ctx.memo[key] = outcome
    return outcome


def _evaluate_rule(rule: RuleModel, ctx: Context) -> Outcome:
    if isinstance(rule, AnyRule):
        return combine("any", [evaluate_rule(child, ctx) for child in rule.any])
    if isinstance(rule, AllRule):
        return combine("all", [evaluate_rule(child, ctx) for child in rule.all])
    if isinstance(rule, NotRule):
        inner = evaluate_rule(rule.not_, ctx)
        flipped: ResultValue = {"met": "not-met", "not-met": "met", "unknown": "unknown"}[inner.result]  # type: ignore[assignment]
        return Outcome(flipped, inner.reason, inner.evidence)  # the reason says what the record holds
    if isinstance(rule, AtLeastRule):
        return at_least(rule.n, [evaluate_rule(child, ctx) for child in rule.of])
    finding = EVALUATORS[rule.kind](rule, ctx)
    return apply_policy(rule, finding, ctx)


def apply_policy(rule: RuleModel, finding: Finding, ctx: Context) -> Outcome:
    """Finding → result by the mapping's policy; the rule's note joins the reason only when this
    rule found what it looks for (the note explains that finding, and is false for any other)."""
    outcome = _policy_result(rule, finding, ctx)
    note = getattr(rule, "note", None)
    if note and finding.kind == "found":
        return Outcome(outcome.result, f"{outcome.reason} ({note})", outcome.evidence)
    return outcome


def _policy_result(rule: RuleModel, finding: Finding, ctx: Context) -> Outcome:
    if finding.kind == "found":
        found: ResultValue = rule.if_found if isinstance(rule, Leaf) else "met"
        return Outcome(found, finding.reason, finding.evidence)
    if finding.kind == "against":
        return Outcome("not-met", finding.reason, finding.evidence)
    if finding.kind == "undetermined":
        return Outcome("unknown", finding.reason, finding.evidence)
    if not isinstance(rule, Leaf):
        return Outcome("unknown", finding.reason, finding.evidence)
    if rule.absent_unknown_only_if is not None:
        guard = evaluate_rule(rule.absent_unknown_only_if, ctx)
        if guard.result == "met":
            return Outcome("unknown", f"{finding.reason}, and {guard.reason}", guard.evidence)
        return Outcome("not-met", finding.reason, finding.evidence)
    return Outcome(rule.if_absent or rule.DEFAULT_ABSENT, finding.reason, finding.evidence)


def combine(mode: str, children: list[Outcome]) -> Outcome:
    """Kleene any/all, explaining the result by the children that decided it."""
    decisive = "met" if mode == "any" else "not-met"
    other = "not-met" if mode == "any" else "met"
    for wanted in (decisive, "unknown", other):
        chosen = [c for c in children if c.result == wanted]
        if chosen:
            if wanted == other and len(chosen) != len(children):
                continue
            return _explained(wanted, chosen)  # type: ignore[arg-type]
    raise AssertionError("unreachable: any/all have at least one child")


def at_least(n: int, children: list[Outcome]) -> Outcome:
    """Kleene 'at least n of': met when ≥ n are met; not-met when too many are not-met for n to be
    reached; otherwise unknown. at_least(1) is any, at_least(len) is all."""
    met = [c for c in children if c.result == "met"]
    not_met = [c for c in children if c.result == "not-met"]
    unknown = [c for c in children if c.result == "unknown"]
    if len(met) >= n:
        return _explained("met", met, prefix=f"{len(met)} of {len(children)} (needs {n}): ")
    if len(children) - len(not_met) < n:
        return _explained(
            "not-met", not_met, prefix=f"{len(met)} of {len(children)} can be met (needs {n}): "
        )
    prefix = f"{len(met)} of {len(children)} met, {len(unknown)} to review (needs {n}): "
    return _explained("unknown", unknown + met, prefix=prefix)


def _explained(result: ResultValue, chosen: list[Outcome], *, prefix: str = "") -> Outcome:
    reason = prefix + "; ".join(dict.fromkeys(c.reason for c in chosen))
    proofs = tuple(e for c in chosen for e in c.evidence)
    return Outcome(result, reason, proofs)
