"""What data the loaded trials need from an export: resource types, and ``_typeFilter`` queries.

Derived from the same per-patient searches the hook's prefetch uses (``prefetch_templates``), so a
screen asks a Bulk Data server for exactly what a chart-open would fetch, and nothing describes the
data needs twice. The import sits in one function so it is easy to repoint if that derivation moves.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import quote

from cds_service.engine.loader import Catalog

# Resources the engine follows a reference to without their own patient reference.
REFERENCED_TYPES = ("Medication",)


def _templates(catalog: Catalog) -> Mapping[str, str]:
    """The per-patient FHIR queries of the loaded trials (one place to repoint)."""
    from cds_service.fhir.queries import prefetch_templates

    return prefetch_templates(catalog)


def needed_types(catalog: Catalog) -> frozenset[str]:
    """Every resource type a trial reads (``engine.needs``: Patient, and Medication for orders)."""
    from cds_service.engine.needs import data_needs

    return frozenset(data_needs(catalog).resource_types())


def type_filters(catalog: Catalog) -> list[str]:
    """``_typeFilter`` values (``Immunization?vaccine-code=...``): one per type, where that is exact.

    A type gets a filter only when every query for it narrows by the same one parameter (their
    code lists are merged). Several filters of one type are meant to be OR-ed, but servers differ
    (some AND them), and one unnarrowed query means "all of that type": such types go unfiltered.
    Inner commas are escaped (``%2C``): the Bulk Data spec separates filters by commas.
    """
    by_type: dict[str, dict[str, set[str]] | None] = {}
    for query in _templates(catalog).values():
        head, _, params = query.partition("?")
        if "/" in head:
            by_type[head.split("/", 1)[0]] = None  # a read (Patient/{id}): the whole type
            continue
        kept = [p for p in params.split("&") if p and not p.startswith(("patient=", "_include="))]
        if not kept or len(kept) > 1 or (head in by_type and by_type[head] is None):
            by_type[head] = None
            continue
        name, _, values = kept[0].partition("=")
        narrowed = by_type.setdefault(head, {})
        if narrowed is not None:
            narrowed.setdefault(name, set()).update(v for v in values.split(",") if v)
    filters = []
    for rtype, narrowed in sorted(by_type.items()):
        if narrowed is not None and len(narrowed) == 1:
            ((param, codes),) = narrowed.items()
            filters.append(f"{rtype}?{param}={quote(','.join(sorted(codes)), safe='|:/')}")
    return filters
