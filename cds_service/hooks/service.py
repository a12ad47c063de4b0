"""The CDS Hooks edge: discovery, the patient-view service, and feedback.

A hook call goes: authenticate the EHR (JWT, on the event loop, before the body is read) → parse
the envelope (the prefetch is parsed once with orjson and never validated deeper than needed) →
gather data (prefetch, else the FHIR server) → PatientRecord → engine → cards → the audit row,
written before the answer leaves (fail closed, see ``ops.audit``). Routes only delegate; errors
map to statuses in ``app.py``; metrics and the audit of failed calls are in ``ops.middleware``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import ValidationError

from cds_service import gcpause
from cds_service.cards import EXTENSION_KEY, OVERRIDE_SYSTEM, CardContext, render_cards
from cds_service.engine.evaluate import evaluate
from cds_service.engine.loader import Catalog
from cds_service.engine.time import today_in
from cds_service.errors import InvalidInput, Unauthorized
from cds_service.followup import FollowUp, Outcome, Shown
from cds_service.hooks.auth import EhrAuthenticator
from cds_service.hooks.models import (
    DiscoveryResponse,
    FeedbackItem,
    FeedbackRequest,
    HookRequest,
    HookResponse,
    ServiceDefinition,
)
from cds_service.hooks.prefetch import build_patient_record, gather
from cds_service.ops import metrics
from cds_service.ops.audit import AuditEntry, AuditLog, Pseudonyms
from cds_service.ops.middleware import AUDIT_KEY, CLEANUP_KEY
from cds_service.portfolio import Portfolio
from cds_service.settings import Settings
from cds_service.store import FeedbackStore

SERVICE_ID = "trial-eligibility"
HOOK_PATH = f"/cds-services/{SERVICE_ID}"
FEEDBACK_PATH = f"{HOOK_PATH}/feedback"
UNSIGNED = "unsigned"
COMPONENTS = "#/components/schemas/"


def request_schemas() -> dict[str, Any]:
    """The request models (read from raw bytes, so FastAPI does not see them) as OpenAPI components."""
    schemas: dict[str, Any] = {}
    for model in (HookRequest, FeedbackRequest):
        schema = model.model_json_schema(ref_template=COMPONENTS + "{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return schemas


log = logging.getLogger("cds_service.hooks")


@dataclass(frozen=True)
class HookDeps:
    settings: Settings
    catalog: Catalog
    templates: Mapping[str, str]
    authenticator: EhrAuthenticator | None
    store: FeedbackStore
    audit: AuditLog
    pseudonyms: Pseudonyms
    portfolio: Portfolio
    followup: FollowUp


def service_definition(catalog: Catalog, templates: Mapping[str, str]) -> ServiceDefinition:
    names = ", ".join(f"{t.trial} ({t.short_title})" for t in catalog.trials.values())
    return ServiceDefinition(
        hook="patient-view",
        id=SERVICE_ID,
        title="Clinical trial eligibility",
        description=f"Shows the clinical trials this patient may be eligible for, and why: {names}.",
        prefetch=dict(templates),
    )


def json_response(model: Any, status_code: int = 200) -> Response:
    body = orjson.dumps(model.model_dump(mode="json", exclude_none=True))
    return Response(content=body, status_code=status_code, media_type="application/json")


def build_hooks_router(deps: HookDeps) -> APIRouter:
    router = APIRouter()
    definition = service_definition(deps.catalog, deps.templates)
    hook_body = {"content": {"application/json": {"schema": {"$ref": f"{COMPONENTS}HookRequest"}}}}
    feedback_body = {"content": {"application/json": {"schema": {"$ref": f"{COMPONENTS}FeedbackRequest"}}}}

    @router.get("/cds-services", response_model=DiscoveryResponse, response_model_exclude_none=True)
    def discovery() -> Response:
        return json_response(DiscoveryResponse(services=[definition]))

    @router.post(
        HOOK_PATH,
        response_model=HookResponse,
        response_model_exclude_none=True,
        openapi_extra={"requestBody": {"required": True, **hook_body}},
        responses={400: {}, 401: {}, 412: {}, 413: {}},
    )
    async def patient_view(request: Request) -> Response:
        entry = audit_entry(request, "hook")
        entry.issuer = await _authenticate(request, deps, path=HOOK_PATH)  # before the body is read
        body = await request.body()
        base_url = _public_url(deps.settings, "", request=request)

        def work() -> HookResponse:
            keep: list[Any] = []
            gcpause.pause()  # resumed after the response, once the record is freed

            def free() -> None:
                keep.clear()
                gcpause.resume()

            after_response(request, free)
            hook = _parse(HookRequest, body)
            keep.append(hook)
            entry.hook_instance, entry.user_id = hook.hookInstance, hook.context.userId
            entry.patient_pseudonym = deps.pseudonyms.of(hook.context.patientId)
            trusted = entry.issuer != UNSIGNED
            response = run_hook(hook, deps=deps, trusted=trusted, base_url=base_url, keep=keep, entry=entry)
            deps.audit.write(entry, status=200, duration_s=time.perf_counter() - entry.started)  # fail closed
            return response

        return json_response(await run_in_threadpool(work))

    @router.post(
        FEEDBACK_PATH,
        openapi_extra={"requestBody": {"required": True, **feedback_body}},
        responses={400: {}, 401: {}, 413: {}},
    )
    async def feedback(request: Request) -> Response:
        entry = audit_entry(request, "feedback")
        entry.issuer = await _authenticate(request, deps, path=FEEDBACK_PATH)
        body = await request.body()

        def work() -> int:
            parsed: FeedbackRequest = _parse(FeedbackRequest, body)
            entry.feedback = [{"card": item.card, "outcome": item.outcome} for item in parsed.feedback]
            new = deps.store.record(service=SERVICE_ID, items=parsed.feedback)
            for item in parsed.feedback:
                metrics.FEEDBACK.labels(outcome=item.outcome).inc()
            snoozed = deps.followup.apply(outcomes(parsed.feedback))
            log.info("feedback stored: %d item(s), %d new, %d snooze(s)", len(parsed.feedback), new, snoozed)
            deps.audit.write(entry, status=200, duration_s=time.perf_counter() - entry.started)
            return len(parsed.feedback)

        received = await run_in_threadpool(work)
        return Response(content=orjson.dumps({"received": received}), media_type="application/json")

    return router


def run_hook(
    hook: HookRequest,
    *,
    deps: HookDeps,
    trusted: bool,
    base_url: str,
    keep: list[Any] | None = None,
    entry: AuditEntry | None = None,
) -> HookResponse:
    """Prefetch (or FHIR) → record → report → cards; ``keep`` receives what the caller frees later,
    ``entry`` what was evaluated and shown (for the audit)."""
    started = time.perf_counter()
    gathered = gather(hook, templates=deps.templates, settings=deps.settings, from_trusted_issuer=trusted)
    record = build_patient_record(gathered, patient_id=hook.context.patientId)
    if keep is not None:
        keep.append(record)
    tz = deps.settings.tz()
    today = today_in(tz)
    now = datetime.now(UTC)
    patient_key = deps.pseudonyms.of(hook.context.patientId)
    hidden = deps.followup.hidden_trials(patient_key, now)  # dismissed by a clinician, for a while
    offered = [t for t in deps.portfolio.for_clinicians() if t not in hidden]
    report = evaluate(deps.catalog, record, as_of=today, tz=tz, trial_ids=offered)
    context = CardContext(
        trials=dict(deps.catalog.trials),
        portfolio=deps.portfolio,
        smart_launch_url=f"{base_url}/smart/launch",
        patient_id=hook.context.patientId,
        user_id=hook.context.userId,
        today=today,
    )
    cards = render_cards(report.trials, context=context, show_not_eligible=deps.settings.show_not_eligible)
    shown = _count_cards(cards, deps.catalog)
    deps.followup.record_shown(
        patient_key,
        [Shown(str(c.uuid), s["trial"], s["status"]) for c, s in zip(cards, shown, strict=True)],
        now,
    )
    if entry is not None:
        entry.trials_evaluated = [_trial_version(deps.catalog, t.trial) for t in report.trials]
        entry.trials_shown = shown
    statuses = ",".join(f"{t.trial}={t.status}" for t in report.trials)
    log.info(
        "hook %s: %d card(s) [%s] in %.0f ms",
        SERVICE_ID,
        len(cards),
        statuses,
        (time.perf_counter() - started) * 1000,
    )
    return HookResponse(cards=cards)


def outcomes(items: list[FeedbackItem]) -> list[Outcome]:
    """Feedback as follow-up reads it: the override reason's code (this service's reasons only)."""
    found = []
    for item in items:
        reason = item.overrideReason.reason if item.overrideReason else None
        code = reason.code if reason is not None and reason.system in (OVERRIDE_SYSTEM, None) else None
        found.append(Outcome(card=item.card, outcome=item.outcome, reason=code, at=item.moment()))
    return found


def _trial_version(catalog: Catalog, trial_id: str) -> dict[str, Any]:
    """The trial and the version of its mapping (what the audit records as evaluated or shown)."""
    trial = catalog.trials.get(trial_id)
    return {"trial": trial_id, "version": trial.version if trial is not None else None}


def _count_cards(cards: list[Any], catalog: Catalog) -> list[dict[str, Any]]:
    """Each card's trial and status (from its extension, the public report), counted in metrics."""
    shown = []
    for card in cards:
        report = (card.extension or {}).get(EXTENSION_KEY) or {}
        trial, status = str(report.get("trial", "?")), str(report.get("status", "?"))
        metrics.CARDS.labels(trial=trial, status=status).inc()
        shown.append({**_trial_version(catalog, trial), "status": status})
    return shown


