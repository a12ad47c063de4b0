"""Reading one result as EHRs really send it: a number, a score, a coded or written answer, a titer.

A result (an Observation, or the component of one that carries the code a rule asks about) may
give its value as a Quantity, an integer, a string ("<7 mg/dL", "NEG", "1:160 speckled"), a coded
answer (SNOMED CT, a LOINC answer code, or text only), a boolean or a ratio, with interpretation
flags and a reference range beside it. ``read_value`` reduces all of that to one ``Value``; the
lab rules ask it questions (positive? above the limit? a qualifying answer?) and get a verdict.
A result with a ``dataAbsentReason`` and no value is no result at all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from cds_service.codes import LOINC, SNOMED, UCUM, V2_INTERPRETATION, V3_INTERPRETATION, normalize
from cds_service.engine.units import format_number
from cds_service.engine.valuesets import CompiledValueSet, normalize_text
from cds_service.record import Resource, codings

NULL_FLAVOR = "http://terminology.hl7.org/CodeSystem/v3-NullFlavor"
POSITIVE_CODES = frozenset(
    {
        (SNOMED, "10828004"),  # Positive
        (SNOMED, "52101004"),  # Present
        (SNOMED, "260373001"),  # Detected
        (SNOMED, "11214006"),  # Reactive
        (LOINC, "LA6576-8"),  # Positive
        (LOINC, "LA11882-0"),  # Detected
        (LOINC, "LA9633-4"),  # Present
    }
)
NEGATIVE_CODES = frozenset(
    {
        (SNOMED, "260385009"),  # Negative
        (SNOMED, "2667000"),  # Absent
        (SNOMED, "260415000"),  # Not detected
        (SNOMED, "131194007"),  # Non-reactive
        (LOINC, "LA6577-6"),  # Negative
        (LOINC, "LA11883-8"),  # Not detected
        (LOINC, "LA9634-2"),  # Absent
    }
)
UNKNOWN_CODES = frozenset({(LOINC, "LA4489-6"), (SNOMED, "261665006")})  # "Unknown"
_FLAG_SYSTEMS = frozenset({V3_INTERPRETATION, V2_INTERPRETATION, None})
POSITIVE_FLAGS = frozenset({"POS", "DET", "A", "AA", "H", "HH", "HU", "R"})
NEGATIVE_FLAGS = frozenset({"NEG", "ND", "N", "NR"})
_WORDS = {
    "positive": True,
    "pos": True,
    "weakly positive": True,
    "weak positive": True,
    "low positive": True,
    "reactive": True,
    "repeatedly reactive": True,
    "detected": True,
    "present": True,
    "negative": False,
    "neg": False,
    "non-reactive": False,
    "nonreactive": False,
    "non reactive": False,
    "not reactive": False,
    "not detected": False,
    "none detected": False,
    "undetected": False,
    "absent": False,
    "not present": False,
}
_TITER = re.compile(r"^\s*1\s*:\s*(\d+(?:\.\d+)?)(?:\s+\S.*)?\s*$")
_NUMBER = re.compile(r"^\s*(<=|>=|≤|≥|<|>|=)?\s*([-+]?\d+(?:[.,]\d+)?)\s*([^\d\s].*?)?\s*$")
_COMPARATORS = {"≤": "<=", "≥": ">=", "=": None}
_ORDINAL = re.compile(r"^\s*([0-4])\s*\+\s*$")


@dataclass(frozen=True, slots=True)
class Limit:
    value: float
    unit: str


@dataclass(frozen=True, slots=True)
class Value:
    """One result's value, however it was sent, with what the lab said beside it."""

    shown: str  # as a clinician would write it: "<7 mg/dL", "Positive", "1:160"
    number: float | None = None
    unit: str = ""
    comparator: str | None = None
    codes: tuple[tuple[str, str], ...] = ()
    concept: Any = None
    text: str | None = None
    boolean: bool | None = None
    titer: float | None = None
    flags: frozenset[str] = frozenset()
    low: Limit | None = None
    high: Limit | None = None
    absent: bool = False  # dataAbsentReason and no value: no result

    def polarity(self) -> bool | None:
        """True for a positive reading, False for a negative one, None when the value says neither."""
        for key in self.codes:
            if key in POSITIVE_CODES:
                return True
            if key in NEGATIVE_CODES:
                return False
        if self.text is not None:
            return _WORDS.get(normalize_text(self.text))
        return self.boolean


def part_for(resource: Resource, valueset: CompiledValueSet) -> dict[str, Any] | None:
    """What carries the value a rule on this value set reads: the resource itself when its code is
    in the set and it has a value, else its first component coded in the set (a panel listed in the
    set so that a search finds it: blood pressure 85354-9 answering for systolic 8480-6), else the
    resource (whose missing value then reads as "no value")."""
    top = valueset.matching_coding(codings(resource.get("code"))) is not None
    if top and any(key.startswith("value") for key in resource):
        return resource
    for component in resource.get("component") or ():
        if isinstance(component, dict) and valueset.matching_coding(codings(component.get("code"))):
            return component
    return resource if top else None


