"""create_app(): one FastAPI process serving the CDS Hooks service, the SMART app and operations.

Settings are checked first (``CDS_ENV=production`` refuses unsafe ones, naming what to set);
mappings are loaded once; one database engine serves feedback, audit and SMART sessions; the
exception tree maps to statuses in one place, every body as ``{"error": ...}`` (404 and 405
included) with FHIR ids masked. Middleware (``ops.middleware``) adds the request id and access log,
hook metrics and audit, and the body limit. The lifespan prunes old audit rows at start and daily,
and closes the database and outbound HTTP sessions at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from cds_service import __version__
from cds_service.db import make_engine
from cds_service.engine.loader import load_catalog
from cds_service.errors import (
    AuditUnavailable,
    CdsServiceError,
    FhirError,
    InvalidInput,
    PrefetchUnavailable,
    RequestTooLarge,
    Unauthorized,
    without_ids,
)
from cds_service.fhir.queries import prefetch_templates
from cds_service.followup import FollowUp
from cds_service.hooks.auth import EhrAuthenticator, JwksCache, JwtPolicy
from cds_service.hooks.service import FEEDBACK_PATH, HOOK_PATH, HookDeps, build_hooks_router, request_schemas
from cds_service.ops.audit import AuditLog, Pseudonyms
from cds_service.ops.health import DatabaseProbe, build_ops_router
from cds_service.ops.middleware import BodyLimit, HookObserver, RequestContext
from cds_service.portfolio import load_portfolio
from cds_service.settings import Settings, check_settings, get_settings
from cds_service.smart.checklist import ChecklistStore
from cds_service.smart.router import build_smart_router
from cds_service.smart.sessions import SessionStore
from cds_service.store import FeedbackStore

log = logging.getLogger("cds_service")
MAINTENANCE_EVERY = 24 * 3600.0


@dataclass
class _Lifecycle:
    """What the lifespan prunes periodically and closes at shutdown."""

    audit: AuditLog
    sessions: SessionStore
    checklist: ChecklistStore
    closers: list[Any]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    check_settings(settings)
    catalog = load_catalog(settings.mappings_dir)
    engine = make_engine(settings.feedback_db_url)
    authenticator, jwks = None, None
    if settings.trusted_issuers:
        policy = JwtPolicy(trusted_issuers=settings.trusted_issuers, algorithms=settings.jwt_algorithms())
        jwks = JwksCache(
            min_refetch_seconds=settings.jwks_min_refetch_seconds,
            fetch_threads=max(4, len(settings.trusted_issuers)),
        )
        authenticator = EhrAuthenticator(policy, jwks=jwks)
    audit = AuditLog(engine, retention_days=settings.audit_retention_days)
    secret = settings.pseudonym_key.get_secret_value() if settings.pseudonym_key else None
    portfolio = load_portfolio(settings.portfolio, catalog)
    deps = HookDeps(
        settings=settings,
        catalog=catalog,
        templates=prefetch_templates(catalog),
        authenticator=authenticator,
        store=FeedbackStore(engine),
        audit=audit,
        pseudonyms=Pseudonyms.from_secret(secret),
        portfolio=portfolio,
        followup=FollowUp(engine, snooze_days=portfolio.snooze_days),
    )
    sessions = SessionStore.for_settings(engine, settings)
    checklist = ChecklistStore(engine, sealer=sessions.sealer)
    probe = DatabaseProbe(engine)
    state = _Lifecycle(audit=audit, sessions=sessions, checklist=checklist, closers=[probe, jwks, engine])

    docs = settings.docs_enabled()
    app = FastAPI(
        title="cds_service: clinical trial eligibility",
        version=__version__,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
        lifespan=_lifespan(state),
    )
    app.state.settings, app.state.catalog, app.state.store = settings, catalog, deps.store
    app.state.audit, app.state.sessions, app.state.engine = audit, sessions, engine
    app.include_router(build_ops_router(settings=settings, catalog=catalog, probe=probe))
    app.include_router(build_hooks_router(deps))
    _document_request_models(app)
    smart = build_smart_router(
        settings=settings,
        catalog=catalog,
        portfolio=portfolio,
        sessions=sessions,
        checklist=checklist,
        pseudonyms=deps.pseudonyms,
    )
    app.include_router(smart, prefix="/smart")
    _install_error_handlers(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
            max_age=600,
        )
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(HookObserver, hook_path=HOOK_PATH, feedback_path=FEEDBACK_PATH, audit=audit)
    app.add_middleware(RequestContext)
    # Everything built so far lives as long as the process: keep the garbage collector from
    # re-scanning it on every request (it tripled the parse time of a heavy prefetch).
    gc.collect()
    gc.freeze()
    return app


def _lifespan(state: _Lifecycle) -> Any:
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(_maintain(state))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            for item in state.closers:
                closer = getattr(item, "close", None) or getattr(item, "dispose", None)
                if closer is not None:
                    closer()

    return lifespan


async def _maintain(state: _Lifecycle) -> None:
    """Audit retention, expired SMART sessions and checklists: at start, then daily (the SMART
    tables hourly)."""
    elapsed = MAINTENANCE_EVERY
    while True:
        try:
            if elapsed >= MAINTENANCE_EVERY:
                await run_in_threadpool(state.audit.prune)
                elapsed = 0.0
            await run_in_threadpool(state.sessions.cleanup)
            await run_in_threadpool(state.checklist.cleanup)
        except Exception as exc:  # a database hiccup must not end the loop
            log.error("maintenance failed: %s", type(exc).__name__)
        await asyncio.sleep(3600.0)
        elapsed += 3600.0


def _document_request_models(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            schema.setdefault("components", {}).setdefault("schemas", {}).update(request_schemas())
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _error(status: int, message: str | None, headers: Mapping[str, str] | None = None) -> Response:
    body = orjson.dumps({"error": message}) if message else b""
    media_type = "application/json" if body else None
    return Response(content=body, status_code=status, media_type=media_type, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(Unauthorized)
    async def unauthorized(_: Request, exc: Unauthorized) -> Response:
        return _error(401, None)  # bare: say nothing to an unauthenticated caller

    @app.exception_handler(InvalidInput)
    async def invalid(_: Request, exc: InvalidInput) -> Response:
        return _error(400, without_ids(str(exc)))

    @app.exception_handler(PrefetchUnavailable)
    async def unavailable(_: Request, exc: PrefetchUnavailable) -> Response:
        message = without_ids(str(exc))
        log.warning("412: %s", message)
        return _error(412, message)

    @app.exception_handler(FhirError)
    async def fhir_error(_: Request, exc: FhirError) -> Response:
        message = without_ids(str(exc))
        log.warning("FHIR error: %s", message)
        return _error(412, message)

    @app.exception_handler(RequestTooLarge)
    async def too_large(_: Request, exc: RequestTooLarge) -> Response:
        return _error(413, str(exc))

    @app.exception_handler(AuditUnavailable)
    async def unaudited(_: Request, exc: AuditUnavailable) -> Response:
        return _error(500, str(exc))

    @app.exception_handler(CdsServiceError)
    async def other(_: Request, exc: CdsServiceError) -> Response:
        log.error("service error %s", type(exc).__name__)
        return _error(500, "internal error")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        """404 / 405 (and any other HTTPException) in the app's own ``{"error": ...}`` form."""
        return _error(exc.status_code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation(_: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"])
        return _error(400, f"{where}: {first['msg']}")

    @app.exception_handler(Exception)
    async def crash(_: Request, exc: Exception) -> Response:
        frame = exc.__traceback__
        while frame is not None and frame.tb_next is not None:
            frame = frame.tb_next
        where = f"{frame.tb_frame.f_code.co_filename}:{frame.tb_lineno}" if frame else "?"
        log.error("unhandled %s at %s", type(exc).__name__, where)  # no message: it may hold PHI
        return _error(500, "internal error")
