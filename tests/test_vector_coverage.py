"""The packaged trials are exercised by their vectors: every criterion, every result it can take."""

from __future__ import annotations

from cds_service.engine.loader import DEFAULT_MAPPINGS
from cds_service.engine.vectors import load_vectors
from tests.conftest import packaged_catalog

PACKAGED = load_vectors(DEFAULT_MAPPINGS)


def test_every_packaged_criterion_has_vectors_for_each_result_it_can_take() -> None:
    """Each criterion of each trial is exercised; non-manual ones reach at least two results."""
    catalog = packaged_catalog()
    for trial in catalog.trials.values():
        seen: dict[str, set[str]] = {c.id: set() for c in trial.criteria}
        for loaded in PACKAGED:
            if loaded.trial == trial.trial:
                for criterion_id, result in loaded.case.expected.criteria.items():
                    seen.setdefault(criterion_id, set()).add(result)
        for criterion in trial.criteria:
            wanted = 1 if criterion.manual and criterion.rule is None else 2
            assert len(seen[criterion.id]) >= wanted, (trial.trial, criterion.id, seen[criterion.id])
