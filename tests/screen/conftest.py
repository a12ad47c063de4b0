"""Fixtures for the population screen: a small generated export, screened once per session."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import orjson
import pytest

from benchmarks.make_population import generate
from cds_service.screen.run import ScreenOptions, run_screen
from tests.conftest import packaged_catalog

AS_OF = date(2026, 6, 1)
POPULATION = 40


def screen(source: Path, out: Path, **options: Any) -> tuple[dict[str, Any], str]:
    """Run a screen in this process; the summary and what it printed on stderr."""
    stream = io.StringIO()
    summary = run_screen(ScreenOptions(source=source, out=out, as_of=AS_OF, stream=stream, **options))
    return summary, stream.getvalue()


@pytest.fixture(scope="session")
def population(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A generated export of POPULATION patients (every type) and its key."""
    out = tmp_path_factory.mktemp("population") / "export"
    key = generate(POPULATION, out, seed=11, files_per_type=3, catalog=packaged_catalog())
    return out, key


@pytest.fixture(scope="session")
def screened(
    population: tuple[Path, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, Any]]:
    """The population screened by the local engine with 2 workers."""
    out = tmp_path_factory.mktemp("screened")
    summary, _ = screen(population[0], out, workers=2)
    return out, summary


def read_ndjson(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, "rb") as f:
        for line in f:
            yield orjson.loads(line)
