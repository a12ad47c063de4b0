"""A FHIR Bulk Data ($export) client with SMART Backend Services authorization.

Kick-off (``Prefer: respond-async``) at system, ``Patient`` or ``Group/<id>`` level; status polling
that honours ``Retry-After`` (seconds or an HTTP date, capped) and reports ``X-Progress``; file
downloads, with the token when the manifest says ``requiresAccessToken``; DELETE to cancel or to
release the files. Every URL the client follows (the status URL, each file, each redirect, the
token endpoint) must be https (http only on loopback when allowed) and on the FHIR server's origin
or an allowed one: the token goes nowhere else. Every wait has a deadline: one per request
(connect, read) and one for the whole export that no ``Retry-After`` or slow body can stretch.
429 and 5xx answers are retried a bounded number of times; an OperationOutcome's text is what an
error says. Nothing here logs or prints a token.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import orjson
import requests

from cds_service.errors import FhirError, FhirTimeout, FhirUnauthorized, InvalidInput
from cds_service.fhir.allowlist import is_loopback
from cds_service.fhir.backend_auth import ASSERTION_TYPE, ClientKey, client_assertion

FHIR_JSON = "application/fhir+json"
NDJSON = "application/fhir+ndjson"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_REDIRECTS = 3


@dataclass(frozen=True)
class BulkSettings:
    base_url: str
    client_id: str | None = None
    key: ClientKey | None = None
    jku: str | None = None
    scope: str = "system/*.rs"
    allow_origins: tuple[str, ...] = ()
    allow_http_loopback: bool = False
    connect_timeout: float = 10.0
    read_timeout: float = 120.0
    deadline: float = 6 * 3600.0  # seconds, the whole export
    max_retries: int = 5
    max_wait: float = 120.0  # the most one Retry-After may make us wait
    default_wait: float = 2.0


def outcome_text(body: bytes, *, limit: int = 300) -> str:
    """The issue texts of an OperationOutcome body, on one clean line (or a short fallback)."""
    from cds_service.screen.source import clean_text
    from cds_service.screen.source import outcome_text as text_of

    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "(no OperationOutcome)"
    if isinstance(doc, dict) and doc.get("resourceType") == "OperationOutcome":
        return text_of(doc, limit=limit)
    if isinstance(doc, dict) and isinstance(doc.get("error"), str):  # an OAuth error
        return clean_text(f"{doc['error']}: {doc.get('error_description', '')}", limit=limit)
    return "(no OperationOutcome)"


def _transient(body: bytes) -> bool:
    """A 5xx is retried unless its OperationOutcome says the export failed for good."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return True
    if not isinstance(doc, dict) or doc.get("resourceType") != "OperationOutcome":
        return True
    codes = {i.get("code") for i in doc.get("issue") or () if isinstance(i, dict)}
    return "transient" in codes or not codes


def retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (now if now is not None else time.time()))


