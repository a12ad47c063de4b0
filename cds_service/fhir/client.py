"""FhirClient: reads and paged searches against one FHIR server, within one overall deadline.

Used when a hook call lacks prefetch and by the SMART app. The base URL must already have passed
``allowlist.check_fhir_server``; the client only keeps every later request (``next`` links) under it.

Why it looks the way it does:

* A search returns *all* its matches or fails: eligibility decided on a silently truncated record
  could be wrong, so exceeding ``fhir_page_limit`` is an error, never a short Bundle.
* Every call has per-request (connect, read) timeouts and one overall deadline
  (``fhir_total_timeout``) across all its pages and parallel searches, so a slow EHR cannot hold a
  hook request (and a worker) for long. Bodies are streamed and bounded by ``max_body_bytes``.
* Messages and logs name the resource type and what went wrong, never the token, a patient id or
  a URL with its query string: they end up in logs and in answers to the EHR.

Thread safety: ``fetch_all`` shares this instance's one ``requests.Session`` between its worker
threads. That is sound here because the session's state is only written in ``__init__``; its
connection pool (urllib3) is thread-safe and sized to ``fhir_parallel_searches`` so no worker waits
for or discards a connection. One client serves one hook call or SMART session; don't share it
between unrelated callers.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, ParamSpec, Self, TypeVar
from urllib.parse import parse_qsl, urljoin, urlsplit

import orjson
import requests
from requests.auth import AuthBase
from urllib3.exceptions import ProtocolError, ReadTimeoutError

from cds_service import net
from cds_service.errors import FhirError, FhirTimeout, FhirUnauthorized, InvalidInput
from cds_service.fhir.allowlist import same_origin_and_under
from cds_service.fhir.ids import is_fhir_id
from cds_service.ops import metrics
from cds_service.settings import Settings

log = logging.getLogger(__name__)

Json = dict[str, Any]
FHIR_JSON = "application/fhir+json"
_TYPE = re.compile(r"[A-Z][A-Za-z]{1,63}")
_READ = re.compile(r"([A-Z][A-Za-z]{1,63})/[A-Za-z0-9\-.]{1,64}")
_UNSAFE_QUERY = re.compile(r"[\x00-\x20\x7f#]")
P = ParamSpec("P")
R = TypeVar("R")


@dataclass
class _Budget:
    """One call's overall deadline, shared by all its pages and parallel searches, and the first
    failure among them (recorded by the failing worker itself, so that no sibling starts after it)."""

    total: float
    ends: float
    failure: BaseException | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def remaining(self) -> float:
        """Seconds left; raises when they are spent or a sibling search already failed."""
        if self.failure is not None:
            raise FhirError("FHIR fetch abandoned after another search failed", kind="abandoned")
        left = self.ends - time.monotonic()
        if left <= 0:
            raise FhirTimeout(f"FHIR server did not answer within {self.total:g} s in total")
        return left

    def fail(self, exc: BaseException) -> None:
        with self._lock:
            if self.failure is None:
                self.failure = exc


class _BearerAuth(AuthBase):
    """Sets the bearer header; also stops requests from sending ~/.netrc credentials instead."""

    def __init__(self, token: str | None) -> None:
        self._token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        if self._token:
            request.headers["Authorization"] = f"Bearer {self._token}"
        return request


def _counted(method: Callable[P, R]) -> Callable[P, R]:
    """Count a public call's failure once, by kind (``cds_fhir_fetch_failures_total``)."""

    @functools.wraps(method)
    def counted(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except FhirError as exc:
            metrics.fhir_failure(exc.kind)
            raise

    return counted


class FhirClient:
    """A FHIR R4 client for one server and one access token; close it (or use ``with``)."""

    def __init__(self, *, base_url: str, token: str | None, settings: Settings) -> None:
        self._base = base_url.rstrip("/")
        self._settings = settings
        self._session = net.session(pool_maxsize=settings.fhir_parallel_searches)
        self._session.headers["Accept"] = FHIR_JSON
        self._session.auth = _BearerAuth(token)
        self._lock = threading.Lock()
        self._requests = 0

    @property
    def base_url(self) -> str:
        return self._base

    @property
    def requests_made(self) -> int:
        """HTTP requests sent so far (for tests and metrics)."""
        return self._requests

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FhirClient({self._base!r})"  # never the token

    @_counted
    def read(self, path: str) -> Json | None:
        """``Type/id`` → the resource, or None when the server says 404/410."""
        return self._read(path, self._budget())

    @_counted
    def search(self, query: str) -> Json:
        """``Type?params`` → one searchset Bundle holding the entries of every page."""
        return self._search(query, self._budget())

    @_counted
    def continue_bundle(self, bundle: Mapping[str, Any]) -> Json:
        """A (prefetched) searchset Bundle completed with the pages its ``next`` link leads to."""
        if not isinstance(bundle, Mapping) or bundle.get("resourceType") != "Bundle":
            raise InvalidInput("prefetched search result is not a Bundle")
        first = _as_bundle(dict(bundle), "prefetched search")
        link = _next_link(first, self._base + "/", "prefetched search")
        if link is None:
            return first
        path = urlsplit(link).path.rstrip("/").rsplit("/", 1)[-1]
        what = f"{path if _TYPE.fullmatch(path) else 'FHIR'} search"
        return self._follow(first, url=self._base + "/", what=what, budget=self._budget())

    @_counted
    def fetch_all(self, queries: Mapping[str, str]) -> dict[str, Any]:
        """Run reads and searches in parallel within one deadline: key → resource, Bundle or None.

        The first failure abandons the rest (pending ones never start, running ones stop at their
        next request) and is raised: a partial record must not be mistaken for a whole one.
        """
        if not queries:
            return {}
        budget = self._budget()
        workers = min(self._settings.fhir_parallel_searches, len(queries))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fhir-fetch") as pool:
            futures = {  # each in a copy of this context: log lines keep the request id
                key: pool.submit(contextvars.copy_context().run, self._fetch_one, q, budget)
                for key, q in queries.items()
            }
            wait(futures.values(), return_when=FIRST_EXCEPTION)
            if budget.failure is not None:
                for future in futures.values():
                    future.cancel()
                raise budget.failure
        return {key: future.result() for key, future in futures.items()}

    def _budget(self) -> _Budget:
        total = self._settings.fhir_total_timeout
        return _Budget(total=total, ends=time.monotonic() + total)

    def _fetch_one(self, query: str, budget: _Budget) -> Json | None:
        try:
            if "?" not in query and _READ.fullmatch(query):
                return self._read(query, budget)
            return self._search(query, budget)
        except BaseException as exc:
            budget.fail(exc)
            raise

    def _read(self, path: str, budget: _Budget) -> Json | None:
        match = _READ.fullmatch(path)
        if match is None or not is_fhir_id(path.split("/", 1)[1]):
            raise InvalidInput("FHIR read must be Type/id")
        what = f"{match[1]} read"
        started = time.monotonic()
        resource = self._get(f"{self._base}/{path}", what=what, budget=budget, missing_ok=True)
        if resource is not None and resource.get("resourceType") != match[1]:
            raise FhirError(
                f"FHIR server sent a malformed answer for {what} (wrong resourceType)", kind="invalid"
            )
        log.debug("FHIR %s: 1 request, %.0f ms", what, (time.monotonic() - started) * 1000)
        return resource

    def _search(self, query: str, budget: _Budget) -> Json:
        path, _, params = query.partition("?")
        if not _TYPE.fullmatch(path) or _UNSAFE_QUERY.search(params):
            raise InvalidInput("FHIR search must be Type?params")
        what = f"{path} search"
        if not any(name == "_count" for name, _ in parse_qsl(params, keep_blank_values=True)):
            params = "&".join(p for p in (params, f"_count={self._settings.fhir_page_size}") if p)
        url = f"{self._base}/{path}?{params}"
        first = self._page(url, what=what, budget=budget)
        return self._follow(first, url=url, what=what, budget=budget)

    def _follow(self, first: Json, *, url: str, what: str, budget: _Budget) -> Json:
        """Fetch every ``next`` page after ``first`` and merge all entries into one Bundle."""
        started = time.monotonic()
        limit = self._settings.fhir_page_limit
        entries = list(first.get("entry") or [])
        pages, page = 1, first
        while (link := _next_link(page, url, what)) is not None:
            if not same_origin_and_under(link, self._base):
                raise FhirError(
                    f"FHIR server sent a next link outside its base URL for {what}", kind="paging"
                )
            if pages >= limit:
                raise FhirError(
                    f"{what} has more than {limit} pages (fhir_page_limit); not truncating", kind="paging"
                )
            page = self._page(link, what=what, budget=budget)
            url, pages = link, pages + 1
            entries.extend(page.get("entry") or [])
        log.debug("FHIR %s: %d page(s), %.0f ms", what, pages, (time.monotonic() - started) * 1000)
        merged = {key: value for key, value in first.items() if key != "link"}
        merged["entry"] = entries
        return merged

    def _page(self, url: str, *, what: str, budget: _Budget) -> Json:
        page = self._get(url, what=what, budget=budget)
        if page is None:  # unreachable: missing_ok is False
            raise FhirError(f"FHIR server sent no page for {what}", kind="invalid")
        return _as_bundle(page, what)

    def _get(self, url: str, *, what: str, budget: _Budget, missing_ok: bool = False) -> Json | None:
        """GET one URL within the budget; map every failure to a FhirError naming only ``what``.

        The budget's end is enforced on the socket (``net``): a server that drips bytes is cut off
        when the hook's total deadline passes, whatever stage the answer is in."""
        budget.remaining()
        s = self._settings
        with self._lock:
            self._requests += 1
        started = time.monotonic()
        try:
            reply = net.fetch(
                self._session,
                "GET",
                url,
                ends=budget.ends,
                timeout=(s.fhir_connect_timeout, s.fhir_read_timeout),
                max_bytes=s.max_body_bytes,
            )
        except net.BodyTooLarge:
            raise FhirError(
                f"FHIR server sent more than {s.max_body_bytes} bytes for {what}", kind="too-large"
            ) from None
        except net.DeadlineExceeded:
            raise FhirTimeout(f"FHIR server did not answer within {budget.total:g} s in total") from None
        except requests.RequestException as exc:
            raise _translate(exc, what) from None
        finally:
            metrics.FHIR_FETCH_DURATION.observe(time.monotonic() - started)
        if missing_ok and reply.status in (404, 410):
            return None
        _check_status(reply.status, what)
        return _parse_json(reply.body, what)


def _check_status(status: int, what: str) -> None:
    if status in (401, 403):
        raise FhirUnauthorized(f"FHIR server refused the access token (HTTP {status})", status=status)
    if status != 200:
        raise FhirError(f"FHIR server answered HTTP {status} for {what}")


def _translate(exc: requests.RequestException, what: str) -> FhirError:
    """A message-safe FhirError for a requests failure (whose own text carries the URL)."""
    cause = exc.args[0] if exc.args else None
    if isinstance(exc, requests.Timeout) or isinstance(cause, ReadTimeoutError):
        return FhirTimeout(f"FHIR server did not answer in time for {what}")
    if isinstance(exc, requests.exceptions.ChunkedEncodingError | requests.exceptions.ContentDecodingError):
        return FhirError(f"FHIR server sent a malformed page for {what} (broken transfer)", kind="invalid")
    if isinstance(exc, requests.ConnectionError):
        if isinstance(cause, ProtocolError):
            return FhirError(f"FHIR server closed the connection during {what}")
        return FhirError("FHIR server unreachable")
    return FhirError(f"FHIR request failed for {what} ({type(exc).__name__})")


def _parse_json(body: bytes, what: str) -> Json:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise FhirError(f"FHIR server sent a malformed page for {what} (not JSON)", kind="invalid") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("resourceType"), str):
        raise FhirError(f"FHIR server sent a malformed page for {what} (not a FHIR resource)", kind="invalid")
    return doc


def _as_bundle(doc: Json, what: str) -> Json:
    """``doc`` if it is a Bundle whose ``entry`` and ``link`` are lists of objects."""
    ok = doc.get("resourceType") == "Bundle" and all(
        isinstance(doc.get(key, []), list) and all(isinstance(item, dict) for item in doc.get(key, []))
        for key in ("entry", "link")
    )
    if not ok:
        raise FhirError(f"FHIR server sent a malformed page for {what} (not a Bundle)", kind="invalid")
    return doc


def _next_link(bundle: Json, current_url: str, what: str) -> str | None:
    """The absolute URL of the ``next`` link (relative ones resolved against the page's URL)."""
    for link in bundle.get("link") or ():
        if link.get("relation") == "next":
            url = link.get("url")
            if not isinstance(url, str) or not url:
                raise FhirError(
                    f"FHIR server sent a malformed page for {what} (next link has no url)", kind="invalid"
                )
            return urljoin(current_url, url)
    return None
