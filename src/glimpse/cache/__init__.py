"""Result cache for deterministic requests: keys, backends, single-flight.

Framework-free: it takes plain values (strings, JSON-able messages) and never
raises to a request because of the cache itself.
"""

from glimpse.cache.backend import CacheBackend, CacheUnavailable
from glimpse.cache.key import KEY_VERSION, cache_key, is_cacheable
from glimpse.cache.memory import MemoryCache
from glimpse.cache.redisstore import RedisCache
from glimpse.cache.resultcache import CacheEvent, CacheStats, ResultCache
from glimpse.cache.singleflight import SingleFlight
from glimpse.cache.value import CachedResult

__all__ = [
    "KEY_VERSION",
    "CacheBackend",
    "CacheEvent",
    "CacheStats",
    "CacheUnavailable",
    "CachedResult",
    "MemoryCache",
    "RedisCache",
    "ResultCache",
    "SingleFlight",
    "cache_key",
    "is_cacheable",
]
