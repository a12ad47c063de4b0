"""Every test vector beside the mappings (and beside the test-only trial) passes, and is well-formed."""

from __future__ import annotations

from pathlib import Path

import pytest

from cds_service.engine.loader import DEFAULT_MAPPINGS
from cds_service.engine.vectors import LoadedCase, load_vectors, run_case
from cds_service.errors import MappingError
from tests.conftest import (
    ALL_CONSTRUCTS,
    MORE_CONSTRUCTS,
    all_constructs_catalog,
    more_constructs_catalog,
    packaged_catalog,
)

PACKAGED = load_vectors(DEFAULT_MAPPINGS)
TEST_ONLY = load_vectors(ALL_CONSTRUCTS)
MORE = load_vectors(MORE_CONSTRUCTS)


@pytest.mark.parametrize("loaded", PACKAGED, ids=lambda c: c.label)
def test_packaged_vector(loaded: LoadedCase) -> None:
    assert run_case(packaged_catalog(), loaded) == []


@pytest.mark.parametrize("loaded", TEST_ONLY, ids=lambda c: c.label)
def test_test_only_trial_vector(loaded: LoadedCase) -> None:
    assert run_case(all_constructs_catalog(), loaded) == []


@pytest.mark.parametrize("loaded", MORE, ids=lambda c: c.label)
def test_extended_format_vector(loaded: LoadedCase) -> None:
    assert run_case(more_constructs_catalog(), loaded) == []


def test_every_extended_construct_criterion_reaches_two_results() -> None:
    """The extended-format test trial pins each construct at two or more of its results."""
    seen: dict[str, set[str]] = {}
    for loaded in MORE:
        for criterion_id, result in loaded.case.expected.criteria.items():
            seen.setdefault(criterion_id, set()).add(result)
    for criterion in more_constructs_catalog().trial("TEST-MORE").criteria:
        assert len(seen.get(criterion.id, set())) >= (1 if criterion.manual else 2), criterion.id


def test_vector_format_is_checked(tmp_path: Path) -> None:
    """A vector with an unknown key or a bad date is refused, naming the file and the field."""
    (tmp_path / "tests" / "X").mkdir(parents=True)
    bad = tmp_path / "tests" / "X" / "bad.yaml"
    bad.write_text(
        "trial: X\ncases:\n  - name: n\n    as_of: '2026-13-01'\n    resources: []\n"
        "    expected: {criteria: {}, surprise: 1}\n"
    )
    with pytest.raises(MappingError) as err:
        load_vectors(tmp_path)
    message = str(err.value)
    assert "bad.yaml" in message and "surprise" in message
