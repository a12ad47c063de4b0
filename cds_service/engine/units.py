"""UCUM units through ucumvert/pint, parsed once and cached.

Parsing a UCUM string costs about a millisecond, so every unit string is parsed once per process
(mapping units at load, observation units on first sight) and every (from, to) pair is reduced to a
cached linear factor. Mass and molar concentrations convert only when the mapping gives the
analyte's molar mass (creatinine: 113.12 g/mol, so 1 mg/dL = 88.4 µmol/L).
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

_QUANTITY = re.compile(r"^\s*([-+]?\d+(?:\.\d+)?)\s*(\S.*)?$")

# Spellings EHRs send that are not UCUM but mean one unambiguous UCUM unit.
_COMMON_SPELLINGS = {
    "µmol/L": "umol/L",
    "μmol/L": "umol/L",
    "mg/24h": "mg/(24.h)",
    "g/24h": "g/(24.h)",
    "mg/24 h": "mg/(24.h)",
    "g/24 h": "g/(24.h)",
    "mg/day": "mg/d",
    "g/day": "g/d",
    "IU/L": "[IU]/L",
    "IU/mL": "[IU]/mL",
    "mIU/mL": "m[IU]/mL",
    "U/L": "U/L",
    "mL/min/1.73m2": "mL/min/{1.73_m2}",
    "mL/min/1.73 m2": "mL/min/{1.73_m2}",
    "mL/min/1.73m^2": "mL/min/{1.73_m2}",
    "mL/min/1.73 m^2": "mL/min/{1.73_m2}",
    "ml/min/1.73m2": "mL/min/{1.73_m2}",
    "ml/min/1.73 m2": "mL/min/{1.73_m2}",
    "mL/min/{1.73m2}": "mL/min/{1.73_m2}",
    "ml/min": "mL/min",
    "kg/m^2": "kg/m2",
    "lb": "[lb_av]",
    "lbs": "[lb_av]",
    "in": "[in_i]",
    "inch": "[in_i]",
    "K/uL": "10*3/uL",
    "K/µL": "10*3/uL",
    "x10^3/uL": "10*3/uL",
    "x10^9/L": "10*9/L",
    "10^9/L": "10*9/L",
    "10^3/uL": "10*3/uL",
    "mg/mmol": "mg/mmol",
    "mmHg": "mm[Hg]",
    "mm Hg": "mm[Hg]",
    "mEq/L": "meq/L",
    "cells/uL": "{cells}/uL",
    "cells/µL": "{cells}/uL",
    "cells/mcL": "{cells}/uL",
    "cells/mcl": "{cells}/uL",
    "cells/mm3": "{cells}/mm3",
    "/mcL": "/uL",
    "x10E3/uL": "10*3/uL",
    "x10E9/L": "10*9/L",
}


class UnitError(ValueError):
    """A unit string that UCUM cannot parse."""


@lru_cache(maxsize=1)
def _registry() -> Any:
    from ucumvert import PintUcumRegistry

    return PintUcumRegistry()


def canonical(unit: str) -> str:
    """The UCUM spelling of a unit as sent; a bare annotation ('{score}', '{titer}') is unitless."""
    unit = unit.strip()
    if _ANNOTATION.fullmatch(unit):
        return "1"
    return _COMMON_SPELLINGS.get(unit, unit)


_ANNOTATION = re.compile(r"\{[^{}]*\}")
_MOLAR_RATIO = re.compile(r"[munpf]?mol/[munpf]?mol")


_PARSER_LOCK = threading.RLock()


@lru_cache(maxsize=4096)
def parse_unit(unit: str) -> Any:
    """A pint quantity of 1 of ``unit``; raises UnitError when UCUM cannot parse it."""
    ucum = canonical(unit)
    if ucum == "":
        ucum = "1"
    try:
        with _PARSER_LOCK:  # the UCUM parser is not thread-safe: a cache miss parses alone
            parsed = _registry().from_ucum(ucum)
    except Exception as exc:  # ucumvert raises lark and pint errors alike
        raise UnitError(f"unit {unit!r} is not valid UCUM") from exc
    if not hasattr(parsed, "to"):  # a bare annotation such as {titer} parses to a token
        raise UnitError(f"unit {unit!r} has no dimension to compare")
    return parsed


@dataclass(frozen=True, slots=True)
class Amount:
    value: float
    unit: str

    def __str__(self) -> str:
        return f"{format_number(self.value)} {self.unit}".strip()


def parse_quantity(text: str) -> Amount:
    """'100 mg' or '113.12 g/mol' as an Amount, its unit checked against UCUM."""
    match = _QUANTITY.match(text)
    if match is None:
        raise UnitError(f"quantity {text!r} is not '<number> <UCUM unit>'")
    unit = match.group(2) or "1"
    parse_unit(unit)
    return Amount(float(match.group(1)), unit)


@lru_cache(maxsize=4096)
def factor(from_unit: str, to_unit: str, molar_mass: str | None = None) -> float | None:
    """Multiplier taking a value in ``from_unit`` to ``to_unit``; None if they do not compare.

    A molar ratio (mmol/mol) and a percentage are both dimensionless, but not the same quantity:
    HbA1c 53 mmol/mol (IFCC) is about 7.0 % (NGSP), not 5.3 % — the two scales are related by a
    regression, not a factor. Such pairs do not convert (the result is then unknown).
    """
    molar_from = _MOLAR_RATIO.fullmatch(canonical(from_unit)) is not None
    molar_to = _MOLAR_RATIO.fullmatch(canonical(to_unit)) is not None
    if molar_from != molar_to:
        return None
    try:
        source, target = parse_unit(from_unit), parse_unit(to_unit)
    except UnitError:
        return None
    try:
        with _PARSER_LOCK:
            return float((source).to(target.units).magnitude / target.magnitude)
    except Exception:  # pint's DimensionalityError and friends: try the molar bridge
        pass
    if molar_mass is None:
        return None
    mass = parse_quantity(molar_mass)
    per_mole = parse_unit(mass.unit) * mass.value
    for bridged in (source * per_mole, source / per_mole):
        try:
            return float(bridged.to(target.units).magnitude / target.magnitude)
        except Exception:
            continue
    return None


def convert(value: float, *, from_unit: str, to_unit: str, molar_mass: str | None = None) -> float | None:
    """``value`` in ``to_unit``, or None when the units cannot be compared."""
    multiplier = factor(from_unit, to_unit, molar_mass)
    return None if multiplier is None else value * multiplier


def format_number(value: float) -> str:
    """Numbers as a clinician writes them: 2.7, 221, 0.05 (no float noise, no trailing zeros)."""
    text = f"{value:.4g}" if abs(value) < 1e6 else f"{value:.6g}"
    if "e" in text:
        return f"{value:f}".rstrip("0").rstrip(".")
    return text
