"""HTML responses of the SMART app: Jinja2 templates (autoescaped) and the headers every page carries.

Headers, on every page and error:

- ``Content-Security-Policy``: nothing may load (``default-src 'none'``) except the page's own
  inline stylesheet and script, allowed by a per-response nonce (the script only saves the
  checklist as it is ticked, to this origin: ``connect-src 'self'``; without it the form's
  button does the same); forms post to this origin only (``form-action 'self'``); and
  ``frame-ancestors`` from the configuration (the EHRs that may frame the app). There is no
  ``X-Frame-Options``: DENY would break the EHR frame, and ALLOW-FROM is obsolete.
- ``Cache-Control: no-store`` (and ``Pragma: no-cache``): the pages hold patient data.
- ``Referrer-Policy: no-referrer``: the page URL names a launch; the registry need not see it.
- ``X-Content-Type-Options: nosniff``.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from typing import Any

from fastapi.responses import HTMLResponse, JSONResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape

from cds_service.smart.errors import SmartError

_ENV = Environment(
    loader=PackageLoader("cds_service.smart", "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


def security_headers(*, frame_ancestors: Iterable[str], nonce: str | None = None) -> dict[str, str]:
    inline = f"'nonce-{nonce}'" if nonce else "'none'"
    ancestors = " ".join(frame_ancestors) or "'none'"
    csp = (
        f"default-src 'none'; style-src {inline}; script-src {inline}; connect-src 'self'; "
        f"img-src data:; form-action 'self'; base-uri 'none'; frame-ancestors {ancestors}"
    )
    return {
        "Content-Security-Policy": csp,
        "Cache-Control": "no-store",
        "Pragma": "no-cache",
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
    }


def render(
    template: str, *, status: int = 200, frame_ancestors: Iterable[str], **context: Any
) -> HTMLResponse:
    nonce = secrets.token_urlsafe(16)
    html = _ENV.get_template(template).render(nonce=nonce, **context)
    headers = security_headers(frame_ancestors=frame_ancestors, nonce=nonce)
    return HTMLResponse(html, status_code=status, headers=headers)


def error_page(error: SmartError, *, frame_ancestors: Iterable[str]) -> HTMLResponse:
    return render(
        "error.html",
        status=error.status,
        frame_ancestors=frame_ancestors,
        title=error.title,
        message=error.message,
        action=error.action,
        status_code=error.status,
    )


def json_response(content: Any, *, frame_ancestors: Iterable[str]) -> Response:
    return JSONResponse(content, headers=security_headers(frame_ancestors=frame_ancestors))
