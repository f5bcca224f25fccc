"""Where the in-process engine compiles response formats: in threads of their own, never on the engine thread.

The model's ``Grammars`` (its vocabulary read by xgrammar: about a second for a real
tokenizer) is built at the first request that asks for structured output, so a server
whose clients never do pays nothing; compilations then run in a small thread pool,
each bounded by its request's deadline. A request is refused here (a 400 naming the
parameter) before its prompt is preprocessed or any token generated. A request with
``tools`` has its functions' schemas checked here too (``tool_grammar``), and a forced
``tool_choice`` compiles the tool-call grammar instead of ``response_format``'s.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from glimpse.engine.grammar import Grammars, TokenConstraint
from glimpse.engine.protocol import SamplingParams, Tools
from glimpse.engine.tool_grammar import check_parameters, structural_tag
from glimpse.errors import DeadlineExceeded, InvalidRequest, UnsupportedParameter
from glimpse.media.threads import run_in_executor

__all__ = ["GrammarPool"]

#: Grammars compiled at once (each compilation also uses a few threads of xgrammar's own).
_THREADS = 2
_DEADLINE_MESSAGE = "The request took longer than the server's time limit."

_T = TypeVar("_T")


class GrammarPool:
    """Compiles each request's ``response_format`` for one model; ``build`` makes its ``Grammars``."""

    def __init__(self, build: Callable[[], Grammars]) -> None:
        """``build`` runs once, in a pool thread; it may raise ``ImportError`` (no xgrammar)."""
        self._build = build
        self._grammars: Grammars | None = None
        self._lock = asyncio.Lock()
        self._pool = ThreadPoolExecutor(_THREADS, thread_name_prefix="glimpse-grammar")

    async def compile(
        self, sampling: SamplingParams, deadline: float | None, tools: Tools | None = None
    ) -> Any | None:
        """The compiled grammar of ``sampling.response_format`` and ``tools`` (``None`` without one).

        ``InvalidRequest`` naming the parameter for a schema that cannot be used (a tool's is
        checked whatever the ``tool_choice``), and for ``ignore_eos``, which would forbid the
        only tokens a complete answer may end with.
        """
        response_format = sampling.response_format
        tag = None
        if tools is not None and tools.active:
            await _within(run_in_executor(self._pool, self._check_tools, tools), deadline)
            tag = structural_tag(tools, response_format)
        if response_format is None and tag is None:
            return None
        param = "response_format" if tag is None else "tool_choice"
        if sampling.ignore_eos:
            raise InvalidRequest(
                f"ignore_eos cannot be combined with {param}: a structured answer ends "
                "with an end-of-sequence token.",
                param="ignore_eos",
            )
        grammars = await _within(self._ready(param), deadline)
        if tag is not None:
            work = functools.partial(grammars.compile_structural_tag, tag)
        else:
            assert response_format is not None
            work = functools.partial(grammars.compile, response_format)
        return await _within(run_in_executor(self._pool, work), deadline)

    @staticmethod
    def _check_tools(tools: Tools) -> None:
        try:
            check_parameters(tools)
        except ImportError:  # without xgrammar only the forced choices need it (refused below)
            return

    def constraint(self, compiled: Any, *, after: int | None = None) -> TokenConstraint:
        """A request's matcher of a grammar ``compile`` returned (``Grammars.constraint``)."""
        assert self._grammars is not None, "constraint() before compile()"
        return self._grammars.constraint(compiled, after=after)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _ready(self, param: str) -> Grammars:
        async with self._lock:
            if self._grammars is None:
                self._grammars = await run_in_executor(self._pool, self._built, param)
            return self._grammars

    def _built(self, param: str) -> Grammars:
        try:
            return self._build()
        except ImportError as exc:
            raise UnsupportedParameter(
                f"{param} needs the xgrammar package, which this server does not have.", param=param
            ) from exc


async def _within(work: Awaitable[_T], deadline: float | None) -> _T:
    if deadline is None:
        return await work
    try:
        return await asyncio.wait_for(work, max(0.0, deadline - time.monotonic()))
    except TimeoutError:
        raise DeadlineExceeded(_DEADLINE_MESSAGE) from None
