"""``screen --export`` against a real Bulk Data server on loopback (sekmet-fhir) with Backend Services."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from benchmarks.make_population import generate
from cds_service.cli import main
from tests.conftest import packaged_catalog
from tests.screen.bulk_support import load_population, make_key
from tests.screen.conftest import AS_OF
from tests.support.fhir_server import FhirServer, SmartClient, sekmet_available, start_fhir_server
from tests.support.log_capture import register_secret

LOAD_TOKEN = register_secret("bulk-loader-token-6b1f")
# sekmet-fhir wants a delete scope for DELETE on the status URL (the spec needs none)
SCOPE = "system/*.rs system/*.d"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict[str, Any]]]:
    tmp = tmp_path_factory.mktemp("keys")
    return {alg: make_key(tmp, alg) for alg in ("ES384", "RS384")}


@pytest.fixture(scope="module")
def bulk_population(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bulk") / "export"
    generate(12, out, seed=5, only_needed=True, catalog=packaged_catalog())
    return out


@pytest.fixture(scope="module")
def bulk_server(keys: dict[str, tuple[Path, dict[str, Any]]], bulk_population: Path) -> Iterator[FhirServer]:
    if not sekmet_available():
        if os.environ.get("CI"):
            pytest.fail("sekmet-fhir is not installed (pip install sekmet-fhir==0.1.1)")
        pytest.skip("sekmet-fhir is not installed (pip install sekmet-fhir==0.1.1)")
    clients = [
        SmartClient(f"screener-{alg.lower()}", "", "system/*.rs system/*.d", {"keys": [jwk]})
        for alg, (_, jwk) in keys.items()
    ]
    with start_fhir_server(token=LOAD_TOKEN, smart_clients=clients) as server:
        load_population(server, bulk_population)
        yield server


def _export(server: FhirServer, key: Path, client: str, out: Path, *extra: str) -> int:
    return main(
        [
            "screen",
            "--export",
            server.base_url,
            "--out",
            str(out),
            "--as-of",
            AS_OF.isoformat(),
            "--client-id",
            client,
            "--key",
            str(key),
            "--allow-http-loopback",
            "--scope",
            SCOPE,
            "--workers",
            "1",
            *extra,
        ]
    )


@pytest.mark.parametrize("alg", ["ES384", "RS384"])
def test_system_export_screens_like_the_files_themselves(
    alg: str,
    bulk_server: FhirServer,
    bulk_population: Path,
    keys: dict[str, tuple[Path, dict[str, Any]]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Backend Services token, $export with _type, files downloaded with the token, screened: the
    results equal screening the generated files directly."""
    assert _export(bulk_server, keys[alg][0], f"screener-{alg.lower()}", tmp_path / "exp", "--system") == 0
    assert (
        main(["screen", str(bulk_population), "--out", str(tmp_path / "direct"), "--as-of", "2026-06-01"])
        == 0
    )
    err = capsys.readouterr().err
    assert (tmp_path / "exp" / "results.csv").read_text() == (tmp_path / "direct" / "results.csv").read_text()
    downloaded = {p.name.split(".")[0] for p in (tmp_path / "exp" / "export" / "files").glob("*.ndjson")}
    assert not {"Claim", "ExplanationOfBenefit"} & downloaded  # types no trial reads are not asked for
    assert {"Patient", "Observation", "Medication"} <= downloaded
    summary = json.loads((tmp_path / "exp" / "summary.json").read_text())
    assert summary["export"]["level"] == "system" and summary["export"]["files"] == len(downloaded)
    state = (tmp_path / "exp" / "export" / "state.json").read_text()
    assert "eyJ" not in state and "eyJ" not in err  # no token in the state file or the output
    status_url = json.loads(state)["status_url"]
    assert requests.get(status_url, headers=bulk_server.headers, timeout=10).status_code == 404  # released


