"""The server-wide pixel budget: a weighted, FIFO, deadline- and cancellation-aware semaphore."""

import asyncio

import pytest

from glimpse.errors import ImageTooLarge, Overloaded
from glimpse.media import PixelBudget


async def test_leases_up_to_the_total_at_once_and_release_is_idempotent():
    budget = PixelBudget(100)
    first = await budget.acquire(60, 0)
    second = await budget.acquire(40, 0)
    assert budget.in_use == 100
    first.release()
    first.release()
    assert budget.in_use == 40
    second.release()
    assert budget.in_use == 0


async def test_a_request_larger_than_the_whole_budget_is_refused_at_once():
    with pytest.raises(ImageTooLarge, match="at most 100"):
        await PixelBudget(100).acquire(101, None)


async def test_a_waiter_that_runs_out_of_time_gets_503_with_retry_after_and_leaves_the_queue():
    budget = PixelBudget(100)
    held = await budget.acquire(80, 0)
    with pytest.raises(Overloaded) as caught:
        await budget.acquire(50, 0.05)
    assert caught.value.status_code == 503
    assert caught.value.retry_after is not None
    assert caught.value.retry_after > 0
    assert budget.waiting == 0
    held.release()
    assert budget.in_use == 0


async def test_waiters_are_served_in_arrival_order_when_room_is_freed():
    budget = PixelBudget(100)
    held = await budget.acquire(100, 0)
    order: list[str] = []

    async def wait(name: str, pixels: int) -> None:
        lease = await budget.acquire(pixels, 5)
        order.append(name)
        await asyncio.sleep(0.01)
        lease.release()

    big = asyncio.create_task(wait("big", 90))
    await asyncio.sleep(0)
    small = asyncio.create_task(wait("small", 10))
    await asyncio.sleep(0.01)
    assert budget.waiting == 2  # the small one does not jump the queue, though 0 + 10 would fit later
    held.release()
    await asyncio.gather(big, small)
    assert order == ["big", "small"]
    assert budget.in_use == 0


async def test_a_cancelled_waiter_leaves_the_queue_and_unblocks_those_behind_it():
    budget = PixelBudget(100)
    held = await budget.acquire(50, 0)
    blocked = asyncio.create_task(budget.acquire(80, None))
    await asyncio.sleep(0.01)
    behind = asyncio.create_task(budget.acquire(40, None))
    await asyncio.sleep(0.01)
    assert budget.waiting == 2
    blocked.cancel()
    with pytest.raises(asyncio.CancelledError):
        await blocked
    lease = await asyncio.wait_for(behind, 1)  # 50 + 40 fit once the 80 is gone
    assert budget.in_use == 90
    lease.release()
    held.release()
    assert (budget.in_use, budget.waiting) == (0, 0)


async def test_a_grant_that_races_with_cancellation_is_given_back():
    budget = PixelBudget(100)
    held = await budget.acquire(100, 0)
    waiter = asyncio.create_task(budget.acquire(100, None))
    await asyncio.sleep(0.01)
    held.release()  # grants the waiter...
    waiter.cancel()  # ...which is cancelled before it can run
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert (budget.in_use, budget.waiting) == (0, 0)
