"""Engine benchmark: raw bytes to eligibility report, against ``orjson.loads`` of the same bytes.

For each bundle, in one process:

* ``orjson``: ``orjson.loads(raw)`` alone, the floor any engine pays to read the body;
* ``engine``: ``from_bytes(raw)`` + ``evaluate(catalog, record, as_of=...)``, i.e. parse, index,
  validate what the rules read, and evaluate every trial of the catalog.

The catalog is loaded once, outside the timings. The very first engine run of the process is
reported separately as ``cold`` (it pays UCUM parsing, pydantic model building of fhir.resources,
...); one more warm-up run follows, then ``--repeat`` timed runs of each, with ``gc.collect()``
before every run. Each result is freed after its clock stops. ``--gc-off`` disables the cyclic
GC inside the timed calls, to show how much of each figure is GC passes over the freshly parsed
tree. Prints median and p90 (nearest rank) and the ratio engine/orjson of the medians.

    .venv/bin/python benchmarks/engine_bench.py [--shared DIR] [--repeat N] [--as-of YYYY-MM-DD] [--gc-off]

Exit status: 0 on success (the 2.0 target is reported, not enforced); 2 if the data is absent.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import orjson

from cds_service.engine.evaluate import evaluate
from cds_service.engine.loader import Catalog, load_catalog
from cds_service.record import PatientRecord, from_bytes

REPO = Path(__file__).resolve().parents[1]
TARGET_RATIO = 2.0
DEFAULT_AS_OF = "2026-06-01"


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (p90 of 15 runs is the 14th smallest)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


GC_OFF = False  # --gc-off: no cyclic GC passes inside the timed calls


def timed(action: Callable[[], object]) -> float:
    """Seconds taken by ``action``; its result is freed only after the clock stops."""
    gc.collect()
    if GC_OFF:
        gc.disable()
    try:
        start = time.perf_counter()
        result = action()
        elapsed = time.perf_counter() - start
    finally:
        gc.enable()
    del result
    return elapsed


def bundles(shared: Path) -> list[Path]:
    synthea = shared / "data" / "synthea"
    found = [synthea / "heavy-7138-entries.json", *sorted(synthea.glob("Vito_Feeney_*.json"))]
    missing = [p for p in found if not p.is_file()]
    if not synthea.is_dir() or missing or len(found) < 2:
        wanted = ", ".join(str(p) for p in missing) or f"{synthea}/Vito_Feeney_*.json"
        print(
            f"engine_bench: benchmark data is absent ({wanted}).\n"
            f"It lives in the shared folder beside the repository; pass --shared DIR to point at it.",
            file=sys.stderr,
        )
        sys.exit(2)
    return found


@dataclass(frozen=True)
class Row:
    bundle: str
    size: int
    resources: int
    validated: int
    cold: float
    parse: list[float]
    engine: list[float]

    @property
    def ratio(self) -> float:
        return statistics.median(self.engine) / statistics.median(self.parse)

    def line(self) -> str:
        name = self.bundle if len(self.bundle) <= 28 else self.bundle[:25] + "..."
        return (
            f"{name:<28} {self.size / 1e6:>5.1f} {self.resources:>9} {self.validated:>9} "
            f"{_ms(statistics.median(self.parse)):>8} / {_ms(percentile(self.parse, 90)):>7} "
            f"{_ms(statistics.median(self.engine)):>8} / {_ms(percentile(self.engine, 90)):>7} "
            f"{_ms(self.cold):>8} {self.ratio:>6.2f}"
        )


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


HEADER = (
    f"{'bundle':<28} {'MB':>5} {'resources':>9} {'validated':>9} "
    f"{'orjson med / p90 ms':>18} {'engine med / p90 ms':>18} {'cold ms':>8} {'ratio':>6}"
)


def run(path: Path, catalog: Catalog, repeat: int, as_of: date) -> Row:
    raw = path.read_bytes()

    def engine() -> PatientRecord:
        record = from_bytes(raw)
        evaluate(catalog, record, as_of=as_of)
        return record

    cold = timed(engine)  # the first engine run of this bundle (of the process, for the first one)
    engine()  # warm-up
    orjson.loads(raw)  # warm-up

    parse_times: list[float] = []
    engine_times: list[float] = []
    for _ in range(repeat):  # timed() runs gc.collect() before each measure
        parse_times.append(timed(lambda: orjson.loads(raw)))
        engine_times.append(timed(engine))

    record = engine()
    return Row(
        bundle=path.name,
        size=len(raw),
        resources=sum(len(group) for group in record.by_type.values()),
        validated=len(record._validated),
        cold=cold,
        parse=parse_times,
        engine=engine_times,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared", help="the shared folder")
    parser.add_argument("--repeat", type=int, default=15, help="timed runs per measure (default 15)")
    parser.add_argument("--as-of", default=DEFAULT_AS_OF, help=f"evaluation date (default {DEFAULT_AS_OF})")
    parser.add_argument("--mappings", type=Path, default=None, help="mappings directory (default: packaged)")
    parser.add_argument(
        "--gc-off",
        action="store_true",
        help="disable the cyclic GC inside each timed call (shows what GC passes cost; not the default)",
    )
    args = parser.parse_args(argv)
    global GC_OFF
    GC_OFF = args.gc_off
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    as_of = date.fromisoformat(args.as_of)
    paths = bundles(args.shared)

    catalog = load_catalog(args.mappings)  # once, outside every timing
    print(
        f"python {platform.python_version()} ({platform.machine()}), nproc {os.cpu_count()}; "
        f"trials: {', '.join(catalog.trials)}; as_of {as_of}; {args.repeat} timed runs each"
        f"{'; cyclic GC disabled while timing' if GC_OFF else ''}"
    )
    rows = [run(p, catalog, args.repeat, as_of) for p in paths]
    print(HEADER)
    print("-" * len(HEADER))
    for row in rows:
        print(row.line())
    heavy = rows[0]
    verdict = "meets" if heavy.ratio <= TARGET_RATIO else "MISSES"
    print(f"\nheavy bundle: engine/orjson = {heavy.ratio:.2f}, {verdict} the target ≤ {TARGET_RATIO}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
