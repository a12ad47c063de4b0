"""The mapping model: what trial and value-set files parse into.

Criteria are data. Everything here is validated strictly when the files are loaded (unknown keys,
malformed codes, unparseable units, bad windows), so that no patient is ever evaluated against a
half-understood rule. The shapes are documented for mapping authors in ``mappings/README.md``.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from cds_service.codes import SYSTEM_ALIASES
from cds_service.engine.codecheck import check_code
from cds_service.engine.time import Window

Slug = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]*$", max_length=64)]
Result = Literal["met", "not-met", "unknown"]
FoundResult = Literal["met", "unknown"]
AbsentResult = Literal["not-met", "unknown"]
ConditionSource = Literal["Condition", "Observation"]
MedicationSource = Literal["MedicationRequest", "MedicationStatement"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------------------------------------
# Value sets


class CodeEntry(Strict):
    """One code (or, for ICD-10-CM, a ``C44*`` prefix or ``C00-C96`` category range)."""

    system: str
    code: str
    display: str | None = None
    strength: str | None = Field(
        default=None, description="per-unit strength of a clinical drug, e.g. '5 mg' (UCUM)"
    )

    @field_validator("system")
    @classmethod
    def _known_system(cls, value: str) -> str:
        if value in SYSTEM_ALIASES:
            return SYSTEM_ALIASES[value]
        if value in SYSTEM_ALIASES.values():
            return value
        raise ValueError(f"unknown code system {value!r}; use one of {sorted(SYSTEM_ALIASES)}")

    @model_validator(mode="after")
    def _well_formed(self) -> CodeEntry:
        check_code(system=self.system, code=self.code)
        if self.strength is not None:
            from cds_service.engine.units import parse_quantity

            parse_quantity(self.strength)
        return self


class ValueSet(Strict):
    """A named list of codes across code systems, with where the codes came from."""

    id: Slug
    title: str = Field(min_length=1, description="a clinician's name for it, used in reasons")
    sources: list[str] = Field(min_length=1)
    include: list[Slug] = Field(default_factory=list, description="other value sets merged in")
    codes: list[CodeEntry] = Field(default_factory=list)

    @model_validator(mode="after")
    def _not_empty(self) -> ValueSet:
        if not self.codes and not self.include:
            raise ValueError("a value set needs codes or include")
        return self


# ---------------------------------------------------------------------------------------------
# Rules


class Leaf(Strict):
    """What every data rule shares: what finding data, or finding none, means."""

    if_found: FoundResult = Field(default="met", description="'unknown' when a match only raises a question")
    if_absent: AbsentResult | None = Field(
        default=None, description="default: not-met for history, unknown for labs"
    )
    absent_unknown_only_if: Rule | None = Field(
        default=None,
        description="when data is absent: unknown if this rule is met, otherwise not-met",
    )
    note: str | None = Field(default=None, description="added to the reason, e.g. a review hint")


class AgeRule(Strict):
    min: int | None = Field(default=None, ge=0, le=130)
    max: int | None = Field(default=None, ge=0, le=130)

    @model_validator(mode="after")
    def _bounded(self) -> AgeRule:
        if self.min is None and self.max is None:
            raise ValueError("age needs min or max")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("age min is above max")
        return self


class ConditionRule(Leaf):
    """A diagnosis (or, with ``resources``, a coded finding) current, within a window, or ever."""

    valueset: Slug
    except_valueset: Slug | None = None
    when: Literal["current", "within", "ever"]
    window: Window | None = None
    resources: list[ConditionSource] = Field(
        default_factory=lambda: list[ConditionSource](["Condition"]), min_length=1
    )

    @model_validator(mode="after")
    def _window_iff_within(self) -> ConditionRule:
        if (self.when == "within") != (self.window is not None):
            raise ValueError("window is required with when: within, and only then")
        return self


class Threshold(Strict):
    op: Literal[">", ">=", "<", "<="]
    value: float
    unit: str

    @field_validator("unit")
    @classmethod
    def _ucum(cls, value: str) -> str:
        from cds_service.engine.units import parse_unit

        parse_unit(value)
        return value


class LabRule(Leaf):
    """Laboratory results: a threshold, a positive finding, or a coded answer."""

    valueset: Slug
    window: Window | None = Field(default=None, description="absent: results of any date count")
    pick: Literal["latest", "any"] = Field(
        default="latest", description="latest result decides, or any result may decide"
    )
    threshold: Threshold | None = None
    finding: Literal["positive"] | None = None
    answer: Slug | None = Field(default=None, description="value set of coded answers that meet")
    titer_cutoff: int = Field(default=80, gt=0, description="1:N titers at or above N are positive")
    molar_mass: str | None = Field(default=None, description="e.g. '113.12 g/mol' for mass↔molar")

    @model_validator(mode="after")
    def _one_test(self) -> LabRule:
        tests = [t for t in (self.threshold, self.finding, self.answer) if t is not None]
        if len(tests) != 1:
            raise ValueError("a lab rule needs exactly one of threshold, finding, answer")
        if self.molar_mass is not None:
            from cds_service.engine.units import parse_quantity

            parse_quantity(self.molar_mass)
        return self


class MedicationRule(Leaf):
    """Medications by ingredient or clinical drug: active now, in a window, with dose and span."""

    valueset: Slug
    when: Literal["active", "within", "started-within"]
    window: Window | None = None
    min_duration: Window | None = Field(default=None, description="started at least this long ago")
    min_daily_dose: str | None = Field(default=None, description="UCUM quantity, e.g. '100 mg'")
    min_span: Window | None = Field(default=None, description="at that dose for at least this long")
    resources: list[MedicationSource] = Field(
        default_factory=lambda: list[MedicationSource](["MedicationRequest", "MedicationStatement"]),
        min_length=1,
    )

    @model_validator(mode="after")
    def _consistent(self) -> MedicationRule:
        if (self.when != "active") != (self.window is not None):
            raise ValueError("window is required with when: within / started-within, and only then")
        if self.min_daily_dose is not None:
            from cds_service.engine.units import parse_quantity

            parse_quantity(self.min_daily_dose)
        return self


class ProcedureRule(Leaf):
    valueset: Slug | None = None
    category: Slug | None = Field(default=None, description="value set of Procedure.category codes")
    except_valueset: Slug | None = None
    window: Window | None = Field(default=None, description="absent: ever")

    @model_validator(mode="after")
    def _something_to_match(self) -> ProcedureRule:
        if self.valueset is None and self.category is None:
            raise ValueError("a procedure rule needs valueset or category")
        return self


class ImmunizationRule(Leaf):
    valueset: Slug
    window: Window | None = Field(default=None, description="absent: ever")
    planned: bool = Field(default=False, description="also count planned doses from now on")


class AllergyRule(Leaf):
    """A severe (criticality high or severe reaction) allergy to a named substance."""

    valueset: Slug | None = None
    text_patterns: list[str] = Field(default_factory=list, description="regexes, case-insensitive")

    @field_validator("text_patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"text pattern {pattern!r} is not a valid regex: {exc}") from exc
        return patterns

    @model_validator(mode="after")
    def _something_to_match(self) -> AllergyRule:
        if self.valueset is None and not self.text_patterns:
            raise ValueError("an allergy rule needs valueset or text_patterns")
        return self


class Rule(Strict):
    """Exactly one of: a data rule, or ``any`` / ``all`` / ``not`` of rules (Kleene logic)."""

    age: AgeRule | None = None
    condition: ConditionRule | None = None
    lab: LabRule | None = None
    medication: MedicationRule | None = None
    procedure: ProcedureRule | None = None
    immunization: ImmunizationRule | None = None
    allergy: AllergyRule | None = None
    any: list[Rule] | None = Field(default=None, min_length=1)
    all: list[Rule] | None = Field(default=None, min_length=1)
    not_: Rule | None = Field(default=None, alias="not")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _exactly_one(self) -> Rule:
        chosen = [name for name in type(self).model_fields if getattr(self, name) is not None]
        if len(chosen) != 1:
            raise ValueError(
                "a rule needs exactly one of age, condition, lab, medication, procedure, "
                f"immunization, allergy, any, all, not (got {chosen or 'none'})"
            )
        return self

    def valuesets(self) -> set[str]:
        """Every value-set id this rule (and its children) names."""
        found: set[str] = set()
        for name in type(self).model_fields:
            part = getattr(self, name)
            if isinstance(part, Rule):
                found |= part.valuesets()
            elif isinstance(part, list):
                for child in part:
                    found |= child.valuesets()
            elif isinstance(part, Leaf | AllergyRule):
                found |= _leaf_valuesets(part)
        return found


def _leaf_valuesets(leaf: BaseModel) -> set[str]:
    names = ("valueset", "except_valueset", "category", "answer")
    found = {getattr(leaf, n) for n in names if getattr(leaf, n, None) is not None}
    guard = getattr(leaf, "absent_unknown_only_if", None)
    if isinstance(guard, Rule):
        found |= guard.valuesets()
    return found


Leaf.model_rebuild()
ConditionRule.model_rebuild()
LabRule.model_rebuild()
MedicationRule.model_rebuild()
ProcedureRule.model_rebuild()
ImmunizationRule.model_rebuild()
AllergyRule.model_rebuild()


# ---------------------------------------------------------------------------------------------
# Trials


class Criterion(Strict):
    id: Slug
    kind: Literal["inclusion", "exclusion"]
    text: str = Field(min_length=1, description="the protocol's own wording")
    manual: bool = Field(default=False, description="needs a human; a rule may still decide 'met'")
    rule: Rule | None = None
    note: str | None = Field(default=None, description="review hint added to every reason")

    @model_validator(mode="after")
    def _rule_unless_manual(self) -> Criterion:
        if not self.manual and self.rule is None:
            raise ValueError("a criterion that is not manual needs a rule")
        return self


class Trial(Strict):
    trial: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
    title: str = Field(min_length=1)
    short_title: str = Field(min_length=1, max_length=40, description="for card summaries")
    url: Annotated[str, StringConstraints(pattern=r"^https://")]
    sources: list[str] = Field(default_factory=list)
    criteria: list[Criterion] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_ids(self) -> Trial:
        seen: set[str] = set()
        for criterion in self.criteria:
            if criterion.id in seen:
                raise ValueError(f"duplicate criterion id {criterion.id!r}")
            seen.add(criterion.id)
        return self

    def valuesets(self) -> set[str]:
        found: set[str] = set()
        for criterion in self.criteria:
            if criterion.rule is not None:
                found |= criterion.rule.valuesets()
        return found
