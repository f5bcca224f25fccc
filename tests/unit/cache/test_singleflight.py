import asyncio

import pytest

from glimpse.cache import SingleFlight


class Boom(Exception):
    pass


async def test_concurrent_identical_calls_compute_once():
    flight = SingleFlight()
    runs = 0
    release = asyncio.Event()

    async def compute():
        nonlocal runs
        runs += 1
        await release.wait()
        return f"answer {runs}"

    tasks = [asyncio.create_task(flight.run("k", compute)) for _ in range(10)]
    await asyncio.sleep(0)
    assert flight.in_flight("k")
    release.set()
    assert await asyncio.gather(*tasks) == ["answer 1"] * 10
    assert runs == 1
    assert flight.coalesced == 9
    assert not flight.in_flight("k")


async def test_different_keys_do_not_share():
    flight = SingleFlight()

    async def compute(value):
        await asyncio.sleep(0)
        return value

    got = await asyncio.gather(flight.run("a", lambda: compute(1)), flight.run("b", lambda: compute(2)))
    assert got == [1, 2]
    assert flight.coalesced == 0


async def test_after_completion_the_next_call_computes_again():
    flight = SingleFlight()
    runs = 0

    async def compute():
        nonlocal runs
        runs += 1
        return runs

    assert await flight.run("k", compute) == 1
    assert await flight.run("k", compute) == 2


async def test_leader_failure_reaches_every_caller_and_is_not_remembered():
    flight = SingleFlight()
    release = asyncio.Event()

    async def failing():
        await release.wait()
        raise Boom("no")

    tasks = [asyncio.create_task(flight.run("k", failing)) for _ in range(3)]
    await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, Boom) for r in results)

    async def ok():
        return "fine"

    assert await flight.run("k", ok) == "fine"


async def test_cancelled_leader_does_not_cancel_followers():
    flight = SingleFlight()
    release = asyncio.Event()

    async def compute():
        await release.wait()
        return "shared"

    leader = asyncio.create_task(flight.run("k", compute))
    await asyncio.sleep(0)
    follower = asyncio.create_task(flight.run("k", compute))
    await asyncio.sleep(0)
    leader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leader
    release.set()
    assert await asyncio.wait_for(follower, 2) == "shared"


async def test_computation_is_cancelled_when_every_caller_leaves():
    flight = SingleFlight()
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def compute():
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    callers = [asyncio.create_task(flight.run("k", compute)) for _ in range(2)]
    await started.wait()
    for caller in callers:
        caller.cancel()
    await asyncio.gather(*callers, return_exceptions=True)
    await asyncio.wait_for(cancelled.wait(), 2)
    assert not flight.in_flight("k")

    async def again():
        return "fresh"

    assert await flight.run("k", again) == "fresh"


# --- stream -----------------------------------------------------------------


def make_source(items, gate: asyncio.Event | None = None, log=None, fail: Exception | None = None):
    async def source():
        if log is not None:
            log.append("open")
        try:
            for item in items:
                if gate is not None:
                    await gate.wait()
                    gate.clear()
                yield item
            if fail is not None:
                raise fail
        finally:
            if log is not None:
                log.append("closed")

    return source


async def collect(flight, key, source, **kwargs):
    async with flight.stream(key, source, **kwargs) as (items, shared):
        return [item async for item in items], shared


async def test_stream_subscribers_share_one_source_and_see_every_item():
    flight = SingleFlight()
    log = []
    gate = asyncio.Event()
    source = make_source(["a", "b", "c"], gate, log)
    first = asyncio.create_task(collect(flight, "k", source))
    gate.set()
    await asyncio.sleep(0.01)  # the first item is out before the second subscriber joins
    second = asyncio.create_task(collect(flight, "k", source))
    for _ in range(3):
        await asyncio.sleep(0.01)
        gate.set()
    assert await first == (["a", "b", "c"], False)
    assert await second == (["a", "b", "c"], True)
    assert log == ["open", "closed"]
    assert flight.coalesced == 1


async def test_stream_on_complete_runs_once_with_all_items():
    flight = SingleFlight()
    completed = []

    async def on_complete(items):
        completed.append(list(items))

    source = make_source([1, 2, 3])
    results = await asyncio.gather(*(collect(flight, "k", source, on_complete=on_complete) for _ in range(4)))
    assert [items for items, _ in results] == [[1, 2, 3]] * 4
    assert completed == [[1, 2, 3]]
    assert not flight.in_flight("k")


async def test_stream_failure_reaches_every_subscriber_after_the_items():
    flight = SingleFlight()
    completed = []

    async def on_complete(items):
        completed.append(items)

    source = make_source(["a"], fail=Boom("engine died"))
    seen = []

    async def consume():
        async with flight.stream("k", source, on_complete) as (items, _):
            async for item in items:
                seen.append(item)

    results = await asyncio.gather(consume(), consume(), return_exceptions=True)
    assert all(isinstance(r, Boom) for r in results)
    assert seen == ["a", "a"]
    assert completed == []
    assert not flight.in_flight("k")


async def test_stream_source_closed_when_the_last_subscriber_leaves():
    flight = SingleFlight()
    log = []
    gate = asyncio.Event()
    source = make_source(["a", "b", "c"], gate, log)

    async with flight.stream("k", source) as (items, _):
        gate.set()
        assert await anext(items) == "a"
    for _ in range(20):
        if log == ["open", "closed"]:
            break
        await asyncio.sleep(0.01)
    assert log == ["open", "closed"]
    assert not flight.in_flight("k")


async def test_stream_continues_for_others_when_one_subscriber_leaves():
    flight = SingleFlight()
    gate = asyncio.Event()
    source = make_source(["a", "b"], gate)
    stayer = asyncio.create_task(collect(flight, "k", source))
    await asyncio.sleep(0)
    async with flight.stream("k", source) as (items, shared):
        assert shared
        gate.set()
        assert await anext(items) == "a"
    gate.set()
    assert await asyncio.wait_for(stayer, 2) == (["a", "b"], False)
