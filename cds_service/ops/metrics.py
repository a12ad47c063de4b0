"""Prometheus metrics: what the runbook (deployment/README.md) reads, with closed label sets only.

Labels are trial ids and small enums, never patient data, user ids or URLs. With several uvicorn
workers ``cds-service serve`` sets ``PROMETHEUS_MULTIPROC_DIR`` (wiped at start) before the workers
import this module, so every worker writes its samples to that directory and ``/metrics``, answered by
whichever worker, aggregates them all (prometheus-client "multiprocess mode"). Only counters and
histograms are used: they aggregate across processes without ``mark_process_dead`` bookkeeping.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

HOOK_OUTCOMES = ("ok", "400", "401", "412", "413", "500")
FHIR_FAILURE_KINDS = ("timeout", "unauthorized", "http", "invalid", "too-large", "paging")
JWT_REASONS = (
    "no-token",  # no Authorization header (and unsigned calls are not allowed)
    "malformed",  # not a Bearer compact JWS, undecodable, typ not JWT
    "algorithm",  # alg not allowed, or a JWK that does not fit it
    "issuer",  # iss not trusted
    "jku",  # jku is not the issuer's configured JWKS URL
    "kid",  # no kid, or a kid the issuer's JWK Set does not have
    "jwks-unavailable",  # the issuer's JWK Set could not be fetched
    "signature",  # bad signature
    "audience",  # aud is not this endpoint
    "expired",  # exp passed (or iat in the future / not yet valid)
    "claims",  # a required claim missing or of the wrong type, lifetime too long
    "replay",  # jti already seen (or the jti cache full)
)
PREFETCH_STATES = ("given", "null", "missing", "outcome", "paged")
FEEDBACK_OUTCOMES = ("accepted", "overridden")

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

HOOK_DURATION = Histogram(
    "cds_hook_duration_seconds",
    "patient-view hook calls, request in to response out, by outcome (ok or the HTTP status)",
    ["outcome"],
    buckets=_LATENCY_BUCKETS,
)
CARDS = Counter("cds_cards", "cards returned, by trial and eligibility status", ["trial", "status"])
FHIR_FETCH_DURATION = Histogram(
    "cds_fhir_fetch_duration_seconds",
    "each HTTP request to an EHR's FHIR server (reads, search pages), successful or not",
    buckets=_LATENCY_BUCKETS,
)
FHIR_FETCH_FAILURES = Counter(
    "cds_fhir_fetch_failures", "failed FHIR fetches (one per failing call), by kind", ["kind"]
)
JWT_REJECTIONS = Counter("cds_jwt_rejections", "EHR JWTs refused, by reason", ["reason"])
PREFETCH = Counter("cds_prefetch", "prefetch keys of hook calls, by the state the EHR sent", ["state"])
FOREIGN_DROPPED = Counter(
    "cds_prefetch_foreign_dropped", "resources about another patient left out of an EHR's prefetch"
)
FEEDBACK = Counter("cds_feedback", "feedback items received, by outcome", ["outcome"])
AUDIT_FAILURES = Counter(
    "cds_audit_write_failures", "audit records that could not be written (hook answered 500)", ["kind"]
)


def hook_outcome(status: int) -> str:
    """The ``outcome`` label of a hook answer: ok, one of the statuses the spec names, or 500."""
    if status < 400:
        return "ok"
    if str(status) in HOOK_OUTCOMES:
        return str(status)
    return "400" if status < 500 else "500"


def fhir_failure(kind: str | None) -> None:
    if kind in FHIR_FAILURE_KINDS:
        FHIR_FETCH_FAILURES.labels(kind=kind).inc()


def jwt_rejected(reason: str) -> None:
    JWT_REJECTIONS.labels(reason=reason if reason in JWT_REASONS else "malformed").inc()


def exposition() -> tuple[bytes, str]:
    """The text exposition of every metric: all workers' in multiprocess mode, else this process's."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
