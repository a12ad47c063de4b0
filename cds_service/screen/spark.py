"""The Spark engine (``--engine spark``, ``pip install "cds-service[spark]"``): the same per-patient
evaluation as the local engine, for sites whose populations outgrow one machine.

The same chunk reader runs in Spark tasks (so SOURCE must be a path every executor can read: a
shared or mounted file system such as ``/dbfs/...``); Medications are joined to their patients with
a ``leftOuterJoin``; lines are grouped per patient with ``groupByKey`` into the same K hash shards
the local engine uses (the same stable hash), each shard sorted by patient id, and evaluated by
the same function with the mappings broadcast. The driver writes the output parts shard by shard,
so both engines write identical files. Local mode (``local[N]``) unless ``spark.master`` is set
(``spark-submit --master ...``); Spark binds to loopback in local mode and its UI is off.
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from cds_service.engine.loader import Catalog, load_catalog
from cds_service.errors import InvalidInput

from .local import evaluate_groups, merge_counts, write_shard
from .patient import Outcome
from .plan import EngineResult, Plan
from .progress import Progress
from .shards import MISSING_MEDICATION
from .source import EXAMPLES_PER_REASON, Tally, read_chunk, shard_of

# Spark's default (1g) runs out of heap in local mode on 10,000 patients × 11 trials: a shard's
# reports (~70 kB a patient) are pickled in the JVM on their way to the driver. Set
# spark.driver.memory (spark-defaults.conf, --conf) to change it.
LOCAL_DRIVER_MEMORY = "4g"
SPARK_HINT = 'the Spark engine needs pyspark and Java 17: pip install "cds-service[spark]"'


def spark_session(workers: int) -> tuple[Any, bool]:
    """The active SparkSession, or a new one (local[workers] unless a master is configured)."""
    try:
        from pyspark import SparkConf
        from pyspark.sql import SparkSession
    except ImportError:
        raise InvalidInput(SPARK_HINT) from None
    active = SparkSession.getActiveSession()
    if active is not None:
        return active, False
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    logging.getLogger("py4j").setLevel(logging.WARNING)  # its DEBUG lines echo every command sent
    conf = SparkConf().setAppName("cds-service screen")
    if not conf.contains("spark.master"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # local mode stays on loopback
        conf.setMaster(f"local[{workers}]")
        conf.set("spark.driver.host", "127.0.0.1").set("spark.driver.bindAddress", "127.0.0.1")
        conf.set("spark.ui.enabled", "false").set("spark.locality.wait", "0")
        if not conf.contains("spark.driver.memory"):  # local mode: the driver is the executor too
            conf.set("spark.driver.memory", LOCAL_DRIVER_MEMORY)
    conf.set("spark.ui.showConsoleProgress", "false")
    try:
        session = SparkSession.builder.config(conf=conf).getOrCreate()
    except Exception as exc:  # no Java, a JVM that would not start: one line, not a trace
        raise InvalidInput(f"Spark did not start ({type(exc).__name__}); {SPARK_HINT}") from None
    session.sparkContext.setLogLevel("ERROR")
    return session, True


def _events(plan: Plan, index: int) -> Iterator[tuple[str, Any, Any]]:
    """One chunk's events as Spark records, then its tally (``("S", None, tally)``)."""
    tally = Tally()
    for kind, key, a, b in read_chunk(plan.files, plan.chunks[index], plan.needed, tally):
        yield (kind, key, (a, b))
    yield ("S", None, tally)


def _first(a: Any, b: Any) -> Any:
    return a if a[0] <= b[0] else b


def _evaluate_partition(
    catalog: Any, plan: Plan, shard: int, groups: Iterable[tuple[str, Iterable[Any]]]
) -> Iterator[tuple[int, Outcome]]:
    ordered = sorted(((pid, sorted(lines)) for pid, lines in groups), key=lambda g: g[0])
    value: Catalog = catalog.value
    for outcome in evaluate_groups(value, plan, ordered):
        yield shard, outcome


