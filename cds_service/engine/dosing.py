"""Daily dose and course length from a FHIR Dosage, as orders are really written.

``doseQuantity`` × times per day. Times per day come from ``timing.repeat`` (frequency / period),
else from its ``when`` / ``timeOfDay`` list, else from ``timing.code`` (BID, TID, QID, Q6H, ...: the
HL7 v3 GTSAbbreviation codes EHRs send instead of a repeat), else — no timing at all — once a day.
A dose in tablets or capsules is multiplied by the clinical drug's strength. Anything else that
cannot be read gives None, never a guess.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from cds_service.codes import UCUM
from cds_service.engine.time import DayRange
from cds_service.engine.units import Amount, convert
from cds_service.record import Resource, codings

_PERIOD_DAYS = {"s": 1 / 86400, "min": 1 / 1440, "h": 1 / 24, "d": 1, "wk": 7, "mo": 30, "a": 365}
_DOSE_UNITS = frozenset({"", "1", "{tbl}", "{tablet}", "tablet", "tablets", "tab", "{capsule}", "capsule"})
# HL7 v3 GTSAbbreviation (and the same abbreviations sent as text): administrations per day.
TIMING_CODES: dict[str, float] = {
    "QD": 1,
    "AM": 1,
    "PM": 1,
    "QAM": 1,
    "QPM": 1,
    "QHS": 1,
    "BID": 2,
    "TID": 3,
    "QID": 4,
    "QOD": 0.5,
    "WK": 1 / 7,
    "Q1H": 24,
    "Q2H": 12,
    "Q3H": 8,
    "Q4H": 6,
    "Q6H": 4,
    "Q8H": 3,
    "Q12H": 2,
    "Q24H": 1,
}


def daily_dose(resource: Resource, *, strength: Amount | None, unit: str) -> float | None:
    """Dose per day in ``unit`` from the first readable dosage, or None when it cannot be known."""
    for dosage in resource.get("dosageInstruction") or resource.get("dosage") or ():
        if not isinstance(dosage, dict):
            continue
        per_dose = _dose_amount(dosage, strength=strength, unit=unit)
        per_day = times_per_day(dosage)
        if per_dose is not None and per_day is not None:
            return per_dose * per_day
    return None


def _dose_amount(dosage: dict[str, Any], *, strength: Amount | None, unit: str) -> float | None:
    quantities = [r.get("doseQuantity") for r in dosage.get("doseAndRate") or () if isinstance(r, dict)]
    quantities.append(dosage.get("dose"))  # MedicationAdministration.dosage.dose
    for quantity in quantities:
        if not isinstance(quantity, dict) or not isinstance(quantity.get("value"), int | float):
            continue
        dose_unit = str(
            quantity.get("code")
            if quantity.get("system") == UCUM
            else quantity.get("unit") or quantity.get("code") or ""
        )
        value = float(quantity["value"])
        if dose_unit.strip().lower() in _DOSE_UNITS:
            if strength is None:
                return None
            converted = convert(strength.value, from_unit=strength.unit, to_unit=unit)
            return None if converted is None else value * converted
        return convert(value, from_unit=dose_unit, to_unit=unit)
    return None


def times_per_day(dosage: dict[str, Any]) -> float | None:
    if "timing" not in dosage:
        return 1.0  # no timing given: a once-daily order (an administration: one dose)
    timing = dosage.get("timing")
    if not isinstance(timing, dict):
        return None
    found = timing.get("repeat")
    repeat: dict[str, Any] = found if isinstance(found, dict) else {}
    if "frequency" in repeat or "period" in repeat:
        frequency = repeat.get("frequency", 1)
        period = repeat.get("period", 1)
        days = _PERIOD_DAYS.get(str(repeat.get("periodUnit", "d")))
        if not isinstance(frequency, int | float) or not isinstance(period, int | float) or period <= 0:
            return None
        return None if days is None else float(frequency) / (float(period) * days)
    listed = repeat.get("timeOfDay") or repeat.get("when")
    if isinstance(listed, list) and listed:
        return float(len(listed))
    code = timing.get("code")
    if code is not None:
        return _coded_times(code)
    return 1.0 if not repeat or set(repeat) <= {"boundsPeriod", "boundsDuration", "boundsRange"} else None


def _coded_times(code: object) -> float | None:
    for coding in codings(code):
        value = str(coding.get("code", "")).upper()
        if value in TIMING_CODES:
            return TIMING_CODES[value]
    text = code.get("text") if isinstance(code, dict) else None
    if isinstance(text, str) and text.strip().upper() in TIMING_CODES:
        return TIMING_CODES[text.strip().upper()]
    return None


def course_end(resource: Resource, start: DayRange | None) -> date | None:
    """boundsDuration or the dispense's expected supply, counted from the start day."""
    if start is None:
        return None
    durations = []
    for dosage in resource.get("dosageInstruction") or ():
        repeat = ((dosage.get("timing") or {}).get("repeat") or {}) if isinstance(dosage, dict) else {}
        durations.append(repeat.get("boundsDuration"))
    dispense = resource.get("dispenseRequest")
    if isinstance(dispense, dict):
        durations.append(dispense.get("expectedSupplyDuration"))
    for duration in durations:
        if isinstance(duration, dict) and isinstance(duration.get("value"), int | float):
            days = convert(
                float(duration["value"]),
                from_unit=str(duration.get("code") or duration.get("unit") or "d"),
                to_unit="d",
            )
            if days is not None:
                return start.first + timedelta(days=max(int(days) - 1, 0))
    return None
