"""Reading a Bulk Data export: files, chunks, and the routing of each NDJSON line to its patient.

An export is a directory of ``*.ndjson`` / ``*.ndjson.gz`` files, several per type allowed (the
type of a line is its ``resourceType``, never the file name). Plain files are split into byte-range
chunks so that reading runs in parallel; a gzip file is one chunk. Each line goes to a patient by
its ``subject`` / ``patient`` reference in any of its forms (``Patient/<id>``, an absolute URL,
``urn:uuid:<id>``: NDJSON has no fullUrl, so that names the Patient whose id is the uuid); a
Medication goes by its own id (patients reach it through their orders). Whatever cannot be used is
a ``Skip`` with the file and line, never silently dropped. Both engines use this module unchanged.
"""

from __future__ import annotations

import gzip
import os
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from cds_service.errors import InvalidInput

SUFFIXES = (".ndjson", ".ndjson.gz")
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
MEDICATION_ORDERS = ("MedicationRequest", "MedicationStatement")
_SUBJECT_FIELDS = ("subject", "patient")
_PEEK = b'{"resourceType":"'
EXAMPLES_PER_REASON = 20

# Why a line was not used (the summary's reasons).
MALFORMED = "malformed NDJSON line"
NOT_RESOURCE = "not a FHIR resource (no resourceType)"
NOT_NEEDED = "resource type no loaded trial needs"
NO_PATIENT = "resource with no patient reference"
BAD_ID = "resource without a valid id"
SERVER_ERROR = "OperationOutcome in the export"
UNREADABLE = "the rest of the file cannot be read"
UNKNOWN_FILE = "unknown file (not *.ndjson or *.ndjson.gz)"

Origin = tuple[int, int, int]  # (file index, chunk index, line within the chunk, 1-based)


@dataclass(frozen=True)
class SourceFile:
    index: int
    path: str
    gz: bool
    size: int

    @property
    def estimated_bytes(self) -> int:
        """Uncompressed size: a gzip file's trailer holds it (mod 4 GiB); else at least 3x."""
        if not self.gz:
            return self.size
        try:
            with open(self.path, "rb") as f:
                f.seek(-4, os.SEEK_END)
                isize = int.from_bytes(f.read(4), "little")
        except OSError:
            isize = 0
        return max(isize, self.size * 3)


@dataclass(frozen=True)
class Chunk:
    index: int
    file: int
    start: int
    end: int  # -1: to the end (gzip)


@dataclass
class Tally:
    """Counts and a few located examples per reason; merged across chunks and shards."""

    skipped: dict[tuple[str, str], int] = field(default_factory=dict)
    examples: dict[tuple[str, str], list[tuple[Origin, str]]] = field(default_factory=dict)
    resources: dict[str, int] = field(default_factory=dict)
    lines: dict[int, int] = field(default_factory=dict)  # chunk index -> lines in it
    medication_references: int = 0  # orders that name a Medication outside themselves

    def skip(self, reason: str, origin: Origin, *, rtype: str = "", detail: str = "") -> None:
        key = (reason, rtype)
        self.skipped[key] = self.skipped.get(key, 0) + 1
        examples = self.examples.setdefault(key, [])
        if len(examples) < EXAMPLES_PER_REASON:
            examples.append((origin, detail))

    def merge(self, other: Tally) -> None:
        for key, count in other.skipped.items():
            self.skipped[key] = self.skipped.get(key, 0) + count
        for key, examples in other.examples.items():
            mine = self.examples.setdefault(key, [])
            mine.extend(examples)
            mine.sort()
            del mine[EXAMPLES_PER_REASON:]
        for rtype, count in other.resources.items():
            self.resources[rtype] = self.resources.get(rtype, 0) + count
        self.lines.update(other.lines)
        self.medication_references += other.medication_references


def scan(root: Path, *, exclude: Path | None = None) -> tuple[list[SourceFile], list[str]]:
    """The export's NDJSON files (sorted by name) and the names of other files found there.

    ``exclude`` (the output directory, when it sits inside SOURCE) is not read. An unreadable or
    missing SOURCE is InvalidInput naming it (the CLI exits 2).
    """
    skip = exclude.resolve() if exclude is not None else None
    if skip is not None and not skip.is_relative_to(root.resolve()):
        skip = None  # SOURCE inside OUT (--export downloads to OUT/export/files): read it all
    try:
        names = sorted(
            p for p in root.rglob("*") if p.is_file() and not (skip and p.resolve().is_relative_to(skip))
        )
    except OSError as exc:
        raise InvalidInput(f"{root}: cannot be read: {exc.strerror or exc}") from None
    if not root.is_dir():
        raise InvalidInput(f"{root}: not a directory of Bulk Data output")
    files: list[SourceFile] = []
    unknown: list[str] = []
    for path in names:
        if path.name.endswith(SUFFIXES):
            try:
                with open(path, "rb"):
                    pass
                size = path.stat().st_size
            except OSError as exc:
                raise InvalidInput(f"{path}: cannot be read: {exc.strerror or exc}") from None
            files.append(SourceFile(len(files), str(path), path.name.endswith(".gz"), size))
        else:
            unknown.append(str(path))
    return files, unknown


def plan(files: list[SourceFile], *, chunk_bytes: int) -> list[Chunk]:
    """Byte-range chunks of the plain files, one chunk per gzip file."""
    chunks: list[Chunk] = []
    for f in files:
        if f.gz:
            chunks.append(Chunk(len(chunks), f.index, 0, -1))
            continue
        start = 0
        while True:
            end = start + chunk_bytes
            last = end >= f.size
            chunks.append(Chunk(len(chunks), f.index, start, -1 if last else end))
            if last:
                break
            start = end
    return chunks


