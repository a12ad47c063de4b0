"""Write a Bulk Data style export of N patients made from the repository's test patients.

Deterministic by seed. Templates: the Synthea patients (tests/data/synthea), the demo patients
(tests/data/demo) and the mapping test vectors that state a trial status (mappings/tests). Each
generated patient is a copy of a template with a new id (a UUID; its resources get new ids too),
its dates shifted by a few days, its subject references written in one of the three forms an
export may use (``Patient/<id>``, an absolute URL, ``urn:uuid:<id>``), and for some patients their
coded medications moved to shared Medication resources (a formulary) that orders reference. A
variant is used only if the engine gives it exactly the template's statuses and criterion results
on the evaluation date, so the mix of likely-eligible, needs-review and not-eligible patients is
the templates' mix. Files are NDJSON per type, several per type (``Observation.000.ndjson``, ...);
``<out>.population.json`` beside the directory lists each patient's template and expected statuses.

    .venv/bin/python benchmarks/make_population.py 10000 --out /tmp/pop10k
    .venv/bin/python benchmarks/make_population.py 200 --out /tmp/pop --types needed --seed 7
"""

from __future__ import annotations

import argparse
import hashlib
import random
import re
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from cds_service.engine.evaluate import evaluate  # noqa: E402
from cds_service.engine.loader import Catalog, load_catalog  # noqa: E402
from cds_service.record import build_record  # noqa: E402
from cds_service.screen.needs import needed_types  # noqa: E402

SHIFTS = (0, -2, -5, -9, -16, -30, 3)
PID, PHEX, PREF = "@PID@", "@PHEX@", "@PREF@"
REF_FORMS = ("Patient/{pid}", "https://ehr.example.org/fhir/Patient/{pid}", "urn:uuid:{pid}")
_DATE = re.compile(r"^(\d{4}-\d{2}-\d{2})(.*)$")
_SKIP_KEYS = frozenset({"id", "reference", "code", "system", "url", "display", "version"})
DEFAULT_PATIENT = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1980-01-01"}


@dataclass(frozen=True)
class Variant:
    """A template with placeholders: lines per type, and the shared Medications it references."""

    lines: tuple[tuple[str, bytes], ...]
    medications: tuple[tuple[str, bytes], ...]


@dataclass(frozen=True)
class Template:
    name: str
    expected: dict[str, str]
    variants: tuple[Variant, ...]


def _flatten(part: Any) -> Iterator[tuple[str | None, dict[str, Any]]]:
    if isinstance(part, list):
        for item in part:
            yield from _flatten(item)
    elif part.get("resourceType") == "Bundle":
        for entry in part.get("entry") or ():
            if isinstance(entry.get("resource"), dict):
                yield entry.get("fullUrl"), entry["resource"]
    else:
        yield None, part


def _sources() -> Iterator[tuple[str, list[tuple[str | None, dict[str, Any]]]]]:
    for path in sorted((REPO / "tests" / "data" / "synthea").glob("*.json")):
        yield path.stem.split("_")[0], list(_flatten(orjson.loads(path.read_bytes())))
    for path in sorted((REPO / "tests" / "data" / "demo").glob("*.json")):
        yield path.stem, list(_flatten(orjson.loads(path.read_bytes())))
    for path in sorted((REPO / "mappings" / "tests").glob("*/*.yaml")):
        for case in (yaml.safe_load(path.read_text()) or {}).get("cases", ()):
            if not (case.get("expected") or {}).get("status") or case.get("resources") is None:
                continue
            resources = list(case["resources"])
            if not any(r.get("resourceType") == "Patient" for r in resources):
                resources.insert(0, dict(DEFAULT_PATIENT))
            yield f"{path.stem}: {case['name']}", [(None, r) for r in resources]


def _shift(value: str, days: int) -> str:
    match = _DATE.match(value)
    if not match or days == 0:
        return value
    try:
        day = date.fromisoformat(match.group(1))
    except ValueError:
        return value
    return (day + timedelta(days=days)).isoformat() + match.group(2)


def _rewrite(node: Any, days: int, refs: dict[str, str], key: str = "") -> Any:
    """Shift dates and rewrite references (to placeholders) throughout one resource."""
    if isinstance(node, dict):
        out = {k: _rewrite(v, days, refs, k) for k, v in node.items()}
        ref = node.get("reference")
        if isinstance(ref, str) and ref in refs:
            out["reference"] = refs[ref]
        return out
    if isinstance(node, list):
        return [_rewrite(v, days, refs, key) for v in node]
    if isinstance(node, str) and key not in _SKIP_KEYS:
        return _shift(node, days)
    return node


