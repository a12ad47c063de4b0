"""Configuration from the environment (prefix ``CDS_``), read once and overridable in tests.

Every setting is documented in README.md ("Configuration"). Lists accept comma-separated values;
``CDS_TRUSTED_ISSUERS`` is a JSON object mapping each EHR issuer to its JWK Set URL.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

CommaList = Annotated[list[str], NoDecode]

# A heavy real patient's full prefetch (the 8.7 MB, 7,138-entry test bundle) must fit with room to
# spare; 32 MiB admits ~3.5x that while bounding what one request can make the process parse.
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
MIN_KEY_CHARS = 16


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CDS_", extra="ignore")

    env: Literal["development", "production"] = Field(
        default="development", description="production refuses unsafe settings (see production_problems)"
    )
    mappings_dir: Path | None = Field(default=None, description="trials and value sets (default: packaged)")
    portfolio: Path | None = Field(
        default=None, description="the site's portfolio file (default: every trial, to clinicians)"
    )
    site_timezone: str = Field(
        default="UTC", description="IANA zone giving every face its evaluation date (e.g. Europe/Paris)"
    )
    public_base_url: str | None = Field(
        default=None, description="this service's external base URL, for JWT aud and links"
    )

    # EHR authentication (CDS Hooks "Trusting CDS Clients")
    trusted_issuers: dict[str, str] = Field(default_factory=dict, description="issuer → JWKS URL")
    allow_unsigned: bool = Field(default=False, description="accept calls without a JWT (trying it out)")
    allow_sha256_jwt: bool = Field(default=False, description="also accept ES256 / RS256")
    jwks_min_refetch_seconds: float = Field(
        default=10.0, ge=0, description="an unknown kid refetches an issuer's JWKS at most this often"
    )

    # Outbound FHIR calls
    fhir_server_allowlist: CommaList = Field(default_factory=list)
    allow_http_loopback: bool = Field(default=False, description="http:// FHIR servers on loopback")
    fhir_connect_timeout: float = 2.0
    fhir_read_timeout: float = 5.0
    fhir_total_timeout: float = 10.0
    fhir_page_limit: int = Field(default=20, ge=1, description="most pages followed per search")
    fhir_page_size: int = Field(default=200, ge=1, le=1000)
    fhir_parallel_searches: int = Field(default=6, ge=1, le=16)

    # Hook behaviour
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, ge=1024)
    show_not_eligible: bool = False
    feedback_db_url: str = "sqlite:///cds-feedback.sqlite3"
    cors_origins: CommaList = Field(default_factory=list)

    # Operations (cds_service.ops)
    api_docs: bool | None = Field(
        default=None,
        description="/docs, /redoc, /openapi.json (default: on in development, off in production)",
    )
    log_format: Literal["plain", "json"] = "plain"
    metrics_token: SecretStr | None = Field(
        default=None, description="bearer token /metrics requires; unset: /metrics answers loopback only"
    )
    pseudonym_key: SecretStr | None = Field(
        default=None, description="HMAC key of the audit's patient pseudonyms (required in production)"
    )
    session_key: SecretStr | None = Field(
        default=None, description="key encrypting SMART tokens at rest (required in production)"
    )
    audit_retention_days: int = Field(default=400, ge=1)
    shutdown_grace_seconds: int = Field(default=20, ge=0, description="in-flight calls get this long")

    # SMART app
    smart_client_id: str = "cds-service-trial-eligibility"
    smart_client_secret: SecretStr | None = None
    smart_redirect_uri: str | None = None
    smart_iss_allowlist: CommaList = Field(default_factory=list)
    smart_scope_style: Literal["v2", "v1"] = "v2"
    smart_default_iss: str | None = Field(default=None, description="FHIR server for a standalone launch")
    smart_frame_ancestors: CommaList = Field(
        default_factory=list, description="who may frame the app (default: self + the ISS allowlist origins)"
    )

    @field_validator(
        "fhir_server_allowlist", "cors_origins", "smart_iss_allowlist", "smart_frame_ancestors", mode="before"
    )
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("site_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"CDS_SITE_TIMEZONE {value!r} is not an IANA time zone (e.g. Europe/Paris)"
            ) from None
        return value

    def tz(self) -> ZoneInfo:
        """The site's time zone: its calendar gives the evaluation date on every face."""
        return ZoneInfo(self.site_timezone)

    @model_validator(mode="after")
    def _audience_is_configured(self) -> Settings:
        """The JWT ``aud`` must be this service's own URL, never one built from the Host header
        (which would accept a token minted for another service, sent with that Host)."""
        if self.trusted_issuers and not self.public_base_url:
            raise ValueError(
                "CDS_TRUSTED_ISSUERS is set but CDS_PUBLIC_BASE_URL is not: set CDS_PUBLIC_BASE_URL to "
                "this service's external base URL (EHR JWTs must name it as their aud)"
            )
        return self

    def docs_enabled(self) -> bool:
        return self.api_docs if self.api_docs is not None else self.env == "development"

    def jwt_algorithms(self) -> tuple[str, ...]:
        base = ("ES384", "RS384")
        return (*base, "ES256", "RS256") if self.allow_sha256_jwt else base


def production_problems(settings: Settings) -> list[str]:
    """What a production deployment must change, each naming the setting; empty when none."""
    if settings.env != "production":
        return []
    problems = []
    if settings.allow_unsigned:
        problems.append("CDS_ALLOW_UNSIGNED is true: unset it (every hook call must carry an EHR's JWT)")
    if settings.allow_http_loopback:
        problems.append("CDS_ALLOW_HTTP_LOOPBACK is true: unset it (FHIR and SMART servers must be https)")
    if settings.api_docs:
        problems.append("CDS_API_DOCS is true: unset it (/docs, /redoc and /openapi.json stay off)")
    base = settings.public_base_url
    if not base:
        problems.append("CDS_PUBLIC_BASE_URL is not set: set it to this service's external https URL")
    elif not base.startswith("https://"):
        problems.append("CDS_PUBLIC_BASE_URL is not https: set it to this service's external https URL")
    for name, key, purpose in (
        ("CDS_PSEUDONYM_KEY", settings.pseudonym_key, "the audit's patient pseudonyms"),
        ("CDS_SESSION_KEY", settings.session_key, "SMART tokens at rest"),
    ):
        if key is None or len(key.get_secret_value()) < MIN_KEY_CHARS:
            problems.append(
                f"{name} is not set: set a random secret of {MIN_KEY_CHARS}+ characters ({purpose})"
            )
    return problems


def check_settings(settings: Settings) -> None:
    """ConfigError naming every production refusal; called by create_app and ``cds-service serve``."""
    from cds_service.errors import ConfigError

    problems = production_problems(settings)
    if problems:
        raise ConfigError("CDS_ENV=production refuses to start: " + "; ".join(problems))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings; tests build their own ``Settings(...)`` and pass it to create_app."""
    return Settings()
