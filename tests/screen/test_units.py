"""Small parts of the screen: reference forms, data needs, progress lines, CSV cells."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from cds_service.screen.needs import needed_types, type_filters
from cds_service.screen.outputs import csv_bytes
from cds_service.screen.progress import Progress
from cds_service.screen.source import medication_id, patient_id
from tests.conftest import packaged_catalog


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("Patient/abc-1", "abc-1"),
        ("https://ehr.example.org/fhir/Patient/abc-1", "abc-1"),
        ("Patient/abc-1/_history/3", "abc-1"),
        ("urn:uuid:6f1c1c8e-6a1b-4b8e-9d57-1c7b3f0b2a11", "6f1c1c8e-6a1b-4b8e-9d57-1c7b3f0b2a11"),
        ("Group/g1", None),
        ("#contained", None),
        ("Patient/bad id", None),
        ("Patient/a\tb", None),
    ],
)
def test_patient_reference_forms(reference: str, expected: str | None) -> None:
    assert patient_id({"reference": reference}) == expected


def test_medication_references_outside_the_order_only() -> None:
    assert medication_id({"reference": "Medication/m1"}) == "m1"
    assert medication_id({"reference": "urn:uuid:m-2"}) == "m-2"
    assert medication_id({"reference": "#med"}) is None and medication_id(None) is None


def test_needs_follow_the_prefetch_queries() -> None:
    catalog = packaged_catalog()
    types = needed_types(catalog)
    assert {"Patient", "Condition", "Observation", "MedicationRequest", "Medication"} <= types
    assert "Claim" not in types and "ExplanationOfBenefit" not in types
    for item in type_filters(catalog):
        rtype, _, query = item.partition("?")
        assert rtype in types and "," not in query and "patient=" not in query  # commas escaped


def test_progress_plain_lines_and_terminal_bar() -> None:
    now = [0.0]
    plain = io.StringIO()
    bar = Progress("reading", 1000, "patients", stream=plain, tty=False, interval=10, clock=lambda: now[0])
    for step in range(1, 31):
        now[0] = step
        bar.update(step * 10)
    bar.finish()
    lines = plain.getvalue().splitlines()
    assert len(lines) == 4  # every 10 s, and the end
    assert lines[0].startswith("reading: 10.0% (100 patients / 1,000 patients), 10 patients/s")
    assert "ETA 01:30" in lines[0]
    tty = io.StringIO()
    bar = Progress("screening", 200, "patients", stream=tty, tty=True, clock=lambda: now[0])
    now[0] += 1
    bar.update(100)
    assert "\r\x1b[2K" in tty.getvalue() and "█" * 14 in tty.getvalue() and "ETA" in tty.getvalue()


def test_csv_cells_that_a_spreadsheet_would_run_are_neutralised() -> None:
    row = {
        "patient": "-1+2",
        "trial": "T",
        "status": "needs-review",
        "met": 1,
        "not_met": 0,
        "unknown": 2,
        "manual": 1,
        "rules_out": "",
        "rules_out_reason": '=HYPERLINK("http://x")',
        "to_review": "@SUM(A1)",
        "as_of": "2026-06-01",
    }
    line = csv_bytes([row]).decode()
    assert line.startswith("'-1+2,T,needs-review,1,0,2,1,,")
    assert "'=HYPERLINK" in line and "'@SUM(A1)" in line


def test_parquet_parts_stream_in_row_groups_and_an_empty_shard_still_has_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shard's Parquet rows are written every ROW_GROUP rows (memory per worker stays flat however
    many patients × trials a shard holds), and read back whole and in order."""
    pq = pytest.importorskip("pyarrow.parquet")
    from cds_service.screen import outputs
    from cds_service.screen.patient import Outcome

    monkeypatch.setattr(outputs, "ROW_GROUP", 4)
    writer = outputs.PartWriter(tmp_path, 0, parquet=True)
    for n in range(7):  # 7 patients × 2 trials = 14 rows: row groups of ≥ 4, the last one short
        rows = tuple(
            {c: (n if c in outputs.INTEGER_COLUMNS else f"{c}-{n}-{t}") for c in outputs.COLUMNS}
            for t in ("A", "B")
        )
        writer.add(Outcome(f"p{n}", report=b"{}", rows=rows))
        if n == 1:
            assert writer._rows == [], "the first 4 rows are already on disk"
    writer.close()
    part = pq.ParquetFile(tmp_path / "00000.parquet")
    assert part.metadata.num_rows == 14 and part.num_row_groups == 4
    assert part.read().column("patient").to_pylist() == [f"patient-{n}-{t}" for n in range(7) for t in "AB"]
    empty = outputs.PartWriter(tmp_path, 1, parquet=True)
    empty.close()
    assert pq.ParquetFile(tmp_path / "00001.parquet").metadata.num_rows == 0