def _variant(entries: list[tuple[str | None, dict[str, Any]]], days: int, shared_meds: bool) -> Variant:
    patient = next(r for _, r in entries if r.get("resourceType") == "Patient")
    refs: dict[str, str] = {}
    new_ids: dict[int, str] = {}
    for j, (full_url, resource) in enumerate(entries):
        new = PID if resource is patient else f"{PHEX}.{j}"
        new_ids[j] = new
        target = PREF if resource is patient else f"{resource['resourceType']}/{new}"
        if full_url:
            refs[full_url] = target
        if isinstance(resource.get("id"), str):
            refs[f"{resource['resourceType']}/{resource['id']}"] = target
    lines: list[tuple[str, bytes]] = []
    medications: dict[str, bytes] = {}
    for j, (_, resource) in enumerate(entries):
        copy = _rewrite(resource, days, refs)
        copy["id"] = new_ids[j]
        if (
            shared_meds
            and copy["resourceType"] == "MedicationRequest"
            and "medicationCodeableConcept" in copy
        ):
            concept = copy.pop("medicationCodeableConcept")
            digest = hashlib.sha256(orjson.dumps(concept, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]
            medication = {"resourceType": "Medication", "id": f"med-{digest}", "code": concept}
            medications[medication["id"]] = orjson.dumps(medication)
            copy["medicationReference"] = {"reference": f"Medication/med-{digest}"}
        lines.append((copy["resourceType"], orjson.dumps(copy)))
    return Variant(tuple(lines), tuple(sorted(medications.items())))


def _instance(variant: Variant, pid: str, form: str) -> list[tuple[str, bytes]]:
    ref = form.format(pid=pid).encode()
    phex = pid.replace("-", "").encode()
    return [
        (
            rtype,
            line.replace(PREF.encode(), ref).replace(PHEX.encode(), phex).replace(PID.encode(), pid.encode()),
        )
        for rtype, line in variant.lines
    ]


def _results(catalog: Catalog, variant: Variant, as_of: date) -> dict[str, Any]:
    """Statuses and criterion results the engine gives one instance (what a variant must keep)."""
    parts: list[Any] = [
        orjson.loads(line) for _, line in _instance(variant, str(uuid.UUID(int=1)), REF_FORMS[0])
    ]
    parts += [orjson.loads(line) for _, line in variant.medications]
    report = evaluate(catalog, build_record(parts), as_of=as_of).to_json_dict()
    trials: list[dict[str, Any]] = report["trials"]  # type: ignore[assignment]
    return {t["trial"]: (t["status"], [(c["id"], c["result"]) for c in t["criteria"]]) for t in trials}


def templates(catalog: Catalog, as_of: date) -> list[Template]:
    """Every template with the variants that keep its results on ``as_of``."""
    out = []
    for name, entries in _sources():
        if sum(1 for _, r in entries if r.get("resourceType") == "Patient") != 1:
            continue
        base = _variant(entries, 0, False)
        expected = _results(catalog, base, as_of)
        kept = [base]
        for days in SHIFTS:
            for shared in (False, True):
                if (days, shared) == (0, False):
                    continue
                candidate = _variant(entries, days, shared)
                if _results(catalog, candidate, as_of) == expected:
                    kept.append(candidate)
        out.append(Template(name, {t: s for t, (s, _) in expected.items()}, tuple(kept)))
    return out


def generate(
    n: int,
    out: Path,
    *,
    seed: int = 1,
    as_of: date = date(2026, 6, 1),
    files_per_type: int = 2,
    only_needed: bool = False,
    catalog: Catalog | None = None,
) -> dict[str, Any]:
    """Write the export into ``out``; returns (and writes beside it) the population key."""
    catalog = catalog or load_catalog()
    rng = random.Random(seed)
    chosen = templates(catalog, as_of)
    needed = needed_types(catalog)
    out.mkdir(parents=True, exist_ok=True)
    handles: dict[tuple[str, int], Any] = {}
    written_meds: set[str] = set()
    patients: list[list[Any]] = []
    try:
        for i in range(n):
            t = rng.randrange(len(chosen))
            variant = rng.choice(chosen[t].variants)
            pid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            form = REF_FORMS[rng.randrange(len(REF_FORMS))]
            part = i * files_per_type // max(n, 1)
            lines = _instance(variant, pid, form)
            lines += [("Medication", line) for mid, line in variant.medications if mid not in written_meds]
            written_meds.update(mid for mid, _ in variant.medications)
            for rtype, line in lines:
                if only_needed and rtype not in needed:
                    continue
                key = (rtype, 0 if rtype == "Medication" else part)
                if key not in handles:
                    handles[key] = open(out / f"{rtype}.{key[1]:03d}.ndjson", "wb")  # noqa: SIM115
                handles[key].write(line + b"\n")
            patients.append([pid, t])
    finally:
        for handle in handles.values():
            handle.close()
    key_doc = {
        "seed": seed,
        "n": n,
        "as_of": as_of.isoformat(),
        "generated": datetime.now().isoformat(timespec="seconds"),
        "templates": [{"name": t.name, "expected": t.expected, "variants": len(t.variants)} for t in chosen],
        "patients": patients,
    }
    (out.parent / f"{out.name}.population.json").write_bytes(orjson.dumps(key_doc))
    return key_doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", type=int, help="number of patients")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--as-of", default="2026-06-01")
    parser.add_argument("--files-per-type", type=int, default=2)
    parser.add_argument("--types", choices=("all", "needed"), default="all")
    args = parser.parse_args(argv)
    doc = generate(
        args.n,
        args.out,
        seed=args.seed,
        as_of=date.fromisoformat(args.as_of),
        files_per_type=args.files_per_type,
        only_needed=args.types == "needed",
    )
    mix: dict[str, int] = {}
    for _, t in doc["patients"]:
        for trial, status in doc["templates"][t]["expected"].items():
            mix[f"{trial} {status}"] = mix.get(f"{trial} {status}", 0) + 1
    size = sum(p.stat().st_size for p in args.out.glob("*.ndjson"))
    print(f"{args.n} patients from {len(doc['templates'])} templates into {args.out} ({size / 1e6:.1f} MB)")
    for label, count in sorted(mix.items()):
        print(f"  {label}: {count}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
