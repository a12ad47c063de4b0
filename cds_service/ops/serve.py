"""What ``cds-service serve`` prepares before uvicorn starts its workers.

- Settings are read once here; one that cannot be parsed, or that production refuses, is a
  ``ConfigError`` (one line, exit 2), never a traceback.
- With ``--workers N > 1``: ``PROMETHEUS_MULTIPROC_DIR`` is set (a fresh temporary directory unless
  the operator chose one, which is then wiped) before any worker imports prometheus-client, so
  ``/metrics`` aggregates every worker (``ops.metrics``).
- In development, the keys production requires (``CDS_SESSION_KEY``, ``CDS_PSEUDONYM_KEY``) are
  generated once here when unset and handed to every worker through the environment: the workers
  then share SMART sessions and audit pseudonyms for the life of this server.
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cds_service.errors import ConfigError
from cds_service.ops.logging import log_config
from cds_service.settings import Settings, check_settings, get_settings

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
DEV_KEYS = ("CDS_SESSION_KEY", "CDS_PSEUDONYM_KEY")


def load_settings() -> Settings:
    """The environment's settings, or ConfigError with the first problem on one line."""
    get_settings.cache_clear()
    try:
        settings = get_settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "settings"
        name = f"CDS_{where.upper()}" if first["loc"] else "settings"
        raise ConfigError(f"{name}: {first['msg'].removeprefix('Value error, ')}") from None
    check_settings(settings)
    return settings


def prepare(*, workers: int) -> Settings:
    settings = load_settings()
    if settings.env == "development":
        generated = [name for name in DEV_KEYS if not os.environ.get(name)]
        for name in generated:
            os.environ[name] = secrets.token_urlsafe(32)
        if generated:
            settings = load_settings()
    if workers > 1:
        os.environ[MULTIPROC_ENV] = str(_fresh_metrics_dir(os.environ.get(MULTIPROC_ENV)))
    return settings


def _fresh_metrics_dir(chosen: str | None) -> Path:
    """The operator's directory emptied of old samples, or a new one (must be wiped per run)."""
    if not chosen:
        made = Path(tempfile.mkdtemp(prefix="cds-metrics-"))
        atexit.register(shutil.rmtree, made, ignore_errors=True)  # in this (parent) process only
        return made
    path = Path(chosen)
    path.mkdir(parents=True, exist_ok=True)
    for old in path.glob("*.db"):
        old.unlink()
    return path


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Logging (escaped, plain or JSON) and graceful shutdown: in-flight calls get
    ``CDS_SHUTDOWN_GRACE_SECONDS`` after SIGTERM; the app's lifespan then closes the database and
    HTTP sessions."""
    return {
        "access_log": False,  # uvicorn's prints query strings (SMART codes): ours logs paths only
        "log_config": log_config(settings.log_format),
        "timeout_graceful_shutdown": settings.shutdown_grace_seconds,
    }
