"""The eligibility report: the one public contract that cards, the SMART app and the CLI present.

``{"patient", "as_of", "trials": [{"trial", "title", "version", "effective", "status",
"criteria": [{"id", "kind", "result", "manual", "reason", "evidence": [{"reference", "value",
"date"}]}]}]}``. ``version`` and ``effective`` name the mapping that produced the result. Nothing in
it is ever null: an evidence item without a value or date simply omits that key.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Status = Literal["likely-eligible", "needs-review", "not-eligible"]
ResultValue = Literal["met", "not-met", "unknown"]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Evidence(_Frozen):
    reference: str = Field(description="Type/id of the resource that decided")
    value: str | None = Field(default=None, description="the value with its unit, as read")
    date: str | None = Field(default=None, description="YYYY-MM-DD (or partial) of the data")


class CriterionResult(_Frozen):
    id: str
    label: str | None = Field(default=None, description="a clinician's short name for the criterion")
    kind: Literal["inclusion", "exclusion"]
    result: ResultValue
    manual: bool
    reason: str = Field(min_length=1)
    evidence: list[Evidence] = Field(default_factory=list)


class TrialResult(_Frozen):
    trial: str
    title: str
    version: str = Field(description="the trial mapping's version")
    effective: str = Field(description="YYYY-MM-DD the mapping version took effect")
    status: Status
    criteria: list[CriterionResult]

    def criterion(self, criterion_id: str) -> CriterionResult:
        for item in self.criteria:
            if item.id == criterion_id:
                return item
        raise KeyError(criterion_id)


class EligibilityReport(_Frozen):
    patient: str
    as_of: str
    trials: list[TrialResult]

    def to_json_dict(self) -> dict[str, object]:
        return self.model_dump(mode="json", exclude_none=True)
