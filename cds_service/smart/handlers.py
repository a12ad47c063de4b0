"""What each SMART route does, apart from FastAPI: launch, callback, the page and its JSON, an
evidence entry, and saving the reviewer's checklist."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import RedirectResponse, Response

from cds_service.engine.loader import Catalog
from cds_service.engine.report import EligibilityReport
from cds_service.ops.audit import Pseudonyms
from cds_service.portfolio import Portfolio
from cds_service.settings import Settings
from cds_service.singleflight import TtlCache
from cds_service.smart import errors, identity, oauth
from cds_service.smart.checklist import ChecklistStore, Owner, parse_form
from cds_service.smart.evidence import back_anchor, load_evidence, parse_reference
from cds_service.smart.pages import json_response, render
from cds_service.smart.record_loader import load_report
from cds_service.smart.resource_view import code_names, readable
from cds_service.smart.sessions import COOKIE_NAME, Launch, Pending, SessionStore
from cds_service.smart.urls import checked_iss
from cds_service.smart.view import BannerView, banner_view, trial_views

log = logging.getLogger(__name__)
_MAX_PARAM = 4096
DISCOVERY_TTL = 300.0
DISCOVERY_FAILURE_TTL = 5.0


@dataclass(frozen=True)
class ChecklistForm:
    """What the page's checklist forms need: where to post, the launch, its CSRF token."""

    action: str
    context_id: str
    token: str
    per_user: bool


class SmartApp:
    def __init__(
        self,
        *,
        settings: Settings,
        catalog: Catalog,
        portfolio: Portfolio,
        sessions: SessionStore,
        checklist: ChecklistStore,
        pseudonyms: Pseudonyms,
        today: Callable[[], date],
        frame_ancestors: list[str],
    ) -> None:
        self.settings, self.catalog, self.portfolio = settings, catalog, portfolio
        self.sessions, self.checklist, self.pseudonyms = sessions, checklist, pseudonyms
        self.today, self.frame_ancestors = today, frame_ancestors
        self.code_names = code_names(catalog)
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
            id_issuer=config.issuer or base,
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
            user_key=identity.user_key(
                grant.id_token,
                issuer=pending.id_issuer or pending.iss,
                client_id=self.settings.smart_client_id,
                pseudonyms=self.pseudonyms,
            ),
        )
        new_session_id, context_id = self.sessions.complete(session_id, launch)
        target = f"{request.url_for('smart_app').path}?ctx={context_id}"
        return self._redirect(request, target, new_session_id)

    # ---------------- the report ----------------

    def page(self, request: Request, *, context_id: str | None, saved: str | None = None) -> Response:
        launch = self._launch(request, context_id)
        context_id = context_id or ""  # _launch refused a missing one
        patient, report = self._report(launch)
        owner = self._owner(launch, context_id)
        stored = self.checklist.load(owner, self._patient_key(launch), [t.trial for t in report.trials])
        first = launch.app_context.get("trial")
        evidence_url = f"{request.url_for('smart_evidence').path}?{urlencode({'ctx': context_id})}"
        return render(
            "app.html",
            frame_ancestors=self.frame_ancestors,
            banner=self._banner(launch, patient, as_of=date.fromisoformat(report.as_of)),
            trials=trial_views(
                report,
                catalog=self.catalog,
                portfolio=self.portfolio,
                evidence_url=evidence_url,
                first=first if isinstance(first, str) else None,
                saved=stored,
            ),
            as_of=report.as_of,
            site=self.portfolio.site,
            zone=self.settings.site_timezone,
            form=ChecklistForm(
                action=request.url_for("smart_checklist").path,
                context_id=context_id,
                token=self.sessions.form_token(context_id),
                per_user=owner.per_user,
            ),
            saved=saved,
            report_url=f"{request.url_for('smart_report').path}?{urlencode({'ctx': context_id})}",
        )

    def report_json(self, request: Request, *, context_id: str | None) -> Response:
        _, report = self._report(self._launch(request, context_id))
        return json_response(report.to_json_dict(), frame_ancestors=self.frame_ancestors)

    def evidence(
        self, request: Request, *, context_id: str | None, ref: str | None, at: str | None
    ) -> Response:
        """One evidence entry of this launch's patient, read server-side and shown readably."""
        launch = self._launch(request, context_id)
        rtype, rid = parse_reference(ref)
        resource, medication, patient = load_evidence(launch, rtype, rid, settings=self.settings)
        anchor = back_anchor(at)
        back = f"{request.url_for('smart_app').path}?{urlencode({'ctx': context_id})}"
        return render(
            "evidence.html",
            frame_ancestors=self.frame_ancestors,
            banner=self._banner(launch, patient, as_of=self.today()) if patient is not None else None,
            item=readable(resource, tz=self.settings.tz(), medication=medication, names=self.code_names),
            back_url=f"{back}#{anchor}" if anchor else back,
            zone=self.settings.site_timezone,
        )

    def save_checklist(self, request: Request, body: bytes) -> Response:
        """Store a trial's checklist for this user (or launch) and patient; CSRF-checked."""
        form = parse_form(body, criteria_of=self._manual_criteria)
        launch = self._launch(request, form.context_id)
        if not self.sessions.form_token_ok(form.context_id, form.token):
            log.warning("SMART checklist refused: the form's CSRF token does not match its launch")
            raise errors.form_expired()
        owner = self._owner(launch, form.context_id)
        self.checklist.save(owner, self._patient_key(launch), form.trial, form.items)
        if "application/json" in request.headers.get("accept", ""):
            return json_response(
                {"saved": True, "kept": "user" if owner.per_user else "launch"},
                frame_ancestors=self.frame_ancestors,
            )
        query = urlencode({"ctx": form.context_id, "saved": form.trial})
        target = f"{request.url_for('smart_app').path}?{query}#trial-{form.trial}-checklist"
        return RedirectResponse(target, status_code=303, headers=_NO_STORE)

    # ---------------- helpers ----------------

    def _report(self, launch: Launch) -> tuple[dict[str, Any], EligibilityReport]:
        return load_report(
            launch,
            settings=self.settings,
            catalog=self.catalog,
            as_of=self.today(),
            trial_ids=self.portfolio.for_clinicians(),
        )

    def _banner(self, launch: Launch, patient: dict[str, Any], *, as_of: date) -> BannerView | None:
        return banner_view(patient, as_of=as_of) if launch.need_patient_banner else None

    def _owner(self, launch: Launch, context_id: str) -> Owner:
        """The signed-in user's checklist; without one, this launch's (deleted when it expires)."""
        if launch.user_key:
            return self.checklist.user_owner(launch.user_key)
        return Owner(self.pseudonyms.of(f"launch|{context_id}"), launch.expires_at, per_user=False)

    def _patient_key(self, launch: Launch) -> str:
        return self.pseudonyms.of(launch.patient)

    def _manual_criteria(self, trial_id: str) -> set[str] | None:
        if trial_id not in self.portfolio.for_clinicians():
            return None
        return {c.id for c in self.catalog.trial(trial_id).criteria if c.manual}

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
