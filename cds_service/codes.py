"""Code systems, declared once: the URI, the short alias mapping files use, the OID real EHR data may
name instead, and the name a reason shows ("SNOMED 55464009").

Incoming data is matched leniently (an OID, a trailing slash, ``https`` for ``http``, ICD-10-CM codes
without their dot, CVX codes without their leading zero); mapping files are validated strictly
(``cds_service.engine.codecheck``).
"""

from __future__ import annotations

from dataclasses import dataclass

SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
CVX = "http://hl7.org/fhir/sid/cvx"
CPT = "http://www.ama-assn.org/go/cpt"
HCPCS = "http://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets"
ICD10PCS = "http://www.cms.gov/Medicare/Coding/ICD10"
NDC = "http://hl7.org/fhir/sid/ndc"
ATC = "http://www.whocc.no/atc"
ICDO3 = "http://terminology.hl7.org/CodeSystem/icd-o-3"
NCIT = "http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl"
HGNC = "http://www.genenames.org"
UCUM = "http://unitsofmeasure.org"
V3_INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
V2_INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v2-0078"
V3_TIMING = "http://terminology.hl7.org/CodeSystem/v3-GTSAbbreviation"
V3_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CONDITION_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
ALLERGY_VERIFICATION = "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification"


@dataclass(frozen=True)
class CodeSystem:
    """One terminology: how mappings name it, how EHRs may name it, how a reason names it."""

    alias: str
    uri: str
    oid: str
    label: str
    title: str


CODE_SYSTEMS: tuple[CodeSystem, ...] = (
    CodeSystem("snomed", SNOMED, "2.16.840.1.113883.6.96", "SNOMED", "SNOMED CT"),
    CodeSystem("icd10cm", ICD10CM, "2.16.840.1.113883.6.90", "ICD-10-CM", "ICD-10-CM"),
    CodeSystem("icd10", ICD10, "2.16.840.1.113883.6.3", "ICD-10", "ICD-10 (WHO)"),
    CodeSystem("loinc", LOINC, "2.16.840.1.113883.6.1", "LOINC", "LOINC (incl. LA answer codes)"),
    CodeSystem("rxnorm", RXNORM, "2.16.840.1.113883.6.88", "RxNorm", "RxNorm"),
    CodeSystem("cvx", CVX, "2.16.840.1.113883.12.292", "CVX", "CDC vaccine codes (CVX)"),
    CodeSystem("cpt", CPT, "2.16.840.1.113883.6.12", "CPT", "CPT (AMA)"),
    CodeSystem("hcpcs", HCPCS, "2.16.840.1.113883.6.285", "HCPCS", "HCPCS Level II"),
    CodeSystem("icd10pcs", ICD10PCS, "2.16.840.1.113883.6.4", "ICD-10-PCS", "ICD-10-PCS"),
    CodeSystem("ndc", NDC, "2.16.840.1.113883.6.69", "NDC", "National Drug Code"),
    CodeSystem("atc", ATC, "2.16.840.1.113883.6.73", "ATC", "WHO ATC classification"),
    CodeSystem("icdo3", ICDO3, "2.16.840.1.113883.6.43.1", "ICD-O-3", "ICD-O-3 (morphology, topography)"),
    CodeSystem("ncit", NCIT, "2.16.840.1.113883.3.26.1.1", "NCIt", "NCI Thesaurus"),
    CodeSystem("hgnc", HGNC, "2.16.840.1.113883.6.281", "HGNC", "HGNC gene ids"),
)
SYSTEM_ALIASES: dict[str, str] = {s.alias: s.uri for s in CODE_SYSTEMS}
SYSTEM_LABELS: dict[str, str] = {s.uri: s.label for s in CODE_SYSTEMS}


def _incoming_aliases() -> dict[str, str]:
    """OIDs, trailing slashes and http/https variants of every known system, as EHRs send them."""
    aliases: dict[str, str] = {}
    for system in CODE_SYSTEMS:
        aliases[f"urn:oid:{system.oid}"] = system.uri
        aliases[system.uri + "/"] = system.uri
        aliases[system.uri + "#"] = system.uri  # NCIt is often sent as ...Thesaurus.owl#
        other = system.uri.replace("http://", "https://", 1)
        if other != system.uri:
            aliases[other] = system.uri
            aliases[other + "/"] = system.uri
    aliases["urn:oid:2.16.840.1.113883.6.285"] = HCPCS  # also the URI US Core names HCPCS by
    return aliases


_INCOMING_ALIASES = _incoming_aliases()


def canonical_system(system: str) -> str:
    """The URI this project uses for ``system`` (unknown systems pass through unchanged)."""
    return _INCOMING_ALIASES.get(system, system)


def normalize(system: str, code: str) -> tuple[str, str]:
    """One spelling per code: OID system names mapped to their URI, ICD-10-CM codes given their dot
    ("M3210" → "M32.10"), CVX codes without leading zeros ("03" and "3" are one vaccine), surrounding
    spaces dropped. Unknown systems pass through unchanged."""
    system = _INCOMING_ALIASES.get(system, system)
    code = code.strip()
    if system in (ICD10CM, ICD10):
        code = code.upper()
        if len(code) > 3 and "." not in code:
            code = f"{code[:3]}.{code[3:]}"
    elif system == CVX and code.isdigit():
        code = str(int(code))
    return system, code


# Systems whose incoming codes need no rewriting beyond the system URI (the hot path skips normalize).
PLAIN_SYSTEMS = frozenset({SNOMED, LOINC, RXNORM, CPT, HCPCS, ICD10PCS, NDC, ATC, ICDO3, NCIT, HGNC})
