"""``mappings/RULES.md``: the reference of every rule kind and field, generated from the model.

The model's classes are the one declaration of the format; their docstrings and field
descriptions are the reference text, so the reference cannot drift from what the loader accepts
(a test regenerates it and compares). Run ``python -m cds_service.engine.docs > mappings/RULES.md``
after changing the model.
"""

from __future__ import annotations

import inspect
import sys
from datetime import date
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, StringConstraints
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from cds_service.engine.model import (
    RULE_KINDS,
    CodeEntry,
    ComponentMatch,
    Criterion,
    Leaf,
    Lines,
    MeasureInput,
    Threshold,
    Trial,
    ValueSet,
)

_SHARED = set(Leaf.model_fields)
SLUG_PATTERN = r"^[a-z0-9][a-z0-9-]*$"
_HEADER = """# Rule reference

Generated from `cds_service/engine/model/` by `python -m cds_service.engine.docs > mappings/RULES.md`;
do not edit by hand. The guide to writing mappings is `mappings/README.md`.

A rule is written as a one-key mapping: the key is the rule's kind (`{lab: {...}}`, `{any: [...]}`).
Every data rule (all kinds but `age`, `sex` and the combinators) also takes the shared fields
`if_found`, `if_absent`, `absent_unknown_only_if` and `note` (see "Shared fields").
"""


def render() -> str:
    parts = [_HEADER, "## Rule kinds\n"]
    for kind, model in RULE_KINDS.items():
        parts.append(_section(f"`{kind}`", model, skip=_SHARED | {"kind"}))
    parts.append("## Shared fields of data rules\n")
    parts.append(_table(Leaf, skip=set()))
    for title, model in (
        ("Threshold", Threshold),
        ("Measure input", MeasureInput),
        ("Lines of therapy", Lines),
        ("Component match", ComponentMatch),
        ("Criterion", Criterion),
        ("Trial file", Trial),
        ("Value set file", ValueSet),
        ("Value set code", CodeEntry),
    ):
        parts.append(_section(title, model, skip=set()))
    return "\n".join(parts).rstrip() + "\n"


def _section(title: str, model: type[BaseModel], *, skip: set[str]) -> str:
    doc = inspect.cleandoc(model.__doc__ or "").replace("\n", " ")
    return f"### {title}\n\n{doc}\n\n{_table(model, skip=skip)}"


def _table(model: type[BaseModel], *, skip: set[str]) -> str:
    rows = ["| field | type | default | meaning |", "|---|---|---|---|"]
    for name, info in model.model_fields.items():
        if name in skip or name.isupper():
            continue
        shown = info.alias or name
        rows.append(f"| `{shown}` | {_type(info)} | {_default(info)} | {info.description or ''} |")
    return "\n".join(rows) + "\n"


def _type(info: FieldInfo) -> str:
    return _describe(info.annotation, info.metadata)


def _describe(annotation: Any, metadata: list[Any] | tuple[Any, ...] = ()) -> str:
    """A reader's name for a field's type: 'value set id', 'window (14d, 8w, 6mo, 5y)', 'a or b'."""
    names = {getattr(m, "func", None).__name__ for m in metadata if getattr(m, "func", None)}  # type: ignore[union-attr]
    if "_known_valueset" in names:
        return "value set id"
    if "parse_window" in names:
        return "window (`14d`, `8w`, `6mo`, `5y`)"
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _describe(args[0], args[1:])
    if origin is Literal:
        return " or ".join(f"`{a}`" for a in args)
    if origin in (Union, UnionType):
        return " or ".join(_describe(a) for a in args if a is not type(None))
    if origin is list:
        return f"list of {_describe(args[0])}"
    if origin is dict:
        return "mapping"
    if any(isinstance(m, StringConstraints) and m.pattern for m in metadata):
        return "slug" if any(getattr(m, "pattern", "") == SLUG_PATTERN for m in metadata) else "text"
    if annotation is date:
        return "date (YYYY-MM-DD)"
    name = getattr(annotation, "__name__", str(annotation))
    return {"str": "text", "int": "integer", "float": "number", "bool": "true/false"}.get(name, name)


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    value: Any = info.default
    if value is PydanticUndefined or info.default_factory is not None:
        value = info.default_factory() if info.default_factory is not None else None  # type: ignore[call-arg]
    if value is None:
        return "—"
    return f"`{getattr(value, 'code', lambda: value)()}`" if hasattr(value, "code") else f"`{value}`"


if __name__ == "__main__":  # pragma: no cover
    sys.stdout.write(render())