def run_spark(plan: Plan, *, workers: int, progress: Callable[[str, int, str], Progress]) -> EngineResult:
    session, owned = spark_session(workers)
    try:
        return _run(session.sparkContext, plan, progress)
    finally:
        if owned:
            session.stop()


def _run(sc: Any, plan: Plan, progress: Callable[[str, int, str], Progress]) -> EngineResult:
    from pyspark import StorageLevel

    plan.parts.mkdir(parents=True, exist_ok=True)
    catalog = sc.broadcast(load_catalog(plan.mappings))
    shards = plan.shards
    bar = progress("reading", sum(f.size for f in plan.files), "B")
    chunks = len(plan.chunks)
    # Each Python task costs a fixed ~0.1-0.3 s in local mode: one read partition per core.
    slices = max(1, min(chunks, sc.defaultParallelism))
    events = sc.parallelize(range(chunks), slices).flatMap(lambda i: _events(plan, i))
    events.persist(StorageLevel.MEMORY_AND_DISK)
    tally = Tally()
    for chunk_tally in events.filter(lambda e: e[0] == "S").map(lambda e: e[2]).collect():
        tally.merge(chunk_tally)
    bar.finish()
    by_patient = events.filter(lambda e: e[0] == "P").map(lambda e: (e[1], e[2]))
    if tally.medication_references:
        found = _join_medications(events, tally, max(1, sc.defaultParallelism))
        lines = by_patient.union(found)
    else:
        lines = by_patient
    outcomes = (
        lines.groupByKey(numPartitions=shards, partitionFunc=lambda pid: shard_of(pid, shards))
        .mapPartitionsWithIndex(lambda shard, groups: _evaluate_partition(catalog, plan, shard, groups))
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    outcomes.count()  # every shard evaluated in parallel; then streamed to the driver in order
    events.unpersist()
    bar = progress("screening", tally.resources.get("Patient", 0), "patients")
    return _write(plan, outcomes.toLocalIterator(prefetchPartitions=False), bar, tally)


def _join_medications(events: Any, tally: Tally, partitions: int) -> Any:
    """(patient, Medication line) for each order's Medication; the ones not in the export tallied."""
    from pyspark import StorageLevel

    medications = (
        events.filter(lambda e: e[0] == "M").map(lambda e: (e[1], e[2])).reduceByKey(_first, partitions)
    )
    references = events.filter(lambda e: e[0] == "R").map(lambda e: (e[1], e[2]))  # (mid, (pid, origin))
    joined = references.leftOuterJoin(medications, partitions).persist(StorageLevel.MEMORY_AND_DISK)
    missing = joined.filter(lambda kv: kv[1][1] is None).map(lambda kv: kv[1][0][1])
    missing_count = missing.count()
    if missing_count:
        key = (MISSING_MEDICATION, "Medication")
        tally.skipped[key] = missing_count
        tally.examples[key] = [(o, "") for o in missing.takeOrdered(EXAMPLES_PER_REASON)]
    return (
        joined.filter(lambda kv: kv[1][1] is not None)
        .map(lambda kv: ((kv[1][0][0], kv[0]), kv[1][1]))
        .reduceByKey(_first, partitions)
        .map(lambda kv: (kv[0][0], kv[1]))
    )


def _write(plan: Plan, stream: Iterator[tuple[int, Outcome]], bar: Progress, tally: Tally) -> EngineResult:
    """Write the outcomes shard by shard with the local engine's writer, as they arrive (the stream
    is in shard order): the driver holds one outcome at a time, not a shard's reports."""
    counts: dict[str, dict[str, int]] = {}
    patients = 0
    done = [0]

    def tick() -> None:
        done[0] += 1
        bar.update(done[0])

    written: list[int] = []
    for shard, group in itertools.groupby(stream, key=lambda item: item[0]):
        shard_tally, shard_counts, n = write_shard(plan, shard, (outcome for _, outcome in group), tick)
        tally.merge(shard_tally)
        merge_counts(counts, shard_counts)
        patients += n
        written.append(shard)
    bar.finish()
    return EngineResult(tally=tally, counts=counts, patients=patients, shards_written=written)
