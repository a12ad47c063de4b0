"""What counts as data, read leniently from resources as EHRs really send them, and the one verdict
vocabulary every rule kind speaks.

The rules of the trial specifications' "Data that counts" section live here, once: which statuses
count, which date stands for a resource, how a coding is named in a reason. Every reader tolerates
missing or oddly-typed fields and answers None rather than raising.

Vocabulary: each piece of data a rule looks at gets a **verdict** (``meets`` the rule, ``fails``
it, or ``unsure``: it cannot tell); the rule then reports one **Finding** (``found``: data that
satisfies it; ``against``: data that clearly does not; ``undetermined``: data that cannot decide;
``absent``: no qualifying data), which the mapping's ``if_found`` / ``if_absent`` policy turns into
``met`` / ``not-met`` / ``unknown``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, tzinfo
from typing import Literal

from cds_service.codes import SYSTEM_LABELS, canonical_system, normalize
from cds_service.engine.report import Evidence
from cds_service.engine.time import DayRange, day_range, instant
from cds_service.engine.valuesets import CompiledValueSet
from cds_service.record import Resource, codings, reference_of

Kind = Literal["found", "against", "undetermined", "absent"]
Verdict = Literal["meets", "fails", "unsure"]


@dataclass(frozen=True, slots=True)
class Finding:
    """What a data rule saw, before the mapping's if_found / if_absent policy turns it into a result."""

    kind: Kind
    reason: str
    evidence: tuple[Evidence, ...] = ()


OBSERVATION_COUNTS = frozenset({"final", "amended", "corrected"})
NOT_DONE = frozenset({"entered-in-error", "cancelled", "not-done", "not-taken", "stopped-in-error"})
CONDITION_IGNORED = frozenset({"refuted", "entered-in-error"})
CONDITION_CURRENT = frozenset({"active", "recurrence", "relapse"})


def first_code(concept: object) -> str | None:
    for coding in codings(concept):
        code = coding.get("code")
        if isinstance(code, str):
            return code
    return None


def status_counts(resource: Resource) -> bool:
    """False for data that never happened or was withdrawn (entered-in-error, cancelled, ...)."""
    resource_type = resource.get("resourceType")
    status = resource.get("status")
    if status is not None and not isinstance(status, str):
        # Not valid FHIR: it cannot be said not to count. Counted, so that if it decides, the
        # evidence check (evaluate) finds it invalid and leaves the criterion unknown.
        return True
    if resource_type == "Observation":
        return status in OBSERVATION_COUNTS
    if resource_type in ("Condition", "AllergyIntolerance"):
        return first_code(resource.get("verificationStatus")) not in CONDITION_IGNORED
    if resource_type == "MedicationRequest" and resource.get("intent") == "proposal":
        return False
    return status not in NOT_DONE


def concept_label(concept: object, valueset: CompiledValueSet | None = None) -> str:
    """'Systemic lupus erythematosus (SNOMED 55464009)' for a reason line."""
    matched = valueset.matching_coding(codings(concept)) if valueset else None
    chosen = matched or next(iter(codings(concept)), None)
    text = concept.get("text") if isinstance(concept, dict) else None
    if chosen is None:
        return text if isinstance(text, str) else "uncoded entry"
    display = chosen.get("display") or text
    system_uri = canonical_system(str(chosen.get("system")))  # an OID reads as the system it names
    if not display and valueset is not None:
        key = normalize(system_uri, str(chosen.get("code")))  # how the value set keys its displays
        display = valueset.displays.get(key) or (valueset.title if matched else None)
    system = SYSTEM_LABELS.get(system_uri, "code")
    return f"{display or 'code'} ({system} {chosen.get('code')})"


@dataclass(frozen=True, slots=True)
class When:
    """When an observation was made: its day(s), and (worked out only when results on one day must
    be ordered) its time where one was given."""

    day: DayRange
    raw: object = None
    tz: tzinfo | None = None

    @property
    def moment(self) -> datetime | None:
        return instant(self.raw, self.tz) if self.tz is not None else None

    def __str__(self) -> str:
        return str(self.day)


_EFFECTIVE = ("effectiveDateTime", "effectivePeriod", "effectiveInstant", "issued")


def observation_when(resource: Resource, tz: tzinfo | None = None) -> When | None:
    """effectiveDateTime, else effectivePeriod.end (or start), else effectiveInstant, else issued."""
    period = resource.get("effectivePeriod")
    for value in (
        resource.get("effectiveDateTime"),
        period.get("end") if isinstance(period, dict) else None,
        period.get("start") if isinstance(period, dict) else None,
        resource.get("effectiveInstant"),
        resource.get("issued"),
    ):
        found = day_range(value, tz)
        if found is not None:
            return When(found, value, tz)
    return None


def observation_day(resource: Resource, tz: tzinfo | None = None) -> DayRange | None:
    when = observation_when(resource, tz)
    return when.day if when else None


def period_start(period: object, tz: tzinfo | None = None) -> DayRange | None:
    return day_range(period.get("start"), tz) if isinstance(period, dict) else None


def period_end(period: object, tz: tzinfo | None = None) -> DayRange | None:
    return day_range(period.get("end"), tz) if isinstance(period, dict) else None


def evidence(resource: Resource, *, value: str | None = None, day: object = None) -> Evidence:
    return Evidence(reference=reference_of(resource), value=value, date=str(day) if day else None)


def plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def more(count: int) -> str:
    """' (and 2 more)' after the item a reason names, when others like it were found."""
    return f" (and {count} more)" if count > 0 else ""


def distinct_days(days: list[DayRange | None]) -> int:
    """How many separate episodes a list of dates stands for: one per distinct day (undated: one each)."""
    return len({d for d in days if d is not None}) + sum(1 for d in days if d is None)


def latest_first(day: DayRange | None) -> date:
    return day.last if day else date.min
