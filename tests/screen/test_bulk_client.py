"""The Bulk Data client against a scripted misbehaving server (fault injection) and its URL checks."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from cds_service.errors import FhirError, FhirTimeout
from cds_service.fhir.bulk import BulkClient, BulkSettings, retry_after

Reply = tuple[int, dict[str, str], bytes]


class _Scripted(ThreadingHTTPServer):
    replies: list[Reply]
    seen: list[str]


class _Handler(BaseHTTPRequestHandler):
    server: _Scripted
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        self.server.seen.append(f"{self.command} {self.path}")
        status, headers, body = self.server.replies.pop(0) if self.server.replies else (500, {}, b"")
        self.send_response(status)
        for k, v in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_DELETE = do_POST = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def scripted() -> Iterator[_Scripted]:
    server = _Scripted(("127.0.0.1", 0), _Handler)
    server.replies, server.seen = [], []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _client(server: _Scripted, **settings: Any) -> tuple[BulkClient, list[float]]:
    waits: list[float] = []
    base = f"http://127.0.0.1:{server.server_address[1]}/fhir"
    client = BulkClient(BulkSettings(base_url=base, allow_http_loopback=True, **settings), sleep=waits.append)
    return client, waits


def _outcome(text: str, code: str = "exception") -> bytes:
    return json.dumps(
        {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": code, "diagnostics": text}],
        }
    ).encode()


def test_retry_after_in_seconds_and_as_an_http_date() -> None:
    assert retry_after("7") == 7.0
    assert retry_after(formatdate(1_000_030, usegmt=True), now=1_000_000) == pytest.approx(30, abs=1)
    assert retry_after("soon") is None and retry_after(None) is None


def test_polling_honours_retry_after_capped_and_reports_progress(scripted: _Scripted) -> None:
    base = f"http://127.0.0.1:{scripted.server_address[1]}/fhir"
    manifest = {"transactionTime": "2026-06-01T00:00:00Z", "output": [], "error": []}
    scripted.replies = [
        (202, {"X-Progress": "collecting\x1b[2J", "Retry-After": "3"}, b""),
        (202, {"X-Progress": "writing", "Retry-After": formatdate(9e9, usegmt=True)}, b""),
        (429, {"Retry-After": "1"}, b""),
        (200, {"Content-Type": "application/json"}, json.dumps(manifest).encode()),
    ]
    client, waits = _client(scripted, max_wait=60)
    progress: list[str] = []
    assert client.poll(f"{base}/bulk-status/1", progress.append) == manifest
    assert progress == ["collecting [2J", "writing"]  # no terminal escape reaches the screen
    assert waits == [3.0, 60.0, 1.0]  # a far-future HTTP date waits only max_wait


def test_retries_on_5xx_are_bounded(scripted: _Scripted) -> None:
    scripted.replies = [(503, {}, b"")] * 10
    client, waits = _client(scripted, max_retries=3)
    with pytest.raises(FhirError, match="HTTP 503"):
        client.poll(client.base + "/bulk-status/1", lambda p: None)
    assert len(scripted.seen) == 4 and len(waits) == 3


def test_a_failed_export_says_the_servers_text_at_once(scripted: _Scripted) -> None:
    scripted.replies = [(500, {}, _outcome("disk full on node 3"))]
    client, waits = _client(scripted)
    with pytest.raises(FhirError, match="the export failed: HTTP 500: disk full on node 3"):
        client.poll(client.base + "/bulk-status/1", lambda p: None)
    assert waits == []  # an OperationOutcome that is not transient is final


def test_the_deadline_bounds_an_endless_in_progress(scripted: _Scripted) -> None:
    clock = [0.0]
    scripted.replies = [(202, {"Retry-After": "100"}, b"")] * 50
    base = f"http://127.0.0.1:{scripted.server_address[1]}/fhir"

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    client = BulkClient(
        BulkSettings(base_url=base, allow_http_loopback=True, deadline=250),
        sleep=sleep,
        clock=lambda: clock[0],
    )
    with pytest.raises(FhirTimeout, match="within 250 s"):
        client.poll(base + "/bulk-status/1", lambda p: None)
    assert clock[0] <= 250


def test_a_file_on_another_origin_or_plain_http_is_not_followed(scripted: _Scripted) -> None:
    client, _ = _client(scripted)
    manifest = {"output": [{"type": "Patient", "url": "http://127.0.0.2:9/files/Patient.ndjson"}]}
    with pytest.raises(FhirError, match="another origin"):
        list(client.files(manifest))
    with pytest.raises(FhirError, match="plain-http"):
        BulkClient(BulkSettings(base_url="http://fhir.example.org/fhir"))
    allowed = BulkClient(
        BulkSettings(base_url="https://fhir.example.org/fhir", allow_origins=("https://files.example.org",))
    )
    assert list(allowed.files({"output": [{"type": "Patient", "url": "https://files.example.org/a"}]})) == [
        ("Patient", "https://files.example.org/a")
    ]


def test_a_redirect_off_the_origin_is_not_followed(scripted: _Scripted) -> None:
    scripted.replies = [(302, {"Location": "http://127.0.0.2:9/steal"}, b"")]
    client, _ = _client(scripted)
    with pytest.raises(FhirError, match="another origin"):
        client.poll(client.base + "/bulk-status/1", lambda p: None)


def test_kickoff_error_carries_the_outcome_text(scripted: _Scripted) -> None:
    scripted.replies = [(400, {}, _outcome("Unsupported _type 'Nope'", code="invalid"))]
    client, _ = _client(scripted)
    with pytest.raises(FhirError, match="kick-off refused: HTTP 400: Unsupported _type 'Nope'"):
        client.kickoff(level="system", group=None, types=["Patient"], type_filters=[], since=None)
    assert scripted.seen[0].startswith(
        "GET /fhir/$export?_outputFormat=application/fhir%2Bndjson&_type=Patient"
    )


def test_sigterm_while_the_server_exports_cancels_the_export(scripted: _Scripted, tmp_path: Path) -> None:
    """The CLI as a process: SIGTERM during polling sends DELETE to the status URL and exits 130."""
    base = f"http://127.0.0.1:{scripted.server_address[1]}/fhir"
    scripted.replies = [(202, {"Content-Location": f"{base}/bulk-status/job1"}, b"")]
    scripted.replies += [(202, {"X-Progress": "busy", "Retry-After": "1"}, b"")] * 200
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "cds_service.cli", "screen", "--export", base, "--out", str(out)]
    proc = subprocess.Popen([*cmd, "--allow-http-loopback"], stderr=subprocess.PIPE, text=True)
    state = out / "export" / "state.json"
    deadline = time.monotonic() + 60
    while not (state.exists() and "status_url" in state.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "DELETE /fhir/bulk-status/job1" in scripted.seen
    assert "export cancelled on the server (DELETE)" in err
    assert "status_url" not in json.loads(state.read_text())
