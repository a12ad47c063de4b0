"""A tiny misbehaving "FHIR server" on 127.0.0.1 for fault-injection tests of FhirClient.

A real server (sekmet-fhir) cannot be made to hang, send garbage or point its paging links at
another host, so this one does exactly that on demand. Set ``mode`` before each request:

- ``ok``          a one-entry searchset Bundle (``entries`` if set; a Patient for ``/Patient/<id>``)
- ``hang``        read the request, never answer (until stop)
- ``status:NNN``  answer HTTP NNN with an OperationOutcome
- ``non-json``    200 with an HTML body
- ``not-bundle``  200 with a Patient where a Bundle is expected
- ``foreign-next``a Bundle whose ``next`` link points at another host
- ``loop-next``   a Bundle whose ``next`` link is the page itself (endless paging)
- ``slow-loop``   like loop-next, each page after ``delay`` seconds
- ``close``       close the connection without answering
- ``big``         200 with a ``big_bytes``-byte JSON body
- ``redirect``    302 to another host

Usage::

    with FaultyFhirServer() as server:
        server.mode = "hang"
        ... FhirClient(base_url=server.base_url, ...)
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

__all__ = ["FaultyFhirServer"]


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        owner = self.server.owner
        owner.seen.append((self.path, self.headers.get("Authorization")))
        mode = owner.mode
        if mode == "hang":
            owner.stopping.wait(30)
            self.close_connection = True
            return
        if mode == "close":
            self.close_connection = True
            return
        if mode == "slow-loop":
            owner.stopping.wait(owner.delay)
        self._answer(mode, owner)

    def _answer(self, mode: str, owner: FaultyFhirServer) -> None:
        me = f"http://127.0.0.1:{owner.port}{self.path}"
        if mode.startswith("status:"):
            self._send(int(mode[7:]), {"resourceType": "OperationOutcome", "issue": []})
        elif mode == "non-json":
            self._send(200, b"<html><body>Service temporarily unavailable</body></html>")
        elif mode == "not-bundle" or (mode == "ok" and self.path.startswith("/fhir/Patient/")):
            self._send(200, {"resourceType": "Patient", "id": self.path.rsplit("/", 1)[-1]})
        elif mode == "foreign-next":
            self._send(200, _bundle(next_url="http://evil.example.org/fhir/Observation?page=2"))
        elif mode in ("loop-next", "slow-loop"):
            self._send(200, _bundle(next_url=me))
        elif mode == "big":
            self._send(200, b'{"resourceType":"Bundle","x":"' + b"a" * owner.big_bytes + b'"}')
        elif mode == "redirect":
            self.send_response(302)
            self.send_header("Location", "http://evil.example.org/fhir/Patient/1")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self._send(200, _bundle(next_url=None, entries=owner.entries))

    def _send(self, status: int, body: bytes | dict[str, Any]) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


def _bundle(*, next_url: str | None, entries: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    links = [{"relation": "next", "url": next_url}] if next_url else []
    default = [{"resource": {"resourceType": "Observation", "id": "o1"}, "search": {"mode": "match"}}]
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": links,
        "entry": default if entries is None else entries,
    }


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, owner: FaultyFhirServer) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.owner = owner

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the client hung up on a hanging or slow answer: expected here


class FaultyFhirServer:
    """The misbehaving server; ``base_url`` ends in ``/fhir``. Stop it (or use ``with``)."""

    def __init__(self, *, mode: str = "ok", delay: float = 0.2, big_bytes: int = 4096) -> None:
        self.mode = mode
        self.delay = delay
        self.big_bytes = big_bytes
        self.entries: list[dict[str, Any]] | None = None  # the ``ok`` searchset's entries, if set
        self.seen: list[tuple[str, str | None]] = []
        self.stopping = threading.Event()
        self._httpd = _Server(self)
        self.port: int = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        self._stopped = False

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/fhir"

    def stop(self) -> None:
        """Release hanging handlers, stop serving and close the listening socket."""
        if self._stopped:
            return
        self._stopped = True
        self.stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
