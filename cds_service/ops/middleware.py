"""ASGI middleware, outermost first: request context and access log, hook observation, body limit.

- ``RequestContext``: the request id (``X-Request-ID`` in, checked, and out), one access-log line
  (method, path with control characters escaped, status, time: never the query string, which holds
  SMART codes, nor headers, which hold tokens), and the after-response actions (``CLEANUP_KEY``).
- ``HookObserver``: for the hook and feedback endpoints, the latency histogram by outcome and the
  audit row of every call that did not write its own (errors, 413s, crashes), see ``ops.audit``.
- ``BodyLimit``: 413 at once for a declared Content-Length over the limit; a body streamed without
  one is counted as the app reads it, so the JWT (checked before the body is read) comes first and
  the read stops with ``RequestTooLarge`` (413) at the limit. Nothing is buffered here.
"""

from __future__ import annotations

import contextlib
import logging
import time

import orjson
from fastapi.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cds_service.errors import AuditUnavailable, RequestTooLarge
from cds_service.ops import metrics
from cds_service.ops.audit import AuditEntry, AuditLog
from cds_service.ops.logging import escape_controls, new_request_id, request_id

CLEANUP_KEY = "cds_service.after_response"
AUDIT_KEY = "cds_service.audit"
log = logging.getLogger("cds_service.access")


class RequestContext:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        incoming = _header(scope, b"x-request-id")
        rid = new_request_id(incoming)
        token = request_id.set(rid)
        status = 500

        async def record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            elapsed = (time.perf_counter() - started) * 1000
            path = escape_controls(scope["path"])
            log.info("%s %s %d %.0f ms", scope["method"], path, status, elapsed)
            for action in scope.pop(CLEANUP_KEY, ()):  # after the answer is out, even on errors
                await run_in_threadpool(action)
            request_id.reset(token)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers") or ():
        if key == name:
            return bytes(value).decode("latin-1")
    return None


class HookObserver:
    """Metrics and the fallback audit row for the hook (``hook_path``) and feedback endpoints."""

    def __init__(self, app: ASGIApp, *, hook_path: str, feedback_path: str, audit: AuditLog) -> None:
        self.app = app
        self.kinds = {hook_path: "hook", feedback_path: "feedback"}
        self.audit = audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = self.kinds.get(scope.get("path", "")) if scope["type"] == "http" else None
        if kind is None or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        entry = AuditEntry(kind=kind, started=time.perf_counter(), request_id=request_id.get())
        scope[AUDIT_KEY] = entry
        status = 500

        async def record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            elapsed = time.perf_counter() - entry.started
            if kind == "hook":
                metrics.HOOK_DURATION.labels(outcome=metrics.hook_outcome(status)).observe(elapsed)
            if not entry.written:
                await run_in_threadpool(_audit_after_the_fact, self.audit, entry, status, elapsed)


def _audit_after_the_fact(audit: AuditLog, entry: AuditEntry, status: int, elapsed: float) -> None:
    """An answer that is already out (an error): a failure here is logged and counted only."""
    with contextlib.suppress(AuditUnavailable):  # AuditLog.write logged it and counted it
        audit.write(entry, status=status, duration_s=elapsed)


class BodyLimit:
    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await send_413(send, self.max_bytes)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise RequestTooLarge(self.max_bytes)
            return message

        await self.app(scope, counted, send)


async def send_413(send: Send, limit: int) -> None:
    body = orjson.dumps({"error": str(RequestTooLarge(limit))})
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
