"""How one process shares a small machine between the HTTP event loop and the threads doing the work.

The event loop, the engine thread, preprocessing and image-decoding threads (and the
threads torch and other libraries start) live in one process. When the CPU is short,
the loop waits for a core like any other thread, and a loop that waits makes every
refusal slow and every admitted request late, while its own work is small. So the
engine gets every core but one by default, and every thread but the loop's runs a few
steps nicer (see ``bench/overload.py`` and the README's overload section for figures).
Processes that only work (the engine process, preprocessing workers) are niced whole
(``nice_this_process``); the threads they start inherit it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time

__all__ = ["ThreadNicer", "cpu_threads", "nice_this_process"]

logger = logging.getLogger(__name__)

#: Seconds between two sweeps for threads started since the last one.
SWEEP_EVERY_S = 1.0


def nice_this_process(nice: int) -> None:
    """Add ``nice`` to this process's niceness (at most 19); nothing where it cannot be done."""
    if nice > 0 and hasattr(os, "setpriority"):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, min(19, os.getpriority(os.PRIO_PROCESS, 0) + nice))


def cpu_threads(setting: int | None, cores: int | None = None) -> int:
    """Torch intra-op threads for a model on the CPU: by default every core but one."""
    if setting is not None:
        return setting
    return max(1, (cores if cores is not None else os.cpu_count() or 1) - 1)


class ThreadNicer:
    """Keep every thread of this process but one (the event loop's) ``nice`` steps less urgent.

    Threads come from many places (torch's OpenMP pool, anyio's and asyncio's
    executors, the engine, the audit writer), so instead of hooking each, a sweep of
    ``/proc/self/task`` once a second renices the ones it has not seen. Linux only
    (elsewhere a thread id is not a process id to ``setpriority``); raising niceness
    needs no privilege, and a thread that cannot be reniced is only logged.
    """

    def __init__(self, nice: int, keep: int | None = None) -> None:
        self.nice = nice
        self.keep = keep if keep is not None else threading.main_thread().native_id
        self._seen: set[int] = set()
        self._thread: threading.Thread | None = None

    @staticmethod
    def supported() -> bool:
        return sys.platform.startswith("linux") and os.path.isdir("/proc/self/task")

    def sweep(self) -> int:
        """Renice the threads started since the last sweep; returns how many were reniced."""
        try:
            tids = {int(name) for name in os.listdir("/proc/self/task")}
        except OSError:
            return 0
        self._seen &= tids  # the ids of threads that ended may be reused
        reniced = 0
        for tid in sorted(tids - self._seen - {self.keep}):
            self._seen.add(tid)
            try:
                niceness = os.getpriority(os.PRIO_PROCESS, tid)
                os.setpriority(os.PRIO_PROCESS, tid, min(19, niceness + self.nice))
                reniced += 1
            except OSError as exc:  # the thread ended meanwhile, or a policy forbids it
                logger.debug("could not renice thread %d: %s", tid, exc)
        return reniced

    def start(self) -> None:
        """Sweep once a second from a daemon thread (which renices itself on its first sweep)."""
        if self.nice <= 0 or not self.supported() or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="glimpse-thread-nicer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:  # a daemon thread: it ends with the process
            self.sweep()
            time.sleep(SWEEP_EVERY_S)
