"""The default engine: hash shards on disk, evaluated by a pool of worker processes.

Three phases, each a set of independent tasks: read (a chunk of the export into shard files),
join (Medications to the patients whose orders name them; only when the export has any), evaluate
(one shard: group its lines by patient, evaluate each, write the output parts). Memory is bounded
by one shard per worker, not by the population. Progress comes from counters the workers share.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.sharedctypes
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

from cds_service.engine.loader import Catalog, load_catalog

from .outputs import PartWriter
from .patient import Outcome, screen_patient
from .plan import EngineResult, Plan
from .progress import Progress
from .shards import has_medications, join_medications, patient_lines, write_chunk
from .source import Tally

_catalog: Catalog | None = None
_done: Any = None  # a shared counter of patients evaluated


def _init(plan: Plan, counter: Any) -> None:
    global _catalog, _done
    if _catalog is None or _catalog.root != plan.mappings:
        _catalog = load_catalog(plan.mappings)
    _done = counter


def _read(plan: Plan, index: int) -> tuple[Tally, int]:
    return write_chunk(plan.files, plan.chunks[index], plan.needed, plan.work, plan.shards)


def _join(plan: Plan, shard: int) -> Tally:
    return join_medications(plan.work, shard, plan.shards)


def evaluate_groups(catalog: Catalog, plan: Plan, groups: Iterable[tuple[str, Any]]) -> Iterator[Outcome]:
    """Each patient group of a shard, evaluated (both engines run this on their workers)."""
    for pid, lines in groups:
        yield screen_patient(catalog, pid, lines, as_of=plan.as_of, trial_ids=plan.trial_ids, zone=plan.zone)


def write_shard(
    plan: Plan, shard: int, outcomes: Iterable[Outcome], tick: Callable[[], None]
) -> tuple[Tally, dict[str, dict[str, int]], int]:
    """A shard's outcomes into its output parts; patients that could not be evaluated are tallied."""
    tally = Tally()
    writer = PartWriter(plan.parts, shard, parquet=plan.parquet)
    try:
        for outcome in outcomes:
            if outcome.error is not None and outcome.error_origin is not None:
                tally.skip(outcome.error_reason, outcome.error_origin, detail=outcome.error)
            writer.add(outcome)
            tick()
    finally:
        writer.close()
    return tally, writer.counts, writer.patients


def _evaluate(plan: Plan, shard: int) -> tuple[Tally, dict[str, dict[str, int]], int]:
    assert _catalog is not None

    def tick() -> None:
        with _done.get_lock():
            _done.value += 1

    return write_shard(plan, shard, evaluate_groups(_catalog, plan, patient_lines(plan.work, shard)), tick)


def run_local(plan: Plan, *, workers: int, progress: Callable[[str, int, str], Progress]) -> EngineResult:
    """Run the three phases in a pool of ``workers`` processes."""
    global _catalog
    plan.work.mkdir(parents=True, exist_ok=True)
    plan.parts.mkdir(parents=True, exist_ok=True)
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    counter = context.Value("q", 0)
    if context.get_start_method() == "fork":
        _catalog = load_catalog(plan.mappings)  # loaded once, inherited by every worker
    tally = Tally()
    counts: dict[str, dict[str, int]] = {}
    patients = 0
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_init, initargs=(plan, counter)
    ) as pool:
        total_bytes = sum(f.size for f in plan.files)
        bar = progress("reading", total_bytes, "B")
        covered = [0]
        for chunk_tally, chunk_bytes in _drain(
            pool, _read, plan, range(len(plan.chunks)), bar, lambda: covered[0]
        ):
            tally.merge(chunk_tally)
            covered[0] += chunk_bytes
        bar.finish()
        if has_medications(plan.work):
            for result in _drain(pool, _join, plan, range(plan.shards), None, lambda: 0):
                tally.merge(result)
        bar = progress("screening", tally.resources.get("Patient", 0), "patients")
        for shard_tally, shard_counts, shard_patients in _drain(
            pool, _evaluate, plan, range(plan.shards), bar, lambda: counter.value
        ):
            tally.merge(shard_tally)
            merge_counts(counts, shard_counts)
            patients += shard_patients
        bar.finish()
    return EngineResult(
        tally=tally, counts=counts, patients=patients, shards_written=list(range(plan.shards))
    )


def _drain(
    pool: ProcessPoolExecutor,
    task: Callable[[Plan, int], Any],
    plan: Plan,
    items: Iterable[int],
    bar: Progress | None,
    done: Callable[[], int],
) -> Iterable[Any]:
    """Submit every item, yield results as they come (a worker's error is raised here)."""
    pending: set[Future[Any]] = {pool.submit(task, plan, item) for item in items}
    while pending:
        finished, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
        for future in finished:
            yield future.result()
        if bar is not None:
            bar.update(done())
        if not finished:
            time.sleep(0)


def merge_counts(into: dict[str, dict[str, int]], other: dict[str, dict[str, int]]) -> None:
    for trial, by_status in other.items():
        mine = into.setdefault(trial, {})
        for status, n in by_status.items():
            mine[status] = mine.get(status, 0) + n
