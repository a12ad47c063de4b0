"""The GC pause nests across callers, always resumes, and collects when a pause runs too long."""

from __future__ import annotations

import gc
import threading
import time

import pytest

from cds_service import gcpause


def test_nested_and_concurrent_pauses_resume_only_when_the_last_one_leaves() -> None:
    gcpause.pause()
    with gcpause.paused():
        assert not gc.isenabled()
    assert not gc.isenabled()
    other = threading.Thread(target=gcpause.pause)  # a second thread opens a pause of its own
    other.start()
    other.join()
    gcpause.resume()
    assert not gc.isenabled()  # the other thread's pause is still open
    gcpause.resume()
    assert gc.isenabled()


def test_an_error_inside_still_resumes() -> None:
    with pytest.raises(RuntimeError), gcpause.paused():
        raise RuntimeError("boom")
    assert gc.isenabled()


def test_a_pause_held_past_the_limit_collects_once(monkeypatch: pytest.MonkeyPatch) -> None:
    collected: list[int] = []
    monkeypatch.setattr(gcpause, "MAX_PAUSE_SECONDS", 0.05)

    def fake_collect(*_: object) -> int:
        collected.append(1)
        return 0

    monkeypatch.setattr(gc, "collect", fake_collect)
    with gcpause.paused():
        time.sleep(0.06)
        with gcpause.paused():  # an overlapping request arrives while the pause is overdue
            pass
        with gcpause.paused():  # the clock restarted: no second collection yet
            pass
    assert collected == [1] and gc.isenabled()


def test_a_collector_switched_off_by_the_program_stays_off() -> None:
    gc.disable()
    try:
        with gcpause.paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
