"""Value sets compiled for matching, and one code index over all of them.

Matching is the engine's innermost loop, so each compiled set answers ``contains(system, code)``
with one set lookup in the common case (ICD-10-CM prefixes and ranges aside), and the catalog keeps
one index from every listed code to the sets that hold it: a patient's codes are looked up once,
however many trials and value sets are loaded (``CodeIndex.members``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from cds_service.codes import ICD10, ICD10CM, normalize
from cds_service.engine.codecheck import icd10cm_range
from cds_service.engine.model import ValueSet
from cds_service.engine.units import Amount, parse_quantity

Coding = Mapping[str, object]
Key = tuple[str, str]


@dataclass(frozen=True)
class CompiledValueSet:
    id: str
    title: str
    exact: frozenset[Key]
    prefixes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    ranges: tuple[tuple[str, str, str], ...] = ()
    strengths: Mapping[Key, Amount] = field(default_factory=dict)
    displays: Mapping[Key, str] = field(default_factory=dict)
    scores: Mapping[Key, float] = field(default_factory=dict)
    texts: Mapping[str, Key] = field(default_factory=dict)  # normalised display / synonym → code
    groups: Mapping[Key, str] = field(default_factory=dict)  # code → the drug it stands for
    listed: frozenset[Key] = frozenset()  # the exact codes as the mapping spells them (for searches)
    version: str | None = None
    intent: str | None = None

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

    def key_of(self, codings: Iterable[Coding]) -> Key | None:
        coding = self.matching_coding(codings)
        if coding is None:
            return None
        return normalize(str(coding.get("system")), str(coding.get("code")))

    def by_text(self, text: object) -> Key | None:
        """The code whose display or synonym is this text (case and spacing aside), if any."""
        return self.texts.get(normalize_text(text)) if isinstance(text, str) else None


def normalize_text(text: str) -> str:
    return " ".join(text.lower().replace("_", " ").split())


@dataclass(frozen=True)
class CodeIndex:
    """Every listed code → the value sets holding it; plus the few sets matched by pattern."""

    exact: Mapping[Key, tuple[str, ...]]
    patterned: tuple[CompiledValueSet, ...]
    pattern_systems: frozenset[str]

    def sets_of(self, key: Key) -> tuple[str, ...]:
        found = self.exact.get(key, ())
        if key[0] not in self.pattern_systems:
            return found
        extra = tuple(vs.id for vs in self.patterned if vs.id not in found and vs.contains(*key))
        return found + extra if extra else found


def build_index(sets: Mapping[str, CompiledValueSet]) -> CodeIndex:
    exact: dict[Key, list[str]] = {}
    for vs in sets.values():
        for key in vs.exact:
            exact.setdefault(key, []).append(vs.id)
    patterned = tuple(vs for vs in sets.values() if not vs.exact_only)
    systems = frozenset(s for vs in patterned for s in (*vs.prefixes, *(r[0] for r in vs.ranges)))
    return CodeIndex(
        exact={k: tuple(v) for k, v in exact.items()}, patterned=patterned, pattern_systems=systems
    )


def compile_valuesets(sets: Mapping[str, ValueSet]) -> dict[str, CompiledValueSet]:
    """Resolve ``include`` (already checked acyclic) and compile every value set."""
    return {vs_id: _compile(vs_id, sets) for vs_id in sets}


def _members(vs_id: str, sets: Mapping[str, ValueSet]) -> list[tuple[ValueSet, int]]:
    valueset = sets[vs_id]
    found = [(valueset, i) for i in range(len(valueset.codes))]
    for child in valueset.include:
        found.extend(_members(child, sets))
    return found


def _compile(vs_id: str, sets: Mapping[str, ValueSet]) -> CompiledValueSet:
    exact: set[Key] = set()
    prefixes: dict[str, list[str]] = {}
    ranges: list[tuple[str, str, str]] = []
    strengths: dict[Key, Amount] = {}
    displays: dict[Key, str] = {}
    scores: dict[Key, float] = {}
    texts: dict[str, Key] = {}
    groups: dict[Key, str] = {}
    listed: set[Key] = set()
    for owner, position in _members(vs_id, sets):
        entry = owner.codes[position]
        bounds = icd10cm_range(entry.code) if entry.system in (ICD10CM, ICD10) else None
        if entry.code.endswith("*"):
            prefixes.setdefault(entry.system, []).append(entry.code[:-1])
            continue
        if bounds is not None:
            ranges.append((entry.system, *bounds))
            continue
        key = normalize(entry.system, entry.code)
        exact.add(key)
        listed.add((entry.system, entry.code))
        if entry.display:
            displays[key] = entry.display
            texts.setdefault(normalize_text(entry.display), key)
        for synonym in entry.synonyms:
            texts[normalize_text(synonym)] = key
        if entry.strength is not None:
            strengths[key] = parse_quantity(entry.strength)
        if entry.score is not None:
            scores[key] = entry.score
        groups[key] = entry.group or entry.display or entry.code
    top = sets[vs_id]
    return CompiledValueSet(
        id=vs_id,
        title=top.title,
        exact=frozenset(exact),
        prefixes={s: tuple(p) for s, p in prefixes.items()},
        ranges=tuple(ranges),
        strengths=strengths,
        displays=displays,
        scores=scores,
        texts=texts,
        groups=groups,
        listed=frozenset(listed),
        version=top.version,
        intent=top.intent,
    )
