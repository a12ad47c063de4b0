"""A small TTL cache whose misses are single-flight: concurrent callers share one load.

Used for SMART discovery (``{iss}/.well-known/smart-configuration``): a flood of launches naming one
EHR costs that EHR one request per ``ttl``, and a failure is remembered for ``failure_ttl`` so a dead
EHR is not asked again by every launch. No lock is held while loading; waiters wait on the loader's
future for at most ``wait`` seconds. Entries are bounded (oldest dropped), since keys may come from
requests (any ``iss`` under an allowlisted prefix).
"""

from __future__ import annotations

import copy
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Generic, TypeVar

V = TypeVar("V")


@dataclass(frozen=True)
class _Entry(Generic[V]):
    expires: float
    value: V | None = None
    error: BaseException | None = None


class TtlCache(Generic[V]):
    def __init__(
        self,
        *,
        ttl: float,
        failure_ttl: float,
        max_entries: int = 256,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl, self._failure_ttl, self._max = ttl, failure_ttl, max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry[V]] = OrderedDict()
        self._inflight: dict[str, Future[V]] = {}
        self.loads = 0  # how many times ``load`` actually ran (for tests)

    def get(self, key: str, load: Callable[[], V], *, wait: float) -> V:
        """The cached value, or the one ``load`` returns (shared with concurrent callers)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.expires > self._clock():
                if entry.error is not None:
                    raise copy.copy(entry.error)
                return entry.value  # type: ignore[return-value]
            future = self._inflight.get(key)
            owner = future is None
            if future is None:
                future = self._inflight[key] = Future()
                self.loads += 1
        if not owner:
            return future.result(timeout=wait)
        try:
            value = load()
        except BaseException as exc:
            self._settle(key, _Entry(expires=self._clock() + self._failure_ttl, error=exc))
            future.set_exception(exc)
            raise
        self._settle(key, _Entry(expires=self._clock() + self._ttl, value=value))
        future.set_result(value)
        return value

    def _settle(self, key: str, entry: _Entry[V]) -> None:
        """Store the outcome and end the flight in one step: no caller can slip in between."""
        with self._lock:
            if entry.error is None or isinstance(entry.error, Exception):
                self._entries[key] = entry
                self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
            self._inflight.pop(key, None)
