"""Test vectors beside the mappings: ``mappings/tests/<trial>/*.yaml`` (or .json).

Each file: ``{trial, cases: [{name, as_of, resources | bundle, expected: {criteria, status?,
evidence?, reasons?}}]}``. A Patient (female, born 1980-01-01) is added to ``resources`` when none
is given, so a vector shows only the data that matters to it. ``check-mappings`` and the test
suite run the same vectors through this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from cds_service.engine.evaluate import evaluate
from cds_service.engine.loader import Catalog, _validate, read_data
from cds_service.engine.model import Result, Slug, Strict
from cds_service.engine.report import Status, TrialResult
from cds_service.engine.time import parse_as_of
from cds_service.errors import CdsServiceError
from cds_service.record import build_record

DEFAULT_PATIENT = {
    "resourceType": "Patient",
    "id": "p1",
    "gender": "female",
    "birthDate": "1980-01-01",
}


class Expected(Strict):
    criteria: dict[Slug, Result] = Field(default_factory=dict)
    status: Status | None = None
    evidence: dict[Slug, list[str]] = Field(default_factory=dict)
    reasons: dict[Slug, str] = Field(default_factory=dict)
    absent_from_reasons: dict[Slug, str] = Field(
        default_factory=dict, description="text the reason must not contain (a note for another branch)"
    )
    error: str | None = Field(default=None, description="the record is refused with this message part")


class Case(Strict):
    name: str = Field(min_length=1)
    as_of: str
    resources: list[dict[str, Any]] | None = None
    bundle: dict[str, Any] | None = None
    expected: Expected

    @model_validator(mode="after")
    def _data(self) -> Case:
        parse_as_of(self.as_of)
        if (self.resources is None) == (self.bundle is None):
            raise ValueError("a case needs exactly one of resources, bundle")
        return self

    def parts(self) -> list[Any]:
        if self.bundle is not None:
            return [self.bundle]
        resources = list(self.resources or [])
        if not any(r.get("resourceType") == "Patient" for r in resources):
            resources.insert(0, dict(DEFAULT_PATIENT))
        return resources


class VectorFile(Strict):
    trial: str
    description: str | None = None
    cases: list[Case] = Field(min_length=1)


@dataclass(frozen=True)
class LoadedCase:
    path: Path
    trial: str
    case: Case

    @property
    def label(self) -> str:
        return f"{self.path.parent.name}/{self.path.stem}: {self.case.name}"


def load_vectors(root: Path) -> list[LoadedCase]:
    """Every case under ``root/tests``, validated against the vector format."""
    loaded: list[LoadedCase] = []
    for path in sorted((root / "tests").glob("*/*")):
        if path.suffix not in (".yaml", ".yml", ".json"):
            continue
        vector: VectorFile = _validate(VectorFile, read_data(path), path)
        loaded.extend(LoadedCase(path=path, trial=vector.trial, case=case) for case in vector.cases)
    return loaded


def run_case(catalog: Catalog, loaded: LoadedCase) -> list[str]:
    """What differs from the expectation (empty when the case passes)."""
    case = loaded.case
    try:
        record = build_record(case.parts())
        report = evaluate(catalog, record, as_of=parse_as_of(case.as_of), trial_ids=[loaded.trial])
    except CdsServiceError as exc:
        if case.expected.error and case.expected.error in str(exc):
            return []
        return [f"refused: {exc}"]
    if case.expected.error:
        return [f"expected the record to be refused ({case.expected.error!r}), it was accepted"]
    return _differences(report.trials[0], case.expected)


def _differences(result: TrialResult, expected: Expected) -> list[str]:
    problems = []
    if expected.status and result.status != expected.status:
        problems.append(f"status: expected {expected.status}, got {result.status}")
    for criterion_id, wanted in expected.criteria.items():
        try:
            got = result.criterion(criterion_id)
        except KeyError:
            problems.append(f"{criterion_id}: no such criterion")
            continue
        if got.result != wanted:
            problems.append(f"{criterion_id}: expected {wanted}, got {got.result} ({got.reason})")
    for criterion_id, references in expected.evidence.items():
        shown = {e.reference for e in result.criterion(criterion_id).evidence}
        missing = [r for r in references if r not in shown]
        if missing:
            problems.append(f"{criterion_id}: evidence lacks {missing} (has {sorted(shown)})")
    for criterion_id, fragment in expected.reasons.items():
        reason = result.criterion(criterion_id).reason
        if fragment not in reason:
            problems.append(f"{criterion_id}: reason {reason!r} lacks {fragment!r}")
    for criterion_id, fragment in expected.absent_from_reasons.items():
        reason = result.criterion(criterion_id).reason
        if fragment in reason:
            problems.append(f"{criterion_id}: reason {reason!r} should not say {fragment!r}")
    return problems
