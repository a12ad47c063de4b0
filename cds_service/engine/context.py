"""The evaluation context: one patient's record, the catalog, the clock and the site's time zone.

It also holds what one patient's evaluation shares across trials: which of the record's resources
belong to each value set (worked out in one pass over the record's codes, through the catalog's one
code index), and the outcome of every distinct rule already evaluated.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, tzinfo
from typing import TYPE_CHECKING, Any

from cds_service.engine.time import DayRange, day_range
from cds_service.engine.valuesets import CompiledValueSet
from cds_service.record import PatientRecord, Resource

if TYPE_CHECKING:
    from cds_service.engine.loader import Catalog


@dataclass
class Context:
    record: PatientRecord
    catalog: Catalog
    as_of: date
    tz: tzinfo = UTC
    memo: dict[str, Any] = field(default_factory=dict)  # rule key → Outcome, criterion key → result
    _members: dict[str, dict[int, Resource]] | None = field(default=None, repr=False)
    _value_members: dict[str, dict[int, Resource]] | None = field(default=None, repr=False)

    def valueset(self, name: str) -> CompiledValueSet:
        return self.catalog.valuesets[name]  # names were checked when the mappings loaded

    def day(self, value: object) -> DayRange | None:
        """A FHIR date on this site's calendar."""
        return day_range(value, self.tz)

    def candidates(self, valueset: str, resource_types: Iterable[str]) -> list[Resource]:
        """Resources of these types with a code (own, component, member, medication) in the set."""
        if self._members is None:
            self._members = _group(self.record.by_code, self.catalog)
        wanted = frozenset(resource_types)
        pool = self._members.get(valueset)
        return [r for r in pool.values() if r.get("resourceType") in wanted] if pool else []

    def valued(self, valueset: str) -> list[Resource]:
        """Observations whose coded value (not their code) is in the set: findings such as NYHA."""
        if self._value_members is None:
            self._value_members = _group(self.record.by_value_code, self.catalog)
        pool = self._value_members.get(valueset)
        return list(pool.values()) if pool else []


def _group(index: dict[tuple[str, str], list[Resource]], catalog: Catalog) -> dict[str, dict[int, Resource]]:
    """One pass over the record's codes: value set id → its resources (each once, in record order)."""
    grouped: dict[str, dict[int, Resource]] = {}
    sets_of = catalog.index.sets_of
    for key, resources in index.items():
        for vs_id in sets_of(key):
            bucket = grouped.get(vs_id)
            if bucket is None:
                bucket = grouped[vs_id] = {}
            for resource in resources:
                bucket[id(resource)] = resource
    return grouped
