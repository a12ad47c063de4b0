"""Dates, windows and ages, against an explicit evaluation date.

FHIR dates may be partial ("2026", "2026-05"): each is kept as the range of days it could mean, so
that a window check can answer "inside", "outside" or "can't tell" instead of guessing. An instant
with an offset ("2026-05-31T23:30:00-05:00") is placed on the site's calendar (the site time zone,
the same zone that gives every face its evaluation date), so a card, the app and a screen agree
near midnight; a date-time without an offset is taken at the day it names.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from functools import lru_cache
from typing import Annotated, Literal

from pydantic import BeforeValidator, PlainSerializer

_WINDOW = re.compile(r"^(\d{1,4})(d|w|mo|y)$")
WindowUnit = Literal["d", "w", "mo", "y"]
_UNITS: dict[str, WindowUnit] = {"d": "d", "w": "w", "mo": "mo", "y": "y"}
_UNIT_WORDS = {"d": "day", "w": "week", "mo": "month", "y": "year"}


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """A look-back such as 8 weeks or 6 months; months and years are calendar arithmetic."""

    amount: int
    unit: WindowUnit

    def start(self, as_of: date) -> date:
        """The first day inside a window that ends on ``as_of`` (both ends count)."""
        if self.unit == "d":
            return as_of - timedelta(days=self.amount)
        if self.unit == "w":
            return as_of - timedelta(weeks=self.amount)
        months = self.amount * (12 if self.unit == "y" else 1)
        return add_months(as_of, -months)

    def days_at(self, as_of: date) -> int:
        return (as_of - self.start(as_of)).days

    def __str__(self) -> str:
        word = _UNIT_WORDS[self.unit]
        return f"{self.amount} {word}{'' if self.amount == 1 else 's'}"

    def code(self) -> str:
        return f"{self.amount}{self.unit}"


def parse_window(value: object) -> WindowSpec:
    if isinstance(value, WindowSpec):
        return value
    match = _WINDOW.match(str(value).strip()) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"window {value!r} is not like '14d', '8w', '6mo' or '5y'")
    amount = int(match.group(1))
    if amount == 0:
        raise ValueError("a window must be longer than zero")
    return WindowSpec(amount=amount, unit=_UNITS[match.group(2)])


Window = Annotated[WindowSpec, BeforeValidator(parse_window), PlainSerializer(WindowSpec.code)]


def add_months(day: date, months: int) -> date:
    """Calendar month arithmetic, clamping to the month's last day (31 March - 1 mo = 28/29 Feb)."""
    index = day.year * 12 + (day.month - 1) + months
    year, month = divmod(index, 12)
    last = calendar.monthrange(year, month + 1)[1]
    return date(year, month + 1, min(day.day, last))


@dataclass(frozen=True, slots=True)
class DayRange:
    """The days a FHIR date could mean: one day for a full date, a month or year for partial ones."""

    first: date
    last: date

    @property
    def exact(self) -> bool:
        return self.first == self.last

    def __str__(self) -> str:
        if self.exact:
            return self.first.isoformat()
        if self.first.month == 1 and self.first.day == 1 and self.last.month == 12:
            return f"{self.first.year}"
        return self.first.isoformat()[:7]


_PARTIAL = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?")


def day_range(value: object, tz: tzinfo | None = None) -> DayRange | None:
    """Any FHIR date / dateTime / instant as a DayRange (on ``tz``'s calendar when it carries an
    offset and a zone is given); None if unusable."""
    if value is None:
        return None
    if isinstance(value, datetime):
        moment = value.astimezone(tz) if tz is not None and value.tzinfo is not None else value
        return DayRange(moment.date(), moment.date())
    if isinstance(value, date):
        return DayRange(value, value)
    if not isinstance(value, str):
        return None
    return _day_of_text(value, tz)


@lru_cache(maxsize=8192)
def _day_of_text(value: str, tz: tzinfo | None) -> DayRange | None:
    """day_range of a string; cached: a record's results share a handful of timestamps."""
    utc_already = value.endswith(("Z", "+00:00")) and _is_utc(tz)  # the date as written: no parse
    if tz is not None and len(value) > 16 and value[10] == "T" and not utc_already:
        placed = instant(value, tz)
        if placed is not None:
            return DayRange(placed.date(), placed.date())
    match = _PARTIAL.match(value)
    if match is None:
        return None
    try:
        year = int(match.group(1))
        if match.group(3):
            day = date(year, int(match.group(2)), int(match.group(3)))
            return DayRange(day, day)
        if match.group(2):
            month = int(match.group(2))
            last = calendar.monthrange(year, month)[1]
            return DayRange(date(year, month, 1), date(year, month, last))
        return DayRange(date(year, 1, 1), date(year, 12, 31))
    except ValueError:
        return None


def _is_utc(tz: tzinfo | None) -> bool:
    return tz is UTC or getattr(tz, "key", None) in ("UTC", "Etc/UTC")


def instant(value: object, tz: tzinfo) -> datetime | None:
    """A date-time with a time of day, in ``tz`` (one without an offset is taken as ``tz``'s own);
    None for a date alone or anything unreadable: the time is what orders same-day results."""
    if not isinstance(value, str) or len(value) <= 10 or value[10] != "T":
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment.replace(tzinfo=tz) if moment.tzinfo is None else moment.astimezone(tz)


def today_in(tz: tzinfo, now: datetime | None = None) -> date:
    """The evaluation date at this site: today on the site's calendar."""
    return (now or datetime.now(UTC)).astimezone(tz).date()


Placement = Literal["inside", "outside", "unsure"]


def place(days: DayRange, *, start: date | None, end: date) -> Placement:
    """Where a (possibly partial) date falls relative to the window [start, end]."""
    lo = start or date.min
    if days.first >= lo and days.last <= end:
        return "inside"
    if days.last < lo or days.first > end:
        return "outside"
    return "unsure"


def age_on(birth: date, as_of: date) -> int:
    """Completed years on ``as_of`` (a 29 February birthday comes of age on 1 March)."""
    years = as_of.year - birth.year
    if (as_of.month, as_of.day) < (birth.month, birth.day):
        years -= 1
    return years


def parse_as_of(value: str) -> date:
    """The evaluation date from a command line or a test vector: strictly YYYY-MM-DD."""
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        raise ValueError(f"evaluation date {value!r} is not YYYY-MM-DD")
    return date.fromisoformat(value)
