"""``cds-service screen``: the command line of a population pre-screen (registered by cds_service.cli).

Exit codes: 0 done (skipped lines are reported, not fatal); 1 some patients could not be evaluated
because of an internal error; 2 bad input (an unreadable SOURCE, a bad option, an export the server
refused: one line naming it); 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from cds_service.engine.time import parse_as_of, today_in
from cds_service.errors import InvalidInput
from cds_service.settings import Settings

from .patient import INTERNAL

_ENV = "CDS_BULK_"


def add_screen_command(commands: Any) -> None:
    """Register ``screen`` on the ``cds-service`` subparsers."""
    screen = commands.add_parser(
        "screen",
        help="pre-screen a population from a FHIR Bulk Data export",
        description="Evaluate every patient of a Bulk Data export (a directory of NDJSON, or "
        "--export FHIR_BASE_URL to run the export) against the trials; write results.csv, "
        "results.parquet, reports.ndjson, summary.json and worklist.html into --out.",
    )
    screen.add_argument("source", nargs="?", type=Path, metavar="SOURCE", help="directory of *.ndjson(.gz)")
    screen.add_argument("--out", type=Path, required=True, metavar="DIR", help="output directory")
    screen.add_argument("--as-of", help="evaluation date YYYY-MM-DD (default: today)")
    screen.add_argument("--trial", action="append", help="only this trial (repeatable)")
    screen.add_argument("--engine", choices=("local", "spark"), default="local")
    screen.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: cores)")
    screen.add_argument("--mappings", type=Path, help="mappings directory (default: packaged)")
    screen.add_argument("--shard-mb", type=int, default=32, help="shard size bounding a worker's memory")
    screen.add_argument("--keep-work", action="store_true", help="keep the shard files (debugging)")
    bulk = screen.add_argument_group("running the export (--export)")
    bulk.add_argument("--export", metavar="FHIR_BASE_URL", help="run a Bulk Data $export from this server")
    bulk.add_argument("--group", metavar="ID", help="export Group/ID (default: all patients)")
    bulk.add_argument("--system", action="store_true", help="system-level export ([base]/$export)")
    bulk.add_argument("--since", help="only resources changed since this FHIR instant (_since)")
    bulk.add_argument("--client-id", default=os.environ.get(_ENV + "CLIENT_ID"), help="$CDS_BULK_CLIENT_ID")
    bulk.add_argument(
        "--key", type=Path, default=_env_path("KEY"), help="private key (PEM or JWK): $CDS_BULK_KEY"
    )
    bulk.add_argument("--kid", default=os.environ.get(_ENV + "KID"), help="key id (default: from the JWK)")
    bulk.add_argument("--jku", default=os.environ.get(_ENV + "JKU"), help="URL of the client's JWK Set")
    bulk.add_argument("--scope", help="scopes to ask for (default: system/*.rs)")
    bulk.add_argument("--no-type-filter", action="store_true", help="do not send _typeFilter")
    bulk.add_argument("--allow-origin", action="append", default=[], help="another origin files may be on")
    bulk.add_argument("--allow-http-loopback", action="store_true", help="allow http:// on loopback")
    bulk.add_argument("--export-timeout", type=float, default=6 * 3600.0, help="seconds (default 6 h)")
    bulk.add_argument("--restart-export", action="store_true", help="ignore a saved export state")
    screen.set_defaults(handler=run_command)


def _env_path(name: str) -> Path | None:
    value = os.environ.get(_ENV + name)
    return Path(value) if value else None


def run_command(args: argparse.Namespace) -> int:
    from .run import ScreenOptions, run_screen

    if (args.source is None) == (args.export is None):
        raise InvalidInput("screen: give either SOURCE or --export FHIR_BASE_URL")
    if args.workers < 1:
        raise InvalidInput("--workers must be at least 1")
    try:
        zone = Settings().site_timezone
        as_of = parse_as_of(args.as_of) if args.as_of else today_in(ZoneInfo(zone))
    except ValueError as exc:
        raise InvalidInput(f"--as-of: {exc}") from None
    source: Path = args.source
    extra: dict[str, Any] = {}
    try:
        if args.export is not None:
            from .export import run_export

            source, extra = run_export(args, args.out)
        summary = run_screen(
            ScreenOptions(
                source=source,
                out=args.out,
                as_of=as_of,
                zone=zone,
                trial_ids=tuple(args.trial) if args.trial else None,
                engine=args.engine,
                workers=args.workers,
                mappings=args.mappings,
                shard_bytes=max(args.shard_mb, 1) << 20,
                keep_work=args.keep_work,
                extra_summary=extra,
                require_files=args.export is None,
            )
        )
    except KeyboardInterrupt:
        print("cds-service screen: interrupted", file=sys.stderr)
        return 130
    internal = any(entry["reason"] == INTERNAL for entry in summary["skipped"])
    return 1 if internal else 0
