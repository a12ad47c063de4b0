"""Server-side SMART sessions in the service's database, shared by every worker and replica.

The browser holds only a random id (cookie ``cds_smart_session``: 256 bits, HttpOnly, Secure,
SameSite=None, Partitioned, so it travels inside the EHR's frame). Three tables:

- ``smart_pending``: authorizations under way, keyed by their ``state`` and bound to the browser
  id that started them: PKCE verifier, iss, token endpoint, redirect URI; 10 minutes.
- ``smart_session``: signed-in browsers (a row only once a code exchange succeeded).
- ``smart_launch``: each finished launch, keyed by a random context id the page URL carries
  (``/smart/app?ctx=...``): iss, patient, access token, banner flag, appContext, and a keyed
  pseudonym of the signed-in user (from the OpenID Connect id_token; ``smart.identity``), never
  the user's id itself; until the token (or the session) expires. Two tabs never mix patients:
  each page names its own launch, and a context id is useless without the cookie of the browser
  that made it.

Why it looks like this:

* Launch state lives apart from sessions. An unauthenticated launch only ever adds a pending row;
  pending rows are capped per browser (``MAX_PER_SESSION``) and in total (``max_pending``, oldest
  dropped first), so a flood of cookieless launches can push out other launches still under way but
  never a signed-in session.
* Ids, states and context ids are stored as SHA-256 hashes: a copy of the database holds no cookie
  that works. The access token and the PKCE verifier are encrypted at rest (AES-256-GCM, a key
  derived by HKDF from ``CDS_SESSION_KEY``, bound to their row); without that setting (development
  only: production refuses to start) a random key of the process is used and sessions do not
  survive a restart. ``cds-service serve --workers N`` gives its workers one generated key.
* Times are wall-clock seconds (``time.time``), comparable between processes. Expired rows are
  ignored at once and deleted by ``cleanup()`` (hourly, from the app's lifespan) and on launch.
* The session id is rotated when a launch completes; its launches and pending tabs carry over.
* The rows live an hour, so a table of an older layout is dropped and created anew at start
  (``_upgrade``): its users open the app again from the EHR, nothing else is lost.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Engine,
    Float,
    MetaData,
    String,
    Table,
    Text,
    delete,
    func,
    inspect,
    select,
    update,
)

from cds_service.db import make_engine
from cds_service.settings import Settings
from cds_service.smart.sealing import Sealer

log = logging.getLogger(__name__)

COOKIE_NAME = "cds_smart_session"
SESSION_TTL = 3600.0
PENDING_TTL = 600.0
MAX_PENDING = 10_000
MAX_PER_SESSION = 20
_ID_SHAPE = re.compile(r"[A-Za-z0-9_-]{32,128}")

_metadata = MetaData()
pending_table = Table(
    "smart_pending",
    _metadata,
    Column("state_hash", String(64), primary_key=True),
    Column("browser_hash", String(64), nullable=False, index=True),
    Column("iss", Text, nullable=False),
    Column("verifier", Text, nullable=False),  # sealed
    Column("token_endpoint", Text, nullable=False),
    Column("redirect_uri", Text, nullable=False),
    Column("id_issuer", Text),  # the OpenID Connect issuer an id_token must name
    Column("created_at", Float, nullable=False, index=True),
    Column("expires_at", Float, nullable=False, index=True),
)
session_table = Table(
    "smart_session",
    _metadata,
    Column("session_hash", String(64), primary_key=True),
    Column("expires_at", Float, nullable=False, index=True),
)
launch_table = Table(
    "smart_launch",
    _metadata,
    Column("context_hash", String(64), primary_key=True),
    Column("session_hash", String(64), nullable=False, index=True),
    Column("iss", Text, nullable=False),
    Column("patient", String(64), nullable=False),
    Column("access_token", Text, nullable=False),  # sealed
    Column("need_patient_banner", Boolean, nullable=False),
    Column("app_context", Text, nullable=False),
    Column("user_key", String(64)),  # pseudonym of the id_token's iss + sub; null: no id_token
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False, index=True),
)


@dataclass
class Pending:
    iss: str
    verifier: str = field(repr=False)
    token_endpoint: str
    redirect_uri: str
    expires_at: float
    id_issuer: str | None = None


@dataclass
class Launch:
    iss: str
    patient: str
    access_token: str = field(repr=False)
    need_patient_banner: bool
    app_context: dict[str, Any]
    expires_at: float
    user_key: str | None = None


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


class SessionStore:
    """The session tables; one instance per process, sharing the database with the others."""

    def __init__(
        self,
        *,
        engine: Engine | None = None,
        secret: str | None = None,
        ttl: float = SESSION_TTL,
        pending_ttl: float = PENDING_TTL,
        max_pending: int = MAX_PENDING,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine if engine is not None else make_engine("sqlite://")
        self.sealer = Sealer(secret)
        self.ttl, self.pending_ttl, self.max_pending = ttl, pending_ttl, max_pending
        self.clock = clock
        _upgrade(self.engine)
        _metadata.create_all(self.engine)

    @classmethod
    def for_settings(cls, engine: Engine, settings: Settings) -> SessionStore:
        secret = settings.session_key.get_secret_value() if settings.session_key else None
        return cls(engine=engine, secret=secret)

    def form_token(self, context_id: str) -> str:
        """The CSRF token of a launch's forms. Bound to the launch (which only its browser's
        session can use), not to the session id: that rotates at every launch, and a page opened
        earlier in another tab must still save."""
        return self.sealer.mac(f"form|{context_id}")

    def form_token_ok(self, context_id: str, token: str) -> bool:
        return hmac.compare_digest(self.form_token(context_id).encode(), token.encode())

    def pending_expiry(self) -> float:
        return self.clock() + self.pending_ttl

    def begin_authorization(self, session_id: str | None, pending: Pending, state: str) -> str:
        """Record a pending authorization under ``state``; return the browser's (maybe new) id."""
        now = self.clock()
        state_hash = _hash(state)
        with self.engine.begin() as conn:
            conn.execute(delete(pending_table).where(pending_table.c.expires_at <= now))
            known = session_id is not None and self._known(conn, session_id, now)
            browser = session_id if known and session_id is not None else secrets.token_urlsafe(32)
            browser_hash = _hash(browser)
            _trim(conn, pending_table, pending_table.c.browser_hash == browser_hash, MAX_PER_SESSION - 1)
            _trim(conn, pending_table, None, self.max_pending - 1)
            conn.execute(
                pending_table.insert().values(
                    state_hash=state_hash,
                    browser_hash=browser_hash,
                    iss=pending.iss,
                    verifier=self.sealer.seal(pending.verifier, row=state_hash),
                    token_endpoint=pending.token_endpoint,
                    redirect_uri=pending.redirect_uri,
                    id_issuer=pending.id_issuer,
                    created_at=now,
                    expires_at=pending.expires_at,
                )
            )
        return browser

    def _known(self, conn: Any, session_id: str, now: float) -> bool:
        """A cookie we issued and still know (a live session, or a browser with launches pending)."""
        if not _ID_SHAPE.fullmatch(session_id):
            return False
        hashed = _hash(session_id)
        live = select(session_table.c.session_hash).where(
            session_table.c.session_hash == hashed, session_table.c.expires_at > now
        )
        pending = select(pending_table.c.state_hash).where(pending_table.c.browser_hash == hashed).limit(1)
        return conn.execute(live).first() is not None or conn.execute(pending).first() is not None

    def take_pending(self, session_id: str | None, state: str) -> Pending | None:
        """Remove and return the pending authorization for ``state`` if it is this browser's and
        fresh; exactly one of two concurrent callbacks with the same state gets it."""
        if not session_id:
            return None
        state_hash = _hash(state)
        match = (pending_table.c.state_hash == state_hash) & (
            pending_table.c.browser_hash == _hash(session_id)
        )
        with self.engine.begin() as conn:
            row = conn.execute(select(pending_table).where(match)).first()
            if row is None or conn.execute(delete(pending_table).where(match)).rowcount != 1:
                return None
        if row.expires_at <= self.clock():
            return None
        verifier = self.sealer.open(row.verifier, row=state_hash)
        if verifier is None:
            log.warning("SMART pending authorization could not be decrypted (CDS_SESSION_KEY changed?)")
            return None
        return Pending(
            iss=row.iss,
            verifier=verifier,
            token_endpoint=row.token_endpoint,
            redirect_uri=row.redirect_uri,
            expires_at=row.expires_at,
            id_issuer=row.id_issuer,
        )

    def complete(self, session_id: str, launch: Launch) -> tuple[str, str]:
        """Store a finished launch, rotate the session id; return (new session id, context id)."""
        now = self.clock()
        new_id, context_id = secrets.token_urlsafe(32), secrets.token_urlsafe(16)
        old_hash, new_hash, context_hash = _hash(session_id), _hash(new_id), _hash(context_id)
        launch.expires_at = min(launch.expires_at, now + self.ttl)
        with self.engine.begin() as conn:
            old = conn.execute(
                select(session_table.c.expires_at).where(
                    session_table.c.session_hash == old_hash, session_table.c.expires_at > now
                )
            ).scalar_one_or_none()
            expires = max(old or 0.0, launch.expires_at)
            conn.execute(session_table.insert().values(session_hash=new_hash, expires_at=expires))
            if old is not None:
                conn.execute(delete(session_table).where(session_table.c.session_hash == old_hash))
            for table, column in ((launch_table, "session_hash"), (pending_table, "browser_hash")):
                conn.execute(update(table).where(table.c[column] == old_hash).values({column: new_hash}))
            _trim(conn, launch_table, launch_table.c.session_hash == new_hash, MAX_PER_SESSION - 1)
            conn.execute(
                launch_table.insert().values(
                    context_hash=context_hash,
                    session_hash=new_hash,
                    iss=launch.iss,
                    patient=launch.patient,
                    access_token=self.sealer.seal(launch.access_token, row=context_hash),
                    need_patient_banner=launch.need_patient_banner,
                    app_context=json.dumps(launch.app_context),
                    user_key=launch.user_key,
                    created_at=now,
                    expires_at=launch.expires_at,
                )
            )
        return new_id, context_id

    def launch(self, session_id: str | None, context_id: str | None) -> Launch | None:
        """The launch ``context_id`` of this browser's live session, or None."""
        if not session_id or not context_id:
            return None
        now, context_hash = self.clock(), _hash(context_id)
        query = (
            select(launch_table)
            .join(session_table, session_table.c.session_hash == launch_table.c.session_hash)
            .where(
                launch_table.c.context_hash == context_hash,
                launch_table.c.session_hash == _hash(session_id),
                launch_table.c.expires_at > now,
                session_table.c.expires_at > now,
            )
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        token = self.sealer.open(row.access_token, row=context_hash)
        if token is None:
            log.warning("SMART session token could not be decrypted (CDS_SESSION_KEY changed?)")
            return None
        return Launch(
            iss=row.iss,
            patient=row.patient,
            access_token=token,
            need_patient_banner=row.need_patient_banner,
            app_context=json.loads(row.app_context),
            expires_at=row.expires_at,
            user_key=row.user_key,
        )

    def cleanup(self) -> int:
        """Delete every expired row; returns how many."""
        now = self.clock()
        deleted = 0
        with self.engine.begin() as conn:
            for table in (pending_table, launch_table, session_table):
                deleted += conn.execute(delete(table).where(table.c.expires_at <= now)).rowcount or 0
        return deleted

    def counts(self) -> dict[str, int]:
        """Rows per table (for tests and the benchmark)."""
        with self.engine.connect() as conn:
            return {
                t.name: int(conn.execute(select(func.count()).select_from(t)).scalar_one())
                for t in (pending_table, session_table, launch_table)
            }


def _upgrade(engine: Engine) -> None:
    """Drop session tables whose columns differ from this version's (their rows live an hour)."""
    existing = inspect(engine)
    stale = [
        t
        for t in _metadata.sorted_tables
        if existing.has_table(t.name) and {c["name"] for c in existing.get_columns(t.name)} != set(t.c.keys())
    ]
    if stale:
        log.info("SMART session tables of an older layout recreated: %s", ", ".join(t.name for t in stale))
        _metadata.drop_all(engine, tables=stale)


def _trim(conn: Any, table: Table, where: Any, keep: int) -> None:
    """Delete the oldest rows (by created_at, or expiry) of ``table`` matching ``where`` beyond ``keep``."""
    count_query = select(func.count()).select_from(table)
    if where is not None:
        count_query = count_query.where(where)
    excess = int(conn.execute(count_query).scalar_one()) - keep
    if excess <= 0:
        return
    key = table.primary_key.columns.values()[0]
    oldest = select(key).order_by(table.c.created_at).limit(excess)
    if where is not None:
        oldest = oldest.where(where)
    conn.execute(delete(table).where(key.in_(oldest.scalar_subquery())))
