import pytest

from glimpse.cache import CachedResult, MemoryCache


def result(text: str) -> CachedResult:
    return CachedResult(text=text, chunks=(text,), finish_reason="stop", prompt_tokens=1, completion_tokens=1)


def entry_size(key: str, value: CachedResult) -> int:
    return len(value.to_bytes()) + len(key)


async def test_get_returns_what_was_set():
    cache = MemoryCache(10_000)
    assert await cache.get("a") is None
    await cache.set("a", result("x"))
    assert await cache.get("a") == result("x")
    assert cache.size_bytes == entry_size("a", result("x"))


async def test_evicts_least_recently_used_by_bytes():
    one = entry_size("k1", result("aaaa"))
    cache = MemoryCache(3 * one)
    for key in ("k1", "k2", "k3"):
        await cache.set(key, result("aaaa"))
    assert len(cache) == 3
    await cache.get("k1")  # k2 becomes the oldest
    await cache.set("k4", result("aaaa"))
    assert "k2" not in cache
    assert all(k in cache for k in ("k1", "k3", "k4"))
    assert cache.size_bytes == 3 * one
    assert cache.evictions == 1


async def test_a_big_entry_evicts_several_small_ones():
    small = entry_size("s0", result("a"))
    cache = MemoryCache(4 * small)
    for i in range(4):
        await cache.set(f"s{i}", result("a"))
    n = next(n for n in range(10_000) if entry_size("big", result("b" * n)) > 2 * small)
    big = result("b" * n)  # needs the room of three small entries
    await cache.set("big", big)
    assert await cache.get("big") == big
    assert cache.size_bytes <= cache.max_bytes
    assert "s0" not in cache
    assert "s1" not in cache
    assert "s2" not in cache
    assert "s3" in cache


async def test_an_entry_larger_than_the_cache_is_not_kept():
    cache = MemoryCache(1000)
    await cache.set("small", result("a"))
    await cache.set("huge", result("x" * 1000))
    assert "huge" not in cache
    assert "small" in cache


async def test_replacing_a_key_updates_the_size():
    cache = MemoryCache(10_000)
    await cache.set("k", result("a" * 100))
    await cache.set("k", result("b"))
    assert len(cache) == 1
    assert cache.size_bytes == entry_size("k", result("b"))


async def test_zero_bytes_disables_and_negative_is_refused():
    cache = MemoryCache(0)
    await cache.set("k", result("a"))
    assert await cache.get("k") is None
    with pytest.raises(ValueError, match="max_bytes"):
        MemoryCache(-1)


async def test_close_empties():
    cache = MemoryCache(1000)
    await cache.set("k", result("a"))
    await cache.close()
    assert len(cache) == 0
    assert cache.size_bytes == 0
