"""Which FHIR servers the service may call, and which ``next`` links it may follow.

A hook call names its ``fhirServer`` and hands us a bearer token for it: calling an arbitrary URL
would leak that token and let any caller make the service fetch internal addresses (SSRF). So a
server must be https (http only on loopback, for tests), carry no credentials in the URL, and sit
under a configured prefix on a *path boundary*; with no allowlist configured, only calls signed by
a trusted EHR issuer may name a server. URLs are compared after normalising scheme/host case and
default ports, and dot segments are refused outright because HTTP clients resolve them (which
would let ``/fhir/../admin`` pass a prefix check and then leave it).

Error messages never repeat the URL: it may carry a query string or credentials.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from cds_service.errors import InvalidInput
from cds_service.settings import Settings

_DEFAULT_PORTS = {"https": 443, "http": 80}
_HOST_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")
_FORBIDDEN_CHARS = re.compile(r"[\x00-\x20\x7f\\]")


@dataclass(frozen=True)
class _Url:
    """A parsed absolute URL, normalised for comparison (lower-case scheme/host, no default port)."""

    scheme: str
    host: str
    port: int | None
    segments: tuple[str, ...]
    has_userinfo: bool
    has_query: bool
    has_fragment: bool

    @property
    def base(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = f":{self.port}" if self.port is not None else ""
        path = "".join(f"/{s}" for s in self.segments)
        return f"{self.scheme}://{host}{port}{path}"

    def under(self, prefix: _Url) -> bool:
        """Same origin, and ``prefix``'s path segments are the first of ours (a path boundary)."""
        return (self.scheme, self.host, self.port) == (
            prefix.scheme,
            prefix.host,
            prefix.port,
        ) and self.segments[: len(prefix.segments)] == prefix.segments


def _parse(url: str) -> _Url:
    """Parse and normalise; InvalidInput (naming only the problem) when it is no usable URL."""
    if not isinstance(url, str) or _FORBIDDEN_CHARS.search(url):
        raise InvalidInput("FHIR server URL is malformed")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise InvalidInput("FHIR server URL is malformed") from None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower().rstrip(".")
    if scheme not in _DEFAULT_PORTS or not host:
        raise InvalidInput("FHIR server URL must be an absolute https URL")
    if not _valid_host(host):
        raise InvalidInput("FHIR server URL has an invalid host")
    segments = tuple(s for s in parts.path.split("/") if s)
    if any(unquote(s) in (".", "..") for s in segments):
        raise InvalidInput("FHIR server URL must not contain '.' or '..' path segments")
    return _Url(
        scheme=scheme,
        host=host,
        port=None if port == _DEFAULT_PORTS[scheme] else port,
        segments=segments,
        has_userinfo="@" in parts.netloc,
        has_query="?" in url.split("#", 1)[0],
        has_fragment="#" in url,
    )


def _valid_host(host: str) -> bool:
    if _HOST_NAME.match(host):
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost: the only hosts plain http may reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_fhir_server(url: str, *, settings: Settings, from_trusted_issuer: bool) -> str:
    """The normalised base URL (no trailing slash) of a FHIR server we may call, or InvalidInput.

    ``from_trusted_issuer`` is True when the hook call was JWT-authenticated by a configured
    issuer: only then may an empty allowlist admit a server the caller names.
    """
    parsed = _parse(url)
    if parsed.has_userinfo:
        raise InvalidInput("FHIR server URL must not contain credentials")
    if parsed.has_query or parsed.has_fragment:
        raise InvalidInput("FHIR server URL must not have a query string or fragment")
    if parsed.scheme == "http" and not (settings.allow_http_loopback and is_loopback(parsed.host)):
        raise InvalidInput("FHIR server URL must use https")
    if settings.fhir_server_allowlist:
        if not any(parsed.under(prefix) for prefix in _allowlist(settings.fhir_server_allowlist)):
            raise InvalidInput("FHIR server is not on the allowlist")
    elif not from_trusted_issuer:
        raise InvalidInput("no FHIR server allowlist configured and the call is not signed")
    return parsed.base


def _allowlist(entries: list[str]) -> list[_Url]:
    """The configured prefixes; an entry that is no valid base URL admits nothing."""
    prefixes = []
    for entry in entries:
        try:
            prefix = _parse(entry)
        except InvalidInput:
            continue
        if not (prefix.has_userinfo or prefix.has_query or prefix.has_fragment):
            prefixes.append(prefix)
    return prefixes


def same_origin_and_under(url: str, base: str) -> bool:
    """True when ``url`` (e.g. a ``next`` link) is on ``base``'s origin and under its path.

    A server's paging links are followed with our bearer token, so one pointing elsewhere (another
    host, another path, credentials in it) must not be fetched.
    """
    try:
        target, prefix = _parse(url), _parse(base)
    except InvalidInput:
        return False
    return not target.has_userinfo and target.under(prefix)