def audit_entry(request: Request, kind: str) -> AuditEntry:
    """The call's audit entry (made by ops.middleware.HookObserver), or a loose one outside it."""
    found = request.scope.get(AUDIT_KEY)
    if isinstance(found, AuditEntry):
        return found
    entry = AuditEntry(kind=kind, started=time.perf_counter())
    request.scope[AUDIT_KEY] = entry
    return entry


def after_response(request: Request, action: Callable[[], object]) -> None:
    """Run ``action`` once the response is sent (or the request failed): see app.AccessLog."""
    request.scope.setdefault(CLEANUP_KEY, []).append(action)


def _parse(model: type[Any], body: bytes) -> Any:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidInput("request body is not JSON") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise InvalidInput(f"{where}: {first['msg']}") from None


async def _authenticate(request: Request, deps: HookDeps, *, path: str) -> str:
    """The verified JWT ``iss``, or UNSIGNED for a call accepted without a JWT (by setting).

    Runs on the event loop before the body is read: a refused caller costs no body upload, and
    waiting for a slow issuer's JWK Set holds no worker thread (see hooks.auth)."""
    header = request.headers.get("authorization")
    if deps.authenticator is None or (header is None and deps.settings.allow_unsigned):
        if deps.settings.allow_unsigned:
            return UNSIGNED
        metrics.jwt_rejected("no-token")
        raise Unauthorized("no trusted issuers configured")
    audience = _public_url(deps.settings, path)
    client = await deps.authenticator.authenticate_async(authorization_header=header, audience=audience)
    return client.iss


def _public_url(settings: Settings, path: str, *, request: Request | None = None) -> str:
    base = settings.public_base_url
    if base is None and request is not None:
        base = str(request.base_url)
    return (base or "").rstrip("/") + path
