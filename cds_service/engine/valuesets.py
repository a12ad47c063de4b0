"""Value sets compiled for matching: exact codes in one frozenset, ICD-10-CM prefixes and ranges.

Matching is the engine's innermost loop (every coding of every candidate resource), so a compiled
value set answers ``contains(system, code)`` with one set lookup in the common case.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from cds_service.codes import ICD10CM, normalize
from cds_service.engine.codecheck import icd10cm_range
from cds_service.engine.model import ValueSet
from cds_service.engine.units import Amount, parse_quantity

Coding = Mapping[str, object]


@dataclass(frozen=True)
class CompiledValueSet:
    id: str
    title: str
    exact: frozenset[tuple[str, str]]
    prefixes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    ranges: tuple[tuple[str, str, str], ...] = ()
    strengths: Mapping[tuple[str, str], Amount] = field(default_factory=dict)
    displays: Mapping[tuple[str, str], str] = field(default_factory=dict)

    @property
    def exact_only(self) -> bool:
        return not self.prefixes and not self.ranges

    def contains(self, system: str, code: str) -> bool:
        if (system, code) in self.exact:
            return True
        for prefix in self.prefixes.get(system, ()):
            if code.startswith(prefix):
                return True
        category = code[:3]
        return any(s == system and lo <= category <= hi for s, lo, hi in self.ranges)

    def matching_coding(self, codings: Iterable[Coding]) -> Coding | None:
        """The first coding in this value set; codings of unknown systems are simply not matches."""
        for coding in codings:
            system, code = coding.get("system"), coding.get("code")
            if isinstance(system, str) and isinstance(code, str) and self.contains(*normalize(system, code)):
                return coding
        return None


def compile_valuesets(sets: Mapping[str, ValueSet]) -> dict[str, CompiledValueSet]:
    """Resolve ``include`` (already checked acyclic) and compile every value set."""
    return {vs_id: _compile(vs_id, sets) for vs_id in sets}


def _members(vs_id: str, sets: Mapping[str, ValueSet]) -> list[tuple[str, str, str | None, str]]:
    valueset = sets[vs_id]
    found = [(c.system, c.code, c.strength, c.display or "") for c in valueset.codes]
    for child in valueset.include:
        found.extend(_members(child, sets))
    return found


def _compile(vs_id: str, sets: Mapping[str, ValueSet]) -> CompiledValueSet:
    exact: set[tuple[str, str]] = set()
    prefixes: dict[str, list[str]] = {}
    ranges: list[tuple[str, str, str]] = []
    strengths: dict[tuple[str, str], Amount] = {}
    displays: dict[tuple[str, str], str] = {}
    for system, code, strength, display in _members(vs_id, sets):
        bounds = icd10cm_range(code) if system == ICD10CM else None
        if code.endswith("*"):
            prefixes.setdefault(system, []).append(code[:-1])
        elif bounds is not None:
            ranges.append((system, *bounds))
        else:
            exact.add((system, code))
            if display:
                displays[(system, code)] = display
        if strength is not None:
            strengths[(system, code)] = parse_quantity(strength)
    return CompiledValueSet(
        id=vs_id,
        title=sets[vs_id].title,
        exact=frozenset(exact),
        prefixes={s: tuple(p) for s, p in prefixes.items()},
        ranges=tuple(ranges),
        strengths=strengths,
        displays=displays,
    )
