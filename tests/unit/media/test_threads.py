import asyncio
import contextvars
import threading
from concurrent.futures import ThreadPoolExecutor

import anyio
import pytest

from glimpse.errors import EngineRequestError, GlimpseError, InvalidRequest
from glimpse.media import BlockingRunner
from glimpse.media.threads import contained, run_in_executor


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


# --- issue 12, F1: an exception asyncio cannot put into a future must not hang the awaiter ------


def _stop_iteration():
    raise StopIteration  # what next() on an exhausted iterator raises inside a library


async def test_run_in_executor_turns_stop_iteration_into_an_error_instead_of_hanging():
    # asyncio refuses StopIteration in a future; unwrapped, the await below never returns.
    with ThreadPoolExecutor(1) as pool, pytest.raises(GlimpseError) as caught:
        await asyncio.wait_for(run_in_executor(pool, _stop_iteration), 5)
    assert caught.value.status_code == 500
    # Chained, so the API's one log line for this 500 carries the thread's traceback.
    assert isinstance(caught.value.__cause__, StopIteration)


@pytest.mark.parametrize("exc_type", [StopIteration, StopAsyncIteration, GeneratorExit, LookupError])
async def test_contained_converts_any_exception_into_the_given_error(exc_type):
    def fail():
        raise exc_type("inside the thread")

    safe = contained(fail, error=EngineRequestError, message="could not prepare")
    with ThreadPoolExecutor(1) as pool, pytest.raises(EngineRequestError, match="could not prepare"):
        await asyncio.wait_for(run_in_executor(pool, safe), 5)


async def test_glimpse_errors_pass_through_unchanged():
    def refuse():
        raise InvalidRequest("bad input")

    with ThreadPoolExecutor(1) as pool, pytest.raises(InvalidRequest, match="bad input"):
        await run_in_executor(pool, refuse)


async def test_run_in_executor_keeps_the_callers_context():
    request_id = contextvars.ContextVar("request_id", default="none")
    request_id.set("abc")
    with ThreadPoolExecutor(1) as pool:
        assert await run_in_executor(pool, request_id.get) == "abc"


@pytest.mark.parametrize("exc_type", [StopIteration, StopAsyncIteration, GeneratorExit])
async def test_blocking_runner_converts_what_an_awaiter_cannot_receive(exc_type):
    runner = BlockingRunner(1)

    def fail():
        raise exc_type()

    with pytest.raises(GlimpseError) as caught:
        await asyncio.wait_for(runner.run(fail), 5)
    assert type(caught.value) is GlimpseError
    assert isinstance(caught.value.__cause__, exc_type)
