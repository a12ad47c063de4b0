"""``cds-service feedback-report``: the study team's view of the cards — per trial and period, the
cards shown, accepted (the referral), overridden by reason, and the acceptance rate (the alert's
positive predictive value as the study team sees it)."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime, timedelta

import orjson

from cds_service.errors import InvalidInput


def add_feedback_report(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    report = commands.add_parser(
        "feedback-report", help="per trial and period: cards shown, accepted, overridden by reason"
    )
    report.add_argument("--since", metavar="DATE", help="first day, YYYY-MM-DD (UTC; default: 90 days ago)")
    report.add_argument("--until", metavar="DATE", help="last day, included (default: today)")
    report.add_argument("--period", choices=("day", "week", "month"), default="month")
    report.add_argument("--json", action="store_true", help="the rows as JSON")
    report.set_defaults(handler=run_feedback_report)


def run_feedback_report(args: argparse.Namespace) -> int:
    from cds_service.db import make_engine
    from cds_service.followup import FollowUp, feedback_report
    from cds_service.ops.serve import load_settings
    from cds_service.store import FeedbackStore

    now = datetime.now(UTC)
    since = _day("--since", args.since) if args.since else now - timedelta(days=90)
    until = _day("--until", args.until) + timedelta(days=1) if args.until else now + timedelta(seconds=1)
    if until <= since:
        raise InvalidInput(f"--until {args.until!r} is before --since {args.since!r}")
    engine = make_engine(load_settings().feedback_db_url)
    try:
        shown = FollowUp(engine, snooze_days={}).shown_rows(since=since, until=until)
        rows = feedback_report(shown, FeedbackStore(engine).rows(), period=args.period)
    finally:
        engine.dispose()
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2) + b"\n")
    else:
        print(render(rows))
    return 0


def render(rows: list[dict[str, object]]) -> str:
    if not rows:
        return "no cards shown in that period"
    lines = [f"{'trial':<14}{'period':<10}{'shown':>7}{'accepted':>10}{'rate':>7}  overridden by reason"]
    for row in rows:
        reasons = row["overridden"]
        by_reason = (
            ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())) if isinstance(reasons, dict) else ""
        )
        rate = float(str(row["acceptance_rate"]))
        lines.append(
            f"{row['trial']!s:<14}{row['period']!s:<10}{row['shown']!s:>7}{row['accepted']!s:>10}"
            f"{rate:>7.0%}  {by_reason or '—'}"
        )
    return "\n".join(lines)


def _day(option: str, value: str) -> datetime:
    try:
        return datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise InvalidInput(f"{option} {value!r}: expected a date YYYY-MM-DD") from None
