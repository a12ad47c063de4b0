"""What each SMART route does, apart from FastAPI: launch, callback, the page and its JSON."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import date
from typing import Any

from fastapi import Request
from fastapi.responses import RedirectResponse, Response

from cds_service.engine.loader import Catalog
from cds_service.settings import Settings
from cds_service.singleflight import TtlCache
from cds_service.smart import errors, oauth
from cds_service.smart.pages import json_response, render
from cds_service.smart.record_loader import load_report
from cds_service.smart.sessions import COOKIE_NAME, Launch, Pending, SessionStore
from cds_service.smart.urls import checked_iss
from cds_service.smart.view import banner_view, trial_views

log = logging.getLogger(__name__)
_MAX_PARAM = 4096
DISCOVERY_TTL = 300.0
DISCOVERY_FAILURE_TTL = 5.0


class SmartApp:
    def __init__(
        self,
        *,
        settings: Settings,
        catalog: Catalog,
        sessions: SessionStore,
        today: Callable[[], date],
        frame_ancestors: list[str],
    ) -> None:
        self.settings, self.catalog, self.sessions = settings, catalog, sessions
        self.today, self.frame_ancestors = today, frame_ancestors
        # One discovery per EHR per TTL, shared by concurrent launches; a failure is kept briefly.
        self.discovery: TtlCache[oauth.SmartConfiguration] = TtlCache(
            ttl=DISCOVERY_TTL, failure_ttl=DISCOVERY_FAILURE_TTL
        )

    # ---------------- launch and callback ----------------

    def launch(self, request: Request, *, iss: str | None, launch_id: str | None) -> RedirectResponse:
        raw_iss = iss or self.settings.smart_default_iss
        if not raw_iss:
            raise errors.launch_without_iss()
        if len(raw_iss) > _MAX_PARAM or (launch_id is not None and len(launch_id) > _MAX_PARAM):
            raise errors.bad_request()
        base = checked_iss(raw_iss, self.settings)
        if base is None:
            log.info("SMART launch refused: iss not on the allowlist")
            raise errors.iss_not_allowed()
        try:
            config = self.discovery.get(
                base, lambda: oauth.discover(base, self.settings), wait=self.settings.fhir_total_timeout + 1
            )
        except TimeoutError:  # waited for another launch's discovery of this EHR, in vain
            raise errors.discovery_failed() from None
        state, verifier = oauth.new_secret(), oauth.new_secret()
        redirect_uri = self._redirect_uri(request)
        pending = Pending(
            iss=base,
            verifier=verifier,
            token_endpoint=config.token_endpoint,
            redirect_uri=redirect_uri,
            expires_at=self.sessions.pending_expiry(),
        )
        session_id = self.sessions.begin_authorization(request.cookies.get(COOKIE_NAME), pending, state)
        scope = oauth.scopes(
            self.catalog, style=self.settings.smart_scope_style, ehr_launch=launch_id is not None
        )
        url = oauth.authorize_url(
            config,
            settings=self.settings,
            redirect_uri=redirect_uri,
            scope=scope,
            state=state,
            verifier=verifier,
            aud=raw_iss.strip(),
            launch=launch_id,
        )
        return self._redirect(request, url, session_id)

    def callback(
        self, request: Request, *, code: str | None, state: str | None, error: str | None
    ) -> RedirectResponse:
        session_id = request.cookies.get(COOKIE_NAME)
        pending = self.sessions.take_pending(session_id, state) if state else None
        if error is not None:
            log.info("SMART authorization answered error=%s", error if error.isidentifier() else "?")
            raise errors.authorization_denied() if error == "access_denied" else errors.authorization_failed()
        if pending is None or session_id is None or not code or len(code) > _MAX_PARAM:
            raise errors.bad_state()
        grant = oauth.exchange_code(
            token_endpoint=pending.token_endpoint,
            code=code,
            verifier=pending.verifier,
            redirect_uri=pending.redirect_uri,
            settings=self.settings,
        )
        launch = Launch(
            iss=pending.iss,
            patient=grant.patient,
            access_token=grant.access_token,
            need_patient_banner=grant.need_patient_banner,
            app_context=grant.app_context,
            expires_at=self.sessions.clock() + (grant.expires_in or self.sessions.ttl),
        )
        new_session_id, context_id = self.sessions.complete(session_id, launch)
        target = f"{request.url_for('smart_app').path}?ctx={context_id}"
        return self._redirect(request, target, new_session_id)

    # ---------------- the report ----------------

    def page(self, request: Request, *, context_id: str | None) -> Response:
        launch = self._launch(request, context_id)
        patient, report = load_report(
            launch, settings=self.settings, catalog=self.catalog, as_of=self.today()
        )
        first = launch.app_context.get("trial")
        return render(
            "app.html",
            frame_ancestors=self.frame_ancestors,
            banner=banner_view(patient) if launch.need_patient_banner else None,
            trials=trial_views(
                report, catalog=self.catalog, iss=launch.iss, first=first if isinstance(first, str) else None
            ),
            as_of=report.as_of,
            report_url=f"{request.url_for('smart_report').path}?ctx={context_id}",
        )

    def report_json(self, request: Request, *, context_id: str | None) -> Response:
        launch = self._launch(request, context_id)
        _, report = load_report(launch, settings=self.settings, catalog=self.catalog, as_of=self.today())
        return json_response(report.to_json_dict(), frame_ancestors=self.frame_ancestors)

    # ---------------- helpers ----------------

    def _launch(self, request: Request, context_id: str | None) -> Launch:
        launch = self.sessions.launch(request.cookies.get(COOKIE_NAME), context_id)
        if launch is None:
            raise errors.session_expired()
        return launch

    def _redirect_uri(self, request: Request) -> str:
        if self.settings.smart_redirect_uri:
            return self.settings.smart_redirect_uri
        path = request.url_for("smart_callback").path
        if self.settings.public_base_url:
            return self.settings.public_base_url.rstrip("/") + path
        return str(request.url_for("smart_callback"))

    def _redirect(self, request: Request, url: str, session_id: str) -> RedirectResponse:
        response = RedirectResponse(url, status_code=302, headers=_NO_STORE)
        path = request.url_for("smart_launch").path.rsplit("/", 1)[0] or "/"
        response.headers.append(
            "set-cookie", session_cookie(session_id, path=path, max_age=self.sessions.ttl)
        )
        return response


def session_cookie(session_id: str, *, path: str, max_age: float) -> str:
    """The session cookie, fit for an EHR's cross-site iframe.

    ``SameSite=None; Secure`` lets it travel in the frame; ``Partitioned`` (CHIPS) keys it to the
    EHR's top-level site, so browsers that block third-party cookies still keep it, and another
    site framing the app never sees this session. Written by hand: Starlette only emits
    ``Partitioned`` on Python 3.14+.
    """
    return (
        f"{COOKIE_NAME}={session_id}; Max-Age={int(max_age)}; Path={path}; "
        "Secure; HttpOnly; SameSite=None; Partitioned"
    )


_NO_STORE: dict[str, Any] = {
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "Referrer-Policy": "no-referrer",
}