def read_value(part: dict[str, Any]) -> Value:
    """Everything a result part says about its value (an Observation or one of its components)."""
    flags = frozenset(
        str(c.get("code")).upper()
        for concept in part.get("interpretation") or ()
        for c in codings(concept)
        if c.get("system") in _FLAG_SYSTEMS
    )
    low, high = _reference_limits(part)
    base = Value("no value", flags=flags, low=low, high=high)
    quantity = part.get("valueQuantity")
    if isinstance(quantity, dict) and isinstance(quantity.get("value"), int | float):
        unit = str(
            (quantity.get("code") if quantity.get("system") == UCUM else None)
            or quantity.get("unit")
            or quantity.get("code")
            or ""
        )
        comparator = quantity.get("comparator") if isinstance(quantity.get("comparator"), str) else None
        number = float(quantity["value"])
        shown = f"{comparator or ''}{format_number(number)} {unit}".strip()
        return replace(base, shown=shown, number=number, unit=unit, comparator=comparator)
    integer = part.get("valueInteger")
    if isinstance(integer, int) and not isinstance(integer, bool):
        return replace(base, shown=format_number(float(integer)), number=float(integer))
    if isinstance(part.get("valueCodeableConcept"), dict):
        return _coded(part["valueCodeableConcept"], base)
    if isinstance(part.get("valueString"), str):
        return _written(part["valueString"], base)
    if isinstance(part.get("valueBoolean"), bool):
        value = bool(part["valueBoolean"])
        return replace(base, shown="yes" if value else "no", boolean=value)
    ratio = part.get("valueRatio")
    titer = _ratio_titer(ratio) if isinstance(ratio, dict) else None
    if titer is not None:
        return replace(base, shown=f"1:{format_number(titer)}", titer=titer)
    if part.get("dataAbsentReason") is not None:
        return Value("no value (" + _absent_text(part["dataAbsentReason"]) + ")", absent=True)
    return base


def _coded(concept: dict[str, Any], base: Value) -> Value:
    keys = tuple(
        normalize(str(c.get("system")), str(c.get("code")))
        for c in codings(concept)
        if isinstance(c.get("system"), str) and isinstance(c.get("code"), str)
    )
    display = next((str(c["display"]) for c in codings(concept) if c.get("display")), None)
    text = concept.get("text") if isinstance(concept.get("text"), str) else None
    shown = display or text or (keys[0][1] if keys else "no value")
    if not keys and text is not None:  # text only: read as the words a lab would write
        return replace(_written(text, base), shown=shown, concept=concept)
    return replace(base, shown=shown, codes=keys, concept=concept)


def _written(text: str, base: Value) -> Value:
    shown = " ".join(text.split()) or "no value"
    match = _TITER.match(text)
    if match:
        return replace(base, shown=shown, titer=float(match.group(1)), text=text)
    match = _ORDINAL.match(text)
    if match:  # "3+", "2 +": an ordinal grade (IHC, dipstick), read as its number
        return replace(base, shown=shown, number=float(match.group(1)), text=text)
    match = _NUMBER.match(text)
    if match:
        comparator = _COMPARATORS.get(match.group(1) or "", match.group(1))
        number = float(match.group(2).replace(",", "."))
        unit = (match.group(3) or "").strip()
        return replace(base, shown=shown, number=number, unit=unit, comparator=comparator, text=text)
    return replace(base, shown=shown, text=text)


def _ratio_titer(ratio: dict[str, Any]) -> float | None:
    num = (ratio.get("numerator") or {}).get("value")
    den = (ratio.get("denominator") or {}).get("value")
    if isinstance(num, int | float) and isinstance(den, int | float) and num > 0:
        return float(den) / float(num)
    return None


def _reference_limits(part: dict[str, Any]) -> tuple[Limit | None, Limit | None]:
    for ref_range in part.get("referenceRange") or ():
        if not isinstance(ref_range, dict):
            continue
        limits = [_limit(ref_range.get(end)) for end in ("low", "high")]
        if any(limits):
            return limits[0], limits[1]
    return None, None


def _limit(quantity: object) -> Limit | None:
    if isinstance(quantity, dict) and isinstance(quantity.get("value"), int | float):
        return Limit(float(quantity["value"]), str(quantity.get("code") or quantity.get("unit") or ""))
    return None


def _absent_text(reason: object) -> str:
    for coding in codings(reason):
        if coding.get("code"):
            return str(coding.get("display") or coding["code"])
    text = reason.get("text") if isinstance(reason, dict) else None
    return str(text) if text else "data absent"


def is_null(value: Value) -> bool:
    """A coded answer that says only that the answer is not known ("Unknown", a null flavor)."""
    return any(key in UNKNOWN_CODES or key[0] == NULL_FLAVOR for key in value.codes)
