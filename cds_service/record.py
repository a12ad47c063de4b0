"""PatientRecord: one patient's FHIR resources, indexed for the engine.

Built from any Bundle (searchset, collection, transaction, with ``urn:uuid:`` or relative
references), several Bundles (one per prefetch key), or loose resources. The body is parsed once
with orjson and kept as plain dicts; a resource is validated as FHIR R4 (fhir.resources R4B) only
when the engine actually reads it, because validating a whole heavy record costs ~30x the parse.

The code index holds what a rule may match on: each resource's own code, an Observation's
component codes (a blood pressure panel answers for its systolic value), the Observations a panel
contains as ``hasMember``, and a medication order's Medication and ingredient codes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from pydantic import ValidationError

from cds_service.codes import PLAIN_SYSTEMS, normalize
from cds_service.errors import ForeignData, InvalidInput, InvalidResource
from cds_service.gcpause import paused

Resource = dict[str, Any]

# Where each resource type keeps the code the engine matches value sets against.
CODE_FIELDS: Mapping[str, tuple[str, ...]] = {
    "Condition": ("code",),
    "Observation": ("code",),
    "Procedure": ("code",),
    "Immunization": ("vaccineCode",),
    "MedicationRequest": ("medicationCodeableConcept",),
    "MedicationStatement": ("medicationCodeableConcept",),
    "AllergyIntolerance": ("code",),
    "MedicationAdministration": ("medicationCodeableConcept",),
    "ServiceRequest": ("code",),
    "Medication": ("code",),
}
MEDICATION_ORDERS = frozenset({"MedicationRequest", "MedicationStatement", "MedicationAdministration"})
_SUBJECT_FIELDS = ("subject", "patient")


def codings(concept: object) -> list[Mapping[str, Any]]:
    """The codings of a CodeableConcept, tolerating whatever an EHR sent."""
    if not isinstance(concept, dict):
        return []
    found = concept.get("coding")
    return [c for c in found if isinstance(c, dict)] if isinstance(found, list) else []


Codes = tuple[tuple[str, str], ...]


def normalized_codes(*concepts: object) -> Codes:
    found = []
    for concept in concepts:
        for coding in codings(concept):
            system, code = coding.get("system"), coding.get("code")
            if isinstance(system, str) and isinstance(code, str):
                found.append(normalize(system, code))
    return tuple(found)


def reference_of(resource: Mapping[str, Any]) -> str:
    return f"{resource.get('resourceType')}/{resource.get('id', '?')}"


@dataclass
class PatientRecord:
    """The patient and their resources; ``by_type`` and ``by_code`` are the engine's indexes."""

    patient: Resource
    by_type: dict[str, list[Resource]] = field(default_factory=dict)
    by_code: dict[tuple[str, str], list[Resource]] = field(default_factory=dict)
    by_url: dict[str, Resource] = field(default_factory=dict)
    by_value_code: dict[tuple[str, str], list[Resource]] = field(default_factory=dict)
    _validated: set[int] = field(default_factory=set, repr=False)
    _invalid: dict[int, InvalidResource] = field(default_factory=dict, repr=False)
    _coded: dict[str, list[tuple[Resource, Codes]]] = field(default_factory=dict, repr=False)
    _medication_codes: dict[int, Codes] = field(default_factory=dict, repr=False)

    @property
    def reference(self) -> str:
        return reference_of(self.patient)

    def resources(self, resource_type: str) -> list[Resource]:
        return self.by_type.get(resource_type, [])

    def with_code(self, system: str, code: str) -> list[Resource]:
        return self.by_code.get((system, code), [])

    def coded(self, resource_type: str) -> list[tuple[Resource, Codes]]:
        """Each resource of the type with its normalised codes, worked out once per record."""
        cached = self._coded.get(resource_type)
        if cached is None:
            fields = CODE_FIELDS.get(resource_type, ())
            cached = [
                (r, normalized_codes(*(r.get(name) for name in fields)))
                for r in self.resources(resource_type)
            ]
            self._coded[resource_type] = cached
        return cached

    def medication_codes(self, resource: Resource) -> Codes:
        """A medication order's or statement's codes: its own, then its Medication's and ingredients'."""
        key = id(resource)
        cached = self._medication_codes.get(key)
        if cached is None:
            concepts: list[object] = [resource.get("medicationCodeableConcept")]
            medication = self.resolve(resource.get("medicationReference"), within=resource)
            if medication is not None:
                concepts.append(medication.get("code"))
                ingredients = medication.get("ingredient")
                if isinstance(ingredients, list):
                    concepts.extend(i.get("itemCodeableConcept") for i in ingredients if isinstance(i, dict))
            cached = self._medication_codes[key] = normalized_codes(*concepts)
        return cached

    def with_value_code(self, system: str, code: str) -> list[Resource]:
        """Observations whose coded value (valueCodeableConcept) is this code."""
        return self.by_value_code.get((system, code), [])

    def resolve(self, reference: object, *, within: Resource | None = None) -> Resource | None:
        """The resource a Reference points to: ``#contained``, ``Type/id``, ``urn:uuid:`` or URL."""
        ref = reference.get("reference") if isinstance(reference, dict) else None
        if not isinstance(ref, str):
            return None
        if ref.startswith("#") and within is not None:
            for contained in within.get("contained") or ():
                if isinstance(contained, dict) and contained.get("id") == ref[1:]:
                    return contained
            return None
        if ref in self.by_url:
            return self.by_url[ref]
        tail = "/".join(ref.rstrip("/").split("/")[-2:])
        return self.by_url.get(tail)

    def validate(self, resource: Resource) -> None:
        """Check, once, that a resource the engine is about to trust is valid FHIR R4."""
        key = id(resource)
        if key in self._validated:
            return
        known = self._invalid.get(key)
        if known is not None:
            raise known
        try:
            validate_resource(resource)
        except InvalidResource as exc:
            self._invalid[key] = exc  # several criteria may rest on it: validated once
            raise
        self._validated.add(key)

    def all_resources(self) -> Iterator[Resource]:
        for group in self.by_type.values():
            yield from group


