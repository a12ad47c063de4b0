"""The mapping model: what trial and value-set files parse into.

Criteria are data. Everything here is validated strictly when the files are loaded (unknown keys,
malformed codes, unparseable units, bad windows, unknown rule kinds), so that no patient is ever
evaluated against a half-understood rule. The rule kinds are one discriminated union
(``rules.Rule``); ``mappings/README.md`` explains them and ``mappings/RULES.md`` lists every field.
"""

from cds_service.engine.model.base import AbsentResult, FoundResult, Result, Slug, Strict
from cds_service.engine.model.rules import (
    LEAF_MODELS,
    MEASURE_INPUTS,
    MEASURE_UNITS,
    RULE_KINDS,
    RULE_MODELS,
    AgeRule,
    AllergyRule,
    AllRule,
    AnyRule,
    AtLeastRule,
    ComputedRule,
    ConditionRule,
    EncounterRule,
    ImmunizationRule,
    LabRule,
    Leaf,
    Lines,
    MeasureInput,
    MedicationRule,
    NotRule,
    ProcedureRule,
    Rule,
    RuleModel,
    SexRule,
    Threshold,
    walk,
)
from cds_service.engine.model.trial import Criterion, Trial
from cds_service.engine.model.valuesets import CodeEntry, ValueSet, from_fhir_valueset

__all__ = [
    "LEAF_MODELS",
    "MEASURE_INPUTS",
    "MEASURE_UNITS",
    "RULE_KINDS",
    "RULE_MODELS",
    "AbsentResult",
    "AgeRule",
    "AllRule",
    "AllergyRule",
    "AnyRule",
    "AtLeastRule",
    "CodeEntry",
    "ComputedRule",
    "ConditionRule",
    "Criterion",
    "EncounterRule",
    "FoundResult",
    "ImmunizationRule",
    "LabRule",
    "Leaf",
    "Lines",
    "MeasureInput",
    "MedicationRule",
    "NotRule",
    "ProcedureRule",
    "Result",
    "Rule",
    "RuleModel",
    "SexRule",
    "Slug",
    "Strict",
    "Threshold",
    "Trial",
    "ValueSet",
    "from_fhir_valueset",
    "walk",
]
