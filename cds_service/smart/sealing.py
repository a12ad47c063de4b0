"""Secrets at rest in the session tables: AES-256-GCM under a key derived from ``CDS_SESSION_KEY``.

HKDF-SHA256 turns the setting (any length, 16+ characters in production) into a 256-bit key; every
value gets a fresh 96-bit nonce and is bound to its row (the row's hashed id as associated data), so
a ciphertext copied into another row does not open. A value sealed under another key opens to None:
the session is then treated as expired, never as an error page with a stack trace.

The same secret, through HKDF with another label, keys ``mac``: the CSRF tokens of the app's forms.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

log = logging.getLogger("cds_service.smart.sessions")


class Sealer:
    """AES-256-GCM under a key derived from a secret; each value bound to its row (associated data)."""

    def __init__(self, secret: str | None) -> None:
        if not secret:
            log.warning("CDS_SESSION_KEY is not set: SMART sessions use a random key of this process")
            secret = secrets.token_urlsafe(32)
        self._aead = AESGCM(_derive(secret, b"cds-service smart session tokens v1"))
        self._mac_key = _derive(secret, b"cds-service smart form tokens v1")

    def mac(self, value: str) -> str:
        """HMAC-SHA256 of ``value`` (URL-safe): unforgeable without the secret."""
        digest = hmac.new(self._mac_key, value.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def seal(self, value: str, *, row: str) -> str:
        nonce = secrets.token_bytes(12)
        sealed = nonce + self._aead.encrypt(nonce, value.encode(), row.encode())
        return base64.urlsafe_b64encode(sealed).decode()

    def open(self, sealed: str, *, row: str) -> str | None:
        """The value, or None when it was sealed under another key or for another row."""
        try:
            raw = base64.urlsafe_b64decode(sealed.encode())
            return self._aead.decrypt(raw[:12], raw[12:], row.encode()).decode()
        except (InvalidTag, ValueError):
            return None


def _derive(secret: str, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret.encode())
