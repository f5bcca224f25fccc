"""The server-wide bound on decoded pixels in flight: a semaphore whose permits are pixels.

A decoded image costs memory in proportion to its pixels (3 bytes each as RGB,
more while it is converted), not to its encoded size: a 1 MB PNG can announce 40
megapixels. Counting requests or threads cannot bound that, so every request
asks for the pixels its images declare (read from their headers, before any
decode) and holds them until the engine has taken the images.

Waiters are served strictly in arrival order, so a large request at the head is
not starved by a stream of small ones. A waiter that runs out of time gets
``Overloaded`` (503 with ``Retry-After``); one that is cancelled leaves the queue
at once, and a grant that raced with its cancellation is given back.

anyio and asyncio offer only unit-weight semaphores, hence this small one.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

from glimpse.errors import ImageTooLarge, Overloaded

__all__ = ["PixelBudget", "PixelLease"]

#: Seconds a refused client is told to wait: images in flight are usually done by then.
RETRY_AFTER_S = 2


@dataclass(slots=True, eq=False)
class _Waiter:
    pixels: int
    granted: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class PixelLease:
    """Pixels held from a ``PixelBudget``; ``release`` gives them back (idempotent)."""

    __slots__ = ("_budget", "pixels")

    def __init__(self, budget: PixelBudget | None, pixels: int) -> None:
        self._budget = budget
        self.pixels = pixels

    @property
    def released(self) -> bool:
        return self._budget is None

    def release(self) -> None:
        budget, self._budget = self._budget, None
        if budget is not None:
            budget._give_back(self.pixels)


class PixelBudget:
    """At most ``total`` pixels leased at once, over the whole server (one instance per app)."""

    def __init__(self, total: int) -> None:
        if total < 1:
            raise ValueError("total must be at least 1")
        self.total = total
        self._in_use = 0
        self._waiters: deque[_Waiter] = deque()

    @property
    def in_use(self) -> int:
        return self._in_use

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self, pixels: int, max_wait_s: float | None) -> PixelLease:
        """Lease ``pixels``, waiting at most ``max_wait_s`` seconds (``None``: no limit) for them."""
        if pixels > self.total:
            raise ImageTooLarge(
                f"The request's images have {pixels} pixels; this server decodes at most "
                f"{self.total} at once."
            )
        if not self._waiters and self._in_use + pixels <= self.total:
            self._in_use += pixels
            return PixelLease(self, pixels)
        waiter = _Waiter(pixels)
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(max_wait_s):
                await waiter.granted
        except TimeoutError:
            self._abandon(waiter)
            raise Overloaded(
                "The server is decoding too many images; retry shortly.", retry_after=RETRY_AFTER_S
            ) from None
        except BaseException:
            self._abandon(waiter)
            raise
        return PixelLease(self, pixels)

    def _abandon(self, waiter: _Waiter) -> None:
        if waiter.granted.done() and not waiter.granted.cancelled():
            self._give_back(waiter.pixels)  # granted while we were being cancelled
            return
        waiter.granted.cancel()
        if waiter in self._waiters:
            self._waiters.remove(waiter)
            self._grant()  # the head may have been all that blocked the next ones

    def _give_back(self, pixels: int) -> None:
        self._in_use -= pixels
        self._grant()

    def _grant(self) -> None:
        while self._waiters:
            waiter = self._waiters[0]
            if waiter.granted.done():  # cancelled; its task has not run ``_abandon`` yet
                self._waiters.popleft()
                continue
            if self._in_use + waiter.pixels > self.total:
                return
            self._waiters.popleft()
            self._in_use += waiter.pixels
            waiter.granted.set_result(None)