def validate_resource(resource: Resource) -> None:
    """Raise InvalidResource naming the resource and the first bad field (never its value)."""
    from fhir.resources.R4B import get_fhir_model_class

    try:
        model = get_fhir_model_class(resource["resourceType"])
        model.model_validate(resource)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(resource)"
        raise InvalidResource(
            f"{reference_of(resource)} is not valid FHIR R4: {where}: {first['msg']}",
            reference=reference_of(resource),
            field=where,
        ) from None
    except KeyError:
        raise InvalidResource(
            f"{reference_of(resource)}: unknown resourceType for FHIR R4",
            reference=reference_of(resource),
            field="resourceType",
        ) from None


def parse_json(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"not JSON: {exc.msg} at byte {exc.pos}") from None


def from_bytes(data: bytes) -> PatientRecord:
    """A record from the raw bytes of a Bundle, a resource, or a JSON list of resources."""
    with paused():
        return build_record([parse_json(data)])


def build_record(
    parts: Iterable[Any],
    *,
    foreign: Literal["refuse", "drop"] = "refuse",
    dropped: list[Resource] | None = None,
) -> PatientRecord:
    """A record from Bundles and/or resources, e.g. the values of a hook's prefetch.

    Resources about another patient raise ``ForeignData`` (an InvalidInput), or with
    ``foreign="drop"`` are left out of the record and appended to ``dropped``, for the caller to
    count and report (without ids). The record is then built again without them: the rare case
    pays twice, the common one nothing."""
    entries: list[tuple[str | None, Resource]] = []
    for part in parts:
        _entries(part, entries)
    try:
        return _index(entries)
    except ForeignData as exc:
        if foreign == "refuse":
            raise
        left_out = {id(resource) for resource in exc.resources}
        if dropped is not None:
            dropped.extend(exc.resources)
        return _index([(url, r) for url, r in entries if id(r) not in left_out])


