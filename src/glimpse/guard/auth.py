"""Who is calling: API keys, JWT bearer tokens, or anonymous when auth is off.

The API layer passes the raw header values and the peer address; this module
answers with a ``Principal`` or raises ``Unauthorized``. Messages say what is
wrong with a credential, never what the credential was.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from glimpse.config import GuardSettings
from glimpse.errors import Forbidden, Unauthorized
from glimpse.guard.keystore import KeyStore
from glimpse.guard.scopes import EXPLICIT_SCOPES, SCOPES
from glimpse.guard.tokens import JwtVerifier, looks_like_jwt

__all__ = ["AuthMethod", "Authenticator", "Principal", "bearer_credential", "is_loopback"]

logger = logging.getLogger(__name__)

AuthMethod = Literal["anonymous", "api_key", "jwt"]


@dataclass(slots=True, frozen=True)
class Principal:
    client_id: str
    name: str
    scopes: tuple[str, ...] = ()
    rate_limit_per_minute: int | None = None  # None: the server-wide default applies
    auth_method: AuthMethod = "anonymous"
    token_quota_per_day: int | None = None  # None: the server-wide default applies

    def require_scope(self, scope: str) -> None:
        """403 unless this caller may use ``scope``.

        A credential that lists none of Glimpse's scopes may use them all: keys and tokens
        issued before scopes were enforced keep working, and so do JWTs whose ``scope`` claim
        only names other services' scopes (``openid profile``); keep those out with
        ``jwt_audience``. Unknown scope names in the keys file are refused when it is loaded.
        """
        granted = sorted(s for s in self.scopes if s in SCOPES)
        if scope in EXPLICIT_SCOPES and scope not in granted:
            raise Forbidden(
                f"This route needs a credential that names the '{scope}' scope (an API key or token with "
                f"scopes including '{scope}'; with authentication off, nobody may use it)."
            )
        if granted and scope not in granted:
            raise Forbidden(
                f"This credential may not use this route: it needs the '{scope}' scope "
                f"and has {', '.join(granted)}."
            )


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (the default bind is safe)."""
    if host.lower() in {"localhost", "localhost.localdomain"}:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bearer_credential(authorization: str) -> str:
    """The credential of an ``Authorization: Bearer ...`` header (scheme case-insensitive); 401 else."""
    scheme, _, credential = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise Unauthorized("Unsupported Authorization scheme; send 'Authorization: Bearer <key or token>'.")
    credential = credential.strip()
    if not credential:
        raise Unauthorized("The Authorization header has no credential after 'Bearer'.")
    return credential


class Authenticator:
    """Resolves request credentials to a ``Principal``."""

    def __init__(
        self,
        settings: GuardSettings,
        *,
        clock: Callable[[], float] = time.time,
        keys: KeyStore | None = None,
        tokens: JwtVerifier | None = None,
    ) -> None:
        self._keys = keys if keys is not None else KeyStore.from_settings(settings)
        self._tokens = tokens if tokens is not None else JwtVerifier(settings)
        self._clock = clock

    @property
    def auth_enabled(self) -> bool:
        return len(self._keys) > 0 or self._tokens.enabled

    def authenticate(
        self, authorization: str | None, api_key_header: str | None, client_host: str
    ) -> Principal:
        """``X-API-Key`` wins over ``Authorization``; with auth off, callers are their IP."""
        if not self.auth_enabled:
            return Principal(client_id=f"ip:{client_host}", name=client_host)
        if api_key_header is not None and api_key_header.strip():
            return self._api_key(api_key_header.strip())
        if authorization is None or not authorization.strip():
            raise Unauthorized(
                "Authentication required: send 'Authorization: Bearer <key or token>' or 'X-API-Key: <key>'."
            )
        credential = bearer_credential(authorization)
        if self._tokens.enabled and looks_like_jwt(credential):
            claims = self._tokens.verify(credential)
            return Principal(
                client_id=f"jwt:{claims.subject}",
                name=claims.name,
                scopes=claims.scopes,
                rate_limit_per_minute=claims.rate_limit_per_minute,
                auth_method="jwt",
                token_quota_per_day=claims.token_quota_per_day,
            )
        return self._api_key(credential)

    def _api_key(self, presented: str) -> Principal:
        if len(self._keys) == 0:
            raise Unauthorized("API keys are not accepted by this service; send a bearer token.")
        key = self._keys.lookup(presented)
        if key is None:
            raise Unauthorized("Invalid API key.")
        if key.expired(self._clock()):
            logger.info("expired API key %r was used", key.name)
            raise Unauthorized("The API key has expired.")
        return Principal(
            client_id=f"key:{key.name}",
            name=key.name,
            scopes=key.scopes,
            rate_limit_per_minute=key.rate_limit_per_minute,
            auth_method="api_key",
            token_quota_per_day=key.token_quota_per_day,
        )
