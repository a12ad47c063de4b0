"""A real HTTP server for JWK Sets, so auth tests exercise the actual fetch path.

Serves per-path JSON bodies on 127.0.0.1 (ephemeral port), lets a test swap them (key rotation),
make a path hang (a stalled EHR) and count requests per path. Use it as a context manager: the
exit stops the serving thread, releases a hanging handler and closes the socket, so nothing
leaks into ``ResourceWarning`` under ``-W error``.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any


class JwksServer:
    """Tiny threaded JWKS host; see the module docstring."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bodies: dict[str, tuple[int, bytes]] = {}
        self._hanging: set[str] = set()
        self._dripping: dict[str, float] = {}
        self._counts: Counter[str] = Counter()
        self._release = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._httpd.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> JwksServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._release.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def url(self, path: str) -> str:
        """The absolute URL of ``path`` on this server."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}{path}"

    def set_jwks(self, path: str, keys: list[dict[str, Any]]) -> None:
        """Serve ``{"keys": keys}`` at ``path`` from now on (replacing what was there)."""
        self.set_body(path, json.dumps({"keys": keys}).encode())

    def set_body(self, path: str, body: bytes, *, status: int = 200) -> None:
        """Serve raw ``body`` with ``status`` at ``path`` (for malformed-JWKS tests)."""
        with self._lock:
            self._bodies[path] = (status, body)

    def hang(self, path: str) -> None:
        """Requests to ``path`` get no answer until the server is closed."""
        with self._lock:
            self._hanging.add(path)

    def drip(self, path: str, interval: float = 1.0) -> None:
        """Requests to ``path`` get their answer one byte per ``interval`` seconds (slow drip)."""
        with self._lock:
            self._dripping[path] = interval

    def request_count(self, path: str) -> int:
        """How many GETs ``path`` has received."""
        with self._lock:
            return self._counts[path]

    def _answer(self, path: str) -> tuple[int, bytes] | None:
        with self._lock:
            self._counts[path] += 1
            if path in self._hanging:
                return None
            return self._bodies.get(path, (404, b"{}"))

    def _drip_interval(self, path: str) -> float | None:
        with self._lock:
            return self._dripping.get(path)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                answer = server._answer(self.path)
                if answer is None:
                    server._release.wait(timeout=10)
                    return
                status, body = answer
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                interval = server._drip_interval(self.path)
                if interval is None:
                    self.wfile.write(body)
                    return
                for i in range(len(body)):
                    if server._release.wait(interval):
                        return
                    self.wfile.write(body[i : i + 1])
                    self.wfile.flush()

            def log_message(self, format: str, *args: Any) -> None:
                """Silence the per-request stderr line."""

        return Handler
