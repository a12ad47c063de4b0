"""Progress on stderr: a bar with rate and ETA on a terminal, plain periodic lines otherwise.

Plain lines (a log file, CI) come every ``interval`` seconds and at the end of each phase, so a
long run shows it is alive without flooding a log. No dependency: a carriage return redraws the bar.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

BAR = 28


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def _amount(value: float, unit: str) -> str:
    if unit == "B":
        for prefix in ("B", "kB", "MB", "GB", "TB"):
            if abs(value) < 1000 or prefix == "TB":
                return f"{value:.0f} {prefix}" if prefix == "B" else f"{value:.1f} {prefix}"
            value /= 1000
    return f"{value:,.0f} {unit}"


class Progress:
    """One phase's progress (``label``: done of total ``unit``); ``update`` as often as you like."""

    def __init__(
        self,
        label: str,
        total: int,
        unit: str,
        *,
        stream: TextIO | None = None,
        tty: bool | None = None,
        interval: float = 10.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.label, self.total, self.unit = label, max(total, 0), unit
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.interval = 0.2 if self.tty else interval
        self._clock = clock or time.monotonic
        self.start = self._clock()
        self._last = self.start
        self.done = 0

    def line(self) -> str:
        elapsed = self._clock() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 and self.total else None
        eta = _duration(left) if left is not None else "--:--"
        pct = 100 * self.done / self.total if self.total else 100.0
        speed = f"{_amount(rate, self.unit)}/s"
        amounts = f"{_amount(self.done, self.unit)} / {_amount(self.total, self.unit)}"
        if self.tty:
            filled = int(BAR * min(pct, 100) / 100)
            bar = "█" * filled + "·" * (BAR - filled)
            return f"{self.label:<10} {bar} {pct:5.1f}%  {amounts}  {speed}  ETA {eta}"
        return f"{self.label}: {pct:.1f}% ({amounts}), {speed}, elapsed {_duration(elapsed)}, ETA {eta}"

    def update(self, done: int) -> None:
        self.done = min(done, self.total) if self.total else done
        now = self._clock()
        if now - self._last >= self.interval:
            self._last = now
            self._emit()

    def _emit(self, *, final: bool = False) -> None:
        if self.tty:
            self.stream.write("\r\x1b[2K" + self.line() + ("\n" if final else ""))
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def finish(self) -> None:
        self.done = self.total or self.done
        self._emit(final=True)
