"""Who may call, what they may send, and what is recorded.

Framework-free: everything here takes plain values (header strings, the peer
address, texts) so the API layer stays a thin adapter.
"""

from glimpse.guard.audit import AuditLog, AuditRecord, default_audit_path, prompt_fingerprint
from glimpse.guard.audit_query import AuditFilter, AuditReader
from glimpse.guard.auth import Authenticator, Principal, bearer_credential, is_loopback
from glimpse.guard.keystore import ApiKey, KeyStore, generate_key, hash_key
from glimpse.guard.prompt import REFUSAL_MESSAGE, GuardVerdict, PromptGuard
from glimpse.guard.quota import MemoryQuotaStore, QuotaStore, QuotaTracker, RedisQuotaStore
from glimpse.guard.ratelimit import MemoryRateLimitStore, RateLimiter, RateLimitStore, RedisRateLimitStore
from glimpse.guard.tokens import JwtVerifier, TokenClaims

__all__ = [
    "REFUSAL_MESSAGE",
    "ApiKey",
    "AuditFilter",
    "AuditLog",
    "AuditReader",
    "AuditRecord",
    "Authenticator",
    "GuardVerdict",
    "JwtVerifier",
    "KeyStore",
    "MemoryQuotaStore",
    "MemoryRateLimitStore",
    "Principal",
    "PromptGuard",
    "QuotaStore",
    "QuotaTracker",
    "RateLimitStore",
    "RateLimiter",
    "RedisQuotaStore",
    "RedisRateLimitStore",
    "TokenClaims",
    "default_audit_path",
    "generate_key",
    "hash_key",
    "bearer_credential",
    "is_loopback",
    "prompt_fingerprint",
]
