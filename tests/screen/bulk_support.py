"""Test support for the Bulk Data client: client keys, and a generated population in sekmet-fhir."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from cds_service.fhir.backend_auth import thumbprint
from tests.support.fhir_server import FhirServer

ENCOUNTER_COUNT = 3


def make_key(tmp: Path, alg: str) -> tuple[Path, dict[str, Any]]:
    """A fresh private key as PEM, and its public JWK (kid: the RFC 7638 thumbprint)."""
    if alg == "ES384":
        key: Any = ec.generate_private_key(ec.SECP384R1())
        public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    public.update({"alg": alg, "use": "sig", "kid": thumbprint(public)})
    pem = tmp / f"client-{alg}.pem"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return pem, public


def _lines(export: Path) -> Iterator[dict[str, Any]]:
    for path in sorted(export.glob("*.ndjson")):
        for line in path.read_text().splitlines():
            if line.strip():
                yield json.loads(line)


def load_population(server: FhirServer, export: Path) -> list[dict[str, Any]]:
    """Load every resource of a generated export into the server (PUT, ids kept), plus a few
    Encounters (a type no trial needs). ``urn:uuid:`` subjects resolve to the Patients' fullUrls."""
    resources = list(_lines(export))
    patients = [r for r in resources if r["resourceType"] == "Patient"]
    extra = [
        {
            "resourceType": "Encounter",
            "id": f"enc-{i}",
            "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": f"Patient/{patients[i]['id']}"},
        }
        for i in range(min(ENCOUNTER_COUNT, len(patients)))
    ]
    entries = [
        {
            "fullUrl": f"urn:uuid:{r['id']}" if r["resourceType"] == "Patient" else None,
            "resource": r,
            "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"},
        }
        for r in [*resources, *extra]
    ]
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{k: v for k, v in e.items() if v is not None} for e in entries],
    }
    server.load_bundle(bundle)
    return resources
