"""The local engine: same reports as ``cds-service evaluate``, the generator's statuses, the files."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from cds_service.cli import main
from tests.screen.conftest import AS_OF, read_ndjson, screen


def test_statuses_are_the_templates_statuses(
    population: tuple[Path, dict[str, Any]], screened: tuple[Path, dict[str, Any]]
) -> None:
    _, key = population
    out, summary = screened
    expected = {pid: key["templates"][t]["expected"] for pid, t in key["patients"]}
    got: dict[str, dict[str, str]] = {}
    with open(out / "results.csv", newline="") as f:
        for row in csv.DictReader(f):
            got.setdefault(row["patient"], {})[row["trial"]] = row["status"]
    assert got == expected
    assert summary["patients"] == len(expected)
    counts = {s for t in summary["trials"].values() for s, n in t.items() if s != "title" and n}
    assert {"likely-eligible", "needs-review", "not-eligible"} <= counts  # the mix is there


def _bundle(population: Path, patient: str) -> dict[str, Any]:
    """The patient's lines from the export, in export order, as the Bundle evaluate reads."""
    from cds_service.screen.source import medication_id, patient_id

    lines = []
    for path in sorted(population.glob("*.ndjson")):
        lines += [json.loads(line) for line in path.read_text().splitlines()]
    mine = [
        r
        for r in lines
        if r["resourceType"] != "Medication"
        and (
            r.get("id") == patient
            if r["resourceType"] == "Patient"
            else patient in (patient_id(r.get("subject")), patient_id(r.get("patient")))
        )
    ]
    wanted = {medication_id(r.get("medicationReference")) for r in mine} - {None}
    mine += [r for r in lines if r["resourceType"] == "Medication" and r["id"] in wanted]
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in mine],
    }


