"""The rules a criterion is made of: one closed set of kinds, declared once.

A rule is written in a mapping as a one-key mapping, ``{lab: {...}}``, ``{any: [...]}``; on load it
becomes one member of the discriminated union ``Rule`` (tag ``kind``). The loader validates through
that union, the engine dispatches on ``kind`` (``cds_service.engine.kinds``), the data needs are
derived per kind, and ``mappings/RULES.md`` is generated from the same classes, their docstrings
and field descriptions, so adding a kind is one class here and one evaluator there.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Annotated, Any, ClassVar, Literal, Union, get_args

from pydantic import BeforeValidator, Field, field_validator, model_validator

from cds_service.engine.model.base import AbsentResult, FoundResult, Strict, ValueSetRef
from cds_service.engine.time import Window


class Leaf(Strict):
    """What every data rule shares: what finding data, or finding none, means."""

    if_found: FoundResult = Field(default="met", description="'unknown' when a match only raises a question")
    if_absent: AbsentResult | None = Field(
        default=None, description="default: not-met for history (conditions, drugs, events), unknown for labs"
    )
    absent_unknown_only_if: Rule | None = Field(
        default=None, description="when data is absent: unknown if this rule is met, otherwise not-met"
    )
    note: str | None = Field(
        default=None, description="added to the reason when this rule found what it looks for (a review hint)"
    )

    VALUESET_FIELDS: ClassVar[tuple[str, ...]] = ("valueset",)
    DEFAULT_ABSENT: ClassVar[AbsentResult] = "not-met"

    def valueset_refs(self) -> set[str]:
        return {str(v) for v in (getattr(self, name, None) for name in self.VALUESET_FIELDS) if v}

    def subrules(self) -> tuple[Rule, ...]:
        return (self.absent_unknown_only_if,) if self.absent_unknown_only_if is not None else ()


# ---------------------------------------------------------------------------------------------
# Demographics


class AgeRule(Strict):
    """Age in completed years on the evaluation date. No birth date, or a partial one that could fall
    on either side of a limit: unknown."""

    kind: Literal["age"] = "age"
    min: int | None = Field(default=None, ge=0, le=130, description="at least this age")
    max: int | None = Field(default=None, ge=0, le=130, description="at most this age")

    @model_validator(mode="after")
    def _bounded(self) -> AgeRule:
        if self.min is None and self.max is None:
            raise ValueError("age needs min or max")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("age min is above max")
        return self

    def valueset_refs(self) -> set[str]:
        return set()

    def subrules(self) -> tuple[Rule, ...]:
        return ()


class SexRule(Strict):
    """Administrative gender (Patient.gender) as the protocol's sex restriction. ``other``, ``unknown``
    or no gender recorded: unknown (never assumed)."""

    kind: Literal["sex"] = "sex"
    is_: Literal["female", "male"] = Field(alias="is", description="female or male")

    def valueset_refs(self) -> set[str]:
        return set()

    def subrules(self) -> tuple[Rule, ...]:
        return ()


# ---------------------------------------------------------------------------------------------
# Diagnoses and findings

ConditionSource = Literal["Condition", "Observation"]


class ConditionRule(Leaf):
    """A diagnosis (or, with ``resources``, a coded finding) current, within a window, or ever;
    optionally with a stage, severity or body site, or at least ``min_count`` episodes."""

    kind: Literal["condition"] = "condition"
    valueset: ValueSetRef = Field(description="codes matched in Condition.code")
    except_valueset: ValueSetRef | None = Field(
        default=None, description="Conditions coded in this set are ignored"
    )
    when: Literal["current", "within", "ever"] = Field(
        description="current: active and not abated; within: current or onset/abatement in the window; ever"
    )
    window: Window | None = Field(default=None, description="required with when: within")
    onset_within: Window | None = Field(
        default=None, description="the onset (or recordedDate standing in for it) must fall in this window"
    )
    at_least_ago: Window | None = Field(
        default=None, description="the onset must lie at least this long before the evaluation date"
    )
    stage: ValueSetRef | None = Field(default=None, description="Condition.stage.summary must be in this set")
    severity: ValueSetRef | None = Field(default=None, description="Condition.severity must be in this set")
    body_site: ValueSetRef | None = Field(default=None, description="Condition.bodySite must be in this set")
    min_count: int = Field(default=1, ge=1, description="at least this many episodes (distinct onset days)")
    resources: list[ConditionSource] = Field(
        default_factory=lambda: list[ConditionSource](["Condition"]),
        min_length=1,
        description="[Condition, Observation] also matches coded findings (code or value), by date",
    )

    VALUESET_FIELDS: ClassVar[tuple[str, ...]] = (
        "valueset",
        "except_valueset",
        "stage",
        "severity",
        "body_site",
    )

    @model_validator(mode="after")
    def _window_iff_within(self) -> ConditionRule:
        if (self.when == "within") != (self.window is not None):
            raise ValueError("window is required with when: within, and only then")
        return self


# ---------------------------------------------------------------------------------------------
# Laboratory results, scores and measurements


class Threshold(Strict):
    """A comparison in the criterion's unit (UCUM), or relative to the result's own reference range."""

    op: Literal[">", ">=", "<", "<="] = Field(description="the comparison")
    value: float = Field(description="the limit (× ULN / LLN with relative_to)")
    unit: str | None = Field(default=None, description="UCUM; absent for scores and unitless results")
    relative_to: Literal["upper-limit", "lower-limit"] | None = Field(
        default=None, description="value × the result's own upper (ULN) or lower (LLN) reference limit"
    )

    @field_validator("unit")
    @classmethod
    def _ucum(cls, value: str | None) -> str | None:
        if value is not None:
            from cds_service.engine.units import parse_unit

            parse_unit(value)
        return value

    @model_validator(mode="after")
    def _unit_or_relative(self) -> Threshold:
        if self.relative_to is not None and self.unit is not None:
            raise ValueError("a threshold relative to a reference limit takes no unit (it is × ULN / × LLN)")
        return self


class ComponentMatch(Strict):
    """Another component the same result must carry: one coded in ``code`` whose coded value is in
    ``answer`` (a variant result counts only for the gene studied: 48018-6 = HGNC:8975 PIK3CA)."""

    code: ValueSetRef = Field(description="the other component's code (gene studied 48018-6)")
    answer: ValueSetRef = Field(description="its coded value (HGNC:8975 PIK3CA)")


class LabRule(Leaf):
    """Results (Observation value, component or panel member): a threshold, a positive finding, or a
    coded answer. The latest result decides (``pick: any``: any result may decide)."""

    kind: Literal["lab"] = "lab"
    valueset: ValueSetRef = Field(description="codes matched in Observation.code or a component's code")
    window: Window | None = Field(default=None, description="absent: results of any date count")
    pick: Literal["latest", "any"] = Field(default="latest", description="latest result decides, or any")
    threshold: Threshold | None = Field(default=None, description="compare a number or score")
    finding: Literal["positive", "recorded"] | None = Field(
        default=None, description="positive: a positive / negative reading; recorded: any readable result"
    )
    answer: ValueSetRef | None = Field(default=None, description="value set of coded answers that meet")
    against: ValueSetRef | None = Field(
        default=None, description="with answer: coded answers that do not meet (others: unknown)"
    )
    scale: ValueSetRef | None = Field(
        default=None, description="with threshold: coded answers scored through this set (ECOG LA codes)"
    )
    titer_cutoff: int = Field(default=80, gt=0, description="1:N titers at or above N are positive")
    molar_mass: str | None = Field(default=None, description="e.g. '113.12 g/mol' for mass↔molar")
    with_component: ComponentMatch | None = Field(
        default=None, description="only results that also carry this coded component (gene studied)"
    )

    VALUESET_FIELDS: ClassVar[tuple[str, ...]] = ("valueset", "answer", "against", "scale")

    def valueset_refs(self) -> set[str]:
        refs = super().valueset_refs()
        if self.with_component is not None:
            refs |= {self.with_component.code, self.with_component.answer}
        return refs

    DEFAULT_ABSENT: ClassVar[AbsentResult] = "unknown"

    @model_validator(mode="after")
    def _one_test(self) -> LabRule:
        tests = [t for t in (self.threshold, self.finding, self.answer) if t is not None]
        if len(tests) != 1:
            raise ValueError("a lab rule needs exactly one of threshold, finding, answer")
        if self.against is not None and self.answer is None:
            raise ValueError("against is only for answer rules")
        if self.scale is not None and self.threshold is None:
            raise ValueError("scale is only for threshold rules")
        if self.molar_mass is not None:
            from cds_service.engine.units import parse_quantity

            parse_quantity(self.molar_mass)
        return self


class MeasureInput(Strict):
    """A measurement a computed measure reads: the latest result of the set within the window."""

    valueset: ValueSetRef = Field(description="codes of the measurement (creatinine 2160-0, ...)")
    window: Window | None = Field(default=None, description="absent: any date")


Measure = Literal["egfr-ckd-epi-2021", "bmi", "crcl-cockcroft-gault"]
MEASURE_INPUTS: dict[str, tuple[str, ...]] = {
    "egfr-ckd-epi-2021": ("creatinine",),
    "bmi": ("weight", "height"),
    "crcl-cockcroft-gault": ("creatinine", "weight"),
}
MEASURE_UNITS: dict[str, str] = {
    "egfr-ckd-epi-2021": "mL/min/{1.73_m2}",
    "bmi": "kg/m2",
    "crcl-cockcroft-gault": "mL/min",
}


class ComputedRule(Leaf):
    """A measure the engine computes from the record (eGFR CKD-EPI 2021, BMI, Cockcroft–Gault creatinine
    clearance), every input shown as evidence; unknown when an input is missing, too old or in a unit
    that cannot be converted."""

    kind: Literal["computed"] = "computed"
    measure: Measure = Field(description="which formula (see the module's citations)")
    threshold: Threshold = Field(description="in a unit the measure converts to")
    creatinine: MeasureInput | None = Field(default=None, description="serum creatinine (eGFR, CrCl)")
    weight: MeasureInput | None = Field(default=None, description="body weight (BMI, CrCl)")
    height: MeasureInput | None = Field(default=None, description="body height (BMI)")

    DEFAULT_ABSENT: ClassVar[AbsentResult] = "unknown"

    @model_validator(mode="after")
    def _inputs(self) -> ComputedRule:
        needed = MEASURE_INPUTS[self.measure]
        missing = [name for name in needed if getattr(self, name) is None]
        extra = [n for n in ("creatinine", "weight", "height") if n not in needed and getattr(self, n)]
        if missing or extra:
            raise ValueError(
                f"{self.measure} reads {', '.join(needed)} (missing {missing}, not read {extra})"
            )
        if self.threshold.relative_to is not None or self.threshold.unit is None:
            raise ValueError(f"a {self.measure} threshold needs a unit like {MEASURE_UNITS[self.measure]!r}")
        from cds_service.engine.units import factor

        if factor(self.threshold.unit, MEASURE_UNITS[self.measure]) is None:
            raise ValueError(f"unit {self.threshold.unit!r} cannot express {MEASURE_UNITS[self.measure]}")
        return self

    def valueset_refs(self) -> set[str]:
        return {i.valueset for i in (self.creatinine, self.weight, self.height) if i is not None}


# ---------------------------------------------------------------------------------------------
# Medications

MedicationSource = Literal["MedicationRequest", "MedicationStatement", "MedicationAdministration"]


class Lines(Strict):
    """Distinct lines (regimens) of the drugs in the set: drugs first given within ``same_line_within``
    of a line's first drug belong to that line; a later start of a drug not in the previous line
    begins a new line."""

    min: int | None = Field(default=None, ge=0, description="at least this many lines")
    max: int | None = Field(default=None, ge=0, description="at most this many lines")
    same_line_within: Window = Field(
        default="28d", validate_default=True, description="drugs started this close form one line"
    )

    @model_validator(mode="after")
    def _bounded(self) -> Lines:
        if self.min is None and self.max is None:
            raise ValueError("lines needs min or max")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("lines min is above max")
        return self


class MedicationRule(Leaf):
    """Medications by ingredient or clinical drug: on it now, ever received, given in a window
    (washouts), with duration, daily dose and span, distinct courses, or distinct prior lines."""

    kind: Literal["medication"] = "medication"
    valueset: ValueSetRef = Field(
        description="ingredients and clinical drugs (matched in the order, its Medication, ingredients)"
    )
    when: Literal["active", "within", "started-within", "ever"] = Field(
        description="active now; taken in the window; started in the window; ever recorded"
    )
    window: Window | None = Field(default=None, description="required with within / started-within")
    min_duration: Window | None = Field(
        default=None, description="with active: started at least this long ago"
    )
    min_daily_dose: str | None = Field(default=None, description="UCUM quantity, e.g. '100 mg'")
    min_span: Window | None = Field(default=None, description="at that dose for at least this long")
    min_count: int = Field(default=1, ge=1, description="at least this many distinct courses (start days)")
    lines: Lines | None = Field(default=None, description="count distinct lines of therapy instead")
    resources: list[MedicationSource] = Field(
        default_factory=lambda: list[MedicationSource](["MedicationRequest", "MedicationStatement"]),
        min_length=1,
        description="which resources record the medication",
    )

    @model_validator(mode="after")
    def _consistent(self) -> MedicationRule:
        windowed = self.when in ("within", "started-within")
        if windowed != (self.window is not None):
            raise ValueError("window is required with when: within / started-within, and only then")
        if self.min_duration is not None and self.when != "active":
            raise ValueError("min_duration is only for when: active")
        if (self.min_daily_dose is None) and self.min_span is not None:
            raise ValueError("min_span needs min_daily_dose")
        if self.lines is not None and (self.min_daily_dose or self.min_count > 1 or self.when == "active"):
            raise ValueError("lines counts regimens: not with active, min_daily_dose or min_count")
        if self.min_daily_dose is not None:
            from cds_service.engine.units import parse_quantity

            parse_quantity(self.min_daily_dose)
        return self


# ---------------------------------------------------------------------------------------------
# Dated events


class ProcedureRule(Leaf):
    """Procedures by code and/or category, ever or within a window, at least ``min_count`` times."""

    kind: Literal["procedure"] = "procedure"
    valueset: ValueSetRef | None = Field(default=None, description="codes matched in Procedure.code")
    category: ValueSetRef | None = Field(default=None, description="codes matched in Procedure.category")
    except_valueset: ValueSetRef | None = None
    window: Window | None = Field(default=None, description="absent: ever")
    at_least_ago: Window | None = Field(default=None, description="performed at least this long ago")
    min_count: int = Field(default=1, ge=1, description="at least this many (distinct days)")
    planned: bool = Field(default=False, description="also count an active order (ServiceRequest) for it")

    VALUESET_FIELDS: ClassVar[tuple[str, ...]] = ("valueset", "category", "except_valueset")

    @model_validator(mode="after")
    def _something_to_match(self) -> ProcedureRule:
        if self.valueset is None and self.category is None:
            raise ValueError("a procedure rule needs valueset or category")
        if self.planned and self.valueset is None:
            raise ValueError("planned procedures are matched by valueset")
        return self


class ImmunizationRule(Leaf):
    """Vaccines given (completed Immunizations) ever or within a window, and optionally planned ones."""

    kind: Literal["immunization"] = "immunization"
    valueset: ValueSetRef = Field(description="vaccine codes (CVX; leading zeros do not matter)")
    window: Window | None = Field(default=None, description="absent: ever")
    planned: bool = Field(default=False, description="also count doses planned from now on")


class AllergyRule(Leaf):
    """An allergy or intolerance to a named substance: severe ones only (criticality high, or a
    severe reaction) unless ``severity: any``."""

    kind: Literal["allergy"] = "allergy"
    valueset: ValueSetRef | None = Field(default=None, description="substance codes")
    severity: Literal["severe", "any"] = Field(default="severe", description="severe only, or any")
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


EncounterClass = Literal["IMP", "EMER", "ACUTE", "NONAC", "OBSENC", "PRENC", "SS", "AMB", "HH", "VR", "FLD"]


class EncounterRule(Leaf):
    """Encounters of a class (IMP inpatient, EMER emergency, ...) for a reason, within a window, at
    least ``min_count`` times: hospitalisations for heart failure, exacerbations seen in the ED."""

    kind: Literal["encounter"] = "encounter"
    classes: list[EncounterClass] = Field(alias="class", min_length=1, description="v3 ActCode classes")
    reason: ValueSetRef | None = Field(
        default=None, description="codes in reasonCode, or in a Condition the encounter names as diagnosis"
    )
    window: Window | None = Field(default=None, description="absent: ever")
    min_count: int = Field(default=1, ge=1, description="at least this many (distinct admission days)")

    VALUESET_FIELDS: ClassVar[tuple[str, ...]] = ("reason",)


# ---------------------------------------------------------------------------------------------
# Combinators (Kleene three-valued logic)


class AnyRule(Strict):
    """Met if some child is met, not-met if every child is not-met, otherwise unknown."""

    kind: Literal["any"] = "any"
    any: list[Rule] = Field(min_length=1, description="the rules")

    def valueset_refs(self) -> set[str]:
        return set()

    def subrules(self) -> tuple[Rule, ...]:
        return tuple(self.any)


class AllRule(Strict):
    """Met if every child is met, not-met if some child is not-met, otherwise unknown."""

    kind: Literal["all"] = "all"
    all: list[Rule] = Field(min_length=1, description="the rules")

    def valueset_refs(self) -> set[str]:
        return set()

    def subrules(self) -> tuple[Rule, ...]:
        return tuple(self.all)


class NotRule(Strict):
    """Met if the child is not-met, not-met if it is met, unknown if it is unknown."""

    kind: Literal["not"] = "not"
    not_: Rule = Field(alias="not", description="the rule")

    def valueset_refs(self) -> set[str]:
        return set()

    def subrules(self) -> tuple[Rule, ...]:
        return (self.not_,)


class AtLeastRule(Strict):
    """Met if at least ``n`` children are met; not-met if so many are not-met that ``n`` can no
    longer be reached; otherwise unknown ("at least 2 of the following")."""

    kind: Literal["at_least"] = "at_least"
    n: int = Field(ge=1, description="how many must be met")
    of: list[Rule] = Field(min_length=2, description="the rules")

    @model_validator(mode="after")
    def _reachable(self) -> AtLeastRule:
        if self.n > len(self.of):
            raise ValueError(f"at_least n = {self.n} but only {len(self.of)} rules to choose from")
        return self

    def valueset_refs(self) -> set[str]:
        return set()

    def subrules(self) -> tuple[Rule, ...]:
        return tuple(self.of)


RuleModel = Union[  # noqa: UP007 - a discriminated union reads best spelt out
    AgeRule,
    SexRule,
    ConditionRule,
    LabRule,
    ComputedRule,
    MedicationRule,
    ProcedureRule,
    ImmunizationRule,
    AllergyRule,
    EncounterRule,
    AnyRule,
    AllRule,
    NotRule,
    AtLeastRule,
]
RULE_MODELS: tuple[type[Strict], ...] = get_args(RuleModel)
RULE_KINDS: dict[str, type[Strict]] = {m.model_fields["kind"].default: m for m in RULE_MODELS}
_LIST_COMBINATORS = frozenset({"any", "all"})


def _keyed(value: Any) -> Any:
    """``{lab: {...}}`` (the mapping-file form) → ``{kind: lab, ...}`` for the tagged union."""
    if not isinstance(value, dict) or "kind" in value:
        return value
    if len(value) != 1:
        got = ", ".join(sorted(map(str, value))) or "nothing"
        raise ValueError(f"a rule needs exactly one of {', '.join(RULE_KINDS)} (got {got})")
    ((name, body),) = value.items()
    if name not in RULE_KINDS:
        raise ValueError(f"unknown rule kind {name!r}; use one of {', '.join(RULE_KINDS)}")
    if name in _LIST_COMBINATORS or name == "not":
        return {"kind": name, name: body}
    if not isinstance(body, dict):
        raise ValueError(f"{name}: expected a mapping of its fields")
    if "kind" in body:
        raise ValueError(f"{name}: 'kind' is not a field (the rule's key names its kind)")
    return {"kind": name, **body}


Rule = Annotated[RuleModel, Field(discriminator="kind"), BeforeValidator(_keyed)]

LEAF_MODELS: tuple[type[Leaf], ...] = tuple(m for m in RULE_MODELS if issubclass(m, Leaf))
_RECURSIVE: tuple[type[Strict], ...] = (*LEAF_MODELS, AnyRule, AllRule, NotRule, AtLeastRule, Leaf)
for _model in _RECURSIVE:
    _model.model_rebuild()


def walk(rule: RuleModel) -> Iterator[RuleModel]:
    """The rule and every rule inside it (children and absence guards), depth first."""
    yield rule
    for child in rule.subrules():
        yield from walk(child)
