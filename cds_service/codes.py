"""Code-system URIs, defined once. Mapping files may use the short aliases on the left."""

from __future__ import annotations

SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
CVX = "http://hl7.org/fhir/sid/cvx"
UCUM = "http://unitsofmeasure.org"
V3_INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CONDITION_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
ALLERGY_VERIFICATION = "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification"

# How real EHR data also names these systems: OIDs, trailing slashes, http for https.
_INCOMING_ALIASES: dict[str, str] = {
    "urn:oid:2.16.840.1.113883.6.96": SNOMED,
    "http://snomed.info/sct/": SNOMED,
    "urn:oid:2.16.840.1.113883.6.90": ICD10CM,
    "http://hl7.org/fhir/sid/icd-10-cm/": ICD10CM,
    "urn:oid:2.16.840.1.113883.6.1": LOINC,
    "http://loinc.org/": LOINC,
    "https://loinc.org": LOINC,
    "urn:oid:2.16.840.1.113883.6.88": RXNORM,
    "http://www.nlm.nih.gov/research/umls/rxnorm/": RXNORM,
    "urn:oid:2.16.840.1.113883.12.292": CVX,
    "http://hl7.org/fhir/sid/cvx/": CVX,
}


def normalize(system: str, code: str) -> tuple[str, str]:
    """One spelling per code: OID system names mapped to their URI, ICD-10-CM codes given their dot
    ("M3210" → "M32.10"), surrounding spaces dropped. Unknown systems pass through unchanged."""
    system = _INCOMING_ALIASES.get(system, system)
    code = code.strip()
    if system == ICD10CM and len(code) > 3 and "." not in code:
        code = f"{code[:3]}.{code[3:]}"
    return system, code


SYSTEM_ALIASES: dict[str, str] = {
    "snomed": SNOMED,
    "icd10cm": ICD10CM,
    "loinc": LOINC,
    "rxnorm": RXNORM,
    "cvx": CVX,
}
