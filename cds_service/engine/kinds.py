"""Each data rule kind's evaluator, keyed by the kind the model declares.

The model's discriminated union (``model.rules``) is the one list of kinds; this table must cover
it exactly, which is checked when the module is imported, so a kind added to the model without an
evaluator fails every run at once rather than at the first patient who needs it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cds_service.engine.conditions import evaluate_condition
from cds_service.engine.context import Context
from cds_service.engine.demographics import evaluate_age, evaluate_sex
from cds_service.engine.events import (
    evaluate_allergy,
    evaluate_encounter,
    evaluate_immunization,
    evaluate_procedure,
)
from cds_service.engine.facts import Finding
from cds_service.engine.labs import evaluate_lab
from cds_service.engine.measures import evaluate_computed
from cds_service.engine.medications import evaluate_medication
from cds_service.engine.model import RULE_KINDS

DataRule = Callable[[Any, Context], Finding]

EVALUATORS: dict[str, DataRule] = {
    "age": evaluate_age,
    "sex": evaluate_sex,
    "condition": evaluate_condition,
    "lab": evaluate_lab,
    "computed": evaluate_computed,
    "medication": evaluate_medication,
    "procedure": evaluate_procedure,
    "immunization": evaluate_immunization,
    "allergy": evaluate_allergy,
    "encounter": evaluate_encounter,
}
COMBINATORS = frozenset({"any", "all", "not", "at_least"})

_missing = set(RULE_KINDS) - set(EVALUATORS) - COMBINATORS
_unknown = (set(EVALUATORS) | COMBINATORS) - set(RULE_KINDS)
if _missing or _unknown:  # pragma: no cover - a programming error, caught by every test run
    raise RuntimeError(f"rule kinds without an evaluator: {_missing}; evaluators without a kind: {_unknown}")
