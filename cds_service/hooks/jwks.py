"""JWK Sets of the EHR issuers we trust: fetched on demand, cached, refetched for rotation.

Split from ``hooks.auth`` (which re-exports ``JwksCache`` and ``JwksUnavailable``): everything
here is about getting keys over the network without letting a slow or hostile EHR stall anyone.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

import requests

from cds_service import net
from cds_service.errors import Unauthorized

log = logging.getLogger("cds_service.hooks.auth")


class JwksUnavailable(Unauthorized):
    """The issuer's JWK Set could not be had, so no token of that issuer can be verified now."""


@dataclass
class _KeySet:
    """What we know of one JWKS URL; guarded by ``JwksCache._lock``, which no I/O ever holds."""

    keys: dict[str, dict[str, Any]] | None = None
    fetched_at: float = 0.0
    last_attempt: float | None = None
    inflight: Future[dict[str, dict[str, Any]]] | None = None


class JwksCache:
    """JWK Sets by URL: fetched on demand, kept ``ttl_seconds``, refetched once for an unknown kid.

    A refetch (for rotation) or a retry after a failure happens at most once per
    ``min_refetch_seconds`` per URL, so tokens with random kids, or a dead EHR, cannot make us
    hammer the EHR. A fetch runs in this cache's own small thread pool under a total deadline
    enforced on the socket (``net``): callers that need it wait on one shared future
    (single-flight), and nobody holds a lock across the download, so a caller whose kid is already
    cached never waits behind a slow EHR. Expired sets are not served when a refresh fails: a key
    the EHR withdrew must stop working.
    """

    def __init__(
        self,
        *,
        http_timeout: tuple[float, float] = (2.0, 3.0),
        ttl_seconds: float = 600.0,
        min_refetch_seconds: float = 30.0,
        max_bytes: int = 64 * 1024,
        clock: Callable[[], float] = time.monotonic,
        fetch_threads: int = 4,
    ) -> None:
        self._timeout = http_timeout
        self._deadline = sum(http_timeout)  # the whole download, connect to last byte
        self._ttl = ttl_seconds
        self._min_refetch = min_refetch_seconds
        self._max_bytes = max_bytes
        self._clock = clock
        self._lock = threading.Lock()
        self._sets: dict[str, _KeySet] = {}
        self._pool = ThreadPoolExecutor(max_workers=fetch_threads, thread_name_prefix="jwks-fetch")
        self._session = net.session(pool_maxsize=fetch_threads)

    def find_key(self, url: str, kid: str) -> dict[str, Any] | None:
        """The signing JWK ``kid`` of the set at ``url``, or None; raises JwksUnavailable."""
        found = self._lookup(url, kid)
        if not isinstance(found, Future):
            return found
        try:
            keys = found.result(timeout=self._deadline + 1.0)
        except FutureTimeout:
            raise JwksUnavailable("JWKS fetch exceeded its deadline") from None
        return keys.get(kid)

    async def find_key_async(self, url: str, kid: str) -> dict[str, Any] | None:
        """``find_key`` for the event loop: waiting for a fetch occupies no thread."""
        found = self._lookup(url, kid)
        if not isinstance(found, Future):
            return found
        try:
            shared = asyncio.shield(asyncio.wrap_future(found))  # one waiter's timeout cancels nothing
            keys = await asyncio.wait_for(shared, timeout=self._deadline + 1.0)
        except TimeoutError:
            raise JwksUnavailable("JWKS fetch exceeded its deadline") from None
        return keys.get(kid)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._session.close()

    def _lookup(self, url: str, kid: str) -> dict[str, Any] | Future[dict[str, dict[str, Any]]] | None:
        """The key (or None) from the cache, or the in-flight fetch to wait for (started if due)."""
        with self._lock:
            state = self._sets.setdefault(url, _KeySet())
            now = self._clock()
            fresh = state.keys is not None and now - state.fetched_at < self._ttl
            if fresh and state.keys is not None and kid in state.keys:
                return state.keys[kid]
            if state.inflight is not None:
                return state.inflight
            if state.last_attempt is not None and now - state.last_attempt < self._min_refetch:
                if fresh:
                    return None  # an unknown kid, and we refetched too recently to try again
                raise JwksUnavailable("JWKS fetched or failed too recently to fetch again")
            if fresh:
                log.info("JWKS refetch for an unknown kid (url=%s)", url)
            state.last_attempt = now
            state.inflight = self._pool.submit(self._fetch, url, now)
            return state.inflight

    def _fetch(self, url: str, started: float) -> dict[str, dict[str, Any]]:
        try:
            keys = _index_signing_keys(self._download(url))
        except BaseException:
            with self._lock:
                self._sets[url].inflight = None
            raise
        with self._lock:
            state = self._sets[url]
            state.keys, state.fetched_at, state.inflight = keys, started, None
        return keys

    def _download(self, url: str) -> Any:
        """GET the set: no redirects, a size cap, and a total deadline on the socket, which bounds
        a slow-drip answer that per-read timeouts alone would not."""
        try:
            reply = net.fetch(
                self._session,
                "GET",
                url,
                ends=time.monotonic() + self._deadline,
                timeout=self._timeout,
                max_bytes=self._max_bytes,
                headers={"Accept": "application/json"},
            )
        except net.BodyTooLarge:
            raise JwksUnavailable("JWKS larger than the size limit") from None
        except net.DeadlineExceeded:
            raise JwksUnavailable("JWKS download exceeded its deadline") from None
        except requests.RequestException as exc:
            raise JwksUnavailable(f"JWKS fetch failed: {type(exc).__name__}") from None
        if reply.status != 200:
            raise JwksUnavailable(f"JWKS answered HTTP {reply.status}")
        try:
            return json.loads(reply.body)
        except (ValueError, RecursionError):
            raise JwksUnavailable("JWKS is not JSON") from None


def _index_signing_keys(doc: Any) -> dict[str, dict[str, Any]]:
    """kid -> JWK for the keys usable to verify signatures (``use`` absent or ``sig``)."""
    keys = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(keys, list):
        raise JwksUnavailable("JWKS is not a JSON object with a 'keys' array")
    indexed: dict[str, dict[str, Any]] = {}
    for jwk in keys:
        usable = isinstance(jwk, dict) and isinstance(jwk.get("kid"), str)
        if usable and jwk.get("use", "sig") == "sig":
            indexed.setdefault(jwk["kid"], jwk)  # kids must be unique; first one wins
    return indexed
