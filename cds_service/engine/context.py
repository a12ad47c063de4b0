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

from cds_service.engine.facts import When, observation_when, status_counts
from cds_service.engine.readings import Value, part_for, read_value
from cds_service.engine.time import DayRange, day_range
from cds_service.engine.valuesets import CompiledValueSet
from cds_service.record import PatientRecord, Resource

if TYPE_CHECKING:
    from cds_service.engine.loader import Catalog


@dataclass(frozen=True)
class Results:
    dated: list[tuple[Resource, dict[str, Any], When]]  # newest first
    undated: int


@dataclass
class Context:
    record: PatientRecord
    catalog: Catalog
    as_of: date
    tz: tzinfo = UTC
    memo: dict[str, Any] = field(default_factory=dict)  # rule key → Outcome, criterion key → result
    _members: dict[str, dict[int, Resource]] | None = field(default=None, repr=False)
    _value_members: dict[str, dict[int, Resource]] | None = field(default=None, repr=False)
    _when: dict[int, Any] = field(default_factory=dict, repr=False)
    _parts: dict[tuple[int, str], Any] = field(default_factory=dict, repr=False)
    _values: dict[int, Any] = field(default_factory=dict, repr=False)
    _results: dict[str, Results] = field(default_factory=dict, repr=False)

    def valueset(self, name: str) -> CompiledValueSet:
        return self.catalog.valuesets[name]  # names were checked when the mappings loaded

    def day(self, value: object) -> DayRange | None:
        """A FHIR date on this site's calendar."""
        return day_range(value, self.tz)

    def when(self, resource: Resource) -> When | None:
        """When an Observation was made, worked out once per resource for every rule that asks."""
        key = id(resource)
        if key not in self._when:
            self._when[key] = observation_when(resource, self.tz)
        found: When | None = self._when[key]
        return found

    def part(self, resource: Resource, valueset: str) -> dict[str, Any] | None:
        """The part of a result that a value set's code names (the result, or a component), once.
        A result without components found through the code index is its own part."""
        if "component" not in resource:
            return resource
        key = (id(resource), valueset)
        if key not in self._parts:
            self._parts[key] = part_for(resource, self.valueset(valueset))
        found: dict[str, Any] | None = self._parts[key]
        return found

    def value(self, part: dict[str, Any]) -> Value:
        """A result part's value, read once however many rules look at it."""
        key = id(part)
        found = self._values.get(key)
        if found is None:
            found = self._values[key] = read_value(part)
        return found

    def results(self, valueset: str) -> Results:
        """The Observations that count with a part coded in the value set: (resource, part, when),
        newest first, and how many had no date. Worked out once per value set: every lab rule and
        measure input on the set reads from it."""
        found = self._results.get(valueset)
        if found is None:
            dated: list[tuple[Resource, dict[str, Any], When]] = []
            undated = 0
            for resource in self.candidates(valueset, ("Observation",)):
                if not status_counts(resource):
                    continue
                part = self.part(resource, valueset)
                if part is None:
                    continue
                when = self.when(resource)
                if when is None:
                    undated += 1
                elif when.day.first <= self.as_of:
                    dated.append((resource, part, when))
            dated.sort(key=lambda d: d[2].day.last, reverse=True)
            found = self._results[valueset] = Results(dated, undated)
        return found

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
