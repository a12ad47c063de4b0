"""The CDS Hooks edge: discovery, the patient-view service, and feedback.

A hook call goes: authenticate the EHR (JWT) → parse the envelope (the prefetch is parsed once with
orjson and never validated deeper than needed) → gather data (prefetch, else the FHIR server) →
PatientRecord → engine → cards. Routes only delegate; errors map to statuses in ``app.py``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import ValidationError

from cds_service import gcpause
from cds_service.cards import CardContext, render_cards
from cds_service.engine.evaluate import evaluate
from cds_service.engine.loader import Catalog
from cds_service.engine.time import today_in
from cds_service.errors import InvalidInput, Unauthorized
from cds_service.hooks.auth import EhrAuthenticator
from cds_service.hooks.models import (
    DiscoveryResponse,
    FeedbackRequest,
    HookRequest,
    HookResponse,
    ServiceDefinition,
)
from cds_service.hooks.prefetch import gather
from cds_service.portfolio import Portfolio
from cds_service.record import build_record
from cds_service.settings import Settings
from cds_service.store import FeedbackStore

SERVICE_ID = "trial-eligibility"
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
    portfolio: Portfolio


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
        f"/cds-services/{SERVICE_ID}",
        response_model=HookResponse,
        response_model_exclude_none=True,
        openapi_extra={"requestBody": {"required": True, **hook_body}},
        responses={400: {}, 401: {}, 412: {}, 413: {}},
    )
    async def patient_view(request: Request) -> Response:
        body = await request.body()
        base_url = _public_url(deps.settings, "", request=request)

        def work() -> HookResponse:
            trusted = _authenticate(request, deps, path=f"/cds-services/{SERVICE_ID}")
            keep: list[Any] = []
            gcpause.pause()  # resumed after the response, once the record is freed

            def free() -> None:
                keep.clear()
                gcpause.resume()

            after_response(request, free)
            hook = _parse(HookRequest, body)
            keep.append(hook)
            return run_hook(hook, deps=deps, trusted=trusted, base_url=base_url, keep=keep)

        return json_response(await run_in_threadpool(work))

    @router.post(
        f"/cds-services/{SERVICE_ID}/feedback",
        openapi_extra={"requestBody": {"required": True, **feedback_body}},
        responses={400: {}, 401: {}, 413: {}},
    )
    async def feedback(request: Request) -> Response:
        body = await request.body()

        def work() -> int:
            _authenticate(request, deps, path=f"/cds-services/{SERVICE_ID}/feedback")
            parsed: FeedbackRequest = _parse(FeedbackRequest, body)
            new = deps.store.record(service=SERVICE_ID, items=parsed.feedback)
            log.info("feedback stored: %d item(s), %d new", len(parsed.feedback), new)
            return len(parsed.feedback)

        received = await run_in_threadpool(work)
        return Response(content=orjson.dumps({"received": received}), media_type="application/json")

    return router


def run_hook(
    hook: HookRequest, *, deps: HookDeps, trusted: bool, base_url: str, keep: list[Any] | None = None
) -> HookResponse:
    """Prefetch (or FHIR) → record → report → cards; ``keep`` receives what the caller frees later."""
    started = time.perf_counter()
    parts = gather(hook, templates=deps.templates, settings=deps.settings, from_trusted_issuer=trusted)
    record = build_record(parts)
    if keep is not None:
        keep.append(record)
    if record.patient.get("id") != hook.context.patientId:
        raise InvalidInput("the prefetched Patient is not context.patientId")
    tz = deps.settings.tz()
    today = today_in(tz)
    report = evaluate(deps.catalog, record, as_of=today, tz=tz, trial_ids=deps.portfolio.for_clinicians())
    context = CardContext(
        trials=dict(deps.catalog.trials),
        portfolio=deps.portfolio,
        smart_launch_url=f"{base_url}/smart/launch",
        patient_id=hook.context.patientId,
        user_id=hook.context.userId,
        today=today,
    )
    cards = render_cards(report.trials, context=context, show_not_eligible=deps.settings.show_not_eligible)
    statuses = ",".join(f"{t.trial}={t.status}" for t in report.trials)
    log.info(
        "hook %s: %d card(s) [%s] in %.0f ms",
        SERVICE_ID,
        len(cards),
        statuses,
        (time.perf_counter() - started) * 1000,
    )
    return HookResponse(cards=cards)


CLEANUP_KEY = "cds_service.after_response"


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


def _authenticate(request: Request, deps: HookDeps, *, path: str) -> bool:
    """True when a trusted EHR signed the call; False for an accepted unsigned call (by setting)."""
    header = request.headers.get("authorization")
    if deps.authenticator is None or (header is None and deps.settings.allow_unsigned):
        if deps.settings.allow_unsigned:
            return False
        raise Unauthorized("no trusted issuers configured")
    audience = _public_url(deps.settings, path, request=request)
    deps.authenticator.authenticate(authorization_header=header, audience=audience)
    return True


def _public_url(settings: Settings, path: str, *, request: Request | None = None) -> str:
    base = settings.public_base_url
    if base is None and request is not None:
        base = str(request.base_url)
    return (base or "").rstrip("/") + path
