"""What counts as data, read leniently from resources as EHRs really send them.

The rules of the trial specifications' "Data that counts" section live here, once: which statuses
count, which date stands for a resource, how a coding is named in a reason. Every reader tolerates
missing or oddly-typed fields and answers None rather than raising.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

from cds_service.engine.report import Evidence
from cds_service.engine.time import DayRange, day_range
from cds_service.engine.valuesets import CompiledValueSet
from cds_service.errors import InvalidResource
from cds_service.record import PatientRecord, Resource, codings, reference_of

Kind = Literal["found", "against", "undetermined", "absent"]


@dataclass(frozen=True)
class Finding:
    """What a data rule saw, before the mapping's if_found / if_absent policy turns it into a result.

    found: data that satisfies the rule; against: data that clearly does not (a normal lab);
    undetermined: data that cannot decide (unconvertible unit, partial date at a window edge);
    absent: no qualifying data at all.
    """

    kind: Kind
    reason: str
    evidence: tuple[Evidence, ...] = ()


OBSERVATION_COUNTS = frozenset({"final", "amended", "corrected"})
NOT_DONE = frozenset({"entered-in-error", "cancelled", "not-done", "not-taken"})
CONDITION_IGNORED = frozenset({"refuted", "entered-in-error"})
CONDITION_CURRENT = frozenset({"active", "recurrence", "relapse"})


def first_code(concept: object) -> str | None:
    for coding in codings(concept):
        code = coding.get("code")
        if isinstance(code, str):
            return code
    return None


def status_counts(resource: Resource) -> bool:
    """False for data that never happened or was withdrawn (entered-in-error, cancelled, ...)."""
    resource_type = resource.get("resourceType")
    status = resource.get("status")
    if status is not None and not isinstance(status, str):
        raise InvalidResource(f"{reference_of(resource)} is not valid FHIR R4: status: not a code")
    if resource_type == "Observation":
        return status in OBSERVATION_COUNTS
    if resource_type in ("Condition", "AllergyIntolerance"):
        return first_code(resource.get("verificationStatus")) not in CONDITION_IGNORED
    if resource_type == "MedicationRequest" and resource.get("intent") == "proposal":
        return False
    return status not in NOT_DONE


def concept_label(concept: object, valueset: CompiledValueSet | None = None) -> str:
    """'Systemic lupus erythematosus (SNOMED 55464009)' for a reason line."""
    matched = valueset.matching_coding(codings(concept)) if valueset else None
    chosen = matched or next(iter(codings(concept)), None)
    text = concept.get("text") if isinstance(concept, dict) else None
    if chosen is None:
        return text if isinstance(text, str) else "uncoded entry"
    display = chosen.get("display") or text
    if not display and valueset is not None:
        key = (str(chosen.get("system")), str(chosen.get("code")))
        display = valueset.displays.get(key) or (valueset.title if matched else None)
    system = _SYSTEM_NAMES.get(str(chosen.get("system")), "code")
    return f"{display or 'code'} ({system} {chosen.get('code')})"


_SYSTEM_NAMES = {
    "http://snomed.info/sct": "SNOMED",
    "http://hl7.org/fhir/sid/icd-10-cm": "ICD-10-CM",
    "http://loinc.org": "LOINC",
    "http://www.nlm.nih.gov/research/umls/rxnorm": "RxNorm",
    "http://hl7.org/fhir/sid/cvx": "CVX",
}


def observation_day(resource: Resource) -> DayRange | None:
    period = resource.get("effectivePeriod")
    for value in (
        resource.get("effectiveDateTime"),
        period.get("end") if isinstance(period, dict) else None,
        period.get("start") if isinstance(period, dict) else None,
        resource.get("effectiveInstant"),
        resource.get("issued"),
    ):
        found = day_range(value)
        if found is not None:
            return found
    return None


def period_start(period: object) -> DayRange | None:
    return day_range(period.get("start")) if isinstance(period, dict) else None


def period_end(period: object) -> DayRange | None:
    return day_range(period.get("end")) if isinstance(period, dict) else None


def evidence(resource: Resource, *, value: str | None = None, day: DayRange | None = None) -> Evidence:
    return Evidence(reference=reference_of(resource), value=value, date=str(day) if day else None)


def candidates(
    record: PatientRecord, valueset: CompiledValueSet, resource_types: Iterable[str]
) -> Iterator[Resource]:
    """Resources of the given types whose indexed code is in the value set, each once."""
    wanted = set(resource_types)
    if valueset.exact_only:
        seen: set[int] = set()
        for system, code in sorted(valueset.exact):
            for resource in record.with_code(system, code):
                if resource.get("resourceType") in wanted and id(resource) not in seen:
                    seen.add(id(resource))
                    yield resource
        return
    for resource_type in sorted(wanted):
        for resource, codes in record.coded(resource_type):
            if any(valueset.contains(system, code) for system, code in codes):
                yield resource


def valued_observations(record: PatientRecord, valueset: CompiledValueSet) -> Iterator[Resource]:
    """Observations whose coded value (not their code) is in the value set: findings such as NYHA."""
    seen: set[int] = set()
    if valueset.exact_only:
        pool: Iterable[Resource] = (
            r for system, code in sorted(valueset.exact) for r in record.with_value_code(system, code)
        )
    else:
        pool = (
            r
            for r in record.resources("Observation")
            if valueset.matching_coding(codings(r.get("valueCodeableConcept")))
        )
    for resource in pool:
        if id(resource) not in seen:
            seen.add(id(resource))
            yield resource


def plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"