def shard_of(key: str, shards: int) -> int:
    """A stable shard for a patient or medication id (crc32: the same in every process)."""
    return zlib.crc32(key.encode()) % shards


def _lines(f: SourceFile, chunk: Chunk) -> Iterator[bytes]:
    if f.gz:
        with gzip.open(f.path, "rb") as stream:
            yield from stream
        return
    with open(f.path, "rb") as stream:
        pos = chunk.start
        if pos > 0:
            stream.seek(pos - 1)
            pos += len(stream.readline()) - 1  # to the start of the first line that begins here
        for line in stream:
            if chunk.end >= 0 and pos >= chunk.end:
                return
            pos += len(line)
            yield line


def patient_id(reference: object) -> str | None:
    """The Patient id a reference names, in any of its forms; None when it names no patient."""
    return _target_id(reference, "Patient")


def medication_id(reference: object) -> str | None:
    """The id of a Medication an order refers to outside itself (not ``#contained``)."""
    return _target_id(reference, "Medication")


def _target_id(reference: object, resource_type: str) -> str | None:
    """The id of the ``resource_type`` a Reference names: ``Type/id``, an absolute or versioned
    URL ending so, or ``urn:uuid:<id>``; None for anything else (a contained ``#id`` included)."""
    ref = reference.get("reference") if isinstance(reference, dict) else None
    if not isinstance(ref, str) or ref.startswith("#"):
        return None
    if ref.startswith("urn:uuid:"):
        tail = ref[9:]
        return tail if FHIR_ID.fullmatch(tail) else None
    parts = ref.split("?", 1)[0].split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) >= 2 and parts[-2] == resource_type and FHIR_ID.fullmatch(parts[-1]):
        return parts[-1]
    return None


# What read_chunk yields: ("P", patient id, origin, line) a patient's line; ("M", medication id,
# origin, line) a Medication; ("R", medication id, patient id, origin) an order's reference to one.
Event = tuple[str, str, Any, Any]


def read_chunk(
    files: list[SourceFile], chunk: Chunk, needed: frozenset[str], tally: Tally
) -> Iterator[Event]:
    """Route every line of one chunk; what is not used is counted in ``tally`` with its line."""
    f = files[chunk.file]
    number = 0
    try:
        for raw in _lines(f, chunk):
            number += 1
            line = raw.strip()
            if not line:
                continue
            origin = (chunk.file, chunk.index, number)
            if line.startswith(_PEEK):
                end = line.find(b'"', len(_PEEK))
                peeked = line[len(_PEEK) : end].decode("ascii", "replace") if end > 0 else ""
                if peeked and peeked not in needed and peeked != "OperationOutcome":
                    tally.skip(NOT_NEEDED, origin, rtype=peeked)
                    continue
            yield from _route(line, origin, needed, tally)
    except (OSError, EOFError, zlib.error) as exc:
        number += 1
        tally.skip(UNREADABLE, (chunk.file, chunk.index, number), detail=clean_text(str(exc), limit=120))
    tally.lines[chunk.index] = number


def _route(line: bytes, origin: Origin, needed: frozenset[str], tally: Tally) -> Iterator[Event]:
    try:
        resource = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        tally.skip(MALFORMED, origin, detail=f"{exc.msg} at byte {exc.pos}")
        return
    rtype = resource.get("resourceType") if isinstance(resource, dict) else None
    if not isinstance(rtype, str):
        tally.skip(NOT_RESOURCE, origin)
        return
    if rtype == "OperationOutcome":
        tally.skip(SERVER_ERROR, origin, detail=outcome_text(resource))
        return
    if rtype not in needed:
        tally.skip(NOT_NEEDED, origin, rtype=rtype)
        return
    rid = resource.get("id")
    if rtype in ("Patient", "Medication"):
        if not isinstance(rid, str) or not FHIR_ID.fullmatch(rid):
            tally.skip(BAD_ID, origin, rtype=rtype)
            return
        tally.resources[rtype] = tally.resources.get(rtype, 0) + 1
        yield ("P" if rtype == "Patient" else "M", rid, origin, line)
        return
    pid = next((p for p in map(patient_id, map(resource.get, _SUBJECT_FIELDS)) if p), None)
    if pid is None:
        tally.skip(NO_PATIENT, origin, rtype=rtype)
        return
    tally.resources[rtype] = tally.resources.get(rtype, 0) + 1
    yield ("P", pid, origin, line)
    if rtype in MEDICATION_ORDERS:
        mid = medication_id(resource.get("medicationReference"))
        if mid is not None:
            tally.medication_references += 1
            yield ("R", mid, pid, origin)


def outcome_text(outcome: object, *, limit: int = 300) -> str:
    """An OperationOutcome's issue texts on one line, control characters removed, bounded."""
    texts: list[str] = []
    issues = outcome.get("issue") if isinstance(outcome, dict) else None
    for issue in issues if isinstance(issues, list) else ():
        if not isinstance(issue, dict):
            continue
        details = issue.get("details")
        text = issue.get("diagnostics") or (details.get("text") if isinstance(details, dict) else None)
        if not isinstance(text, str):
            text = str(issue.get("code") or "")
        if text:
            texts.append(text)
    return clean_text("; ".join(texts), limit=limit) or "(no text)"


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]+")


def clean_text(text: str, *, limit: int = 300) -> str:
    """Text from a server or a file, safe to print on one terminal line."""
    flat = _CONTROL.sub(" ", text).strip()
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
