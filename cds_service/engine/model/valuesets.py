"""Value sets: named code lists across code systems, with where the codes came from.

Two file forms load into the same model: the project's YAML (``id``, ``title``, ``sources``,
``codes``, ``include``) and a FHIR R4 ``ValueSet`` resource as VSAC and terminology servers publish
it (``expansion.contains``, else ``compose.include.concept``), whose ``url`` and ``version`` are kept
as its source. ``intent`` states the definition a reviewer checks the enumerated codes against (an
ECL expression, an ICD-10-CM range); it is documentation, the codes are what match.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from cds_service.codes import SYSTEM_ALIASES, canonical_system
from cds_service.engine.codecheck import check_code
from cds_service.engine.model.base import Slug, Strict


class CodeEntry(Strict):
    """One code (or, for ICD-10-CM, a ``C44*`` prefix or ``C00-C96`` category range)."""

    system: str = Field(description="an alias (snomed, icd10cm, loinc, ...) or the system URI")
    code: str = Field(description="always quoted in YAML ('03', 'Z94.0')")
    display: str | None = Field(default=None, description="shown in evidence when the record has none")
    strength: str | None = Field(
        default=None, description="per-unit strength of a clinical drug, e.g. '5 mg' (UCUM)"
    )
    score: float | None = Field(
        default=None, description="the number an ordinal answer stands for (ECOG LA9623-5 = 1)"
    )
    synonyms: list[str] = Field(
        default_factory=list, description="texts a result may carry instead of this code ('Pregnant')"
    )
    group: str | None = Field(
        default=None, description="the drug this code stands for when regimens are counted ('oxaliplatin')"
    )

    @field_validator("system")
    @classmethod
    def _known_system(cls, value: str) -> str:
        if value in SYSTEM_ALIASES:
            return SYSTEM_ALIASES[value]
        uri = canonical_system(value)
        if uri in SYSTEM_ALIASES.values():
            return uri
        raise ValueError(f"unknown code system {value!r}; use one of {sorted(SYSTEM_ALIASES)}")

    @model_validator(mode="after")
    def _well_formed(self) -> CodeEntry:
        check_code(system=self.system, code=self.code)
        if self.strength is not None:
            from cds_service.engine.units import parse_quantity

            parse_quantity(self.strength)
        return self


class ValueSet(Strict):
    """A named list of codes across code systems, with where the codes came from."""

    id: Slug = Field(description="the file name without .yaml; rules name the set by it")
    title: str = Field(min_length=1, description="a clinician's name for it, used in reasons")
    sources: list[str] = Field(min_length=1, description="where the codes came from")
    intent: str | None = Field(
        default=None, description="the definition the codes enumerate, e.g. '<< 363346000' or 'C50.x'"
    )
    url: str | None = Field(default=None, description="canonical URL (FHIR ValueSet.url)")
    version: str | None = Field(default=None, description="the published version the codes came from")
    include: list[Slug] = Field(default_factory=list, description="other value sets merged in")
    codes: list[CodeEntry] = Field(default_factory=list, description="the codes")

    @model_validator(mode="after")
    def _not_empty(self) -> ValueSet:
        if not self.codes and not self.include:
            raise ValueError("a value set needs codes or include")
        return self


def from_fhir_valueset(data: dict[str, Any], *, fallback_id: str) -> dict[str, Any]:
    """A FHIR R4 ValueSet resource → the data of a ``ValueSet`` (validated by the caller).

    The expansion is preferred (it is what the publisher computed); without one, the enumerated
    ``compose.include.concept`` lists are read. An include by filter only (``is-a``) cannot be
    evaluated offline and is refused, so a reviewer never believes a set holds codes it does not.
    """
    codes: list[dict[str, Any]] = []
    expansion = data.get("expansion")
    if isinstance(expansion, dict) and expansion.get("contains"):
        _expansion_codes(expansion["contains"], codes)
    else:
        compose = data.get("compose")
        includes = compose.get("include") if isinstance(compose, dict) else None
        for position, include in enumerate(includes or ()):
            if include.get("filter") and not include.get("concept"):
                raise ValueError(
                    f"compose.include[{position}] defines codes by filter only: publish its expansion"
                )
            for concept in include.get("concept") or ():
                codes.append(_code(include.get("system"), concept))
    publisher = data.get("publisher")
    source = " ".join(str(p) for p in (publisher, data.get("url"), data.get("version")) if p)
    return {
        "id": _slug(data.get("id") or data.get("name") or fallback_id),
        "title": str(data.get("title") or data.get("name") or fallback_id),
        "sources": [source or "FHIR ValueSet resource"],
        "intent": data.get("description"),
        "url": data.get("url"),
        "version": data.get("version"),
        "codes": codes,
    }


def _expansion_codes(contains: list[Any], out: list[dict[str, Any]]) -> None:
    for item in contains:
        if not isinstance(item, dict):
            continue
        if item.get("code") and not item.get("abstract"):
            out.append(_code(item.get("system"), item))
        _expansion_codes(item.get("contains") or [], out)


def _code(system: object, concept: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {"system": system, "code": concept.get("code")}
    if concept.get("display"):
        entry["display"] = concept["display"]
    return entry


def _slug(value: object) -> str:
    text = "".join(c if c.isalnum() else "-" for c in str(value).lower()).strip("-")
    while "--" in text:
        text = text.replace("--", "-")
    return text[:64]
