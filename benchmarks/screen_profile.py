"""Where one patient's screening time goes: ``screen_patient`` timed and profiled, beside the parse floor.

Reads a Bulk-style export (``benchmarks/make_population.py``), groups each patient's lines of the types
some trial needs by their ``subject``/``patient`` reference (Medications, which name no patient, are
left out), then, for the
first ``--patients`` patients in id order: the parse floor (``orjson.loads`` of their lines, CPU
time), ``screen_patient`` against every packaged trial (CPU time per patient, the report's size),
and a cProfile of the same calls sorted by ``--sort``.

    .venv/bin/python benchmarks/make_population.py 1000 --out /tmp/pop1k --as-of 2026-06-01
    .venv/bin/python benchmarks/screen_profile.py /tmp/pop1k --patients 300
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from collections import defaultdict
from datetime import date
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cds_service.engine.loader import load_catalog  # noqa: E402
from cds_service.screen.needs import needed_types  # noqa: E402
from cds_service.screen.patient import screen_patient  # noqa: E402
from cds_service.screen.source import Origin  # noqa: E402

Lines = list[tuple[Origin, bytes]]


def patients_lines(export: Path, needed: frozenset[str]) -> dict[str, Lines]:
    """Each patient's lines of the types some trial needs (the screen skips the others)."""
    groups: dict[str, Lines] = defaultdict(list)
    for index, path in enumerate(sorted(export.glob("*.ndjson"))):
        for number, line in enumerate(path.open("rb"), start=1):
            resource = orjson.loads(line)
            if resource.get("resourceType") not in needed:
                continue
            if resource.get("resourceType") == "Patient":
                patient = resource.get("id")
            else:
                ref = (resource.get("subject") or resource.get("patient") or {}).get("reference")
                patient = ref.rsplit("/", 1)[-1] if isinstance(ref, str) else None
            if isinstance(patient, str):
                groups[patient].append(((index, 0, number), line))
    return groups


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("export", type=Path)
    parser.add_argument("--patients", type=int, default=300)
    parser.add_argument("--as-of", default="2026-06-01")
    parser.add_argument("--sort", default="tottime")
    args = parser.parse_args(argv)
    catalog = load_catalog()
    groups = patients_lines(args.export, needed_types(catalog))
    chosen = sorted(groups)[: args.patients]
    as_of = date.fromisoformat(args.as_of)
    started = time.process_time()
    for patient in chosen:
        for _, line in groups[patient]:
            orjson.loads(line)
    floor = (time.process_time() - started) / len(chosen)
    for patient in chosen[:20]:  # warm caches (unit parsing, code indexes)
        screen_patient(catalog, patient, groups[patient], as_of=as_of, trial_ids=None)
    started, size = time.process_time(), 0
    for patient in chosen:
        outcome = screen_patient(catalog, patient, groups[patient], as_of=as_of, trial_ids=None)
        size += len(outcome.report or b"")
    each = (time.process_time() - started) / len(chosen)
    lines = sum(len(groups[p]) for p in chosen) / len(chosen)
    print(
        f"{len(chosen)} patients, {lines:.0f} lines each, {len(catalog.trials)} trials: "
        f"screen_patient {each * 1000:.2f} ms CPU, parse floor {floor * 1000:.3f} ms "
        f"({each / floor:.0f}×), report {size / len(chosen) / 1000:.1f} kB"
    )
    profile = cProfile.Profile()
    profile.enable()
    for patient in chosen:
        screen_patient(catalog, patient, groups[patient], as_of=as_of, trial_ids=None)
    profile.disable()
    pstats.Stats(profile).sort_stats(args.sort).print_stats(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
