"""The one SQLAlchemy database (``CDS_FEEDBACK_DB_URL``): feedback, audit, SMART sessions.

Several worker processes (and replicas, with a server database) share it. For SQLite that means a
file in WAL mode with a busy timeout, so concurrent writers queue for a moment instead of failing
with "database is locked"; ``synchronous=NORMAL`` keeps each commit to one WAL append (durable
across a process crash, which is what a worker restart is). An in-memory URL is one connection
shared by every thread (tests).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.pool import StaticPool

SQLITE_BUSY_MS = 5000


def make_engine(url: str) -> Engine:
    options: dict[str, Any] = {}
    memory = url in ("sqlite://", "sqlite:///:memory:")
    if url.startswith("sqlite"):
        options["connect_args"] = {"check_same_thread": False, "timeout": SQLITE_BUSY_MS / 1000}
        if memory:
            options["poolclass"] = StaticPool
    else:
        options["pool_pre_ping"] = True
    engine = create_engine(url, **options)
    if url.startswith("sqlite"):
        event.listen(engine, "connect", _sqlite_pragmas if not memory else _sqlite_memory_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
    cursor.close()


def _sqlite_memory_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
    cursor.close()
