"""The data the loaded trials need, derived from the rules, kind by kind.

Each data rule kind declares what it reads (resource types, and for Observations and Immunizations
the codes a search can be narrowed to). The CDS Hooks prefetch templates, the hook's FHIR
fallback, the SMART app's fetches and a Bulk export's ``_type`` are all rendered from this one
description (``cds_service.fhir.queries``), so nothing describes the service's data needs twice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cds_service.engine.kinds import COMBINATORS
from cds_service.engine.loader import Catalog
from cds_service.engine.model import (
    RULE_KINDS,
    ComputedRule,
    ConditionRule,
    ImmunizationRule,
    LabRule,
    MedicationRule,
    ProcedureRule,
)

ALL = "*"  # a value set a code search cannot express (ICD-10-CM prefixes): fetch the whole type


@dataclass
class DataNeeds:
    """Resource types, and the ``system|code`` tokens a search of each type may be narrowed to."""

    observation_codes: set[str] = field(default_factory=set)
    finding_codes: set[str] = field(default_factory=set)  # Observation code or coded value
    vaccine_codes: set[str] = field(default_factory=set)
    types: set[str] = field(default_factory=lambda: {"Patient"})

    def resource_types(self) -> list[str]:
        found = set(self.types)
        if self.observation_codes or self.finding_codes:
            found.add("Observation")
        if self.vaccine_codes:
            found.add("Immunization")
        if found & {"MedicationRequest", "MedicationStatement", "MedicationAdministration"}:
            found.add("Medication")  # orders name their drug through a Medication resource
        return sorted(found)


def _tokens(catalog: Catalog, valueset_id: str) -> set[str]:
    valueset = catalog.valuesets[valueset_id]
    if not valueset.exact_only:
        return {ALL}
    return {f"{system}|{code}" for system, code in valueset.listed}


def _none(rule: Any, catalog: Catalog, needs: DataNeeds) -> None:
    """Age and sex: the Patient, which every record has."""


def _condition(rule: ConditionRule, catalog: Catalog, needs: DataNeeds) -> None:
    needs.types.add("Condition")
    if "Observation" in rule.resources:
        needs.finding_codes |= _tokens(catalog, rule.valueset)


def _lab(rule: LabRule, catalog: Catalog, needs: DataNeeds) -> None:
    needs.observation_codes |= _tokens(catalog, rule.valueset)


def _computed(rule: ComputedRule, catalog: Catalog, needs: DataNeeds) -> None:
    for item in (rule.creatinine, rule.weight, rule.height):
        if item is not None:
            needs.observation_codes |= _tokens(catalog, item.valueset)


def _medication(rule: MedicationRule, catalog: Catalog, needs: DataNeeds) -> None:
    needs.types |= set(rule.resources)


def _procedure(rule: ProcedureRule, catalog: Catalog, needs: DataNeeds) -> None:
    needs.types |= {"Procedure", "ServiceRequest"} if rule.planned else {"Procedure"}


def _immunization(rule: ImmunizationRule, catalog: Catalog, needs: DataNeeds) -> None:
    needs.vaccine_codes |= _tokens(catalog, rule.valueset)
    if rule.planned:
        needs.types |= {"ImmunizationRecommendation", "MedicationRequest"}


def _types(*resource_types: str) -> Callable[[Any, Catalog, DataNeeds], None]:
    def add(rule: Any, catalog: Catalog, needs: DataNeeds) -> None:
        needs.types |= set(resource_types)

    return add


NEEDS: dict[str, Callable[[Any, Catalog, DataNeeds], None]] = {
    "age": _none,
    "sex": _none,
    "condition": _condition,
    "lab": _lab,
    "computed": _computed,
    "medication": _medication,
    "procedure": _procedure,
    "immunization": _immunization,
    "allergy": _types("AllergyIntolerance"),
    "encounter": _types("Encounter", "Condition"),
}
if set(NEEDS) | COMBINATORS != set(RULE_KINDS):  # pragma: no cover - caught by every test run
    raise RuntimeError(f"rule kinds without data needs: {set(RULE_KINDS) - set(NEEDS) - COMBINATORS}")


def data_needs(catalog: Catalog, trial_ids: list[str] | None = None) -> DataNeeds:
    """What every loaded trial (or the named ones) reads."""
    needs = DataNeeds()
    trials = [catalog.trial(t) for t in trial_ids] if trial_ids else list(catalog.trials.values())
    for trial in trials:
        for criterion in trial.criteria:
            for rule in criterion.rules():  # the deciding rule's, and a manual criterion's hint
                if rule.kind not in COMBINATORS:
                    NEEDS[rule.kind](rule, catalog, needs)
    return needs
