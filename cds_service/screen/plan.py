"""What one screen run works on: the export's files and chunks, the shards, the trials and the date.

A ``Plan`` is small and picklable: it is what each worker process (or Spark executor) is handed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from .source import Chunk, SourceFile, Tally, plan

MIB = 1 << 20
DEFAULT_SHARD_BYTES = 32 * MIB
MIN_SHARDS = 8
MIN_CHUNK, MAX_CHUNK = 4 * MIB, 256 * MIB


@dataclass(frozen=True)
class Plan:
    files: list[SourceFile]
    chunks: list[Chunk]
    needed: frozenset[str]
    shards: int
    work: Path  # shard files (local engine)
    parts: Path  # output parts
    mappings: Path
    as_of: date
    trial_ids: tuple[str, ...] | None
    parquet: bool
    zone: str = "UTC"  # the site's time zone: observation instants are placed on its calendar


def make_plan(
    files: list[SourceFile],
    *,
    needed: frozenset[str],
    work: Path,
    mappings: Path,
    as_of: date,
    trial_ids: tuple[str, ...] | None,
    parquet: bool,
    workers: int,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    zone: str = "UTC",
) -> Plan:
    """Chunks sized so each worker gets several; shards sized so one fits in a worker's memory."""
    total = sum(f.estimated_bytes for f in files)
    chunk = min(max(total // max(workers * 8, 1), MIN_CHUNK), MAX_CHUNK)
    shards = max(MIN_SHARDS, math.ceil(total / shard_bytes))  # not by workers: same files either way
    return Plan(
        files=files,
        chunks=plan(files, chunk_bytes=chunk),
        needed=needed,
        shards=shards,
        work=work / "shards",
        parts=work / "parts",
        mappings=mappings,
        as_of=as_of,
        trial_ids=trial_ids,
        zone=zone,
        parquet=parquet,
    )


@dataclass
class EngineResult:
    """What an engine hands back: the tally (skips, resources, lines) and per-trial status counts."""

    tally: Tally
    counts: dict[str, dict[str, int]]
    patients: int
    shards_written: list[int]
