"""Load and validate a mappings directory: every problem names the file, criterion and field.

Layout::

    mappings/valuesets/*.yaml   one value set per file (id, title, sources, codes, include)
    mappings/valuesets/*.json   or a FHIR R4 ValueSet resource (expansion or compose.include.concept)
    mappings/trials/*.yaml      one trial per file (trial, title, short_title, url, version, criteria)
    mappings/tests/<trial>/*    test vectors (see cds_service.engine.vectors)

Loading also prepares what evaluation shares across trials: one code index over every value set,
and one canonical key per rule, so that a rule that several trials (or criteria) contain is
evaluated once per patient.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from cds_service.engine.model import Criterion, Trial, ValueSet, from_fhir_valueset
from cds_service.engine.model.rules import RuleModel
from cds_service.engine.valuesets import CodeIndex, CompiledValueSet, build_index, compile_valuesets
from cds_service.errors import MappingError


def _packaged_mappings() -> Path:
    """Where the trial mappings shipped with this install are.

    An installed wheel carries them as package data, ``cds_service/mappings/`` (pyproject.toml maps
    the repository's top-level ``mappings/`` there). A source checkout or an editable install has no
    such folder inside the package: there they are the repository's own ``mappings/``.
    """
    packaged = importlib.resources.files("cds_service") / "mappings"
    if isinstance(packaged, Path) and packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "mappings"


DEFAULT_MAPPINGS = _packaged_mappings()


@dataclass(frozen=True)
class Catalog:
    """Every trial and value set, validated and compiled: what the engine evaluates against."""

    root: Path
    trials: Mapping[str, Trial]
    valuesets: Mapping[str, CompiledValueSet]
    index: CodeIndex
    rule_keys: Mapping[int, str]  # id(rule) → its canonical form: equal rules share one evaluation

    def key(self, rule: RuleModel | Criterion) -> str:
        return self.rule_keys[id(rule)]

    def __getstate__(self) -> dict[str, Any]:
        """Rule keys are by object identity, which pickling (a Spark broadcast) does not keep:
        they are recomputed on the other side."""
        state = dict(self.__dict__)
        state.pop("rule_keys", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            object.__setattr__(self, name, value)
        object.__setattr__(self, "rule_keys", _rule_keys(self.trials))

    def trial(self, trial_id: str) -> Trial:
        try:
            return self.trials[trial_id]
        except KeyError:
            known = ", ".join(sorted(self.trials)) or "none"
            raise MappingError(f"no trial {trial_id!r} in {self.root} (known: {known})") from None


_Base: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: ~10× faster


class _StrictLoader(_Base):  # type: ignore[valid-type,misc]
    """YAML that refuses duplicate keys instead of silently keeping the last one."""


def _mapping_without_duplicates(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return dict(loader.construct_mapping(node))


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def read_data(path: Path) -> Any:
    """A YAML or JSON file's data; MappingError naming the file if it does not parse."""
    try:
        text = path.read_text(encoding="utf-8")
        return yaml.load(text, Loader=_StrictLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise MappingError(f"{path}: cannot be read as YAML/JSON: {exc}") from None


def _describe_location(data: Any, loc: tuple[int | str, ...]) -> str:
    """'criteria[3] (adult) › rule › lab › window' from a pydantic error location."""
    parts: list[str] = []
    node = data
    loc = _without_union_tags(loc)
    for step in loc:
        if isinstance(step, int):
            label = f"[{step}]"
            node = node[step] if isinstance(node, list) and step < len(node) else None
            if isinstance(node, dict) and isinstance(node.get("id"), str):
                label += f" ({node['id']})"
            if parts:
                parts[-1] += label
            else:
                parts.append(label)
            continue
        parts.append(str(step))
        node = node.get(step) if isinstance(node, dict) else None
    return " › ".join(parts) or "(top level)"


def _without_union_tags(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    """pydantic names a tagged-union member by its tag: ``rule › lab › lab › window`` for the
    file's ``rule › lab › window``. Drop the repeated step so the path is the file's own."""
    kept: list[int | str] = []
    for step in loc:
        if kept and isinstance(step, str) and kept[-1] == step:
            continue
        kept.append(step)
    return tuple(kept)


def _validate(model: type[BaseModel], data: Any, path: Path, context: dict[str, Any] | None = None) -> Any:
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        lines = []
        for error in exc.errors()[:5]:
            where = _describe_location(data, tuple(error["loc"]))
            lines.append(f"{path}: {where}: {error['msg']}")
        more = exc.error_count() - len(lines)
        if more > 0:
            lines.append(f"{path}: ... and {more} more problems")
        raise MappingError("\n".join(lines)) from None


def _load_valuesets(root: Path) -> tuple[dict[str, ValueSet], dict[str, Path]]:
    sets: dict[str, ValueSet] = {}
    files: dict[str, Path] = {}
    paths = sorted(p for p in (root / "valuesets").glob("*") if p.suffix in (".yaml", ".yml", ".json"))
    for path in paths:
        valueset: ValueSet = _validate(ValueSet, _valueset_data(path), path)
        if valueset.id in sets:
            raise MappingError(f"{path}: value set id {valueset.id!r} is also in {files[valueset.id]}")
        sets[valueset.id] = valueset
        files[valueset.id] = path
    for vs_id, valueset in sets.items():
        for child in valueset.include:
            if child not in sets:
                raise MappingError(f"{files[vs_id]}: include: unknown value set {child!r}")
    _refuse_include_cycles(sets, files)
    return sets, files


def _valueset_data(path: Path) -> Any:
    """The project's YAML form as is; a FHIR ValueSet resource turned into it (id = file name)."""
    data = read_data(path)
    if isinstance(data, dict) and data.get("resourceType") == "ValueSet":
        try:
            converted = from_fhir_valueset(data, fallback_id=path.stem)
        except ValueError as exc:
            raise MappingError(f"{path}: {exc}") from None
        converted["id"] = path.stem
        return converted
    return data


def _refuse_include_cycles(sets: Mapping[str, ValueSet], files: Mapping[str, Path]) -> None:
    def visit(vs_id: str, trail: tuple[str, ...]) -> None:
        if vs_id in trail:
            cycle = " → ".join((*trail, vs_id))
            raise MappingError(f"{files[trail[0]]}: include cycle {cycle}")
        for child in sets[vs_id].include:
            visit(child, (*trail, vs_id))

    for vs_id in sets:
        visit(vs_id, ())


def _load_trials(root: Path, valuesets: Mapping[str, ValueSet]) -> dict[str, Trial]:
    trials: dict[str, Trial] = {}
    paths: dict[str, Path] = {}
    for path in sorted((root / "trials").glob("*.y*ml")):
        trial: Trial = _validate(Trial, read_data(path), path, context={"valuesets": frozenset(valuesets)})
        if trial.trial in trials:
            raise MappingError(f"{path}: trial {trial.trial!r} is also defined in {paths[trial.trial]}")
        trials[trial.trial] = trial
        paths[trial.trial] = path
    return trials


def _rule_keys(trials: Mapping[str, Trial]) -> dict[int, str]:
    """Each rule object → its canonical JSON, and each criterion → the key of what decides its
    result; equal rules (and equal criteria) anywhere in the catalog share one key object, so the
    per-patient memo compares them by identity instead of by their (long) text."""
    keys: dict[int, str] = {}
    shared: dict[str, str] = {}
    for trial in trials.values():
        for criterion in trial.criteria:
            for rule in criterion.rules():
                text = rule.model_dump_json(by_alias=True)
                keys[id(rule)] = shared.setdefault(text, text)
            rule_key = keys[id(criterion.rule)] if criterion.rule is not None else ""
            hint_key = keys[id(criterion.hint)] if criterion.hint is not None else ""
            what = (criterion.id, criterion.short_label(), criterion.kind, str(criterion.manual))
            text = "|".join(["criterion", *what, str(criterion.note), rule_key, hint_key])
            keys[id(criterion)] = shared.setdefault(text, text)
    return keys


def load_catalog(root: Path | None = None) -> Catalog:
    """Load every mapping under ``root`` (default: the packaged mappings/), or raise MappingError.

    A catalog is immutable, so a process that loads the same files again (several app instances,
    a command run in-process) gets the one already built; any file added, removed or changed
    (name, size, modification time) makes a fresh load."""
    root = (root or DEFAULT_MAPPINGS).resolve()
    if not (root / "trials").is_dir():
        raise MappingError(f"{root}: not a mappings directory (no trials/ folder)")
    key = (root, _fingerprint(root))
    cached = _LOADED.get(key)
    if cached is None:
        cached = _load(root)
        if len(_LOADED) >= 8:
            _LOADED.pop(next(iter(_LOADED)))
        _LOADED[key] = cached
    return cached


_LOADED: dict[tuple[Path, tuple[tuple[str, int, int], ...]], Catalog] = {}


def _fingerprint(root: Path) -> tuple[tuple[str, int, int], ...]:
    found = []
    for folder in ("trials", "valuesets"):
        for path in sorted((root / folder).glob("*")):
            stat = path.stat()
            found.append((f"{folder}/{path.name}", stat.st_mtime_ns, stat.st_size))
    return tuple(found)


def _load(root: Path) -> Catalog:
    sets, _ = _load_valuesets(root)
    trials = _load_trials(root, sets)
    if not trials:
        raise MappingError(f"{root / 'trials'}: no trial files (*.yaml)")
    compiled = compile_valuesets(sets)
    return Catalog(
        root=root,
        trials=trials,
        valuesets=compiled,
        index=build_index(compiled),
        rule_keys=_rule_keys(trials),
    )
