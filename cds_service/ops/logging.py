"""Log lines that cannot be forged, optionally as JSON, each with the request id of its call.

Anything a caller controls can reach a log line (a percent-decoded path, an ``iss`` claim, a header):
a CR/LF in it would start a fake line, an ESC sequence would rewrite the terminal. So the formatters
here escape every C0 and C1 control character (and DEL) in the whole formatted record, message,
arguments and traceback alike, as ``\\xNN`` / ``\\uNNNN``; ``log_config()`` puts them on the one
handler every logger (ours, uvicorn's, libraries') propagates to.

``CDS_LOG_FORMAT=json`` writes one JSON object per line (time, level, logger, message, request_id,
pid). The request id comes from ``X-Request-ID`` when it matches ``REQUEST_ID`` (else one is made
up), is kept in a context variable for the call (thread-pool work and FHIR fetch threads included)
and is returned in the response's ``X-Request-ID`` header.
"""

from __future__ import annotations

import json
import logging
import os
import re
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
request_id: ContextVar[str | None] = ContextVar("cds_request_id", default=None)


def new_request_id(incoming: str | None) -> str:
    """The caller's id when it is safe to log and echo, else a fresh random one."""
    if incoming is not None and REQUEST_ID.fullmatch(incoming):
        return incoming
    return uuid.uuid4().hex


def escape_controls(text: str) -> str:
    """CR, LF, TAB, ESC and every other C0/C1 control character as a visible escape."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


class SafeFormatter(logging.Formatter):
    """The usual text format, with control characters escaped: one record is always one line."""

    def format(self, record: logging.LogRecord) -> str:
        return escape_controls(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per record; ``json.dumps`` escapes controls, ``escape_controls`` the rest."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": escape_controls(record.getMessage()),
            "pid": record.process or os.getpid(),
        }
        rid = getattr(record, "request_id", None) or request_id.get()
        if rid:
            entry["request_id"] = rid
        if record.exc_info:
            entry["exception"] = escape_controls(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=True)


class RequestIdFilter(logging.Filter):
    """Copies the current request id onto each record (``%(request_id)s``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get() or "-"
        return True


PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_config(log_format: str = "plain") -> dict[str, Any]:
    """The dictConfig ``cds-service serve`` applies in the parent and in every uvicorn worker.

    One stderr handler on the root logger, with the escaping formatter; uvicorn's loggers propagate
    to it. urllib3 stays at WARNING: its DEBUG lines carry request query strings (patient ids).
    """
    formatter: dict[str, Any] = (
        {"()": "cds_service.ops.logging.JsonFormatter"}
        if log_format == "json"
        else {"()": "cds_service.ops.logging.SafeFormatter", "format": PLAIN_FORMAT}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": "cds_service.ops.logging.RequestIdFilter"}},
        "formatters": {"default": formatter},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "filters": ["request_id"],
            }
        },
        "root": {"level": "INFO", "handlers": ["stderr"]},
        "loggers": {
            "urllib3": {"level": "WARNING"},
            "uvicorn": {"level": "INFO", "handlers": [], "propagate": True},
            "uvicorn.error": {"level": "INFO", "handlers": [], "propagate": True},
            "uvicorn.access": {"level": "WARNING", "handlers": [], "propagate": True},
        },
    }
