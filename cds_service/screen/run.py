"""A screen run end to end: plan, engine, merged outputs, worklist and summary.

The engines only evaluate; everything a user reads (the files, the end-of-run report of what was
skipped, with file and line) is produced here the same way for both.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, TextIO

import orjson

from cds_service.engine.loader import Catalog, load_catalog
from cds_service.errors import InvalidInput

from . import outputs
from .needs import needed_types
from .patient import CANDIDATE_STATUSES
from .plan import DEFAULT_SHARD_BYTES, EngineResult, Plan, make_plan
from .progress import Progress
from .source import NOT_NEEDED, UNKNOWN_FILE, SourceFile, Tally, scan
from .worklist import write_worklist

SHOWN_PER_REASON = 3


@dataclass
class ScreenOptions:
    source: Path
    out: Path
    as_of: date
    trial_ids: tuple[str, ...] | None = None
    zone: str = "UTC"  # CDS_SITE_TIMEZONE: the same calendar as the hook and the app
    engine: str = "local"
    workers: int = 1
    mappings: Path | None = None
    shard_bytes: int = DEFAULT_SHARD_BYTES
    keep_work: bool = False
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    tty: bool | None = None
    progress_interval: float = 10.0
    extra_summary: dict[str, Any] = field(default_factory=dict)
    require_files: bool = False  # a SOURCE the user named must hold NDJSON (an export may be empty)


def run_screen(options: ScreenOptions) -> dict[str, Any]:
    """Screen SOURCE into OUT; returns the summary (also written to summary.json)."""
    started = time.monotonic()
    catalog = load_catalog(options.mappings)
    for trial in options.trial_ids or ():
        catalog.trial(trial)  # an unknown trial is a MappingError naming the known ones
    if options.out.resolve() == options.source.resolve():
        raise InvalidInput(f"{options.out}: --out must be another directory than SOURCE")
    files, unknown = scan(options.source, exclude=options.out)
    if options.require_files and not files:
        raise InvalidInput(f"{options.source}: no *.ndjson or *.ndjson.gz files (not Bulk Data output)")
    options.out.mkdir(parents=True, exist_ok=True)
    work = options.out / ".screen-work"
    shutil.rmtree(work, ignore_errors=True)
    parquet = outputs.parquet_available()
    if not parquet:
        print(f"cds-service screen: {outputs.PARQUET_HINT}; writing the other files", file=options.stream)
    plan = make_plan(
        files,
        needed=needed_types(catalog),
        work=work,
        mappings=catalog.root,
        as_of=options.as_of,
        trial_ids=options.trial_ids,
        zone=options.zone,
        parquet=parquet,
        workers=options.workers,
        shard_bytes=options.shard_bytes,
    )

    def progress(label: str, total: int, unit: str) -> Progress:
        return Progress(
            label, total, unit, stream=options.stream, tty=options.tty, interval=options.progress_interval
        )

    try:
        result = _run_engine(options, plan, progress)
        outputs.merge(plan.parts, options.out, result.shards_written, parquet=parquet)
        _worklist(options, catalog, plan, result)
        summary = _summary(options, catalog, plan, result, unknown, parquet, time.monotonic() - started)
    finally:
        if not options.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    (options.out / "summary.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2) + b"\n")
    print_report(summary, options.stream)
    return summary


def _run_engine(
    options: ScreenOptions, plan: Plan, progress: Callable[[str, int, str], Progress]
) -> EngineResult:
    if options.engine == "spark":
        from .spark import run_spark

        return run_spark(plan, workers=options.workers, progress=progress)
    from .local import run_local

    return run_local(plan, workers=options.workers, progress=progress)


def _worklist(options: ScreenOptions, catalog: Catalog, plan: Plan, result: EngineResult) -> None:
    """Bucket the candidates per trial and status on disk, then stream them into the page."""
    buckets = plan.parts / "worklist"
    buckets.mkdir(parents=True, exist_ok=True)
    handles: dict[tuple[str, str], Any] = {}
    try:
        for item in outputs.candidates(plan.parts, result.shards_written):
            key = (str(item["trial"]), str(item["status"]))
            if key not in handles:
                handles[key] = open(buckets / f"{len(handles)}.ndjson", "wb")  # noqa: SIM115
            handles[key].write(orjson.dumps(item) + b"\n")
    finally:
        for handle in handles.values():
            handle.close()
    names = {key: buckets / f"{i}.ndjson" for i, key in enumerate(handles)}

    def candidates(trial: str, status: str) -> Iterator[dict[str, Any]]:
        path = names.get((trial, status))
        if path is not None:
            with open(path, "rb") as f:
                for line in f:
                    yield orjson.loads(line)

    chosen = options.trial_ids or tuple(catalog.trials)
    write_worklist(
        options.out / "worklist.html",
        as_of=options.as_of.isoformat(),
        trials=[(t, catalog.trial(t).title) for t in chosen],
        counts=result.counts,
        patients=result.patients,
        candidates=candidates,
    )


def _line_numbers(files: list[SourceFile], plan: Plan, tally: Tally) -> dict[int, int]:
    """Lines before each chunk in its file, so a chunk's line k is the file's line offset + k."""
    offsets: dict[int, int] = {}
    running: dict[int, int] = {}
    for chunk in plan.chunks:
        offsets[chunk.index] = running.get(chunk.file, 0)
        running[chunk.file] = offsets[chunk.index] + tally.lines.get(chunk.index, 0)
    return offsets


def _summary(
    options: ScreenOptions,
    catalog: Catalog,
    plan: Plan,
    result: EngineResult,
    unknown: list[str],
    parquet: bool,
    seconds: float,
) -> dict[str, Any]:
    tally = result.tally
    offsets = _line_numbers(plan.files, plan, tally)
    skipped: list[dict[str, Any]] = []
    for (reason, rtype), count in sorted(tally.skipped.items(), key=lambda kv: (-kv[1], kv[0])):
        entry: dict[str, Any] = {"reason": reason}
        if rtype:
            entry["resourceType"] = rtype
        entry["count"] = count
        entry["examples"] = [
            {"file": plan.files[f].path, "line": offsets[c] + n, **({"detail": d} if d else {})}
            for (f, c, n), d in tally.examples.get((reason, rtype), [])
        ]
        skipped.append(entry)
    if unknown:
        skipped.append(
            {"reason": UNKNOWN_FILE, "count": len(unknown), "examples": [{"file": u} for u in unknown]}
        )
    chosen = options.trial_ids or tuple(catalog.trials)
    trials = {
        t: {"title": catalog.trial(t).title, **{s: result.counts.get(t, {}).get(s, 0) for s in _STATUSES}}
        for t in chosen
    }
    return {
        "as_of": options.as_of.isoformat(),
        "source": str(options.source),
        "engine": options.engine,
        "workers": options.workers,
        "shards": plan.shards,
        "trials": trials,
        "patients": result.patients,
        "files": len(plan.files),
        "lines": sum(tally.lines.values()),
        "resources": {
            "read": sum(tally.resources.values()),
            "by_type": dict(sorted(tally.resources.items())),
        },
        "skipped": skipped,
        "outputs": {
            "results.csv": True,
            "results.parquet": parquet or outputs.PARQUET_HINT,
            "reports.ndjson": True,
            "worklist.html": True,
        },
        "seconds": round(seconds, 2),
        **options.extra_summary,
    }


_STATUSES = (*CANDIDATE_STATUSES, "not-eligible")


def print_report(summary: dict[str, Any], stream: TextIO) -> None:
    """The end of a run: counts per trial, then every skip reason with a few of its lines."""
    print(
        f"screened {summary['patients']:,} patients ({summary['resources']['read']:,} resources from "
        f"{summary['files']} files) as of {summary['as_of']} in {summary['seconds']:.1f} s",
        file=stream,
    )
    for trial, counts in summary["trials"].items():
        parts = ", ".join(f"{counts[s]:,} {s}" for s in _STATUSES)
        print(f"  {trial}: {parts}", file=stream)
    not_needed = [e for e in summary["skipped"] if e["reason"] == NOT_NEEDED]
    for entry in summary["skipped"]:
        if entry["reason"] == NOT_NEEDED:
            continue
        what = f" ({entry['resourceType']})" if entry.get("resourceType") else ""
        print(f"skipped {entry['count']:,}: {entry['reason']}{what}", file=stream)
        for example in entry["examples"][:SHOWN_PER_REASON]:
            where = f"{example['file']}:{example['line']}" if "line" in example else example["file"]
            detail = f": {example['detail']}" if example.get("detail") else ""
            print(f"    {where}{detail}", file=stream)
        if entry["count"] > SHOWN_PER_REASON:
            print(
                f"    … {entry['count'] - SHOWN_PER_REASON:,} more (summary.json lists the first)",
                file=stream,
            )
    if not_needed:
        types = ", ".join(f"{e['resourceType']} {e['count']:,}" for e in not_needed)
        print(f"skipped, {NOT_NEEDED}: {types} (files and lines in summary.json)", file=stream)
