"""Trials: criteria as data, each with the protocol's own wording and a rule (or manual)."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

from pydantic import Field, StringConstraints, model_validator

from cds_service.engine.model.base import Slug, Strict
from cds_service.engine.model.rules import Rule, RuleModel, walk

TrialId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=64)]
Version = Annotated[str, StringConstraints(pattern=r"^\d+\.\d+(\.\d+)?$")]


class Criterion(Strict):
    id: Slug
    kind: Literal["inclusion", "exclusion"]
    text: str = Field(min_length=1, description="the protocol's own wording")
    manual: bool = Field(default=False, description="needs a human; a rule may still decide 'met'")
    rule: Rule | None = None
    note: str | None = Field(default=None, description="review hint added to every reason of the criterion")

    @model_validator(mode="after")
    def _rule_unless_manual(self) -> Criterion:
        if not self.manual and self.rule is None:
            raise ValueError("a criterion that is not manual needs a rule")
        return self

    def rules(self) -> list[RuleModel]:
        return list(walk(self.rule)) if self.rule is not None else []


class Trial(Strict):
    trial: TrialId
    title: str = Field(min_length=1)
    short_title: str = Field(min_length=1, max_length=40, description="for card summaries")
    url: Annotated[str, StringConstraints(pattern=r"^https://")]
    version: Version = Field(description="the mapping's version, named in every report (e.g. '1.2')")
    effective: date = Field(description="the date this version of the mapping took effect")
    specification: str | None = Field(
        default=None, description="the criteria specification this mapping implements (a path)"
    )
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
        return {
            name for criterion in self.criteria for rule in criterion.rules() for name in rule.valueset_refs()
        }
