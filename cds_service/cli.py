"""cds-service: which clinical trials a patient may fit, and why: the CDS Hooks service and its tools.

Exit codes: 0 success; 1 check-mappings found failing vectors; 2 bad input (one line on stderr
naming the file and the problem, never a stack trace); 141 the reader of the output went away
(e.g. ``| head``), which is not an error worth a message.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson

from cds_service.engine.evaluate import evaluate
from cds_service.engine.loader import Catalog, load_catalog
from cds_service.engine.report import EligibilityReport
from cds_service.engine.time import parse_as_of, today_in
from cds_service.engine.vectors import load_vectors, run_case
from cds_service.errors import CdsServiceError, InvalidInput
from cds_service.gcpause import paused
from cds_service.record import PatientRecord, build_record, parse_json, validate_resource
from cds_service.settings import Settings

_MARKS = {"met": "✔ met", "not-met": "✘ not-met", "unknown": "? unknown"}


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
    except CdsServiceError as exc:
        print(f"cds-service: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return _reader_went_away()
    return code


def _reader_went_away() -> int:
    """``cds-service evaluate … | head``: stop quietly, as a pipeline's writer does (128 + SIGPIPE).

    The unwritten rest of stdout is pointed at /dev/null so that the interpreter's final flush does
    not print a second BrokenPipeError.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 141


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cds-service", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    run = commands.add_parser("evaluate", help="evaluate one patient's FHIR Bundle against the trials")
    run.add_argument("bundle", type=Path, metavar="BUNDLE.json")
    run.add_argument("--as-of", help="evaluation date YYYY-MM-DD (default: today)")
    run.add_argument("--trial", action="append", help="only this trial (repeatable)")
    run.add_argument("--json", action="store_true", help="print the eligibility report as JSON")
    run.add_argument("--mappings", type=Path, help="mappings directory (default: packaged)")
    run.add_argument(
        "--fast",
        action="store_true",
        help="validate only the resources shown as evidence, not every resource",
    )
    run.set_defaults(handler=_evaluate)

    check = commands.add_parser("check-mappings", help="validate mappings and run their test vectors")
    check.add_argument("directory", type=Path, nargs="?", metavar="DIR")
    check.set_defaults(handler=_check_mappings)

    serve = commands.add_parser("serve", help="run the CDS Hooks service")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    serve.set_defaults(handler=_serve)
    _add_audit_export(commands)

    from cds_service.feedback_report import add_feedback_report

    add_feedback_report(commands)

    from cds_service.screen.cli import add_screen_command  # the population screen, its own package

    add_screen_command(commands)
    return parser


def _evaluate(args: argparse.Namespace) -> int:
    as_of = _as_of(args.as_of)
    catalog = load_catalog(args.mappings)
    _check_trials(catalog, args.trial or ())
    path: Path = args.bundle
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot be read: {exc.strerror}") from None
    try:
        record = _bundle_record(data)
        if not args.fast:
            for resource in record.all_resources():
                validate_resource(resource)
        report = evaluate(catalog, record, as_of=as_of, trial_ids=args.trial, tz=_site_zone())
    except CdsServiceError as exc:
        raise type(exc)(f"{path}: {exc}") from None
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(report.to_json_dict(), option=orjson.OPT_INDENT_2) + b"\n")
    else:
        print(render_table(report))
    return 0


def _site_zone() -> ZoneInfo:
    """CDS_SITE_TIMEZONE: the calendar every face evaluates on (default UTC)."""
    return Settings().tz()


def _as_of(value: str | None) -> date:
    if not value:
        return today_in(_site_zone())
    try:
        return parse_as_of(value)
    except ValueError as exc:
        detail = "expected a date YYYY-MM-DD" if "YYYY-MM-DD" in str(exc) else f"not a date ({exc})"
        raise InvalidInput(f"--as-of {value!r}: {detail}") from None


def _check_trials(catalog: Catalog, trial_ids: Sequence[str]) -> None:
    """An unknown ``--trial`` is a mistake on the command line, not in the patient file."""
    for trial_id in trial_ids:
        if trial_id not in catalog.trials:
            known = ", ".join(sorted(catalog.trials)) or "none"
            raise InvalidInput(f"--trial {trial_id!r}: unknown trial in {catalog.root} (known: {known})")


def _bundle_record(data: bytes) -> PatientRecord:
    """One patient's Bundle, as README says; NDJSON, a bare resource or a JSON array get a message
    saying what was expected instead of being read as something they are not."""
    try:
        document = parse_json(data)
    except InvalidInput:
        if _looks_like_ndjson(data):
            raise InvalidInput(
                "looks like NDJSON (one resource per line, as a Bulk Data export writes): evaluate reads "
                "one patient's Bundle; for NDJSON use cds-service screen"
            ) from None
        raise
    if isinstance(document, list):
        raise InvalidInput(
            'a JSON array, not a Bundle: evaluate reads one patient\'s Bundle ("resourceType": "Bundle")'
        )
    kind = document.get("resourceType") if isinstance(document, dict) else None
    if isinstance(kind, str) and kind != "Bundle":
        raise InvalidInput(
            f"a {kind} resource, not a Bundle: evaluate reads one patient's Bundle "
            "(put the patient's resources in a Bundle of type collection)"
        )
    with paused():
        return build_record([document])