def test_reports_equal_cds_service_evaluate(
    population: tuple[Path, dict[str, Any]],
    screened: tuple[Path, dict[str, Any]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every patient's report in reports.ndjson is exactly what ``cds-service evaluate --json`` prints."""
    reports = {r["patient"]: r for r in read_ndjson(screened[0] / "reports.ndjson")}
    assert len(reports) == len(population[1]["patients"])
    forms = set()
    for pid, _ in population[1]["patients"]:
        bundle = _bundle(population[0], pid)
        refs = [e["resource"].get("subject", {}).get("reference", "") for e in bundle["entry"]]
        forms |= {form for form in ("Patient/", "https://", "urn:uuid:") for r in refs if r.startswith(form)}
        path = tmp_path / f"{pid}.json"
        path.write_text(json.dumps(bundle))
        capsys.readouterr()
        assert main(["evaluate", str(path), "--json", "--as-of", AS_OF.isoformat()]) == 0
        assert json.loads(capsys.readouterr().out) == reports[f"Patient/{pid}"]
    assert forms == {"Patient/", "https://", "urn:uuid:"}  # every reference form was exercised


def test_results_table_columns_and_counts(screened: tuple[Path, dict[str, Any]]) -> None:
    out, _ = screened
    reports = {r["patient"]: r for r in read_ndjson(out / "reports.ndjson")}
    with open(out / "results.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames is not None
        assert reader.fieldnames[:6] == ["patient", "trial", "status", "met", "not_met", "unknown"]
        rows = list(reader)
    for row in rows:
        trial = next(t for t in reports[f"Patient/{row['patient']}"]["trials"] if t["trial"] == row["trial"])
        results = [c["result"] for c in trial["criteria"]]
        assert (int(row["met"]), int(row["not_met"]), int(row["unknown"])) == (
            results.count("met"),
            results.count("not-met"),
            results.count("unknown"),
        )
        if row["status"] == "not-eligible" and row["rules_out"]:
            first = next(
                c
                for c in trial["criteria"]
                if (c["kind"], c["result"]) in (("inclusion", "not-met"), ("exclusion", "met"))
            )
            assert row["rules_out"] == first["id"] and row["rules_out_reason"] == first["reason"]
        unknown = [c["id"] for c in trial["criteria"] if c["result"] == "unknown"]
        assert row["to_review"].split("; ") == unknown if unknown else row["to_review"] == ""


def test_parquet_holds_the_same_table(screened: tuple[Path, dict[str, Any]]) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    out, _ = screened
    table = pq.read_table(out / "results.parquet").to_pylist()
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(table) == len(rows) > 0
    for parquet_row, csv_row in zip(table, rows, strict=True):
        assert {k: str(v) for k, v in parquet_row.items()} == csv_row


def test_summary_counts_resources_and_skips(screened: tuple[Path, dict[str, Any]]) -> None:
    _, summary = screened
    assert summary["resources"]["by_type"]["Patient"] == summary["patients"]
    assert summary["resources"]["by_type"].get("Medication", 0) > 0  # the shared formulary was joined
    not_needed = {e["resourceType"] for e in summary["skipped"] if e["reason"].startswith("resource type no")}
    assert {"Claim", "ExplanationOfBenefit"} <= not_needed
    for entry in summary["skipped"]:
        assert entry["count"] >= len(entry["examples"]) > 0
        assert all(e["line"] >= 1 and Path(e["file"]).name.endswith(".ndjson") for e in entry["examples"])


def test_bad_input_is_counted_with_file_and_line(tmp_path: Path) -> None:
    source = tmp_path / "export"
    source.mkdir()
    patient = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1980-01-01"}
    good = {
        "resourceType": "Condition",
        "id": "c1",
        "subject": {"reference": "Patient/p1"},
        "code": {"text": "x"},
    }
    lines = [
        json.dumps(patient),
        "{not json",
        json.dumps({"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "x"}}),
        json.dumps({"resourceType": "Claim", "id": "cl1"}),
        json.dumps(good),
        json.dumps({"hello": "world"}),
        json.dumps(
            {"resourceType": "OperationOutcome", "issue": [{"diagnostics": "export partial\x1b[31m"}]}
        ),
    ]
    (source / "mixed.ndjson").write_text("\n".join(lines) + "\n")
    (source / "notes.txt").write_text("not an export file")
    summary, printed = screen(source, tmp_path / "out", workers=1)
    found = {(e["reason"], e.get("resourceType")): e for e in summary["skipped"]}
    where = str(source / "mixed.ndjson")
    malformed = found[("malformed NDJSON line", None)]["examples"][0]
    assert malformed["file"] == where and malformed["line"] == 2 and "at byte 1" in malformed["detail"]
    assert found[("resource with no patient reference", "Observation")]["examples"][0]["line"] == 3
    assert found[("resource type no loaded trial needs", "Claim")]["examples"][0]["line"] == 4
    assert found[("not a FHIR resource (no resourceType)", None)]["examples"][0]["line"] == 6
    outcome = found[("OperationOutcome in the export", None)]["examples"][0]
    assert outcome["line"] == 7 and outcome["detail"] == "export partial [31m"  # no escape sequence
    assert found[("unknown file (not *.ndjson or *.ndjson.gz)", None)]["examples"] == [
        {"file": str(source / "notes.txt")}
    ]
    assert summary["patients"] == 1
    assert f"{where}:2" in printed and f"{where}:3" in printed and "notes.txt" in printed


def test_an_output_directory_inside_source_is_not_read(tmp_path: Path) -> None:
    source = tmp_path / "export"
    source.mkdir()
    (source / "Patient.ndjson").write_text(json.dumps({"resourceType": "Patient", "id": "p1"}) + "\n")
    first, _ = screen(source, source / "out", workers=1)
    again, _ = screen(source, source / "out", workers=1)
    assert first["skipped"] == again["skipped"] == [] and again["files"] == 1


def test_gzip_and_split_files_and_a_patient_not_in_the_export(tmp_path: Path) -> None:
    import gzip

    source = tmp_path / "export"
    source.mkdir()
    with gzip.open(source / "Patient.ndjson.gz", "wt") as f:
        f.write(json.dumps({"resourceType": "Patient", "id": "p1", "birthDate": "1980-01-01"}) + "\n")
    condition = {"resourceType": "Condition", "subject": {"reference": "Patient/p1"}, "code": {"text": "x"}}
    orphan = {
        "resourceType": "Condition",
        "id": "c9",
        "subject": {"reference": "Patient/gone"},
        "code": {"text": "x"},
    }
    (source / "Condition.1.ndjson").write_text(json.dumps({**condition, "id": "c1"}) + "\n")
    (source / "Condition.2.ndjson").write_text(
        json.dumps({**condition, "id": "c2"}) + "\n" + json.dumps(orphan)
    )
    summary, _ = screen(source, tmp_path / "out", workers=2)
    assert summary["patients"] == 1 and summary["resources"]["by_type"] == {"Condition": 3, "Patient": 1}
    missing = next(e for e in summary["skipped"] if e["reason"] == "patient not evaluated")
    assert (
        missing["examples"][0]["file"].endswith("Condition.2.ndjson") and missing["examples"][0]["line"] == 2
    )
    assert "no Patient resource" in missing["examples"][0]["detail"]


def test_unreadable_source_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["screen", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "nowhere" in err
    (tmp_path / "empty").mkdir()
    code = main(["screen", str(tmp_path / "empty"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert (
        code == 2
        and err.strip()
        == f"cds-service: {tmp_path / 'empty'}: no *.ndjson or *.ndjson.gz files (not Bulk Data output)"
    )


def test_chunked_reading_gives_the_same_results(
    population: tuple[Path, dict[str, Any]],
    screened: tuple[Path, dict[str, Any]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Byte-range chunks far smaller than the files (lines cut at every boundary), one worker."""
    import cds_service.screen.plan as plan

    monkeypatch.setattr(plan, "MIN_CHUNK", 4096)
    out = tmp_path / "out"
    summary, _ = screen(population[0], out, workers=1)
    assert (out / "results.csv").read_bytes() == (screened[0] / "results.csv").read_bytes()
    assert (out / "reports.ndjson").read_bytes() == (screened[0] / "reports.ndjson").read_bytes()
    assert summary["skipped"] == screened[1]["skipped"] and summary["lines"] == screened[1]["lines"]
