"""The Spark engine (local[2], one session for the module) gives the local engine's files exactly."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.screen.conftest import screen

pytestmark = [
    pytest.mark.spark,
    # py4j leaves sockets of finished local iterators to the garbage collector
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]


def _missing() -> str | None:
    if importlib.util.find_spec("pyspark") is None:
        return 'pyspark is not installed (pip install "cds-service[spark]")'
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        return "no Java runtime (apt-get install openjdk-17-jre-headless)"
    return None


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    reason = _missing()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Spark tests: {reason}")
        pytest.skip(reason)
    from cds_service.screen.spark import spark_session

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    session, _ = spark_session(2)
    yield session
    session.stop()


def test_spark_writes_the_same_files_as_the_local_engine(
    spark: Any,
    population: tuple[Path, dict[str, Any]],
    screened: tuple[Path, dict[str, Any]],
    tmp_path: Path,
) -> None:
    out = tmp_path / "spark"
    summary, _ = screen(population[0], out, workers=2, engine="spark")
    local_out, local_summary = screened
    for name in ("results.csv", "reports.ndjson", "worklist.html"):
        assert (out / name).read_bytes() == (local_out / name).read_bytes(), name
    volatile = {"seconds", "engine"}
    assert {k: v for k, v in summary.items() if k not in volatile} == {
        k: v for k, v in local_summary.items() if k not in volatile
    }
    assert summary["engine"] == "spark" and summary["patients"] == len(population[1]["patients"])
    if importlib.util.find_spec("pyarrow") is not None:
        import pyarrow.parquet as pq

        assert pq.read_table(out / "results.parquet").equals(pq.read_table(local_out / "results.parquet"))


def test_spark_reports_a_missing_medication_like_the_local_engine(spark: Any, tmp_path: Path) -> None:
    import json

    source = tmp_path / "export"
    source.mkdir()
    rows = [
        {"resourceType": "Patient", "id": "p1", "birthDate": "1980-01-01"},
        {
            "resourceType": "MedicationRequest",
            "id": "m1",
            "status": "active",
            "intent": "order",
            "subject": {"reference": "Patient/p1"},
            "medicationReference": {"reference": "Medication/absent"},
        },
    ]
    (source / "all.ndjson").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    local, _ = screen(source, tmp_path / "local", workers=1)
    remote, _ = screen(source, tmp_path / "spark", workers=2, engine="spark")
    assert remote["skipped"] == local["skipped"]
    assert local["skipped"][0]["reason"].startswith("Medication an order refers to")
    assert local["skipped"][0]["examples"] == [{"file": str(source / "all.ndjson"), "line": 2}]