def _looks_like_ndjson(data: bytes) -> bool:
    """Two or more lines, the first of them a whole JSON object with a resourceType."""
    first, newline, rest = data.lstrip().partition(b"\n")
    if not newline or not rest.strip():
        return False
    try:
        head = orjson.loads(first)
    except orjson.JSONDecodeError:
        return False
    return isinstance(head, dict) and isinstance(head.get("resourceType"), str)


def render_table(report: EligibilityReport) -> str:
    lines = [f"{report.patient} as of {report.as_of}"]
    for trial in report.trials:
        lines += ["", f"{trial.trial}  {trial.status.upper()}  {trial.title}"]
        width = max(len(c.id) for c in trial.criteria)
        for criterion in trial.criteria:
            kind = "IN " if criterion.kind == "inclusion" else "EX "
            mark = _MARKS[criterion.result]
            lines.append(f"  {kind}{criterion.id:<{width}}  {mark:<10}  {criterion.reason}")
            for item in criterion.evidence[:3]:
                bits = [b for b in (item.value, item.date) if b]
                if item.value and item.date and item.date in item.value:
                    bits = [item.value]
                lines.append(f"  {'':<{width + 3}}  {'':<10}    ↳ {item.reference}  {' · '.join(bits)}")
    return "\n".join(lines)


def _check_mappings(args: argparse.Namespace) -> int:
    catalog = load_catalog(args.directory)
    cases = load_vectors(catalog.root)
    failed = 0
    for loaded in cases:
        problems = run_case(catalog, loaded)
        if problems:
            failed += 1
            print(f"FAIL {loaded.label}")
            for problem in problems:
                print(f"     {problem}")
    sets = len(catalog.valuesets)
    print(
        f"{len(catalog.trials)} trial(s), {sets} value set(s) valid; "
        f"{len(cases) - failed} passed, {failed} failed"
    )
    return 1 if failed else 0


def _serve(args: argparse.Namespace) -> int:
    import logging.config

    import uvicorn

    from cds_service.ops import serve as ops_serve

    settings = ops_serve.prepare(workers=args.workers)  # ConfigError: one line, exit 2
    options = ops_serve.uvicorn_options(settings)
    logging.config.dictConfig(options["log_config"])
    if settings.allow_unsigned:
        print(_UNSIGNED_BANNER, file=sys.stderr, flush=True)
    from cds_service.app import create_app

    create_app(settings)  # fail fast, with a clear message, on bad mappings or settings
    uvicorn.run(
        "cds_service.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        **options,
    )
    return 0


# --- audit-export (cds_service.ops.audit) ----------------------------------------------------


def _add_audit_export(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    export = commands.add_parser(
        "audit-export", help="write the audit trail of a date range (UTC) as CSV or NDJSON to stdout"
    )
    export.add_argument("--since", required=True, metavar="DATE", help="first day, YYYY-MM-DD (UTC)")
    export.add_argument("--until", metavar="DATE", help="last day, included (default: up to now)")
    export.add_argument("--format", choices=("csv", "ndjson"), default="ndjson")
    export.set_defaults(handler=_audit_export)


def _audit_export(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime, timedelta

    from cds_service.db import make_engine
    from cds_service.ops.audit import AuditLog, export
    from cds_service.ops.serve import load_settings

    def day(option: str, value: str) -> datetime:
        try:
            return datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC)
        except ValueError:
            raise InvalidInput(f"{option} {value!r}: expected a date YYYY-MM-DD") from None

    since = day("--since", args.since)
    until = day("--until", args.until) + timedelta(days=1) if args.until else None
    if until is not None and until <= since:
        raise InvalidInput(f"--until {args.until!r} is before --since {args.since!r}")
    settings = load_settings()
    engine = make_engine(settings.feedback_db_url)
    try:
        audit = AuditLog(engine, retention_days=settings.audit_retention_days)
        count = export(audit.rows(since=since, until=until), fmt=args.format, out=sys.stdout)
    finally:
        engine.dispose()
    print(f"cds-service: {count} audit row(s) exported", file=sys.stderr)
    return 0


_UNSIGNED_BANNER = """
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
!! CDS_ALLOW_UNSIGNED=true: hook and feedback calls WITHOUT a JWT are accepted. !!
!! Anyone who can reach this port can ask it to evaluate patients.              !!
!! For trying the service out only. Never in production.                        !!
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
"""


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
