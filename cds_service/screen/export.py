"""``screen --export``: run a Bulk Data export into ``OUT/export/`` and hand its files to the screen.

The run is resumable: ``OUT/export/state.json`` records the request, the status URL and each file
downloaded, so a rerun after a crash, a lost connection or a deadline continues polling or
downloading where it stopped (a rerun after a complete export reuses its files; ``--restart-export``
starts afresh). Ctrl-C or SIGTERM while the server is still exporting cancels the export (DELETE);
once all files are here the client DELETEs the export to release the server's copy. The server's
error files are downloaded, read, and their texts reported. The state file holds no token.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import orjson

from cds_service.engine.loader import load_catalog
from cds_service.errors import InvalidInput
from cds_service.fhir.backend_auth import load_client_key
from cds_service.fhir.bulk import BulkClient, BulkSettings

from .needs import needed_types, type_filters
from .source import FHIR_ID, clean_text, outcome_text

MAX_ERROR_LINES = 20
_INSTANT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")


def _settings(args: argparse.Namespace) -> BulkSettings:
    key = load_client_key(args.key, kid=args.kid) if args.key else None
    if key is not None and not args.client_id:
        raise InvalidInput("--key needs --client-id (or CDS_BULK_CLIENT_ID)")
    return BulkSettings(
        base_url=args.export,
        client_id=args.client_id,
        key=key,
        jku=args.jku,
        scope=args.scope or "system/*.rs",
        allow_origins=tuple(args.allow_origin),
        allow_http_loopback=args.allow_http_loopback,
        deadline=args.export_timeout,
    )


def _request(args: argparse.Namespace) -> dict[str, Any]:
    if args.group is not None and not FHIR_ID.fullmatch(args.group):
        raise InvalidInput("--group: not a FHIR id")
    if args.group is not None and args.system:
        raise InvalidInput("--group and --system: choose one export level")
    if args.since is not None and not _INSTANT.fullmatch(args.since):
        raise InvalidInput("--since: not a FHIR instant (e.g. 2026-05-01T00:00:00Z)")
    catalog = load_catalog(args.mappings)
    level = "group" if args.group else "system" if args.system else "patient"
    return {
        "base": args.export.rstrip("/"),
        "level": level,
        "group": args.group,
        "types": sorted(needed_types(catalog)),
        "type_filters": [] if args.no_type_filter else type_filters(catalog),
        "since": args.since,
    }


class _State:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {}
        if path.exists():
            try:
                self.data = orjson.loads(path.read_bytes())
            except (OSError, orjson.JSONDecodeError):
                self.data = {}

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(self.data, option=orjson.OPT_INDENT_2))
        os.chmod(tmp, 0o600)
        tmp.replace(self.path)


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM behaves like Ctrl-C (so the export is cancelled), in the main thread only."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _say(message: str) -> None:
    print(f"cds-service screen: {message}", file=sys.stderr, flush=True)


def run_export(args: argparse.Namespace, out: Path) -> tuple[Path, dict[str, Any]]:
    """Export (or resume), download, report the server's errors; returns the files' directory."""
    request = _request(args)
    root = out / "export"
    files_dir, errors_dir = root / "files", root / "errors"
    for d in (files_dir, errors_dir):
        d.mkdir(parents=True, exist_ok=True)
    state = _State(root / "state.json")
    if args.restart_export or state.data.get("request") != request:
        if state.data.get("request") not in (None, request):
            _say("the saved export was for another request; starting a new export")
        state.data = {"request": request, "files": {}}
    client = BulkClient(_settings(args))
    with _sigterm_interrupts():
        if state.data.get("complete"):
            _say(f"using the export downloaded {state.data['complete']} (--restart-export for a new one)")
        else:
            _export(client, state, request, files_dir, errors_dir)
    return files_dir, {"export": _export_summary(state, errors_dir)}


def _export(
    client: BulkClient, state: _State, request: dict[str, Any], files_dir: Path, errors_dir: Path
) -> None:
    manifest = state.data.get("manifest")
    if manifest is None:
        status_url = state.data.get("status_url")
        if status_url is None:
            status_url = client.kickoff(
                level=request["level"],
                group=request["group"],
                types=request["types"],
                type_filters=request["type_filters"],
                since=request["since"],
            )
            state.data["status_url"] = status_url
            state.save()
            _say("export started")
        else:
            _say("resuming the export in progress")
        try:
            manifest = client.poll(status_url, lambda p: _say(f"export: {p}"))
        except KeyboardInterrupt:
            status = client.cancel(status_url)
            state.data.pop("status_url", None)
            state.save()
            if status is not None and status < 300:
                _say("export cancelled on the server (DELETE)")
            else:
                _say(f"interrupted; the server did not accept the cancel (DELETE: {status or 'no answer'})")
            raise
        state.data["manifest"] = manifest
        state.save()
    _download_all(client, state, manifest, files_dir, errors_dir, set(request["types"]))
    status = client.cancel(state.data["status_url"])  # done with the server's copy
    if status is None or status >= 300:
        _say(f"the server did not release the export's files (DELETE: {status or 'no answer'})")
    state.data["complete"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    state.save()


def _download_all(
    client: BulkClient,
    state: _State,
    manifest: dict[str, Any],
    files_dir: Path,
    errors_dir: Path,
    types: set[str],
) -> None:
    with_token = bool(manifest.get("requiresAccessToken"))
    for leftover in [*files_dir.glob("*.part"), *errors_dir.glob("*.part")]:
        leftover.unlink()  # a download cut short: fetched again below
    done: dict[str, str] = state.data.setdefault("files", {})
    skipped: list[str] = state.data.setdefault("not_downloaded", [])
    planned = [(t, u, files_dir) for t, u in client.files(manifest)]
    planned += [(t, u, errors_dir) for t, u in client.files(manifest, "error")]
    for n, (rtype, url, directory) in enumerate(planned):
        if url in done:
            continue
        if directory is files_dir and rtype not in types:
            if rtype not in skipped:
                skipped.append(rtype)  # the server ignored _type: not needed, not fetched
            continue
        safe = rtype if FHIR_ID.fullmatch(rtype or "") else "file"
        name = f"{safe}.{n:04d}.ndjson"
        size = client.download(url, directory / name, with_token=with_token)
        done[url] = name
        state.save()
        _say(f"downloaded {name} ({size / 1e6:.1f} MB)")


def _export_summary(state: _State, errors_dir: Path) -> dict[str, Any]:
    """The server's error files, read: each OperationOutcome's text (printed, and in summary.json)."""
    errors: list[str] = []
    count = 0
    for path in sorted(errors_dir.glob("*.ndjson")):
        with open(path, "rb") as f:
            for line in f:
                if not line.strip():
                    continue
                count += 1
                try:
                    text = outcome_text(orjson.loads(line))
                except orjson.JSONDecodeError:
                    text = "(an error line that is not JSON)"
                if len(errors) < 100:
                    errors.append(text)
    for text in errors[:MAX_ERROR_LINES]:
        _say(f"export server reported: {text}")
    if count > MAX_ERROR_LINES:
        _say(f"… {count - MAX_ERROR_LINES} more server error(s) in summary.json")
    manifest = state.data.get("manifest") or {}
    return {
        "server": state.data["request"]["base"],
        "level": state.data["request"]["level"],
        "transactionTime": clean_text(str(manifest.get("transactionTime", "")), limit=40),
        "files": len(state.data.get("files", {})),
        "not_downloaded_types": state.data.get("not_downloaded", []),
        "server_errors": {"count": count, "texts": errors},
    }
