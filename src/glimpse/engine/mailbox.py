"""The engine thread's way back to the event loop: many events per wake-up of the loop.

Each ``loop.call_soon_threadsafe`` writes to the loop's self-pipe, and every write wakes
the loop, which then needs the interpreter lock the engine thread is holding. One call
per token per request (sixteen requests in a batch: sixteen wake-ups a step) kept the
loop busy waking up, and the refusals and requests it should have been answering waited
behind those wake-ups. A mailbox collects what one step sends and wakes the loop once.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

__all__ = ["LoopMailbox"]


class LoopMailbox:
    """Put items on asyncio queues from another thread, in order, with one loop wake-up for all
    the items posted before the loop gets to them."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._pending: list[tuple[asyncio.Queue[Any], Any]] = []
        self._scheduled = False

    def post(self, queue: asyncio.Queue[Any], item: Any) -> bool:
        """Deliver ``item`` to ``queue`` on the loop; ``False`` when the loop is closed (nobody listens)."""
        with self._lock:
            self._pending.append((queue, item))
            if self._scheduled:
                return True
            self._scheduled = True
        try:
            self.loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # the loop is closed
            with self._lock:
                self._pending.clear()
                self._scheduled = False
            return False
        return True

    def _deliver(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
            self._scheduled = False
        for queue, item in pending:
            queue.put_nowait(item)
