"""FHIR R4 datatypes as short text a clinician reads: codes, quantities, ranges, periods, timings.

Lenient on purpose (the resource has already been read by the engine; an odd shape is shown as
"—", never an error page), and never HTML: the templates escape what these return.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import tzinfo
from typing import Any

from cds_service.codes import SYSTEM_LABELS, canonical_system
from cds_service.engine.time import instant

NONE = "—"
_UNITS = {"s": "second", "min": "minute", "h": "hour", "d": "day", "wk": "week", "mo": "month", "a": "year"}
_SHORT_SYSTEMS = {
    "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation": "HL7 interpretation",
    "http://terminology.hl7.org/CodeSystem/observation-category": "HL7 category",
    "http://terminology.hl7.org/CodeSystem/v3-GTSAbbreviation": "HL7 timing",
}


def as_dict(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def as_list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def system_name(system: object) -> str:
    """'LOINC', 'SNOMED', ... for known systems; the URI itself otherwise."""
    if not isinstance(system, str) or not system:
        return "no system"
    uri = canonical_system(system)
    return SYSTEM_LABELS.get(uri) or _SHORT_SYSTEMS.get(uri) or system


def coding_text(coding: object) -> str:
    """'Creatinine [Mass/volume] in Serum or Plasma (LOINC 2160-0)'."""
    c = as_dict(coding)
    code, display = c.get("code"), c.get("display")
    where = f"{system_name(c.get('system'))} {code}" if isinstance(code, str) else None
    if isinstance(display, str) and display.strip():
        return f"{display.strip()} ({where})" if where else display.strip()
    return where or NONE


def concept_name(concept: object) -> str:
    """A CodeableConcept's name: its text, else the first coding's display, else its first code."""
    c = as_dict(concept)
    if isinstance(c.get("text"), str) and c["text"].strip():
        return str(c["text"]).strip()
    codings = [as_dict(x) for x in as_list(c.get("coding"))]
    for coding in codings:
        if isinstance(coding.get("display"), str) and coding["display"].strip():
            return str(coding["display"]).strip()
    return coding_text(codings[0]) if codings else NONE


def concept_codes(concept: object) -> list[str]:
    """Every coding of a CodeableConcept, each as 'display (SYSTEM code)'."""
    return [coding_text(c) for c in as_list(as_dict(concept).get("coding"))]


def concepts(value: object) -> str:
    """A list of CodeableConcepts (categories, reasons, interpretations) as one line."""
    names = [concept_name(c) for c in as_list(value)]
    return "; ".join(n for n in names if n != NONE) or NONE


def quantity(value: object) -> str:
    """'< 7 mg/dL': comparator, value, and the unit as sent (else its UCUM code)."""
    q = as_dict(value)
    number = q.get("value")
    unit = q.get("unit") or q.get("code") or ""
    if not _number(number):
        return NONE
    comparator = f"{q['comparator']} " if isinstance(q.get("comparator"), str) else ""
    return f"{comparator}{number} {unit}".strip()


def range_text(value: object) -> str:
    r = as_dict(value)
    low, high = r.get("low"), r.get("high")
    if low and high:
        return f"{quantity(low)} – {quantity(high)}"
    if low:
        return f"≥ {quantity(low)}"
    if high:
        return f"≤ {quantity(high)}"
    return NONE


def when(value: object, tz: tzinfo) -> str:
    """A date as sent ('2026-03'), a date-time in the site's zone ('2026-03-04 08:15 CET')."""
    if not isinstance(value, str) or not value:
        return NONE
    moment = instant(value, tz)
    if moment is None:
        return value
    return f"{moment:%Y-%m-%d %H:%M} {moment.tzname() or ''}".strip()


def period(value: object, tz: tzinfo) -> str:
    p = as_dict(value)
    start, end = p.get("start"), p.get("end")
    if start and end:
        return f"{when(start, tz)} to {when(end, tz)}"
    if start:
        return f"from {when(start, tz)} (no end recorded)"
    return f"until {when(end, tz)}" if end else NONE


def choice(resource: Mapping[str, Any], stem: str, tz: tzinfo) -> str:
    """A ``stem[x]`` element (value, onset, effective, occurrence, performed ...) as text."""
    for suffix, show in (
        ("DateTime", lambda v: when(v, tz)),
        ("Instant", lambda v: when(v, tz)),
        ("Date", lambda v: when(v, tz)),
        ("Period", lambda v: period(v, tz)),
        ("Quantity", quantity),
        ("Age", quantity),
        ("Range", range_text),
        ("CodeableConcept", concept_name),
        ("String", lambda v: str(v)),
        ("Boolean", lambda v: "yes" if v is True else "no" if v is False else NONE),
        ("Integer", lambda v: str(v)),
        ("Ratio", ratio),
        ("Time", lambda v: str(v)),
    ):
        if f"{stem}{suffix}" in resource:
            return show(resource[f"{stem}{suffix}"])
    return NONE


def ratio(value: object) -> str:
    r = as_dict(value)
    return f"{quantity(r.get('numerator'))} / {quantity(r.get('denominator'))}"


def timing(value: object) -> str:
    """'twice a day', 'every 6 hours', 'BID' (a code is shown as its display, else its code)."""
    t = as_dict(value)
    repeat = as_dict(t.get("repeat"))
    frequency, per, unit = repeat.get("frequency"), repeat.get("period"), repeat.get("periodUnit")
    parts = []
    if _number(per) and isinstance(unit, str) and unit in _UNITS:
        word = _UNITS[unit]
        times = frequency if isinstance(frequency, int) and frequency > 0 else 1
        count = {1: "once", 2: "twice"}.get(times, f"{times} times")
        if per == 1:
            parts.append(f"{count} a {word}")
        else:
            every = f"every {per:g} {word}s"
            parts.append(every if times == 1 else f"{count} {every}")
    if t.get("code"):
        parts.append(concept_name(t["code"]))
    return "; ".join(parts) or NONE


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def dosage(value: object, tz: tzinfo) -> str:
    """One Dosage: its text, timing, dose, route, 'as needed'."""
    d = as_dict(value)
    parts = []
    if isinstance(d.get("text"), str) and d["text"].strip():
        parts.append(d["text"].strip())
    for rate in as_list(d.get("doseAndRate")):
        dose = choice(as_dict(rate), "dose", tz)
        if dose != NONE:
            parts.append(f"dose {dose}")
    if d.get("dose"):  # MedicationAdministration.dosage
        parts.append(f"dose {quantity(d['dose'])}")
    if d.get("timing"):
        shown = timing(d["timing"])
        if shown != NONE:
            parts.append(shown)
    if d.get("route"):
        parts.append(f"route: {concept_name(d['route'])}")
    if d.get("asNeededBoolean") is True or d.get("asNeededCodeableConcept"):
        parts.append("as needed")
    return "; ".join(parts) or NONE


def notes(resource: Mapping[str, Any]) -> list[str]:
    return [
        str(n["text"]).strip()
        for n in as_list(resource.get("note"))
        if isinstance(as_dict(n).get("text"), str)
    ]


def reference_name(value: object) -> str:
    r = as_dict(value)
    display = r.get("display")
    return str(display) if isinstance(display, str) and display else str(r.get("reference") or NONE)
