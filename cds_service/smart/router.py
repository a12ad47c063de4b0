"""The SMART on FHIR app's routes (mounted by ``create_app`` under ``/smart``).

- ``GET /launch?iss=...&launch=...``: EHR launch (with ``launch``) or standalone launch (without;
  ``iss`` from the query or ``smart_default_iss``). Checks ``iss`` against the allowlist, reads its
  SMART configuration, remembers state + PKCE verifier server-side, 302 to the EHR's authorize URL.
- ``GET /callback?code=...&state=...``: checks ``state`` belongs to this browser's session before
  anything else, exchanges the code (with the verifier), 302 to ``/app?ctx=...``.
- ``GET /app?ctx=...``: reads the patient with the session's token and renders the report.
- ``GET /report.json?ctx=...``: the same report as JSON.
- ``GET /evidence?ctx=...&ref=Type/id``: one evidence entry, read server-side (``smart.evidence``).
- ``POST /checklist``: saves a trial's reviewer checklist (``smart.checklist``), CSRF-checked; 303
  back to the page, or JSON for the page's script.

The evaluation date is the site's (``CDS_SITE_TIMEZONE``), the same as the cards'. Only the trials
the site's portfolio offers to clinicians are shown, with their recruiting status and contact.

Every failure is a page from ``smart.errors`` with its own status, never a stack trace.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Sequence
from datetime import date
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse, Response
from fastapi.routing import APIRoute

from cds_service.engine.loader import Catalog
from cds_service.engine.time import today_in
from cds_service.ops.audit import Pseudonyms
from cds_service.portfolio import Portfolio, default_portfolio
from cds_service.settings import Settings
from cds_service.smart import errors
from cds_service.smart.checklist import MAX_FORM_BYTES, ChecklistStore
from cds_service.smart.handlers import SmartApp
from cds_service.smart.pages import error_page
from cds_service.smart.sessions import SessionStore
from cds_service.smart.urls import origin

log = logging.getLogger(__name__)

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


def build_smart_router(
    *,
    settings: Settings,
    catalog: Catalog,
    portfolio: Portfolio | None = None,
    sessions: SessionStore | None = None,
    checklist: ChecklistStore | None = None,
    pseudonyms: Pseudonyms | None = None,
    today: Callable[[], date] | None = None,
) -> APIRouter:
    """The SMART app's routes. ``portfolio`` defaults to every trial (as without CDS_PORTFOLIO);
    ``pseudonyms`` to CDS_PSEUDONYM_KEY's (create_app passes the hooks' own, so a patient has one
    pseudonym); ``today`` to the site's date; ``sessions`` to an in-memory store (tests)."""
    ancestors = frame_ancestors(settings)
    sessions = sessions or SessionStore()
    secret = settings.pseudonym_key.get_secret_value() if settings.pseudonym_key else None
    app = SmartApp(
        settings=settings,
        catalog=catalog,
        portfolio=portfolio or default_portfolio(catalog),
        sessions=sessions,
        checklist=checklist or ChecklistStore(sessions.engine, sealer=sessions.sealer, clock=sessions.clock),
        pseudonyms=pseudonyms or Pseudonyms.from_secret(secret),
        today=today or (lambda: today_in(settings.tz())),
        frame_ancestors=ancestors,
    )
    router = APIRouter(route_class=_page_route(ancestors), include_in_schema=False)

    @router.get("/launch", name="smart_launch")
    def launch(request: Request, iss: str | None = None, launch: str | None = None) -> RedirectResponse:
        return app.launch(request, iss=iss, launch_id=launch)

    @router.get("/callback", name="smart_callback")
    def callback(
        request: Request, code: str | None = None, state: str | None = None, error: str | None = None
    ) -> RedirectResponse:
        return app.callback(request, code=code, state=state, error=error)

    @router.get("/app", name="smart_app")
    def page(request: Request, ctx: str | None = None, saved: str | None = None) -> Response:
        return app.page(request, context_id=ctx, saved=saved)

    @router.get("/evidence", name="smart_evidence")
    def evidence(
        request: Request, ctx: str | None = None, ref: str | None = None, at: str | None = None
    ) -> Response:
        return app.evidence(request, context_id=ctx, ref=ref, at=at)

    @router.post("/checklist", name="smart_checklist")
    async def save_checklist(request: Request) -> Response:
        body = await _bounded_body(request, MAX_FORM_BYTES)
        return await run_in_threadpool(app.save_checklist, request, body)

    @router.get("/report.json", name="smart_report")
    def report(request: Request, ctx: str | None = None) -> Response:
        return app.report_json(request, context_id=ctx)

    return router


async def _bounded_body(request: Request, limit: int) -> bytes:
    """The request body, refused past ``limit`` bytes without reading the rest."""
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise errors.bad_form("the form is too large")
    return bytes(body)


def frame_ancestors(settings: Settings) -> list[str]:
    """Who may frame the app: ``smart_frame_ancestors`` if configured, else 'self' and the origins
    of the allowlisted EHRs (the servers we already trust with a token are the ones that launch us)."""
    configured: Sequence[str] | None = settings.smart_frame_ancestors
    if configured:
        return list(configured)
    origins = sorted(
        {origin(e) for e in settings.smart_iss_allowlist if e.startswith(("https://", "http://"))}
    )
    return ["'self'", *origins]


def _page_route(ancestors: list[str]) -> type[APIRoute]:
    """An APIRoute whose handler turns every exception into an error page (never a traceback)."""

    class PageRoute(APIRoute):
        def get_route_handler(self) -> Handler:
            original = super().get_route_handler()

            async def handler(request: Request) -> Response:
                try:
                    return await original(request)
                except errors.SmartError as exc:
                    return error_page(exc, frame_ancestors=ancestors)
                except RequestValidationError:
                    return error_page(errors.bad_request(), frame_ancestors=ancestors)
                except Exception as exc:
                    log.error("SMART %s failed: %s", request.url.path, type(exc).__name__)
                    return error_page(errors.unexpected(), frame_ancestors=ancestors)

            return handler

    return PageRoute
