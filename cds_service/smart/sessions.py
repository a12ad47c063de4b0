"""Server-side sessions: the browser holds only a random id; tokens never leave this process.

A browser session (cookie ``cds_smart_session``: random 256-bit id, HttpOnly, Secure, SameSite=None
so it travels inside the EHR's frame) holds

- pending authorizations, keyed by their ``state``: verifier, iss and token endpoint, 10 minutes;
- launches, keyed by a random context id carried in the page URL (``/smart/app?ctx=...``): iss,
  patient, access token, banner flag and appContext, until the token (or the session TTL) expires.

Two launches in two tabs of one browser thus never mix patients: each page names its own launch,
and a context id is useless without the cookie of the browser that made it. The id is rotated
when a launch completes. Everything lives in one process's memory, bounded in size; a restart or a
second worker means "session expired, relaunch" - run one worker, or put a shared store behind
this interface.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

COOKIE_NAME = "cds_smart_session"
SESSION_TTL = 3600.0
PENDING_TTL = 600.0
MAX_SESSIONS = 10_000
MAX_PER_SESSION = 20


@dataclass
class Pending:
    iss: str
    verifier: str = field(repr=False)
    token_endpoint: str
    redirect_uri: str
    expires_at: float


@dataclass
class Launch:
    iss: str
    patient: str
    access_token: str = field(repr=False)
    need_patient_banner: bool
    app_context: dict[str, Any]
    expires_at: float


@dataclass
class BrowserSession:
    id: str = field(repr=False)
    expires_at: float
    pending: dict[str, Pending] = field(default_factory=dict, repr=False)
    launches: dict[str, Launch] = field(default_factory=dict)


class SessionStore:
    """In-memory sessions with expiry; safe to share between the threads of one worker."""

    def __init__(
        self,
        *,
        ttl: float = SESSION_TTL,
        pending_ttl: float = PENDING_TTL,
        max_sessions: int = MAX_SESSIONS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl, self.pending_ttl, self.max_sessions = ttl, pending_ttl, max_sessions
        self.clock = clock
        self._sessions: dict[str, BrowserSession] = {}
        self._lock = threading.Lock()

    def _live(self, session_id: str | None) -> BrowserSession | None:
        session = self._sessions.get(session_id) if session_id else None
        if session is not None and session.expires_at <= self.clock():
            del self._sessions[session.id]
            return None
        return session

    def _purge(self) -> None:
        now = self.clock()
        for sid in [sid for sid, s in self._sessions.items() if s.expires_at <= now]:
            del self._sessions[sid]
        while len(self._sessions) >= self.max_sessions:  # drop the oldest first
            del self._sessions[next(iter(self._sessions))]

    def begin_authorization(self, session_id: str | None, pending: Pending, state: str) -> str:
        """Record a pending authorization under ``state``; return the (maybe new) session id."""
        with self._lock:
            session = self._live(session_id)
            if session is None:
                self._purge()
                session = BrowserSession(id=secrets.token_urlsafe(32), expires_at=0.0)
                self._sessions[session.id] = session
            session.expires_at = max(session.expires_at, self.clock() + self.pending_ttl)
            _bounded_put(session.pending, state, pending)
            return session.id

    def pending_expiry(self) -> float:
        return self.clock() + self.pending_ttl

    def take_pending(self, session_id: str | None, state: str) -> Pending | None:
        """Remove and return the pending authorization for ``state``, if it is this browser's and fresh."""
        with self._lock:
            session = self._live(session_id)
            if session is None:
                return None
            pending = _pop_matching(session.pending, state)
            if pending is None or pending.expires_at <= self.clock():
                return None
            return pending

    def complete(self, session_id: str, launch: Launch) -> tuple[str, str]:
        """Store a finished launch, rotate the session id; return (new session id, context id)."""
        with self._lock:
            session = self._sessions.pop(session_id, None) or BrowserSession(id="", expires_at=0.0)
            session.id = secrets.token_urlsafe(32)
            launch.expires_at = min(launch.expires_at, self.clock() + self.ttl)
            session.expires_at = max(session.expires_at, launch.expires_at)
            context_id = secrets.token_urlsafe(16)
            _bounded_put(session.launches, context_id, launch)
            self._sessions[session.id] = session
            return session.id, context_id

    def launch(self, session_id: str | None, context_id: str | None) -> Launch | None:
        with self._lock:
            session = self._live(session_id)
            if session is None or not context_id:
                return None
            launch = session.launches.get(context_id)
            if launch is None or launch.expires_at <= self.clock():
                session.launches.pop(context_id, None)
                return None
            return launch


def _bounded_put(items: dict[str, Any], key: str, value: Any) -> None:
    while len(items) >= MAX_PER_SESSION:
        del items[next(iter(items))]
    items[key] = value


def _pop_matching(items: dict[str, Pending], state: str) -> Pending | None:
    """Constant-time lookup of ``state`` among a session's few pending authorizations."""
    found = None
    for key in list(items):
        if secrets.compare_digest(key.encode(), state.encode()):
            found = items.pop(key)
    return found
