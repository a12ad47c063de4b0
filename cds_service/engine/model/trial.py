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
    """One eligibility criterion: the protocol's wording, and the rule that decides it from data (or
    ``manual: true`` when data cannot)."""

    id: Slug = Field(description="unique in the trial; ids and order follow the specification")
    kind: Literal["inclusion", "exclusion"]
    label: str | None = Field(
        default=None,
        max_length=60,
        description="a clinician's short name for it, for cards ('SLE diagnosis')",
    )
    text: str = Field(min_length=1, description="the protocol's own wording")
    manual: bool = Field(default=False, description="needs a human; a rule may still decide 'met'")
    rule: Rule | None = None
    note: str | None = Field(default=None, description="review hint added to every reason of the criterion")
    hint: Rule | None = Field(
        default=None,
        description="manual criteria: a rule whose findings are shown to the reviewer but never decide",
    )

    @model_validator(mode="after")
    def _rule_unless_manual(self) -> Criterion:
        if not self.manual and self.rule is None:
            raise ValueError("a criterion that is not manual needs a rule")
        if self.hint is not None and not self.manual:
            raise ValueError("hint is for manual criteria (a rule decides the others)")
        return self

    def short_label(self, limit: int = 60) -> str:
        """Its ``label``, or the protocol wording cut at its first clause (cards, worklists)."""
        if self.label:
            return self.label
        text = " ".join(self.text.split())
        for stop in (". ", "; ", ": ", " (", ", "):
            head = text.split(stop, 1)[0]
            if 12 <= len(head) <= limit:
                return head.rstrip(".")
        return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"

    def rules(self) -> list[RuleModel]:
        found = list(walk(self.rule)) if self.rule is not None else []
        return found + (list(walk(self.hint)) if self.hint is not None else [])


class Trial(Strict):
    """One trial per file (``trials/<id>.yaml``): what it is, which mapping version, its criteria."""

    trial: TrialId = Field(description="the registry id (NCT...)")
    title: str = Field(min_length=1, description="the registry title")
    short_title: str = Field(min_length=1, max_length=40, description="for card summaries")
    url: Annotated[str, StringConstraints(pattern=r"^https://")] = Field(description="the registry page")
    version: Version = Field(description="the mapping's version, named in every report (e.g. '1.2')")
    effective: date = Field(description="the date this version of the mapping took effect")
    specification: str | None = Field(
        default=None, description="the criteria specification this mapping implements (a path)"
    )
    sources: list[str] = Field(default_factory=list, description="where the criteria were read")
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
