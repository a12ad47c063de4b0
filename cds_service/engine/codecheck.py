"""Well-formedness of codes in mapping files, so that a typo fails at load, not at the bedside.

SNOMED CT identifiers carry a Verhoeff check digit and a partition id; LOINC codes a mod-10 check
digit, and LOINC answer (``LA…``) and part (``LP…``) codes the variant of it that LOINC uses for
identifiers with letters (the OpenMRS Luhn variant; LOINC Users' Guide, appendix C). ICD-10-CM
entries may also be a prefix (``C44*``) or a category range (``C00-C96``). Other systems are
checked for their shape: CPT, HCPCS Level II, ICD-10-PCS, NDC, ATC, ICD-O-3.
"""

from __future__ import annotations

import re

from cds_service.codes import (
    ATC,
    CPT,
    CVX,
    HCPCS,
    HGNC,
    ICD10,
    ICD10CM,
    ICD10PCS,
    ICDO3,
    LOINC,
    NCIT,
    NDC,
    RXNORM,
    SNOMED,
)

_VERHOEFF_D = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9),
    (1, 2, 3, 4, 0, 6, 7, 8, 9, 5),
    (2, 3, 4, 0, 1, 7, 8, 9, 5, 6),
    (3, 4, 0, 1, 2, 8, 9, 5, 6, 7),
    (4, 0, 1, 2, 3, 9, 5, 6, 7, 8),
    (5, 9, 8, 7, 6, 0, 4, 3, 2, 1),
    (6, 5, 9, 8, 7, 1, 0, 4, 3, 2),
    (7, 6, 5, 9, 8, 2, 1, 0, 4, 3),
    (8, 7, 6, 5, 9, 3, 2, 1, 0, 4),
    (9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
)
_VERHOEFF_P = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9),
    (1, 5, 7, 6, 2, 8, 3, 0, 9, 4),
    (5, 8, 0, 3, 7, 9, 6, 1, 4, 2),
    (8, 9, 1, 6, 0, 4, 3, 5, 2, 7),
    (9, 4, 5, 3, 1, 2, 6, 8, 7, 0),
    (4, 2, 8, 6, 5, 7, 3, 9, 0, 1),
    (2, 7, 9, 3, 8, 0, 6, 4, 1, 5),
    (7, 0, 4, 6, 9, 1, 3, 2, 5, 8),
)

ICD10CM_CODE = re.compile(r"^[A-TV-Z][0-9][0-9A-Z](\.[0-9A-Z]{1,4})?$")
_ICD10CM_PREFIX = re.compile(r"^[A-TV-Z][0-9]{0,1}[0-9A-Z]{0,1}(\.[0-9A-Z]{0,3})?\*$")
_ICD10CM_RANGE = re.compile(r"^([A-TV-Z][0-9][0-9A-Z])-([A-TV-Z][0-9][0-9A-Z])$")


def verhoeff_ok(digits: str) -> bool:
    check = 0
    for position, char in enumerate(reversed(digits)):
        check = _VERHOEFF_D[check][_VERHOEFF_P[position % 8][int(char)]]
    return check == 0


def loinc_ok(code: str) -> bool:
    """A LOINC term (``2160-0``), answer (``LA6576-8``) or part (``LP7839-6``) with its check digit."""
    match = re.fullmatch(r"((?:LA|LP)?\d{1,7})-(\d)", code)
    if match is None:
        return False
    return _luhn_ascii(match.group(1)) == int(match.group(2))


def _luhn_ascii(body: str) -> int:
    """LOINC's mod-10 check digit; for digits only it equals the Users' Guide's eight-step method."""
    total = 0
    for position, char in enumerate(reversed(body.upper())):
        digit = ord(char) - 48
        total += (2 * digit) - (digit // 5) * 9 if position % 2 == 0 else digit
    return (10 - ((abs(total) + 10) % 10)) % 10


def icd10cm_range(code: str) -> tuple[str, str] | None:
    match = _ICD10CM_RANGE.match(code)
    return (match.group(1), match.group(2)) if match else None


def check_code(*, system: str, code: str) -> None:
    """Raise ValueError naming the problem when ``code`` is not a well-formed code of ``system``."""
    if system == SNOMED:
        if not re.fullmatch(r"\d{6,18}", code) or not verhoeff_ok(code):
            raise ValueError(f"SNOMED CT id {code!r} fails its Verhoeff check digit")
        if code[-3:-1] not in ("00", "10"):
            raise ValueError(f"SNOMED CT id {code!r} is not a concept id (partition {code[-3:-1]})")
    elif system == LOINC:
        if not loinc_ok(code):
            raise ValueError(f"LOINC code {code!r} is malformed or fails its check digit")
    elif system == ICD10CM:
        if ICD10CM_CODE.match(code) or _ICD10CM_PREFIX.match(code):
            return
        bounds = icd10cm_range(code)
        if bounds is None or bounds[0] > bounds[1]:
            raise ValueError(f"ICD-10-CM code {code!r} is not a code, 'X12*' prefix or 'A00-B99' range")
    elif system in _SHAPES:
        pattern, what = _SHAPES[system]
        if not pattern.fullmatch(code):
            raise ValueError(f"{code!r} is not {what}")


_SHAPES: dict[str, tuple[re.Pattern[str], str]] = {
    RXNORM: (re.compile(r"[1-9]\d{0,8}"), "an RxNorm RXCUI (a number)"),
    CVX: (re.compile(r"\d{1,3}"), "a CVX code (1-3 digits)"),
    CPT: (re.compile(r"\d{4}[0-9FTU]"), "a CPT code (4 digits and a digit, F, T or U)"),
    HCPCS: (re.compile(r"[A-V]\d{4}"), "an HCPCS Level II code (a letter A-V and 4 digits)"),
    ICD10PCS: (re.compile(r"[0-9A-HJ-NP-Z]{7}"), "an ICD-10-PCS code (7 characters, no I or O)"),
    NDC: (
        re.compile(r"\d{11}|\d{4}-\d{4}-\d{2}|\d{5}-\d{3}-\d{2}|\d{5}-\d{4}-\d{1,2}"),
        "an NDC (11 digits, or 4-4-2 / 5-3-2 / 5-4-1 / 5-4-2 with hyphens)",
    ),
    ATC: (re.compile(r"[A-Z](\d{2}([A-Z]([A-Z](\d{2})?)?)?)?"), "an ATC code at some level (e.g. L01XC32)"),
    ICDO3: (
        re.compile(r"\d{4}/\d|C\d{2}(\.\d)?"),
        "an ICD-O-3 morphology (8140/3) or topography (C50.9) code",
    ),
    ICD10: (re.compile(r"[A-Z]\d[0-9A-Z](\.[0-9A-Z]{1,4})?"), "an ICD-10 code (e.g. C50.9)"),
    NCIT: (re.compile(r"C\d{1,7}"), "an NCI Thesaurus code (C and digits, e.g. C27966)"),
    HGNC: (re.compile(r"HGNC:\d{1,6}"), "an HGNC gene id (HGNC:8975)"),
}