def _entries(part: Any, out: list[tuple[str | None, Resource]]) -> None:
    """Flatten Bundles (nested too) into (fullUrl, resource) pairs; refuse what is not FHIR."""
    if isinstance(part, list):
        for item in part:
            _entries(item, out)
        return
    if not isinstance(part, dict) or not isinstance(part.get("resourceType"), str):
        raise InvalidInput("not a FHIR resource or Bundle (no resourceType)")
    if part["resourceType"] != "Bundle":
        out.append((None, part))
        return
    entries = part.get("entry")
    if entries is None:
        return
    if not isinstance(entries, list):
        raise InvalidInput("Bundle.entry is not a list")
    for position, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise InvalidInput(f"Bundle entry {position} is not an object")
        resource = entry.get("resource")
        if resource is None:
            continue  # a transaction-response or delete entry carries no data
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            raise InvalidInput(f"Bundle entry {position}: resource has no resourceType")
        search = entry.get("search")
        if search is not None and isinstance(search, dict) and search.get("mode") == "outcome":
            continue  # an OperationOutcome about the search, not patient data
        if resource["resourceType"] == "Bundle":
            _entries(resource, out)
            continue
        full_url = entry.get("fullUrl")
        out.append((full_url if isinstance(full_url, str) else None, resource))


def _add_codes(concept: object, resource: Resource, index: dict[tuple[str, str], list[Resource]]) -> None:
    """Index a CodeableConcept's codings; the innermost loop of reading a record, so kept lean."""
    if not isinstance(concept, dict):
        return
    found = concept.get("coding")
    if not isinstance(found, list):
        return
    for coding in found:
        if not isinstance(coding, dict):
            continue
        system, code = coding.get("system"), coding.get("code")
        if isinstance(system, str) and isinstance(code, str):
            key = (system, code) if system in _CANONICAL else normalize(system, code)
            bucket = index.get(key)
            if bucket is None:
                index[key] = [resource]
            else:
                bucket.append(resource)


_CANONICAL = PLAIN_SYSTEMS  # ICD-10-CM codes may still lack their dot, CVX codes have leading zeros


def _index(entries: list[tuple[str | None, Resource]]) -> PatientRecord:
    patients: dict[str, Resource] = {}
    by_type: dict[str, list[Resource]] = {}
    by_code: dict[tuple[str, str], list[Resource]] = {}
    by_url: dict[str, Resource] = {}
    by_value_code: dict[tuple[str, str], list[Resource]] = {}
    subjects: dict[str, tuple[Resource, str]] = {}  # each distinct patient reference, checked once below
    for full_url, resource in entries:
        resource_type = resource["resourceType"]
        rid = resource.get("id")
        key = resource_type + "/" + rid if isinstance(rid, str) else None
        if key is not None:
            if key in by_url:
                continue  # the same resource twice (overlapping pages, two prefetch keys)
            by_url[key] = resource
        if full_url:
            by_url[full_url] = resource
        if resource_type == "Patient":
            patients[key or full_url or str(len(patients))] = resource
        group = by_type.get(resource_type)
        if group is None:
            by_type[resource_type] = [resource]
        else:
            group.append(resource)
        for field_name in CODE_FIELDS.get(resource_type, ()):
            _add_codes(resource.get(field_name), resource, by_code)
        if resource_type == "Observation":
            _add_codes(resource.get("valueCodeableConcept"), resource, by_value_code)
            _index_parts(resource, by_code, by_value_code)
        for name in _SUBJECT_FIELDS:
            ref = resource.get(name)
            target = ref.get("reference") if isinstance(ref, dict) else None
            if isinstance(target, str) and target not in subjects:
                subjects[target] = (resource, name)
    if not patients:
        raise InvalidInput("no Patient resource")
    if len(patients) > 1:
        raise InvalidInput(f"{len(patients)} Patient resources; one patient per record")
    patient = next(iter(patients.values()))
    record = PatientRecord(
        patient=patient, by_type=by_type, by_code=by_code, by_url=by_url, by_value_code=by_value_code
    )
    _index_medication_references(record)
    record.validate(patient)
    _refuse_other_patients(record, subjects)
    return record


