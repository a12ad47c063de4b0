"""FHIR logical ids, checked before any URL is built from one.

A FHIR id is ``[A-Za-z0-9\\-.]{1,64}`` (R4 "id" datatype); "." and ".." match that pattern but are
dot segments HTTP clients resolve (``Patient/.`` becomes ``Patient/``: a search of every patient,
sent with the EHR's token), so ids made only of dots are refused too. Every place that puts an id
into a URL goes through ``id_segment``, which also percent-encodes, so a later loosening of the
pattern could not smuggle a ``/`` or ``?`` into a path.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from cds_service.errors import InvalidInput

FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
FHIR_ID_PATTERN = r"^(?!\.+$)[A-Za-z0-9\-.]{1,64}$"  # the same rule, for pydantic Field(pattern=...)


def is_fhir_id(value: object) -> bool:
    return isinstance(value, str) and FHIR_ID.fullmatch(value) is not None and value.strip(".") != ""


def id_segment(value: object, *, what: str = "id") -> str:
    """``value`` as one URL path segment, or InvalidInput naming ``what`` (never the value)."""
    if not is_fhir_id(value):
        raise InvalidInput(f"{what} is not a FHIR id ([A-Za-z0-9-.]{{1,64}}, not only dots)")
    return quote(str(value), safe="")
