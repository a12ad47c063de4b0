"""The command line: readable table, exact JSON report, and one clear line for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cds_service.cli import main
from tests.conftest import ALL_CONSTRUCTS, DATA

LIZ = next((DATA / "synthea").glob("Liz_Conn_*.json"))


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_json_report_has_exactly_the_contract_fields(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(
        capsys, "evaluate", str(LIZ), "--as-of", "2026-06-01", "--json", "--mappings", str(ALL_CONSTRUCTS)
    )
    assert code == 0
    report = json.loads(out)
    assert set(report) == {"patient", "as_of", "trials"}
    assert report["as_of"] == "2026-06-01" and report["patient"].startswith("Patient/")
    trial = report["trials"][0]
    assert set(trial) == {"trial", "title", "version", "effective", "status", "criteria"}
    for criterion in trial["criteria"]:
        assert set(criterion) == {"id", "label", "kind", "result", "manual", "reason", "evidence"}
        for item in criterion["evidence"]:
            assert set(item) <= {"reference", "value", "date"} and None not in item.values()


def test_table_names_trial_status_and_every_criterion(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(
        capsys, "evaluate", str(LIZ), "--as-of", "2026-06-01", "--mappings", str(ALL_CONSTRUCTS)
    )
    assert code == 0
    assert "TEST-ALL  NOT-ELIGIBLE" in out
    assert "diabetes" in out and "no current diabetes mellitus recorded" in out


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"{not json", "not JSON"),
        (b'{"resourceType": "Patient"', "not JSON"),
        (b'{"hello": 1}', "no resourceType"),
        (b'{"resourceType": "Patient", "id": "a"}', "a Patient resource, not a Bundle"),
        (b'[{"resourceType": "Patient", "id": "a"}]', "a JSON array, not a Bundle"),
        (b'{"resourceType": "Bundle", "type": "collection", "entry": []}', "no Patient resource"),
        (
            b'{"resourceType": "Bundle", "type": "collection", "entry": ['
            b'{"resource": {"resourceType": "Patient", "id": "a"}},'
            b'{"resource": {"resourceType": "Patient", "id": "b"}}]}',
            "2 Patient resources",
        ),
        (
            b'{"resourceType": "Bundle", "type": "collection", "entry": ['
            b'{"resource": {"resourceType": "Patient", "id": "a"}},'
            b'{"resource": {"resourceType": "Observation", "id": "o1", "status": "final",'
            b' "code": {"text": "x"}, "valueQuantity": {"value": "abc"}}}]}',
            "Observation/o1 is not valid FHIR R4: valueQuantity.value",
        ),
        (
            b'{"resourceType": "Bundle", "type": "collection", "entry": ['
            b'{"resource": {"resourceType": "Patient", "id": "a"}},'
            b'{"resource": {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/zz"},'
            b' "code": {"text": "x"}}}]}',
            "1 resource(s) refer to a patient other than the record's Patient (first: a Condition.subject)",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line_naming_file_and_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, problem: str
) -> None:
    path = tmp_path / "patient.json"
    path.write_bytes(content)
    code, out, err = _run(capsys, "evaluate", str(path), "--mappings", str(ALL_CONSTRUCTS))
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert str(path) in err and problem in err


def test_missing_file_and_bad_date(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "evaluate", str(tmp_path / "nope.json"))
    assert code == 2 and "nope.json: cannot be read" in err
    code, _, err = _run(capsys, "evaluate", str(LIZ), "--as-of", "01/06/2026")
    assert code == 2 and "--as-of '01/06/2026': expected a date YYYY-MM-DD" in err


def test_an_impossible_date_is_echoed(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "evaluate", str(LIZ), "--as-of", "2026-13-01")
    assert code == 2 and out == ""
    assert "--as-of '2026-13-01': not a date (month must be in 1..12)" in err


def test_unknown_trial_is_blamed_on_the_option_not_the_patient_file(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = _run(
        capsys, "evaluate", str(LIZ), "--trial", "NCT00000000", "--mappings", str(ALL_CONSTRUCTS)
    )
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--trial 'NCT00000000': unknown trial" in err and "(known: TEST-ALL)" in err
    assert str(LIZ) not in err


def test_ndjson_is_recognised_and_pointed_to_screen(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = json.loads((DATA / "demo" / "sle-likely-eligible.json").read_text())
    path = tmp_path / "Patient.ndjson"
    path.write_text("".join(json.dumps(entry["resource"]) + "\n" for entry in bundle["entry"]))
    code, out, err = _run(capsys, "evaluate", str(path))
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert f"{path}: looks like NDJSON" in err and "use cds-service screen" in err


def test_broken_json_over_several_lines_is_not_called_ndjson(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "patient.json"
    path.write_text('{"resourceType": "Bundle",\n "entry": [\n')
    code, _, err = _run(capsys, "evaluate", str(path))
    assert code == 2 and "not JSON" in err and "NDJSON" not in err


@pytest.mark.parametrize("extra", [[], ["--json"]], ids=["table", "json"])
def test_a_closed_pipe_ends_quietly(extra: list[str]) -> None:
    """`cds-service evaluate … | head`: the reader is gone before the report is written."""
    process = subprocess.Popen(
        [sys.executable, "-m", "cds_service.cli", "evaluate", str(LIZ), "--as-of", "2026-06-01", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    process.stdout.close()
    _, err = process.communicate(timeout=120)
    assert process.returncode == 141
    assert err.decode() == ""


def test_help_lists_the_real_commands_in_plain_text(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    out = capsys.readouterr().out
    assert exited.value.code == 0
    for command in ("evaluate", "check-mappings", "serve"):
        assert f"    {command}" in out
    assert "``" not in out and "(later)" not in out


def test_demo_request_help_is_help_not_a_file_name(capsys: pytest.CaptureFixture[str]) -> None:
    from cds_service.demo_request import main as demo_main

    with pytest.raises(SystemExit) as exited:
        demo_main(["--help"])
    out, err = capsys.readouterr()
    assert exited.value.code == 0 and err == ""
    assert out.startswith("usage: python -m cds_service.demo_request") and "BUNDLE.json" in out


def test_check_mappings_passes_on_the_test_only_trial(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "check-mappings", str(ALL_CONSTRUCTS))
    assert code == 0 and "0 failed" in out


def test_check_mappings_reports_a_failing_vector(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    root = tmp_path / "m"
    shutil.copytree(ALL_CONSTRUCTS, root)
    vector = root / "tests" / "TEST-ALL" / "core.yaml"
    vector.write_text(vector.read_text().replace("status: likely-eligible", "status: needs-review"))
    code, out, _ = _run(capsys, "check-mappings", str(root))
    assert code == 1
    assert "FAIL TEST-ALL/core" in out and "expected needs-review, got likely-eligible" in out


def test_check_mappings_on_a_broken_directory_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(capsys, "check-mappings", str(tmp_path))
    assert code == 2 and "not a mappings directory" in err


def test_demo_request_builds_a_hook_request_with_every_prefetch_key(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from cds_service.demo_request import main as demo_main
    from cds_service.fhir.queries import prefetch_templates
    from tests.conftest import packaged_catalog

    assert demo_main([str(DATA / "demo" / "sle-likely-eligible.json")]) == 0
    request = json.loads(capsys.readouterr().out)
    assert request["hook"] == "patient-view"
    assert request["context"]["patientId"] == "sle-likely-eligible"
    assert set(request["prefetch"]) == set(prefetch_templates(packaged_catalog()))


def test_demo_patients_have_the_status_their_name_says(capsys: pytest.CaptureFixture[str]) -> None:
    for name, status in (("sle-likely-eligible", "LIKELY-ELIGIBLE"), ("sle-needs-review", "NEEDS-REVIEW")):
        code, out, _ = _run(capsys, "evaluate", str(DATA / "demo" / f"{name}.json"), "--as-of", "2026-06-01")
        assert code == 0 and f"NCT06888960  {status}" in out


def test_evaluate_places_instants_on_the_site_calendar(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A positive hCG at 02:30 UTC on 4 May is 3 May in New York: inside the 4-week window (from 4
    May on 2026-06-01) for a UTC site, outside it for a New York site (CDS_SITE_TIMEZONE)."""
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {
                "resource": {
                    "resourceType": "Patient",
                    "id": "p1",
                    "gender": "female",
                    "birthDate": "1980-01-01",
                }
            },
            {
                "resource": {
                    "resourceType": "Observation",
                    "id": "h1",
                    "status": "final",
                    "subject": {"reference": "Patient/p1"},
                    "code": {"coding": [{"system": "http://loinc.org", "code": "2106-3"}]},
                    "effectiveDateTime": "2026-05-04T02:30:00+00:00",
                    "valueString": "Positive",
                }
            },
        ],
    }
    path = tmp_path / "p.json"
    path.write_text(json.dumps(bundle))

    def result(zone: str) -> str:
        monkeypatch.setenv("CDS_SITE_TIMEZONE", zone)
        code, out, _ = _run(
            capsys, "evaluate", str(path), "--as-of", "2026-06-01", "--json", "--trial", "NCT06888960"
        )
        assert code == 0
        (trial,) = json.loads(out)["trials"]
        return str(next(c["result"] for c in trial["criteria"] if c["id"] == "pregnancy-breastfeeding"))

    assert result("UTC") == "met"
    assert result("America/New_York") == "not-met"
