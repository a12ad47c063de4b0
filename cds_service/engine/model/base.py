"""What every part of the mapping model shares: strict models, slugs, the result vocabulary."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, StringConstraints, ValidationInfo

Slug = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]*$", max_length=64)]


def _known_valueset(value: str, info: ValidationInfo) -> str:
    """With the loader's context (the ids of the loaded value sets), refuse a name that is none of
    them, so the error points at the very field that names it."""
    known = info.context.get("valuesets") if isinstance(info.context, dict) else None
    if known is not None and value not in known:
        raise ValueError(f"unknown value set {value!r}")
    return value


ValueSetRef = Annotated[Slug, AfterValidator(_known_valueset)]
Result = Literal["met", "not-met", "unknown"]
FoundResult = Literal["met", "unknown"]
AbsentResult = Literal["not-met", "unknown"]


class Strict(BaseModel):
    """Unknown keys are errors: a misspelt field must fail the load, never be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