@dataclass
class BulkClient:
    settings: BulkSettings
    session: requests.Session = field(default_factory=requests.Session)
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    _token: tuple[str, float] | None = None
    _started: float = 0.0

    def __post_init__(self) -> None:
        self.base = self.settings.base_url.rstrip("/")
        self._started = self.clock()
        self._origins = {_origin(self.base), *(_origin(o) for o in self.settings.allow_origins)}
        self.check_url(self.base)

    # ---- URLs, deadlines ----

    def check_url(self, url: str) -> str:
        """Refuse a URL off the allowed origins, or plain http off loopback (message names no URL)."""
        parts = urlsplit(url)
        if parts.scheme not in ("https", "http") or not parts.hostname or parts.username or parts.password:
            raise FhirError("the server sent a URL that is not an absolute http(s) URL; not followed")
        if parts.scheme == "http" and not (self.settings.allow_http_loopback and is_loopback(parts.hostname)):
            raise FhirError("the server sent a plain-http URL (https required); not followed")
        if _origin(url) not in self._origins:
            raise FhirError("the server sent a URL on another origin (see --allow-origin); not followed")
        return url

    def remaining(self) -> float:
        left = self.settings.deadline - (self.clock() - self._started)
        if left <= 0:
            raise FhirTimeout(
                f"the export did not finish within {self.settings.deadline:.0f} s; rerun to resume"
            )
        return left

    def _timeout(self) -> tuple[float, float]:
        left = self.remaining()
        return (min(self.settings.connect_timeout, left), min(self.settings.read_timeout, left))

    def wait(self, seconds: float | None) -> None:
        delay = self.settings.default_wait if seconds is None else seconds
        self.sleep(max(0.0, min(delay, self.settings.max_wait, self.remaining())))

    # ---- authorization ----

    def token(self) -> str | None:
        """A Backend Services access token (None without client credentials), renewed before expiry."""
        if self.settings.key is None or not self.settings.client_id:
            return None
        if self._token is not None and self._token[1] > self.clock():
            return self._token[0]
        token_url = self._token_endpoint()
        assertion = client_assertion(
            self.settings.key, client_id=self.settings.client_id, token_url=token_url, jku=self.settings.jku
        )
        form = {
            "grant_type": "client_credentials",
            "scope": self.settings.scope,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion,
        }
        resp = self._send("POST", token_url, data=form, headers={"Accept": "application/json"}, auth=False)
        if resp.status_code != 200:
            text = outcome_text(resp.content)
            raise FhirUnauthorized(
                f"the token endpoint refused the client: HTTP {resp.status_code}: {text}",
                status=resp.status_code,
            )
        try:
            doc = orjson.loads(resp.content)
            access, lifetime = str(doc["access_token"]), float(doc.get("expires_in", 300))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise FhirError("the token endpoint's answer has no access_token") from None
        self._token = (access, self.clock() + max(lifetime - 60, lifetime / 2))
        return access

    def _token_endpoint(self) -> str:
        resp = self._send("GET", f"{self.base}/.well-known/smart-configuration", auth=False)
        if resp.status_code != 200:
            raise FhirError(f"no SMART configuration at the server (HTTP {resp.status_code})")
        try:
            url = orjson.loads(resp.content)["token_endpoint"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise FhirError("the SMART configuration has no token_endpoint") from None
        if not isinstance(url, str):
            raise FhirError("the SMART configuration has no token_endpoint")
        return self.check_url(url)

    # ---- HTTP ----

    def _send(
        self, method: str, url: str, *, auth: bool, stream: bool = False, **kwargs: Any
    ) -> requests.Response:
        """One request with redirects followed by hand (each one checked), 429/5xx retried."""
        attempts = 0
        while True:
            resp = self._once(method, url, auth=auth, stream=stream, **kwargs)
            if resp.status_code == 401 and auth and self._token is not None:
                self._token = None  # expired early: one fresh token, then the answer stands
                resp.close()
                resp = self._once(method, url, auth=auth, stream=stream, **kwargs)
            if resp.status_code not in RETRY_STATUSES or attempts >= self.settings.max_retries:
                return resp
            if resp.status_code != 429 and not _transient(resp.content):
                return resp
            attempts += 1
            resp.close()
            self.wait(retry_after(resp.headers.get("Retry-After")) or min(2.0**attempts, 60.0))

    def _once(self, method: str, url: str, *, auth: bool, stream: bool, **kwargs: Any) -> requests.Response:
        headers = dict(kwargs.pop("headers", None) or {})
        for _ in range(MAX_REDIRECTS + 1):
            self.check_url(url)
            if auth:
                token = self.token()
                if token is not None:
                    headers["Authorization"] = f"Bearer {token}"
            try:
                resp = self.session.request(
                    method,
                    url,
                    headers=headers,
                    timeout=self._timeout(),
                    allow_redirects=False,
                    stream=stream,
                    **kwargs,
                )
            except requests.Timeout:
                raise FhirTimeout("the FHIR server did not answer in time") from None
            except requests.RequestException as exc:
                raise FhirError(f"the FHIR server could not be reached ({type(exc).__name__})") from None
            if resp.status_code not in (301, 302, 303, 307, 308) or "Location" not in resp.headers:
                return resp
            url = requests.compat.urljoin(url, resp.headers["Location"])
            resp.close()
        raise FhirError("too many redirects")

    # ---- the export ----

    def kickoff(
        self,
        *,
        level: str,
        group: str | None,
        types: list[str],
        type_filters: list[str],
        since: str | None,
    ) -> str:
        """Start an export; returns the status URL (checked)."""
        path = {"system": "$export", "patient": "Patient/$export"}.get(level) or f"Group/{group}/$export"
        params: list[tuple[str, str]] = [("_outputFormat", NDJSON), ("_type", ",".join(sorted(types)))]
        params += [("_typeFilter", f) for f in type_filters]
        if since:
            params.append(("_since", since))
        url = f"{self.base}/{path}?{urlencode(params, safe=',|:/')}"
        headers = {"Accept": FHIR_JSON, "Prefer": "respond-async"}
        resp = self._send("GET", url, auth=True, headers=headers)
        if resp.status_code != 202 or not resp.headers.get("Content-Location"):
            raise FhirError(f"export kick-off refused: HTTP {resp.status_code}: {outcome_text(resp.content)}")
        return self.check_url(requests.compat.urljoin(url, resp.headers["Content-Location"]))

    def poll(self, status_url: str, on_progress: Callable[[str], None]) -> dict[str, Any]:
        """Poll until the manifest comes (200); raise with the server's text when the export fails."""
        while True:
            resp = self._send("GET", status_url, auth=True, headers={"Accept": "application/json"})
            if resp.status_code == 200:
                try:
                    manifest = orjson.loads(resp.content)
                except orjson.JSONDecodeError:
                    raise FhirError("the export's manifest is not JSON") from None
                if not isinstance(manifest, dict) or not isinstance(manifest.get("output", []), list):
                    raise FhirError("the export's manifest has no output list")
                return manifest
            if resp.status_code != 202:
                raise FhirError(f"the export failed: HTTP {resp.status_code}: {outcome_text(resp.content)}")
            from cds_service.screen.source import clean_text

            on_progress(clean_text(resp.headers.get("X-Progress", "in progress"), limit=80))
            self.wait(retry_after(resp.headers.get("Retry-After")))

    def files(self, manifest: Mapping[str, Any], key: str = "output") -> Iterator[tuple[str, str]]:
        """(type, URL) of each file the manifest lists under ``key``, every URL checked."""
        for item in manifest.get(key) or ():
            if isinstance(item, dict) and isinstance(item.get("url"), str):
                yield str(item.get("type") or ""), self.check_url(item["url"])

    def download(self, url: str, dest: Path, *, with_token: bool) -> int:
        """Stream one file to ``dest`` (via ``.part``); the whole-export deadline bounds it."""
        headers = {"Accept": NDJSON}
        resp = self._send("GET", url, auth=with_token, stream=True, headers=headers)
        with resp:
            if resp.status_code != 200:
                raise FhirError(f"an export file could not be downloaded: HTTP {resp.status_code}")
            part = dest.with_name(dest.name + ".part")
            size = 0
            with open(part, "wb") as f:
                for block in resp.iter_content(1 << 20):
                    self.remaining()
                    f.write(block)
                    size += len(block)
        part.replace(dest)
        return size

    def cancel(self, status_url: str) -> int | None:
        """DELETE the export (cancel it, or release its files); best effort, within a short timeout.

        Returns the HTTP status (None when the server could not be reached).
        """
        try:
            self.check_url(status_url)
            token = self.token() if self._token is not None else None
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            with self.session.delete(
                status_url, headers=headers, timeout=(5, 10), allow_redirects=False
            ) as resp:
                return resp.status_code
        except (requests.RequestException, FhirError, InvalidInput):
            return None


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    default = {"https": 443, "http": 80}.get(scheme)
    return scheme, (parts.hostname or "").lower(), None if port == default else port