def test_patient_level_export_reports_the_medications_it_lacks(
    bulk_server: FhirServer, keys: dict[str, tuple[Path, dict[str, Any]]], tmp_path: Path
) -> None:
    """Patient/$export holds the patients' compartments, not the shared Medications they order."""
    assert _export(bulk_server, keys["ES384"][0], "screener-es384", tmp_path / "out") == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    missing = [e for e in summary["skipped"] if e["reason"].startswith("Medication an order refers to")]
    assert summary["export"]["level"] == "patient" and missing and missing[0]["count"] > 0
    assert summary["patients"] == 12


def test_a_rerun_resumes_the_recorded_export(
    bulk_server: FhirServer,
    keys: dict[str, tuple[Path, dict[str, Any]]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A deadline hit while polling leaves the status URL in the state; the rerun polls it, no new
    kick-off; a further rerun reuses the downloaded files."""
    out = tmp_path / "out"
    assert (
        _export(bulk_server, keys["ES384"][0], "screener-es384", out, "--system", "--export-timeout", "0.3")
        == 2
    )
    err = capsys.readouterr().err
    assert "did not finish within" in err and "rerun to resume" in err
    first = json.loads((out / "export" / "state.json").read_text())["status_url"]
    assert _export(bulk_server, keys["ES384"][0], "screener-es384", out, "--system") == 0
    err = capsys.readouterr().err
    assert "resuming the export in progress" in err and "export started" not in err
    state = json.loads((out / "export" / "state.json").read_text())
    assert state["status_url"] == first and state["complete"] and len(state["files"]) >= 5
    files = {p: p.stat().st_mtime_ns for p in (out / "export" / "files").iterdir()}
    assert _export(bulk_server, keys["ES384"][0], "screener-es384", out, "--system") == 0
    assert "using the export downloaded" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in (out / "export" / "files").iterdir()} == files


def test_interrupt_while_exporting_cancels_it_on_the_server(
    bulk_server: FhirServer,
    keys: dict[str, tuple[Path, dict[str, Any]]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from cds_service.fhir import bulk

    def interrupted(self: bulk.BulkClient, seconds: float | None) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(bulk.BulkClient, "wait", interrupted)
    out = tmp_path / "out"
    seen: list[str] = []
    original = bulk.BulkClient.kickoff

    def recording(self: bulk.BulkClient, **kwargs: Any) -> str:
        url = original(self, **kwargs)
        seen.append(url)
        return url

    monkeypatch.setattr(bulk.BulkClient, "kickoff", recording)
    assert _export(bulk_server, keys["ES384"][0], "screener-es384", out, "--system") == 130
    assert "cancelled on the server (DELETE)" in capsys.readouterr().err
    assert requests.get(seen[0], headers=bulk_server.headers, timeout=10).status_code == 404
    assert "status_url" not in json.loads((out / "export" / "state.json").read_text())


def test_server_error_is_one_line_with_its_outcome_text(
    bulk_server: FhirServer,
    keys: dict[str, tuple[Path, dict[str, Any]]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert _export(bulk_server, keys["ES384"][0], "screener-es384", tmp_path / "o", "--group", "nope") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "cds-service: export kick-off refused: HTTP 404: Group/nope not found"


def test_an_unregistered_key_is_refused_in_one_line(
    bulk_server: FhirServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other, _ = make_key(tmp_path, "ES384")
    assert _export(bulk_server, other, "screener-es384", tmp_path / "o", "--system") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cds-service: the token endpoint refused the client: HTTP 401")
    assert "eyJ" not in err[0]


def test_since_asks_only_for_what_changed(
    bulk_server: FhirServer, keys: dict[str, tuple[Path, dict[str, Any]]], tmp_path: Path
) -> None:
    """An incremental re-screen: nothing changed since a future instant, so nothing is screened."""
    out = tmp_path / "out"
    assert (
        _export(
            bulk_server,
            keys["ES384"][0],
            "screener-es384",
            out,
            "--system",
            "--since",
            "2999-01-01T00:00:00Z",
        )
        == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["patients"] == 0 and summary["export"]["files"] == 0


def test_a_bad_since_is_refused_before_any_request(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "screen",
            "--export",
            "https://fhir.example.org/fhir",
            "--out",
            str(tmp_path),
            "--since",
            "yesterday",
        ]
    )
    assert code == 2 and "--since: not a FHIR instant" in capsys.readouterr().err
