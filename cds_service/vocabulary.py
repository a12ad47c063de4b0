"""One vocabulary for statuses and criterion groups, shared by the cards, the SMART app and the CLI.

A clinician reads the same words wherever the report is shown: a trial is *likely eligible*, *needs
review* or is *not eligible*; each criterion *rules the patient out*, is *to review*, *meets* (an
inclusion), or is *absent — in the patient's favour* (an exclusion the record does not show).
"""

from __future__ import annotations

from typing import Literal

from cds_service.engine.model import Criterion
from cds_service.engine.report import CriterionResult, Status

Group = Literal["rules-out", "to-review", "meets", "in-favour"]

STATUS_WORDS: dict[Status, str] = {
    "likely-eligible": "Likely eligible",
    "needs-review": "Needs review",
    "not-eligible": "Not eligible",
}
GROUP_WORDS: dict[Group, str] = {
    "rules-out": "Rules the patient out",
    "to-review": "To review",
    "meets": "Meets",
    "in-favour": "Absent — in the patient's favour",
}
GROUP_ORDER: tuple[Group, ...] = ("rules-out", "to-review", "meets", "in-favour")


def group_of(result: CriterionResult) -> Group:
    if result.result == "unknown":
        return "to-review"
    if result.kind == "inclusion":
        return "meets" if result.result == "met" else "rules-out"
    return "rules-out" if result.result == "met" else "in-favour"


def label_of(criterion: Criterion, limit: int = 60) -> str:
    """The criterion's short label, or its protocol wording cut at the first clause."""
    return criterion.short_label(limit)
