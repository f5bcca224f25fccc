"""JWT bearer tokens (PyJWT) with an explicit algorithm allow-list.

The allow-list is fixed at start-up from settings and the configured key:
``none`` is refused outright, and when a public key is configured every HS*
algorithm is dropped, so a token signed with the public key as an HMAC secret
(algorithm confusion) can never verify. ``exp`` is required; ``exp``/``nbf``
get 30 seconds of leeway for clock skew between issuer and server.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from glimpse.config import GuardSettings
from glimpse.errors import Unauthorized

__all__ = [
    "LEEWAY_S",
    "RATE_LIMIT_CLAIM",
    "TOKEN_QUOTA_CLAIM",
    "JwtVerifier",
    "TokenClaims",
    "looks_like_jwt",
]

logger = logging.getLogger(__name__)

LEEWAY_S = 30
RATE_LIMIT_CLAIM = "rate_limit_per_minute"
TOKEN_QUOTA_CLAIM = "token_quota_per_day"  # noqa: S105 (a claim name, not a secret)
_JWT_SHAPE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")
_SUPPORTED = frozenset(jwt.algorithms.get_default_algorithms()) - {"none"}
_ERRORS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "The bearer token has expired."),
    (jwt.ImmatureSignatureError, "The bearer token is not valid yet."),
    (jwt.InvalidAudienceError, "The bearer token is not meant for this service (audience)."),
    (jwt.InvalidIssuerError, "The bearer token comes from an issuer this service does not accept."),
    (jwt.MissingRequiredClaimError, "The bearer token lacks a required claim (exp, sub, aud or iss)."),
    (jwt.InvalidAlgorithmError, "The bearer token's signing algorithm is not accepted."),
)


def looks_like_jwt(credential: str) -> bool:
    return bool(_JWT_SHAPE.match(credential))


@dataclass(slots=True, frozen=True)
class TokenClaims:
    subject: str
    name: str
    scopes: tuple[str, ...]
    rate_limit_per_minute: int | None
    token_quota_per_day: int | None = None


def _algorithms_for(key: Any) -> frozenset[str]:
    if isinstance(key, rsa.RSAPublicKey):
        return frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
    if isinstance(key, ec.EllipticCurvePublicKey):
        return frozenset({"ES256", "ES256K", "ES384", "ES512", "ES521"})
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return frozenset({"EdDSA"})
    raise ValueError(f"unsupported JWT public key type {type(key).__name__}")


def _check_listed(algorithms: tuple[str, ...]) -> None:
    for name in algorithms:
        if name.lower() == "none":
            raise ValueError("jwt_algorithms must not contain 'none'")
        if name not in _SUPPORTED:
            raise ValueError(f"unknown JWT algorithm {name!r} in jwt_algorithms")


class JwtVerifier:
    """Verifies bearer JWTs; ``enabled`` is false when no key or secret is set."""

    def __init__(self, settings: GuardSettings) -> None:
        _check_listed(settings.jwt_algorithms)
        self._audience = settings.jwt_audience
        self._issuer = settings.jwt_issuer
        self._key: Any = None
        self._algorithms: list[str] = []
        if settings.jwt_public_key_file is not None:
            try:
                key = load_pem_public_key(settings.jwt_public_key_file.read_bytes())
            except (OSError, ValueError) as exc:
                raise ValueError(f"cannot load JWT public key {settings.jwt_public_key_file}: {exc}") from exc
            usable = _algorithms_for(key)
            self._algorithms = [a for a in settings.jwt_algorithms if a in usable]
            if not self._algorithms:
                raise ValueError(
                    f"jwt_algorithms lists none of {sorted(usable)} for the configured public key"
                )
            if settings.jwt_secret is not None:
                logger.warning(
                    "jwt_secret is ignored because jwt_public_key_file is set (HS* stays disabled)"
                )
            self._key = key
        elif settings.jwt_secret is not None:
            self._algorithms = [a for a in settings.jwt_algorithms if a.startswith("HS")]
            if not self._algorithms:
                raise ValueError("jwt_secret is set but jwt_algorithms lists no HS* algorithm")
            self._key = settings.jwt_secret.get_secret_value()

    @property
    def enabled(self) -> bool:
        return self._key is not None

    @property
    def algorithms(self) -> tuple[str, ...]:
        return tuple(self._algorithms)

    def verify(self, token: str) -> TokenClaims:
        """Claims of a valid token; ``Unauthorized`` (never echoing the token) otherwise."""
        if not self.enabled:
            raise Unauthorized("Bearer tokens are not accepted by this service.")
        required = ["exp", "sub"] + (["aud"] if self._audience else []) + (["iss"] if self._issuer else [])
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=self._algorithms,
                audience=self._audience,
                issuer=self._issuer,
                leeway=LEEWAY_S,
                options={"require": required},
            )
        except jwt.PyJWTError as exc:
            raise Unauthorized(_message(exc)) from None
        return _to_claims(claims)


def _message(exc: jwt.PyJWTError) -> str:
    for kind, message in _ERRORS:
        if isinstance(exc, kind):
            return message
    return "The bearer token is invalid."


def _to_claims(claims: dict[str, Any]) -> TokenClaims:
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise Unauthorized("The bearer token's 'sub' claim must be a non-empty string.")
    raw_scopes = claims.get("scope", claims.get("scopes", ()))
    if isinstance(raw_scopes, str):
        scopes = tuple(raw_scopes.split())
    elif isinstance(raw_scopes, list | tuple) and all(isinstance(s, str) for s in raw_scopes):
        scopes = tuple(raw_scopes)
    else:
        raise Unauthorized("The bearer token's scope claim is malformed.")
    limit = _count_claim(claims, RATE_LIMIT_CLAIM)
    quota = _count_claim(claims, TOKEN_QUOTA_CLAIM)
    name = claims.get("name")
    return TokenClaims(
        subject=subject,
        name=name if isinstance(name, str) and name else subject,
        scopes=scopes,
        rate_limit_per_minute=limit,
        token_quota_per_day=quota,
    )


def _count_claim(claims: dict[str, Any], name: str) -> int | None:
    value = claims.get(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise Unauthorized(f"The bearer token's '{name}' claim must be a non-negative integer.")
    return value
