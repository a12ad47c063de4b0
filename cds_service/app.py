"""create_app(): one FastAPI process serving the CDS Hooks service and the SMART app.

Mappings are loaded once, here; the exception tree maps to statuses in one place; bodies over the
configured limit are refused with 413 before they are read into memory.
"""

from __future__ import annotations

import gc
import logging
import time
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cds_service import __version__
from cds_service.engine.loader import load_catalog
from cds_service.errors import (
    CdsServiceError,
    FhirError,
    InvalidInput,
    PrefetchUnavailable,
    Unauthorized,
)
from cds_service.fhir.queries import prefetch_templates
from cds_service.hooks.auth import EhrAuthenticator, JwksCache, JwtPolicy
from cds_service.hooks.service import CLEANUP_KEY, HookDeps, build_hooks_router, request_schemas
from cds_service.portfolio import load_portfolio
from cds_service.settings import Settings, get_settings
from cds_service.smart.router import build_smart_router
from cds_service.store import FeedbackStore

log = logging.getLogger("cds_service")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    catalog = load_catalog(settings.mappings_dir)
    authenticator = None
    if settings.trusted_issuers:
        policy = JwtPolicy(trusted_issuers=settings.trusted_issuers, algorithms=settings.jwt_algorithms())
        jwks = JwksCache(min_refetch_seconds=settings.jwks_min_refetch_seconds)
        authenticator = EhrAuthenticator(policy, jwks=jwks)
    store = FeedbackStore(settings.feedback_db_url)
    deps = HookDeps(
        settings=settings,
        catalog=catalog,
        templates=prefetch_templates(catalog),
        authenticator=authenticator,
        store=store,
        portfolio=load_portfolio(settings.portfolio, catalog),
    )

    app = FastAPI(title="cds_service: clinical trial eligibility", version=__version__)
    app.state.settings = settings
    app.state.catalog = catalog
    app.state.store = store
    app.include_router(build_hooks_router(deps))
    _document_request_models(app)
    _mount_smart(app, settings=settings, catalog=catalog)
    _install_error_handlers(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type"],
            max_age=600,
        )
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(AccessLog)
    # Everything built so far lives as long as the process: keep the garbage collector from
    # re-scanning it on every request (it tripled the parse time of a heavy prefetch).
    gc.collect()
    gc.freeze()
    return app


def _document_request_models(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            schema.setdefault("components", {}).setdefault("schemas", {}).update(request_schemas())
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _mount_smart(app: FastAPI, *, settings: Settings, catalog: Any) -> None:
    app.include_router(build_smart_router(settings=settings, catalog=catalog), prefix="/smart")


def _error(status: int, message: str | None) -> Response:
    body = orjson.dumps({"error": message}) if message else b""
    return Response(content=body, status_code=status, media_type="application/json" if body else None)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(Unauthorized)
    async def unauthorized(_: Request, exc: Unauthorized) -> Response:
        return _error(401, None)  # bare: say nothing to an unauthenticated caller

    @app.exception_handler(InvalidInput)
    async def invalid(_: Request, exc: InvalidInput) -> Response:
        return _error(400, str(exc))

    @app.exception_handler(PrefetchUnavailable)
    async def unavailable(_: Request, exc: PrefetchUnavailable) -> Response:
        log.warning("412: %s", exc)
        return _error(412, str(exc))

    @app.exception_handler(FhirError)
    async def fhir_error(_: Request, exc: FhirError) -> Response:
        log.warning("FHIR error: %s", exc)
        return _error(412, str(exc))

    @app.exception_handler(CdsServiceError)
    async def other(_: Request, exc: CdsServiceError) -> Response:
        log.error("service error %s", type(exc).__name__)
        return _error(500, "internal error")

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


class AccessLog:
    """Method, path, status and time: never the query string (SMART codes) nor headers (tokens)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.log = logging.getLogger("cds_service.access")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            elapsed = (time.perf_counter() - started) * 1000
            self.log.info("%s %s %d %.0f ms", scope["method"], scope["path"], status, elapsed)
            for action in scope.pop(CLEANUP_KEY, ()):  # after the answer is out, even on errors
                await run_in_threadpool(action)


class BodyLimit:
    """413 for bodies over the limit, by Content-Length or while streaming (chunked uploads)."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await _send_413(send, self.max_bytes)
            return
        if declared is not None:
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []  # no Content-Length (chunked): buffer up to the limit, then replay
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            if seen > self.max_bytes:
                await _send_413(send, self.max_bytes)
                return
            if not message.get("more_body", False):
                break
        replay: list[Message] = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replayed() -> Message:
            return replay.pop() if replay else await receive()

        await self.app(scope, replayed, send)


async def _send_413(send: Send, limit: int) -> None:
    body = orjson.dumps({"error": f"request body exceeds {limit} bytes"})
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
