"""Which FHIR server URLs the service may call, and which paging links it may follow."""

from __future__ import annotations

import pytest

from cds_service.errors import InvalidInput
from cds_service.fhir.allowlist import check_fhir_server, same_origin_and_under
from cds_service.settings import Settings

EHR = "https://ehr.example.org/fhir"
LISTED = Settings(fhir_server_allowlist=[EHR])
LISTED_LOOPBACK = Settings(
    fhir_server_allowlist=[EHR, "http://127.0.0.1:8080/fhir"], allow_http_loopback=True
)
OPEN = Settings()
OPEN_LOOPBACK = Settings(allow_http_loopback=True)


ACCEPTED = [
    # (url, settings, from_trusted_issuer, normalised base)
    (EHR, LISTED, False, EHR),
    (EHR + "/", LISTED, False, EHR),
    ("https://EHR.Example.ORG/fhir", LISTED, False, EHR),
    ("HTTPS://ehr.example.org:443/fhir", LISTED, False, EHR),
    ("https://ehr.example.org./fhir", LISTED, False, EHR),
    (EHR + "/r4", LISTED, False, EHR + "/r4"),
    (EHR, OPEN, True, EHR),
    ("https://other.example.com:8443/base/", OPEN, True, "https://other.example.com:8443/base"),
    ("http://127.0.0.1:8080/fhir", OPEN_LOOPBACK, True, "http://127.0.0.1:8080/fhir"),
    ("http://127.5.6.7/fhir", OPEN_LOOPBACK, True, "http://127.5.6.7/fhir"),
    ("http://127.0.0.1:80/fhir", OPEN_LOOPBACK, True, "http://127.0.0.1/fhir"),
    ("http://[::1]:8080/fhir", OPEN_LOOPBACK, True, "http://[::1]:8080/fhir"),
    ("http://LOCALHOST:8080/fhir", OPEN_LOOPBACK, True, "http://localhost:8080/fhir"),
    ("http://127.0.0.1:8080/fhir/", LISTED_LOOPBACK, False, "http://127.0.0.1:8080/fhir"),
]

REFUSED = [
    # (url, settings, from_trusted_issuer, words of the message)
    ("https://ehr.example.org.evil.com/fhir", LISTED, True, "allowlist"),
    ("https://ehr.example.org/fhirX", LISTED, True, "allowlist"),
    ("https://ehr.example.org/fhir-admin", LISTED, True, "allowlist"),
    ("https://ehr.example.org/", LISTED, True, "allowlist"),
    ("https://ehr.example.org:8443/fhir", LISTED, True, "allowlist"),
    ("https://evil.example.org/ehr.example.org/fhir", LISTED, True, "allowlist"),
    ("http://ehr.example.org/fhir", LISTED, True, "https"),
    ("http://ehr.example.org/fhir", OPEN_LOOPBACK, True, "https"),
    ("http://10.0.0.1/fhir", OPEN_LOOPBACK, True, "https"),
    ("http://127.0.0.1:8080/fhir", OPEN, True, "https"),
    (
        "http://127.0.0.1:8080/fhir",
        LISTED_LOOPBACK.model_copy(update={"allow_http_loopback": False}),
        True,
        "https",
    ),
    ("http://127.0.0.1:9999/fhir", LISTED_LOOPBACK, True, "allowlist"),
    ("https://user:secret-pw@ehr.example.org/fhir", LISTED, True, "credentials"),
    ("https://ehr.example.org@evil.com/fhir", LISTED, True, "credentials"),
    ("https://ehr.example.org/fhir?secret-q=1", LISTED, True, "query"),
    ("https://ehr.example.org/fhir#secret-frag", LISTED, True, "fragment"),
    ("https://ehr.example.org/fhir/../admin", LISTED, True, "'..'"),
    ("https://ehr.example.org/fhir/%2E%2E/admin", LISTED, True, "'..'"),
    ("https://ehr.example.org\\@evil.com/fhir", LISTED, True, "malformed"),
    ("https://ehr.example.org /fhir", LISTED, True, "malformed"),
    ("https://ehr.example.org:99999/fhir", LISTED, True, "malformed"),
    ("https://ehr_example!.org/fhir", OPEN, True, "invalid host"),
    ("ftp://ehr.example.org/fhir", LISTED, True, "https"),
    ("ehr.example.org/fhir", LISTED, True, "https"),
    ("", LISTED, True, "https"),
    (EHR, OPEN, False, "no FHIR server allowlist configured and the call is not signed"),
    ("http://127.0.0.1:8080/fhir", OPEN_LOOPBACK, False, "not signed"),
]


@pytest.mark.parametrize(("url", "settings", "trusted", "expected"), ACCEPTED)
def test_accepted(url: str, settings: Settings, trusted: bool, expected: str) -> None:
    assert check_fhir_server(url, settings=settings, from_trusted_issuer=trusted) == expected


@pytest.mark.parametrize(("url", "settings", "trusted", "words"), REFUSED)
def test_refused(url: str, settings: Settings, trusted: bool, words: str) -> None:
    with pytest.raises(InvalidInput, match=words) as caught:
        check_fhir_server(url, settings=settings, from_trusted_issuer=trusted)
    assert "secret" not in str(caught.value)  # neither credentials nor query strings are echoed
    assert "evil" not in str(caught.value)


def test_allowlist_entries_are_normalised_and_root_prefix_admits_the_host() -> None:
    settings = Settings(fhir_server_allowlist=["HTTPS://EHR.example.org:443/fhir/", "https://root.example"])
    assert check_fhir_server(EHR, settings=settings, from_trusted_issuer=False) == EHR
    assert check_fhir_server("https://root.example/any/path", settings=settings, from_trusted_issuer=False)
    with pytest.raises(InvalidInput):
        check_fhir_server("https://root.example.evil/", settings=settings, from_trusted_issuer=False)


def test_malformed_allowlist_entries_admit_nothing() -> None:
    settings = Settings(fhir_server_allowlist=["not a url", "https://u:p@ehr.example.org/fhir"])
    with pytest.raises(InvalidInput, match="allowlist"):
        check_fhir_server(EHR, settings=settings, from_trusted_issuer=True)


@pytest.mark.parametrize(
    ("url", "under"),
    [
        (EHR + "/Observation?patient=1&_count=10&_offset=10", True),
        ("https://EHR.example.org:443/fhir/Observation?_offset=10", True),
        (EHR, True),
        (EHR + "/", True),
        ("https://ehr.example.org/fhirX/Observation", False),
        ("https://ehr.example.org/Observation", False),
        ("https://ehr.example.org.evil.com/fhir/Observation", False),
        ("https://evil.example.org/fhir/Observation", False),
        ("http://ehr.example.org/fhir/Observation", False),
        ("https://ehr.example.org:8443/fhir/Observation", False),
        ("https://u:p@ehr.example.org/fhir/Observation", False),
        ("https://ehr.example.org/fhir/../admin", False),
        ("/fhir/Observation?_offset=10", False),
        ("not a url", False),
    ],
)
def test_same_origin_and_under(url: str, under: bool) -> None:
    assert same_origin_and_under(url, EHR) is under
    assert same_origin_and_under(url, EHR + "/") is under
