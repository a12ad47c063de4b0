"""Session fixtures for a real FHIR R4 server (sekmet-fhir) on 127.0.0.1, shared by every test package."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fhir_server import FhirServer, sekmet_available, start_fhir_server
from tests.support.synthetic_fhir import SyntheticPatient, make_patient_bundle

_TESTS = Path(__file__).resolve().parent

FHIR_TEST_TOKEN = "integration-test-token"
# shared/ sits beside the clone (../shared) on developer machines and in CI; absent on a newcomer's.
SYNTHEA_DIR = _TESTS.parent.parent / "shared" / "data" / "synthea"


@pytest.fixture(scope="session")
def fhir_server() -> Iterator[FhirServer]:
    """One sekmet-fhir server for the whole session: bearer token FHIR_TEST_TOKEN, in-memory store,
    simulator off, strict inbound validation."""
    if not sekmet_available():
        if os.environ.get("CI"):
            pytest.fail("sekmet-fhir is not installed (pip install sekmet-fhir==0.1.1)")
        pytest.skip("sekmet-fhir is not installed (pip install sekmet-fhir==0.1.1)")
    with start_fhir_server(token=FHIR_TEST_TOKEN) as server:
        yield server


@pytest.fixture(scope="session")
def synthetic_patients(fhir_server: FhirServer) -> list[SyntheticPatient]:
    """Two generated patients loaded into fhir_server (ids are stable; see make_patient_bundle)."""
    patients = [
        make_patient_bundle("patient-1", family="Lupus", given="Alice", n_observations=30),
        make_patient_bundle(
            "patient-2",
            family="Control",
            given="Bob",
            gender="male",
            birth_date="1955-09-30",
            conditions=(("38341003", "I10", "Essential hypertension"),),
            n_observations=12,
        ),
    ]
    for p in patients:
        fhir_server.load_bundle(p.bundle)
    return patients


@pytest.fixture(scope="session")
def synthea_dir() -> Path:
    """../shared/data/synthea, or a skip when it is absent."""
    if not SYNTHEA_DIR.is_dir():
        pytest.skip(f"{SYNTHEA_DIR} is absent (it comes with shared/)")
    return SYNTHEA_DIR
