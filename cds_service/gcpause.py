"""Pausing Python's cyclic garbage collector while a patient record is parsed, read and freed.

Parsed FHIR JSON is trees of dicts and lists without cycles, freed by reference counting. While a
heavy record (160,000 containers) is alive, the cyclic collector only rescans it, again and again:
a third or more of a heavy hook's time. So the hook pauses it from parse to free. Pauses nest and
overlap across threads (a counter); under a steady overlap of requests the collector would never
run, so a pause that has lasted over a second collects once before going on.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

MAX_PAUSE_SECONDS = 1.0

_lock = threading.Lock()
_pausers = 0
_since: float | None = None
_was_enabled = True  # a program that had switched the collector off keeps it off


def pause() -> None:
    global _pausers, _since, _was_enabled
    overdue = False
    with _lock:
        _pausers += 1
        now = time.monotonic()
        if _pausers == 1:
            _was_enabled = gc.isenabled()
            gc.disable()
            _since = now
        elif _since is not None and now - _since > MAX_PAUSE_SECONDS:
            overdue, _since = True, now
    if overdue and _was_enabled:
        gc.collect()


def resume() -> None:
    global _pausers, _since
    with _lock:
        _pausers = max(_pausers - 1, 0)
        if _pausers == 0:
            _since = None
            if _was_enabled:
                gc.enable()


@contextmanager
def paused() -> Iterator[None]:
    pause()
    try:
        yield
    finally:
        resume()
