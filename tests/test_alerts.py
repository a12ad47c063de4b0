"""deployment/alerts.yaml: valid Prometheus rules, each alert shown to fire (and to stay quiet) by
``promtool test rules``, written against the metrics the service exports, with a runbook section.

promtool comes from Debian's ``prometheus`` package (.ci/run unpacks it into build/tools; set
PROMTOOL or put promtool on PATH). Without it the promtool tests skip, saying so (in CI they fail).
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from tests.conftest import REPO

DEPLOYMENT = REPO / "deployment"
RULES = DEPLOYMENT / "alerts.yaml"
RULE_TESTS = (DEPLOYMENT / "alerts.test.yaml", DEPLOYMENT / "alerts-daily.test.yaml")
RUNBOOK = DEPLOYMENT / "README.md"
# The metric families the runbook documents (cds_service.ops.metrics defines them), with their types.
FAMILIES = {
    "cds_hook_duration_seconds": "histogram",
    "cds_cards": "counter",
    "cds_fhir_fetch_duration_seconds": "histogram",
    "cds_fhir_fetch_failures": "counter",
    "cds_jwt_rejections": "counter",
    "cds_prefetch": "counter",
    "cds_prefetch_foreign_dropped": "counter",
    "cds_feedback": "counter",
    "cds_audit_write_failures": "counter",
}
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
SAMPLES = {family + suffix: family for family, kind in FAMILIES.items() for suffix in SUFFIXES[kind]}


def _rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _promtool() -> str:
    found = os.environ.get("PROMTOOL") or shutil.which("promtool")
    unpacked = REPO / "build" / "tools" / "usr" / "bin" / "promtool"
    if not found and unpacked.exists():
        found = str(unpacked)
    if not found:
        reason = "promtool is missing (Debian's prometheus package; .ci/run unpacks it into build/tools)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must check the alert rules")
        pytest.skip(reason)
    return found


def test_rules_are_valid_and_their_unit_tests_pass() -> None:
    promtool = _promtool()
    for argv in (["check", "rules", str(RULES)], ["test", "rules", *map(str, RULE_TESTS)]):
        done = subprocess.run([promtool, *argv], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_every_alert_is_shown_to_fire_and_to_stay_quiet() -> None:
    cases = [
        case
        for path in RULE_TESTS
        for test in yaml.safe_load(path.read_text())["tests"]
        for case in test["alert_rule_test"]
    ]
    for rule in _rules():
        mine = [case for case in cases if case["alertname"] == rule["alert"]]
        assert any(case["exp_alerts"] for case in mine), f"{rule['alert']} is never shown to fire"
        assert any(not case["exp_alerts"] for case in mine), f"{rule['alert']} is never shown quiet"


def test_every_alert_has_a_severity_a_summary_and_a_runbook_section() -> None:
    anchors = {_anchor(line) for line in RUNBOOK.read_text().splitlines() if line.startswith("#")}
    for rule in _rules():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        assert rule["annotations"]["summary"]
        runbook = rule["annotations"]["runbook"]
        assert runbook.startswith("deployment/README.md#") and runbook.split("#")[1] in anchors, runbook


def test_alerts_use_only_the_documented_metrics() -> None:
    text = RUNBOOK.read_text()
    for rule in _rules():
        for name in re.findall(r"\bcds_[a-z_]+", rule["expr"]):
            assert name in SAMPLES, f"{rule['alert']}: {name} is not a metric the service exports"
    for family in FAMILIES:
        assert f"`{family}" in text, f"deployment/README.md does not explain {family}"


def test_the_documented_metrics_are_the_services() -> None:
    """Once cds_service.ops.metrics exists, its families and types must be the ones alerted on."""
    try:
        module = importlib.import_module("cds_service.ops.metrics")
    except ModuleNotFoundError:
        pytest.skip("cds_service.ops.metrics is not in this tree yet")
    defined = {}
    for value in vars(module).values():
        describe = getattr(value, "describe", None)
        if callable(describe) and type(value).__module__.startswith("prometheus_client"):
            for metric in describe():
                defined[metric.name] = metric.type
    assert {family: defined.get(family) for family in FAMILIES} == FAMILIES


def _anchor(heading: str) -> str:
    """GitHub's anchor of a markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.lstrip("#").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")
