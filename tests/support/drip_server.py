"""A server on 127.0.0.1 that answers every request one byte at a time: the slow-drip attack.

Per-read timeouts never fire against it (a byte always arrives before the read timeout), so only a
total deadline enforced on the socket ends a call to it. ``stage`` picks where the drip happens:

- ``headers``: the status line and headers themselves trickle in (forever);
- ``body``: headers at once (``Content-Length`` of 100 kB, under every size cap), then the body trickles in.

``interval`` is the pause between bytes (1 s: the probe's "one byte a second"). Counts requests
(``requests``) and the connections still open (``open_connections``), so a test can check that a
caller gave up. Use it as a context manager.
"""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from types import TracebackType
from typing import Literal, Self

Stage = Literal["headers", "body"]
_BODY = b'{"resourceType":"Bundle","type":"searchset","entry":[' + b" " * 100_000 + b"]}"


class DripServer:
    def __init__(self, *, stage: Stage = "body", interval: float = 1.0) -> None:
        self.stage: Stage = stage
        self.interval = interval
        self.requests = 0
        self.open_connections = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        owner = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                owner._serve(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

            def handle_error(self, request: object, client_address: object) -> None:
                pass  # the client gave up on us: the point of the exercise

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self, conn: socket.socket) -> None:
        with self._lock:
            self.requests += 1
            self.open_connections += 1
        try:
            conn.recv(65536)  # the request head (small GETs and POSTs fit)
            head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            head += f"Content-Length: {len(_BODY)}\r\n".encode()
            if self.stage == "headers":
                self._drip(conn, head + b"X-Padding: " + b"a" * 60_000 + b"\r\n\r\n" + _BODY)
            else:
                conn.sendall(head + b"\r\n")
                self._drip(conn, _BODY)
        except OSError:
            pass
        finally:
            with self._lock:
                self.open_connections -= 1

    def _drip(self, conn: socket.socket, data: bytes) -> None:
        for i in range(len(data)):
            if self._stopping.wait(self.interval):
                return
            conn.sendall(data[i : i + 1])

    def wait_closed(self, timeout: float) -> bool:
        """True once every connection to us has been closed by its client (within ``timeout``)."""
        ends = time.monotonic() + timeout
        while time.monotonic() < ends:
            with self._lock:
                if self.open_connections == 0:
                    return True
            time.sleep(0.05)
        return False

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
