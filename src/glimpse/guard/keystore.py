"""API keys, held only as SHA-256 hashes.

Keys are random and long (256 bits), so a plain SHA-256 is enough: there is
nothing to brute-force, and hashing keeps a leaked keys file or memory dump
from handing out working credentials. Plain keys from the environment are hashed
on load and not kept. Lookups compare against every stored hash with
``hmac.compare_digest`` so timing says nothing about which key nearly matched.
New keys come from ``python -m glimpse.guard.keys new --name NAME``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from glimpse.config import GuardSettings
from glimpse.guard.scopes import SCOPES

__all__ = ["KEY_PREFIX", "KEY_ENTRIES", "ApiKey", "KeyStore", "generate_key", "hash_key"]

KEY_PREFIX = "glk_"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


@dataclass(slots=True, frozen=True)
class ApiKey:
    name: str
    sha256: str
    expires_at: datetime | None = None
    scopes: tuple[str, ...] = ()
    rate_limit_per_minute: int | None = None
    token_quota_per_day: int | None = None

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and self.expires_at.timestamp() <= now


class _KeyEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    sha256: str
    expires_at: datetime | None = None
    scopes: tuple[str, ...] = ()
    rate_limit_per_minute: int | None = Field(None, ge=0)
    token_quota_per_day: int | None = Field(None, ge=0)

    @field_validator("scopes")
    @classmethod
    def _known_scopes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # A misspelt scope would silently lock its key out of the route it was meant for.
        unknown = sorted(set(value) - SCOPES)
        if unknown:
            raise ValueError(f"unknown scope(s) {', '.join(unknown)}; known: {', '.join(sorted(SCOPES))}")
        return value

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str) -> str:
        value = value.lower()
        if not _HEX64.match(value):
            raise ValueError("sha256 must be 64 hexadecimal characters")
        return value

    @field_validator("expires_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        # A naive time in a keys file is read as UTC, not as the server's local time.
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


KEY_ENTRIES = TypeAdapter(list[_KeyEntry])


def _read_file(path: Path) -> list[ApiKey]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read API keys file {path}: {exc}") from exc
    if isinstance(data, dict):
        data = data.get("keys", [])
    try:
        entries = KEY_ENTRIES.validate_python(data)
    except ValidationError as exc:
        raise ValueError(f"invalid API keys file {path}: {exc}") from exc
    return [
        ApiKey(e.name, e.sha256, e.expires_at, e.scopes, e.rate_limit_per_minute, e.token_quota_per_day)
        for e in entries
    ]


class KeyStore:
    """The accepted API keys; built once at start-up."""

    def __init__(self, keys: Sequence[ApiKey]) -> None:
        seen: set[str] = set()
        for key in keys:
            if key.sha256 in seen:
                raise ValueError(f"API key {key.name!r} is listed twice")
            seen.add(key.sha256)
        self._keys = tuple(keys)

    @classmethod
    def from_settings(cls, settings: GuardSettings) -> KeyStore:
        keys = [
            ApiKey(name=f"env-{index}", sha256=hash_key(secret.get_secret_value()))
            for index, secret in enumerate(settings.api_keys, start=1)
        ]
        if settings.api_keys_file is not None:
            keys += _read_file(settings.api_keys_file)
        return cls(keys)

    def __len__(self) -> int:
        return len(self._keys)

    def lookup(self, presented: str) -> ApiKey | None:
        """The key whose hash matches ``presented``, checking all of them every time."""
        digest = hash_key(presented).encode("ascii")
        found: ApiKey | None = None
        for key in self._keys:
            if hmac.compare_digest(digest, key.sha256.encode("ascii")):
                found = key
        return found