def _index_parts(
    resource: Resource,
    by_code: dict[tuple[str, str], list[Resource]],
    by_value_code: dict[tuple[str, str], list[Resource]],
) -> None:
    """An Observation's components, and panel members it contains, answer for their own codes."""
    components = resource.get("component")
    if isinstance(components, list):
        for component in components:
            if isinstance(component, dict):
                _add_codes(component.get("code"), resource, by_code)
                _add_codes(component.get("valueCodeableConcept"), resource, by_value_code)
    if "contained" not in resource or not isinstance(resource.get("hasMember"), list):
        return
    for member in contained_members(resource):  # found through the code index only, never by type
        _add_codes(member.get("code"), member, by_code)
        _add_codes(member.get("valueCodeableConcept"), member, by_value_code)


def contained_members(panel: Resource) -> list[Resource]:
    """The panel's ``hasMember`` Observations that it carries as ``#contained`` resources, each
    completed from the panel (status, date, subject) where it says nothing, and answering with the
    panel's reference (a contained resource cannot be linked to on its own)."""
    wanted = {
        ref["reference"][1:]
        for ref in panel.get("hasMember") or ()
        if isinstance(ref, dict)
        and isinstance(ref.get("reference"), str)
        and ref["reference"].startswith("#")
    }
    members = []
    for item in panel.get("contained") or ():
        if isinstance(item, dict) and item.get("resourceType") == "Observation" and item.get("id") in wanted:
            member = {k: v for k, v in panel.items() if k in _INHERITED and k not in item}
            member.update({k: v for k, v in item.items() if k != "id"})
            member["id"] = panel.get("id")
            members.append(member)
    return members


_INHERITED = ("status", "subject", "effectiveDateTime", "effectivePeriod", "effectiveInstant", "issued")


def _index_medication_references(record: PatientRecord) -> None:
    """A medication order matches by its Medication's code and ingredients as well as its own code."""
    for resource_type in MEDICATION_ORDERS:
        for resource in record.resources(resource_type):
            if "medicationReference" not in resource:
                continue
            own = set(normalized_codes(resource.get("medicationCodeableConcept")))
            for key in record.medication_codes(resource):
                if key not in own:
                    record.by_code.setdefault(key, []).append(resource)
                    own.add(key)


def _refuse_other_patients(record: PatientRecord, subjects: Mapping[str, tuple[Resource, str]]) -> None:
    """Data about someone else must never decide this patient's eligibility.

    Raises ForeignData holding *every* resource whose subject/patient is another patient (so a
    caller may drop them); the message names the resource type and field, never an id."""
    foreign: set[str] = set()
    first: tuple[Resource, str] | None = None
    for target, (resource, name) in subjects.items():
        if resource.get("resourceType") == "Patient":
            continue
        if "Patient" not in target and "urn:" not in target:
            continue
        if record.resolve({"reference": target}) is not record.patient:
            foreign.add(target)
            first = first or (resource, name)
    if first is None:
        return
    offenders = []
    for resource in record.all_resources():
        if resource.get("resourceType") == "Patient":
            continue
        for field_name in _SUBJECT_FIELDS:
            ref = resource.get(field_name)
            if isinstance(ref, dict) and ref.get("reference") in foreign:
                offenders.append(resource)
                break
    resource, name = first
    raise ForeignData(
        f"{len(offenders)} resource(s) refer to a patient other than the record's Patient "
        f"(first: a {resource.get('resourceType')}.{name})",
        resources=offenders,
    )
