"""net.fetch: the total deadline holds against servers that drip bytes, at every stage of an answer."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from cds_service import net
from tests.support.drip_server import DripServer, Stage
from tests.support.faulty_fhir import FaultyFhirServer

SLACK = 1.0  # scheduling on a shared 2-core machine; the drip itself would take days


@pytest.fixture
def faulty() -> Iterator[FaultyFhirServer]:
    with FaultyFhirServer() as server:
        yield server


@pytest.mark.parametrize("stage", ["headers", "body"])
def test_a_drip_is_cut_off_at_the_total_deadline(stage: Stage) -> None:
    """1 byte/s never trips a 3 s read timeout; the 1.5 s total deadline still ends the call."""
    with DripServer(stage=stage, interval=0.2) as drip, net.session() as s:
        started = time.monotonic()
        with pytest.raises(net.DeadlineExceeded):
            net.fetch(s, "GET", drip.url + "/x", ends=started + 1.5, timeout=(2.0, 3.0), max_bytes=10**7)
        took = time.monotonic() - started
        assert 1.4 <= took < 1.5 + SLACK
        assert drip.wait_closed(timeout=3.0), "the connection was left open after the deadline"


def test_one_byte_a_second_as_in_the_probe() -> None:
    with DripServer(stage="body", interval=1.0) as drip, net.session() as s:
        started = time.monotonic()
        with pytest.raises(net.DeadlineExceeded):
            net.fetch(s, "GET", drip.url, ends=started + 2.0, timeout=(2.0, 3.0), max_bytes=10**7)
        assert time.monotonic() - started < 2.0 + SLACK


def test_a_normal_answer_is_read_whole(faulty: FaultyFhirServer) -> None:
    with net.session() as s:
        reply = net.fetch(
            s,
            "GET",
            faulty.base_url + "/Observation",
            ends=time.monotonic() + 5,
            timeout=(2, 3),
            max_bytes=10**6,
        )
    assert reply.status == 200 and b'"searchset"' in reply.body


def test_a_reused_connection_is_watched_too(faulty: FaultyFhirServer) -> None:
    """Keep-alive: the second request on a pooled socket is still bounded by its own deadline."""
    with net.session() as s:
        ends = time.monotonic() + 5
        net.fetch(s, "GET", faulty.base_url + "/Observation", ends=ends, timeout=(2, 3), max_bytes=10**6)
        faulty.mode = "hang"
        started = time.monotonic()
        with pytest.raises(net.DeadlineExceeded):
            net.fetch(
                s,
                "GET",
                faulty.base_url + "/Observation",
                ends=started + 1.0,
                timeout=(5, 5),
                max_bytes=10**6,
            )
        assert time.monotonic() - started < 1.0 + SLACK


def test_size_cap_by_declared_length_and_by_bytes_read(faulty: FaultyFhirServer) -> None:
    faulty.mode, faulty.big_bytes = "big", 200_000
    with net.session() as s, pytest.raises(net.BodyTooLarge):
        net.fetch(
            s, "GET", faulty.base_url + "/x", ends=time.monotonic() + 5, timeout=(2, 3), max_bytes=100_000
        )


def test_no_redirects_are_followed(faulty: FaultyFhirServer) -> None:
    faulty.mode = "redirect"
    with net.session() as s:
        reply = net.fetch(
            s, "GET", faulty.base_url + "/x", ends=time.monotonic() + 5, timeout=(2, 3), max_bytes=1000
        )
    assert reply.status == 302 and len(faulty.seen) == 1


def test_a_spent_deadline_sends_nothing(faulty: FaultyFhirServer) -> None:
    with net.session() as s, pytest.raises(net.DeadlineExceeded):
        net.fetch(s, "GET", faulty.base_url + "/x", ends=time.monotonic() - 1, timeout=(2, 3), max_bytes=1000)
    assert faulty.seen == []
