"""``/healthz`` (alive), ``/readyz`` (ready to take calls) and ``/metrics`` (Prometheus).

- ``/healthz`` checks nothing but that the process answers: a liveness probe must not fail (and get
  the pod restarted) because a database is slow.
- ``/readyz`` checks that mappings are loaded and that the database answers a real ``SELECT 1``
  within ``DB_TIMEOUT`` seconds; otherwise 503 with a JSON body naming what is not ready. The
  query runs in its own daemon thread, one at a time: a database that hangs occupies that thread
  only, and later probes report "timeout" at once until it comes back.
- ``/metrics``: with ``CDS_METRICS_TOKEN`` set, only ``Authorization: Bearer <token>``; without it,
  only callers on loopback. (A reverse proxy on the same host makes every caller look local: route
  only the paths you serve, or set the token.)
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from concurrent.futures import Future
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy import Engine, text

from cds_service.engine.loader import Catalog
from cds_service.fhir.allowlist import is_loopback
from cds_service.ops import metrics
from cds_service.settings import Settings

DB_TIMEOUT = 2.0


def _json(body: dict[str, Any], status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


class DatabaseProbe:
    def __init__(self, engine: Engine, *, timeout: float = DB_TIMEOUT) -> None:
        self._engine = engine
        self._timeout = timeout
        self._running: Future[None] | None = None

    def _start(self) -> Future[None]:
        """``SELECT 1`` in a daemon thread: one stuck on a dead database never blocks process exit."""
        future: Future[None] = Future()

        def run() -> None:
            try:
                with self._engine.connect() as conn:
                    conn.execute(text("SELECT 1")).scalar_one()
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(None)

        threading.Thread(target=run, name="readyz-db", daemon=True).start()
        return future

    async def check(self) -> str:
        """ "ok", "timeout" or the error's type name (never its message: it may hold the URL)."""
        if self._running is not None and not self._running.done():
            return "timeout"
        self._running = self._start()
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(self._running)), self._timeout)
        except TimeoutError:
            return "timeout"
        except Exception as exc:
            return f"error ({type(exc).__name__})"
        return "ok"

    def close(self) -> None:
        """Nothing to release: the probe's thread ends with its query."""


def build_ops_router(*, settings: Settings, catalog: Catalog, probe: DatabaseProbe) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    token = settings.metrics_token.get_secret_value().encode() if settings.metrics_token else None

    @router.get("/healthz")
    def healthz() -> Response:
        return _json({"status": "ok"})

    @router.get("/readyz")
    async def readyz() -> Response:
        checks = {
            "mappings": f"ok ({len(catalog.trials)} trial(s))" if catalog.trials else "no trials loaded",
            "database": await probe.check(),
        }
        ready = bool(catalog.trials) and checks["database"] == "ok"
        not_ready = [name for name, state in checks.items() if not state.startswith("ok")]
        body: dict[str, Any] = {"status": "ready" if ready else "not ready", "checks": checks}
        if not ready:
            body["not_ready"] = not_ready
        return _json(body, 200 if ready else 503)

    @router.get("/metrics")
    def metrics_endpoint(request: Request) -> Response:
        if token is not None:
            scheme, _, given = (request.headers.get("authorization") or "").partition(" ")
            if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), token):
                return Response(status_code=401, headers={"WWW-Authenticate": "Bearer"})
        elif request.client is None or not is_loopback(request.client.host):
            return _json({"error": "/metrics answers loopback callers only; set CDS_METRICS_TOKEN"}, 403)
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    return router
