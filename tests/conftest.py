"""Shared fixtures. ``../shared`` (heavy data) is optional: tests that need it skip, saying why."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest

from cds_service.engine.loader import Catalog, load_catalog
from tests.fhir_fixtures import fhir_server, synthea_dir, synthetic_patients

__all__ = ["fhir_server", "synthea_dir", "synthetic_patients"]

# The whole run's logs go to test-artifacts/test-run.log and must hold no test patient's data or
# secret: the run fails otherwise (see tests/support/log_capture.py).
pytest_plugins = ["tests.support.log_capture"]

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
ALL_CONSTRUCTS = DATA / "all-constructs"
MORE_CONSTRUCTS = DATA / "more-constructs"
SHARED = REPO.parent / "shared"
SHARED_SYNTHEA = SHARED / "data" / "synthea"


@cache
def packaged_catalog() -> Catalog:
    return load_catalog()


@cache
def all_constructs_catalog() -> Catalog:
    return load_catalog(ALL_CONSTRUCTS)


@cache
def more_constructs_catalog() -> Catalog:
    return load_catalog(MORE_CONSTRUCTS)


@pytest.fixture
def catalog() -> Catalog:
    return packaged_catalog()


def needs_shared() -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        not SHARED_SYNTHEA.is_dir(),
        reason=f"{SHARED_SYNTHEA} is absent (a newcomer's clone has no ../shared); extended data test",
    )
