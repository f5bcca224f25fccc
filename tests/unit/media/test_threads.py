import threading

import anyio
import pytest

from glimpse.media import BlockingRunner


async def test_runs_in_a_worker_thread_with_args_and_kwargs():
    runner = BlockingRunner(1)

    def work(a, b, *, c):
        return a + b + c, threading.get_ident()

    value, thread = await runner.run(work, 1, 2, c=3)
    assert value == 6
    assert thread != threading.get_ident()
    assert runner.max_threads == 1


async def test_exceptions_propagate():
    runner = BlockingRunner(2)

    def boom():
        raise LookupError("nope")

    with pytest.raises(LookupError, match="nope"):
        await runner.run(boom)


async def test_concurrency_never_exceeds_the_limit():
    runner = BlockingRunner(3)
    active = 0
    peak = 0
    lock = threading.Lock()
    release = threading.Event()

    def work():
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        release.wait(1)
        with lock:
            active -= 1

    async with anyio.create_task_group() as group:
        for _ in range(8):
            group.start_soon(runner.run, work)
        await anyio.sleep(0.1)
        assert active == 3
        release.set()
    assert peak == 3


def test_limit_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        BlockingRunner(0)
