"""Compiling off the engine thread: once-built grammars, refusals before any work, deadlines."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from glimpse.engine.grammar_pool import GrammarPool
from glimpse.engine.protocol import ResponseFormat, SamplingParams
from glimpse.errors import DeadlineExceeded, InvalidRequest, UnsupportedParameter

_JSON = SamplingParams(max_new_tokens=8, response_format=ResponseFormat("json_object"))


class _Grammars:
    """Stands in for ``Grammars``: records where it compiles, optionally slowly."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.threads: list[str] = []

    def compile(self, response_format: ResponseFormat) -> str:
        self.threads.append(threading.current_thread().name)
        time.sleep(self.delay_s)
        return f"compiled {response_format.type}"


async def test_grammars_are_built_once_and_compile_in_pool_threads():
    grammars, builds = _Grammars(), []

    def build():
        builds.append(threading.current_thread().name)
        return grammars

    pool = GrammarPool(build)  # type: ignore[arg-type]
    try:
        results = await asyncio.gather(*(pool.compile(_JSON, None) for _ in range(4)))
    finally:
        pool.close()
    assert results == ["compiled json_object"] * 4
    assert len(builds) == 1
    assert all(name.startswith("glimpse-grammar") for name in builds + grammars.threads)


async def test_no_response_format_needs_no_grammars():
    pool = GrammarPool(lambda: pytest.fail("built for nothing"))
    try:
        assert await pool.compile(SamplingParams(max_new_tokens=8), None) is None
    finally:
        pool.close()


async def test_ignore_eos_with_a_response_format_is_refused_by_name():
    pool = GrammarPool(_Grammars)  # type: ignore[arg-type]
    sampling = SamplingParams(
        max_new_tokens=8, ignore_eos=True, response_format=ResponseFormat("json_object")
    )
    try:
        with pytest.raises(InvalidRequest) as err:
            await pool.compile(sampling, None)
    finally:
        pool.close()
    assert err.value.param == "ignore_eos"


async def test_without_xgrammar_response_format_is_an_unsupported_parameter():
    def build():
        raise ImportError("No module named 'xgrammar'")

    pool = GrammarPool(build)
    try:
        with pytest.raises(UnsupportedParameter) as err:
            await pool.compile(_JSON, None)
    finally:
        pool.close()
    assert err.value.param == "response_format"


async def test_a_compilation_past_the_deadline_ends_the_request():
    pool = GrammarPool(lambda: _Grammars(delay_s=0.5))  # type: ignore[arg-type,return-value]
    try:
        with pytest.raises(DeadlineExceeded):
            await pool.compile(_JSON, time.monotonic() + 0.05)
    finally:
        pool.close()
