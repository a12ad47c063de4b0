"""Hash shards on disk: a population's lines grouped by patient with memory bounded by one shard.

Each read task writes its routed lines into K shard files by a stable hash of the patient id;
Medications (which carry no patient) go to shards by their own id with the orders' references to
them, and a join per medication shard copies each Medication to the shards of the patients whose
orders name it. Evaluating shard k then needs only shard k's files. Line format (tab-separated;
the JSON line last, so tabs inside it do not matter)::

    p-<task>-<k>.tsv   patient \\t file \\t chunk \\t line \\t json      (j-<task>-<k>.tsv: joined)
    m-<task>-<k>.tsv   medication \\t file \\t chunk \\t line \\t json
    r-<task>-<k>.tsv   medication \\t patient \\t file \\t chunk \\t line
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import IO

from .source import Chunk, Event, Origin, SourceFile, Tally, read_chunk, shard_of

MISSING_MEDICATION = "Medication an order refers to is not in the export"


class ShardFiles:
    """Lazily opened shard files of one task (a file only exists once something goes in it)."""

    def __init__(self, work: Path, task: str, shards: int) -> None:
        self.work, self.task, self.shards = work, task, shards
        self._open: dict[tuple[str, int], IO[bytes]] = {}

    def write(self, kind: str, key: str, record: bytes) -> None:
        shard = shard_of(key, self.shards)
        handle = self._open.get((kind, shard))
        if handle is None:
            path = self.work / f"{kind}-{self.task}-{shard:05d}.tsv"
            handle = self._open[(kind, shard)] = open(path, "ab", buffering=1 << 16)  # noqa: SIM115
        handle.write(record)

    def close(self) -> None:
        for handle in self._open.values():
            handle.close()
        self._open.clear()


def _origin_bytes(origin: Origin) -> bytes:
    return b"%d\t%d\t%d" % origin


def write_chunk(
    files: list[SourceFile], chunk: Chunk, needed: frozenset[str], work: Path, shards: int
) -> tuple[Tally, int]:
    """Read one chunk into shard files; returns its tally and the bytes it covered."""
    tally = Tally()
    out = ShardFiles(work, f"{chunk.index:05d}", shards)
    try:
        for event in read_chunk(files, chunk, needed, tally):
            _write_event(out, event)
    finally:
        out.close()
    f = files[chunk.file]
    covered = (f.size if chunk.end < 0 else chunk.end) - chunk.start
    return tally, covered


def _write_event(out: ShardFiles, event: Event) -> None:
    kind, key, a, b = event
    if kind == "P":
        out.write("p", key, b"%s\t%s\t%s\n" % (key.encode(), _origin_bytes(a), b))
    elif kind == "M":
        out.write("m", key, b"%s\t%s\t%s\n" % (key.encode(), _origin_bytes(a), b))
    else:  # "R": key is the medication, a the patient, b the order's origin
        out.write("r", key, b"%s\t%s\t%s\n" % (key.encode(), a.encode(), _origin_bytes(b)))


def _parts(work: Path, kind: str, shard: int) -> list[Path]:
    return sorted(work.glob(f"{kind}-*-{shard:05d}.tsv"))


def has_medications(work: Path) -> bool:
    return any(work.glob("r-*.tsv")) or any(work.glob("m-*.tsv"))


def join_medications(work: Path, shard: int, shards: int) -> Tally:
    """Copy each Medication of this medication shard to the patient shards whose orders name it."""
    tally = Tally()
    medications: dict[str, bytes] = {}
    for path in _parts(work, "m", shard):
        with open(path, "rb") as f:
            for record in f:
                key = record.split(b"\t", 1)[0].decode()
                medications.setdefault(key, record[len(key) + 1 :])  # the first one read wins
    out = ShardFiles(work, f"join{shard:05d}", shards)
    seen: set[tuple[str, str]] = set()
    try:
        for path in _parts(work, "r", shard):
            with open(path, "rb") as f:
                for record in f:
                    mid, pid, file, chunk, line = record.rstrip(b"\n").split(b"\t")
                    pair = (mid.decode(), pid.decode())
                    found = medications.get(pair[0])
                    if found is None:
                        tally.skip(MISSING_MEDICATION, (int(file), int(chunk), int(line)), rtype="Medication")
                    elif pair not in seen:
                        seen.add(pair)
                        out.write("j", pair[1], pid + b"\t" + found)
    finally:
        out.close()
    return tally


def patient_lines(work: Path, shard: int) -> Iterator[tuple[str, list[tuple[Origin, bytes]]]]:
    """Each patient of a shard (sorted by id) with their lines in export order."""
    groups: dict[str, list[tuple[Origin, bytes]]] = {}
    for path in [*_parts(work, "p", shard), *_parts(work, "j", shard)]:
        with open(path, "rb") as f:
            for record in f:
                key, file, chunk, line, raw = record.rstrip(b"\n").split(b"\t", 4)
                groups.setdefault(key.decode(), []).append(((int(file), int(chunk), int(line)), raw))
    for patient in sorted(groups):
        lines = groups.pop(patient)
        lines.sort(key=lambda item: item[0])
        yield patient, lines
