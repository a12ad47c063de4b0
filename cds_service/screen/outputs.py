"""The screen's output files: per-shard parts written where the patients were evaluated, then merged.

``results.csv`` (a header, one row per patient × trial), ``results.parquet`` (the same table, when
pyarrow is installed), ``reports.ndjson`` (each patient's full eligibility report) and the
worklist's candidates. Parts are merged in shard order, so the files are the same whichever engine
wrote them. CSV cells that a spreadsheet would run as a formula are prefixed with ``'``.
"""

from __future__ import annotations

import csv
import io
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from .patient import Outcome

COLUMNS = (
    "patient",
    "trial",
    "status",
    "met",
    "not_met",
    "unknown",
    "manual",
    "rules_out",
    "rules_out_reason",
    "to_review",
    "as_of",
)
INTEGER_COLUMNS = frozenset({"met", "not_met", "unknown", "manual"})
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
PARQUET_HINT = 'results.parquet needs pyarrow: pip install "cds-service[parquet]"'


def parquet_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("pyarrow") is not None


def _cell(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def csv_bytes(rows: Iterable[dict[str, Any]], *, header: bool = False) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if header:
        writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([_cell(row[c]) for c in COLUMNS])
    return buffer.getvalue().encode()


ROW_GROUP = 8192  # Parquet rows buffered before a row group is written: memory per worker stays flat


class PartWriter:
    """One shard's part files, in ``parts/``: rows (CSV and Parquet, in row groups), reports,
    candidates. Everything streams: a shard of many patients × many trials costs no more memory
    than a small one."""

    def __init__(self, parts: Path, shard: int, *, parquet: bool) -> None:
        self.parts, self.shard, self.parquet = parts, shard, parquet
        stem = parts / f"{shard:05d}"
        self._csv = open(f"{stem}.csv", "wb")  # noqa: SIM115
        self._reports = open(f"{stem}.reports.ndjson", "wb")  # noqa: SIM115
        self._cands = open(f"{stem}.cands.ndjson", "wb")  # noqa: SIM115
        self._rows: list[dict[str, Any]] = []
        self._parquet: Any = None  # a pyarrow ParquetWriter, opened with the first row group
        self.patients = 0
        self.counts: dict[str, dict[str, int]] = {}

    def add(self, outcome: Outcome) -> None:
        if outcome.report is None:
            return
        self.patients += 1
        self._reports.write(outcome.report + b"\n")
        self._csv.write(csv_bytes(outcome.rows))
        for row in outcome.rows:
            by_status = self.counts.setdefault(row["trial"], {})
            by_status[row["status"]] = by_status.get(row["status"], 0) + 1
        for item in outcome.candidates:
            self._cands.write(orjson.dumps(item) + b"\n")
        if self.parquet:
            self._rows.extend(outcome.rows)
            if len(self._rows) >= ROW_GROUP:
                self._flush_rows()

    def _flush_rows(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._parquet is None:
            self._parquet = pq.ParquetWriter(self.parts / f"{self.shard:05d}.parquet", parquet_schema())
        self._parquet.write_table(pa.Table.from_pylist(self._rows, schema=parquet_schema()))
        self._rows.clear()

    def close(self) -> None:
        for handle in (self._csv, self._reports, self._cands):
            handle.close()
        if self.parquet:
            if self._rows or self._parquet is None:
                self._flush_rows()  # the last rows (or an empty part, so every shard has one)
            self._parquet.close()


def parquet_schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [(c, pa.int32() if c in INTEGER_COLUMNS else pa.string()) for c in COLUMNS],
    )


def merge(parts: Path, out: Path, shards: Iterable[int], *, parquet: bool) -> None:
    """results.csv, results.parquet and reports.ndjson from the parts, in shard order."""
    order = [s for s in shards if (parts / f"{s:05d}.csv").exists()]
    with open(out / "results.csv", "wb") as f:
        f.write(csv_bytes((), header=True))
        for s in order:
            with open(parts / f"{s:05d}.csv", "rb") as part:
                shutil.copyfileobj(part, f, 1 << 20)
    with open(out / "reports.ndjson", "wb") as f:
        for s in order:
            with open(parts / f"{s:05d}.reports.ndjson", "rb") as part:
                shutil.copyfileobj(part, f, 1 << 20)
    if parquet:
        import pyarrow.parquet as pq

        with pq.ParquetWriter(out / "results.parquet", parquet_schema()) as writer:
            for s in order:
                writer.write_table(pq.read_table(parts / f"{s:05d}.parquet"))


def candidates(parts: Path, shards: Iterable[int]) -> Iterable[dict[str, Any]]:
    for s in shards:
        path = parts / f"{s:05d}.cands.ndjson"
        if path.exists():
            with open(path, "rb") as f:
                for line in f:
                    yield orjson.loads(line)
