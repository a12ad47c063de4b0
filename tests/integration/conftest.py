"""Integration tests share the FHIR server fixtures defined in tests/fhir_fixtures.py."""

from tests.fhir_fixtures import FHIR_TEST_TOKEN

__all__ = ["FHIR_TEST_TOKEN"]
