"""Outbound HTTP with a total deadline enforced on the socket: JWKS, FHIR, SMART discovery and token.

Per-read timeouts alone do not bound a call: a server that drips one byte a second never lets a
single ``recv`` time out, and ``http.client`` keeps reading header lines and body chunks for as long
as bytes trickle in. So every request made inside ``deadline(ends)`` has its socket registered with
one watchdog thread, which shuts the socket down (``shutdown(SHUT_RDWR)``, which wakes a blocked
``recv`` at once) when ``ends`` passes: connect, TLS handshake, headers and body alike. The caller
sees ``DeadlineExceeded`` (a ``requests.Timeout``), whatever stage the call was in.

``fetch()`` is the one helper the service uses: no redirects, the body streamed under a size cap
(``BodyTooLarge``), the whole call under the deadline. Sessions come from ``session()``, whose
connection classes register their sockets; other sessions are not watched.

Both exceptions derive from ``requests.RequestException``, so callers that already translate
requests' failures into their own errors (``FhirError``, ``JwksUnavailable``, SMART pages) handle
them with the rest; messages never carry the URL.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

_CHUNK = 64 * 1024


class DeadlineExceeded(requests.Timeout):
    """The call's total deadline passed (its socket was shut down if it was still open)."""


class BodyTooLarge(requests.RequestException):
    """The answer declared or sent more than the caller's size cap."""


class _Watch:
    """One call's deadline and the sockets it has opened or reused."""

    def __init__(self, ends: float) -> None:
        self.ends = ends
        self.expired = False
        self._done = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def attach(self, sock: socket.socket) -> None:
        with self._lock:
            if self.expired:
                _shutdown(sock)
            elif not self._done:
                self._sockets.append(sock)
        if time.monotonic() >= self.ends:
            self.expire()

    def expire(self) -> None:
        with self._lock:
            if self._done or self.expired:
                return
            self.expired = True
            for sock in self._sockets:
                _shutdown(sock)

    def finish(self) -> None:
        """The call is over: its sockets (maybe back in a pool) must never be shut down by us."""
        with self._lock:
            self._done = True
            self._sockets.clear()


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed or never connected
        sock.shutdown(socket.SHUT_RDWR)


class _Watchdog:
    """One daemon thread expiring watches in deadline order; started on first use."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, _Watch]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def add(self, watch: _Watch) -> None:
        with self._cond:
            heapq.heappush(self._heap, (watch.ends, next(self._seq), watch))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="net-deadline", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap:
                    self._cond.wait()
                ends, _, watch = self._heap[0]
                left = ends - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                heapq.heappop(self._heap)
            watch.expire()


_WATCHDOG = _Watchdog()
_current = threading.local()


def _watch() -> _Watch | None:
    return getattr(_current, "watch", None)


@contextmanager
def deadline(ends: float) -> Iterator[_Watch]:
    """Requests made by this thread through a ``session()`` inside the block end by ``ends``
    (``time.monotonic()``): their sockets are shut down then."""
    watch, previous = _Watch(ends), _watch()
    _current.watch = watch
    _WATCHDOG.add(watch)
    try:
        yield watch
    finally:
        watch.finish()
        _current.watch = previous


class _WatchedMixin:
    """Registers each new or reused socket with the calling thread's deadline, if any."""

    sock: socket.socket | None

    def _new_conn(self) -> socket.socket:
        watch = _watch()
        if watch is not None and time.monotonic() >= watch.ends:
            raise DeadlineExceeded("deadline passed before connecting")
        sock: socket.socket = super()._new_conn()  # type: ignore[misc]
        if watch is not None:
            watch.attach(sock)
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        watch = _watch()
        if watch is not None and self.sock is not None:  # a kept-alive connection, reused
            watch.attach(self.sock)
        super().request(*args, **kwargs)  # type: ignore[misc]


class _HTTPConnection(_WatchedMixin, HTTPConnection):
    pass


class _HTTPSConnection(_WatchedMixin, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_POOLS = {"http": _HTTPPool, "https": _HTTPSPool}


class _WatchedAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = _POOLS
        return manager


def session(*, pool_maxsize: int = 1) -> requests.Session:
    """A ``requests.Session`` whose calls obey ``deadline()``; reuse it for one upstream host."""
    s = requests.Session()
    adapter = _WatchedAdapter(pool_connections=1, pool_maxsize=pool_maxsize)
    for scheme in ("https://", "http://"):
        s.mount(scheme, adapter)
    return s


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes


def fetch(
    s: requests.Session,
    method: str,
    url: str,
    *,
    ends: float,
    timeout: tuple[float, float],
    max_bytes: int,
    **kwargs: Any,
) -> Reply:
    """One request, no redirects, the whole answer read by ``ends`` and capped at ``max_bytes``.

    ``timeout`` is (connect, read) per socket operation, each clipped to the time left; ``ends``
    bounds the whole call. Raises ``DeadlineExceeded``, ``BodyTooLarge`` or another
    ``requests.RequestException``.
    """
    left = ends - time.monotonic()
    if left <= 0:
        raise DeadlineExceeded("deadline passed before the request")
    clipped = (min(timeout[0], left), min(timeout[1], left))
    with deadline(ends) as watch:
        try:
            with s.request(
                method, url, timeout=clipped, stream=True, allow_redirects=False, **kwargs
            ) as resp:
                body = _read(resp, ends=ends, max_bytes=max_bytes)
                return Reply(status=resp.status_code, headers=resp.headers, body=body)
        except BodyTooLarge:
            raise
        except requests.RequestException:
            if watch.expired or time.monotonic() >= ends:
                raise DeadlineExceeded("total deadline passed") from None
            raise


def _read(resp: requests.Response, *, ends: float, max_bytes: int) -> bytes:
    declared = resp.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise BodyTooLarge(f"answer declares more than {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    for chunk in resp.iter_content(_CHUNK):
        size += len(chunk)
        if size > max_bytes:
            raise BodyTooLarge(f"answer larger than {max_bytes} bytes")
        if time.monotonic() >= ends:
            raise DeadlineExceeded("total deadline passed while reading")
        chunks.append(chunk)
    return b"".join(chunks)
