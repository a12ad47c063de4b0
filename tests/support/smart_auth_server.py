"""A small, real SMART App Launch 2.2 authorization server for tests, fronting a real FHIR server.

sekmet-fhir (our FHIR test server) has no authorization-code flow, so this plays the EHR's part:

- ``GET {root}/fhir/.well-known/smart-configuration``: discovery (``iss`` is ``{root}/fhir``);
- ``GET|POST {root}/authorize``: checks ``response_type=code``, the registered ``client_id`` and exact
  ``redirect_uri``, ``aud`` = our FHIR base, PKCE ``code_challenge`` with ``S256`` (``plain`` refused),
  ``launch`` (an id from ``create_launch``) or ``launch/patient`` (standalone); auto-approves, or
  answers ``error=access_denied`` when the launch says so, redirecting with ``code`` + ``state``;
- ``POST {root}/token``: single-use codes (a replay is ``invalid_grant``), same ``redirect_uri`` and
  client (HTTP Basic when the client has a secret), ``code_verifier`` checked against the challenge;
  answers ``access_token`` (one the FHIR server accepts), ``patient``, ``need_patient_banner``,
  ``appContext`` (a string), ``scope``, ``expires_in``, with ``Cache-Control: no-store``; and when
  ``openid`` was granted and the launch has a ``user``, an OpenID Connect ``id_token``: a real JWT
  (HS256 under a key of this server, which the app does not verify: OIDC Core §3.1.3.7 (6)) with
  ``iss`` (the configuration's ``issuer``, or ``id_token_issuer``), ``aud`` (the client id),
  ``sub`` (the user), ``fhirUser`` (``Practitioner/<user>``), ``iat`` and ``exp``;
- ``{root}/ehr/frame?src=...``: an "EHR" page framing the app at sidebar width;
- ``{root}/fhir/*``: a proxy to the real FHIR server (bodies' base URLs rewritten to ours), so the
  app reads real data under the ``iss`` it was launched with.

Run in a thread: ``with SmartAuthServer(fhir_upstream=..., access_token=..., ...) as auth: ...``.
``ServerThread`` runs any ASGI app (e.g. the service itself) the same way.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlencode

import jwt
import requests
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

CODE_TTL = 60.0


class ServerThread:
    """uvicorn serving ``app`` on 127.0.0.1 (a free port) in a daemon thread."""

    def __init__(self, app: Any) -> None:
        config = uvicorn.Config(
            app, host="127.0.0.1", port=0, log_level="warning", access_log=False, lifespan="off", ws="none"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True, name="test-uvicorn")
        self.port = 0

    def start(self, timeout: float = 10.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("test uvicorn server did not start")
            time.sleep(0.02)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


@dataclass
class LaunchContext:
    """What the EHR knows about one launch; ``deny`` makes the user refuse access."""

    patient: str
    app_context: str | None = None
    deny: bool = False
    access_token: str | None = None
    need_patient_banner: bool = True
    user: str | None = "practitioner-1"  # the id_token's sub; None: no id_token


@dataclass
class _Grant:
    client_id: str
    redirect_uri: str
    challenge: str
    scope: str
    context: LaunchContext
    expires_at: float


@dataclass
class SmartAuthServer:
    fhir_upstream: str
    access_token: str
    client_id: str
    redirect_uris: Sequence[str]
    client_secret: str | None = None
    standalone_patient: str | None = None
    expires_in: int = 3600
    forbidden_patients: set[str] = field(default_factory=set)  # the proxy answers 403 for these
    launches: dict[str, LaunchContext] = field(default_factory=dict)
    authorize_requests: list[dict[str, str]] = field(default_factory=list)
    token_requests: list[dict[str, str]] = field(default_factory=list)
    discovery_requests: int = 0
    id_token_issuer: str | None = None  # None: the configuration's issuer (set another to test refusal)
    _id_token_key: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)
    _codes: dict[str, _Grant] = field(default_factory=dict, repr=False)
    _thread: ServerThread | None = field(default=None, repr=False)

    # ---------------- lifecycle ----------------

    def start(self) -> Self:
        self._thread = ServerThread(self._app())
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._thread.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def root_url(self) -> str:
        assert self._thread is not None, "start() first"
        return self._thread.url

    @property
    def fhir_base(self) -> str:
        """The ``iss`` of launches: our FHIR proxy's base URL."""
        return f"{self.root_url}/fhir"

    def create_launch(
        self,
        *,
        patient: str,
        app_context: str | None = None,
        deny: bool = False,
        access_token: str | None = None,
        need_patient_banner: bool = True,
        user: str | None = "practitioner-1",
    ) -> str:
        """Register an EHR launch and return its opaque ``launch`` id (``user``: who is signed in)."""
        launch_id = secrets.token_urlsafe(12)
        self.launches[launch_id] = LaunchContext(
            patient, app_context, deny, access_token, need_patient_banner, user
        )
        return launch_id

    # ---------------- the app ----------------

    def _app(self) -> FastAPI:
        app = FastAPI()
        app.add_api_route("/fhir/.well-known/smart-configuration", self._configuration, methods=["GET"])
        app.add_api_route("/authorize", self._authorize, methods=["GET", "POST"])
        app.add_api_route("/token", self._token, methods=["POST"])
        app.add_api_route("/fhir/{path:path}", self._proxy, methods=["GET"])
        app.add_api_route("/ehr/frame", self._frame, methods=["GET"])
        return app

    def _frame(self, src: str) -> HTMLResponse:
        return HTMLResponse(ehr_frame_page(src))

    def _configuration(self) -> dict[str, Any]:
        self.discovery_requests += 1
        return {
            "issuer": self.root_url,
            "authorization_endpoint": f"{self.root_url}/authorize",
            "token_endpoint": f"{self.root_url}/token",
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "none"],
            "grant_types_supported": ["authorization_code"],
            "code_challenge_methods_supported": ["S256"],
            "scopes_supported": ["openid", "fhirUser", "launch", "launch/patient", "patient/*.rs"],
            "response_types_supported": ["code"],
            "capabilities": [
                "launch-ehr",
                "launch-standalone",
                "sso-openid-connect",
                "context-ehr-patient",
                "context-standalone-patient",
                "client-public",
                "client-confidential-symmetric",
                "permission-patient",
                "permission-v2",
                "permission-v1",
            ],
        }

    async def _authorize(self, request: Request) -> Response:
        params = dict(request.query_params)
        if request.method == "POST":
            params.update({k: str(v) for k, v in (await request.form()).items()})
        self.authorize_requests.append(params)
        redirect_uri = params.get("redirect_uri", "")
        if params.get("client_id") != self.client_id or redirect_uri not in self.redirect_uris:
            return JSONResponse({"error": "invalid_request", "error_description": "unknown client"}, 400)
        problem, context = self._authorize_problem(params)
        if problem is None and context is not None and context.deny:
            problem = "access_denied"
        if problem is not None or context is None:
            return _redirect(redirect_uri, error=problem or "invalid_request", state=params.get("state"))
        code = secrets.token_urlsafe(24)
        self._codes[code] = _Grant(
            client_id=self.client_id,
            redirect_uri=redirect_uri,
            challenge=params["code_challenge"],
            scope=params.get("scope", ""),
            context=context,
            expires_at=time.monotonic() + CODE_TTL,
        )
        return _redirect(redirect_uri, code=code, state=params.get("state"))

    def _authorize_problem(self, params: dict[str, str]) -> tuple[str | None, LaunchContext | None]:
        if params.get("response_type") != "code":
            return "unsupported_response_type", None
        if params.get("code_challenge_method") != "S256" or not params.get("code_challenge"):
            return "invalid_request", None
        if params.get("aud") != self.fhir_base or not params.get("state"):
            return "invalid_request", None
        scopes = params.get("scope", "").split()
        if "launch" in scopes:
            context = self.launches.get(params.get("launch", ""))
            return (None, context) if context is not None else ("invalid_request", None)
        if "launch/patient" in scopes and self.standalone_patient:
            return None, LaunchContext(patient=self.standalone_patient)
        return "invalid_scope", None

    async def _token(self, request: Request) -> Response:
        form = {k: str(v) for k, v in (await request.form()).items()}
        self.token_requests.append(form)
        if not self._client_ok(request, form):
            return _oauth_error("invalid_client", 401)
        if form.get("grant_type") != "authorization_code":
            return _oauth_error("unsupported_grant_type")
        grant = self._codes.pop(form.get("code", ""), None)  # single use
        verifier = form.get("code_verifier", "")
        if (
            grant is None
            or grant.expires_at < time.monotonic()
            or grant.redirect_uri != form.get("redirect_uri")
            or not secrets.compare_digest(_s256(verifier), grant.challenge)
        ):
            return _oauth_error("invalid_grant")
        body: dict[str, Any] = {
            "access_token": grant.context.access_token or self.access_token,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "scope": grant.scope,
            "patient": grant.context.patient,
            "need_patient_banner": grant.context.need_patient_banner,
        }
        if grant.context.app_context is not None:
            body["appContext"] = grant.context.app_context
        if "openid" in grant.scope.split() and grant.context.user is not None:
            body["id_token"] = self.id_token(grant.context.user)
        return JSONResponse(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})

    def id_token(self, user: str, **claims: Any) -> str:
        """An id_token for ``user`` as this server issues them (``claims`` override)."""
        now = int(time.time())
        payload = {
            "iss": self.id_token_issuer or self.root_url,
            "aud": self.client_id,
            "sub": user,
            "fhirUser": f"Practitioner/{user}",
            "iat": now,
            "exp": now + 300,
            **claims,
        }
        return jwt.encode(payload, self._id_token_key, algorithm="HS256")

    def _client_ok(self, request: Request, form: dict[str, str]) -> bool:
        if self.client_secret is None:
            return form.get("client_id") == self.client_id
        expected = base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
        return secrets.compare_digest(request.headers.get("authorization", ""), f"Basic {expected}")

    def _proxy(self, path: str, request: Request) -> Response:
        if path.removeprefix("Patient/") in self.forbidden_patients:
            return JSONResponse({"resourceType": "OperationOutcome"}, status_code=403)
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "accept")}
        url = f"{self.fhir_upstream.rstrip('/')}/{path}"
        try:
            upstream = requests.get(url, params=request.url.query or None, headers=headers, timeout=30)
        except requests.RequestException:
            return JSONResponse({"resourceType": "OperationOutcome"}, status_code=502)
        body = upstream.content.replace(self.fhir_upstream.rstrip("/").encode(), self.fhir_base.encode())
        media_type = upstream.headers.get("content-type", "application/fhir+json")
        return Response(body, status_code=upstream.status_code, media_type=media_type)


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii", "replace")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _redirect(redirect_uri: str, **params: str | None) -> RedirectResponse:
    query = urlencode({k: v for k, v in params.items() if v is not None})
    separator = "&" if "?" in redirect_uri else "?"
    return RedirectResponse(f"{redirect_uri}{separator}{query}", status_code=302)


def _oauth_error(error: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": error}, status_code=status, headers={"Cache-Control": "no-store"})


def ehr_frame_page(src: str) -> str:
    """An 'EHR' page embedding the app in an iframe at sidebar width (for browser tests)."""
    from html import escape

    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>EHR</title></head><body>'
        '<h1>EHR chart</h1><iframe id="app" title="Trial eligibility" width="360" height="900" '
        f'src="{escape(src, quote=True)}"></iframe></body></html>'
    )
