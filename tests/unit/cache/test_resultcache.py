import asyncio

import pytest

from glimpse.cache import CachedResult, CacheEvent, MemoryCache, ResultCache


def answer(text="a cat", finish="stop"):
    chunks = tuple(text.split(" "))
    return CachedResult(
        text=text, chunks=chunks, finish_reason=finish, prompt_tokens=3, completion_tokens=len(chunks)
    )


@pytest.fixture
def events():
    return []


@pytest.fixture
def cache(events):
    return ResultCache(MemoryCache(1 << 20), on_event=events.append)


async def test_lookup_and_store_count_hits_and_misses(cache, events):
    assert await cache.lookup("k") is None
    await cache.store("k", answer())
    assert await cache.lookup("k") == answer()
    assert events == [CacheEvent.MISS, CacheEvent.STORED, CacheEvent.HIT]
    assert (cache.stats.hits, cache.stats.misses, cache.stats.stored) == (1, 1, 1)


async def test_unfinished_answers_are_not_stored(cache):
    await cache.store("k", answer(finish="cancelled"))
    assert await cache.lookup("k") is None


async def test_get_or_compute_runs_once_for_concurrent_callers_then_hits(cache, events):
    runs = 0
    release = asyncio.Event()

    async def compute():
        nonlocal runs
        runs += 1
        await release.wait()
        return answer()

    tasks = [asyncio.create_task(cache.get_or_compute("k", compute)) for _ in range(5)]
    await asyncio.sleep(0.01)
    release.set()
    got = await asyncio.gather(*tasks)
    assert runs == 1
    assert sorted(how for _, how in got) == [CacheEvent.COALESCED] * 4 + [CacheEvent.MISS]
    assert all(result == answer() for result, _ in got)
    assert await cache.get_or_compute("k", compute) == (answer(), CacheEvent.HIT)
    assert runs == 1
    assert events.count(CacheEvent.STORED) == 1


async def test_get_or_compute_failure_is_not_cached(cache):
    async def fail():
        raise RuntimeError("engine error")

    with pytest.raises(RuntimeError):
        await cache.get_or_compute("k", fail)
    assert await cache.lookup("k") is None


async def test_stream_stores_the_finished_answer(cache, events):
    async def source():
        for piece in ("a", " cat"):
            await asyncio.sleep(0)
            yield piece

    def to_result(pieces):
        return CachedResult("".join(pieces), tuple(pieces), "stop", 3, len(pieces))

    async def consume():
        async with cache.stream("k", source, to_result) as (items, shared):
            return [piece async for piece in items], shared

    got = await asyncio.gather(consume(), consume())
    assert sorted(got) == [(["a", " cat"], False), (["a", " cat"], True)]
    cached = await cache.lookup("k")
    assert cached is not None
    assert cached.chunks == ("a", " cat")
    assert events.count(CacheEvent.COALESCED) == 1
    assert events.count(CacheEvent.STORED) == 1


async def test_a_failing_event_hook_does_not_break_lookups():
    def hook(event):
        raise ValueError("metrics broke")

    cache = ResultCache(MemoryCache(1000), on_event=hook)
    assert await cache.lookup("k") is None
    assert cache.stats.misses == 1
