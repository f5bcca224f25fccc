"""``EngineProcess``: the in-process engine in a process of its own, on the tiny model (CPU).

Its answers must be the in-process engine's, token for token; what the request path
asks synchronously (health, sampling defaults, image sizes, adapters) is answered
from what the engine process pushed; a consumer that stops cancels the request there;
errors keep their class and status; a dead engine process fails what is open.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from glimpse.config import EngineSettings
from glimpse.engine.hf import HFEngine
from glimpse.engine.process import EngineProcess
from glimpse.engine.process.wire import pack_error, unpack_error
from glimpse.engine.protocol import (
    ChatMessage,
    FinishReason,
    GenerationRequest,
    ImagePart,
    SamplingParams,
    TextPart,
)
from glimpse.errors import EngineDead, EngineRequestError, InvalidRequest, Overloaded, RequestTooLarge

pytestmark = pytest.mark.slow


def _settings(tiny_dir: Path, **overrides: Any) -> EngineSettings:
    return EngineSettings(model=str(tiny_dir), device="cpu", warmup=False, preprocess_workers=0, **overrides)


def _request(
    request_id: str, colour: tuple[int, int, int], max_new_tokens: int, **sampling: Any
) -> GenerationRequest:
    image = Image.new("RGB", (64, 48), colour)
    content = (ImagePart(image, request_id), TextPart(f"What is it? {request_id}"))
    return GenerationRequest(
        request_id,
        (ChatMessage("user", content),),
        SamplingParams(max_new_tokens=max_new_tokens, **sampling),
    )


async def _collect(engine: Any, request: GenerationRequest) -> tuple[list[int], FinishReason | None]:
    tokens: list[int] = []
    reason = None
    async for event in engine.submit(request):
        tokens.extend(event.token_ids)
        reason = event.finish_reason or reason
    return tokens, reason


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("on_"):
            raise AttributeError(name)
        return lambda *args: self.calls.append(name)


def test_answers_equal_the_in_process_engines_and_metrics_arrive(tiny_dir):
    requests = [_request(f"r{n}", (40 * n, 200 - 30 * n, 90), 6 + 5 * n, ignore_eos=True) for n in range(4)]

    async def answers(engine: Any) -> tuple[list[Any], SamplingParams]:
        await engine.start()
        try:
            results = list(await asyncio.gather(*(_collect(engine, r) for r in requests)))
            return results, engine.resolve_sampling(SamplingParams(max_new_tokens=8))
        finally:
            await engine.stop()

    observer = _Recorder()
    remote, remote_defaults = asyncio.run(answers(EngineProcess(_settings(tiny_dir), observer)))  # type: ignore[arg-type]
    local, local_defaults = asyncio.run(answers(HFEngine(_settings(tiny_dir))))
    assert remote == local
    assert [len(tokens) for tokens, _ in remote] == [6, 11, 16, 21]
    assert remote_defaults == local_defaults  # the checkpoint's generation_config, pushed
    assert {"on_admit", "on_decode_step"} <= set(observer.calls), observer.calls


def test_the_request_path_is_answered_from_pushed_state(tiny_dir):
    engine = EngineProcess(_settings(tiny_dir, max_batch_size=2, max_queue=3))

    async def run() -> None:
        assert not engine.health().ready
        await engine.start()
        try:
            health = engine.health()
            assert health.ready
            assert (health.capacity, health.slots) == (5, 2)
            with pytest.raises(RequestTooLarge):  # the image's tokens + a whole slot's answer cannot fit
                engine.check_image_sizes([(1024, 768)], 8192)
            engine.check_image_sizes([(64, 48)], 16)
            assert [a.name for a in engine.adapters()] == []
            assert engine.adapter("nope") is None
        finally:
            await engine.stop()
        assert not engine.health().ready

    asyncio.run(run())


def test_a_consumer_that_stops_cancels_the_request_in_the_engine_process(tiny_dir):
    engine = EngineProcess(_settings(tiny_dir, max_batch_size=1, max_queue=0))

    async def run() -> tuple[int, list[int]]:
        await engine.start()
        try:
            stream = engine.submit(_request("long", (200, 30, 30), 3000, ignore_eos=True))
            await stream.__anext__()
            running = engine.health().running
            await stream.aclose()
            async with asyncio.timeout(10):
                while engine.health().running or engine.health().queue_depth:  # noqa: ASYNC110 - pushed state
                    await asyncio.sleep(0.01)
            # The only place is free again: the next request is served, not refused.
            tokens, _ = await _collect(engine, _request("next", (30, 30, 200), 3, ignore_eos=True))
            return running, tokens
        finally:
            await engine.stop()

    running, tokens = asyncio.run(run())
    assert running == 1
    assert len(tokens) == 3


def test_errors_keep_their_class_and_status(tiny_dir):
    engine = EngineProcess(_settings(tiny_dir, max_batch_size=1, max_queue=0))

    async def run() -> tuple[BaseException, BaseException]:
        await engine.start()
        try:
            long = engine.submit(_request("long", (200, 30, 30), 3000, ignore_eos=True))
            await long.__anext__()
            refused = await asyncio.gather(
                _collect(engine, _request("x", (1, 2, 3), 4)), return_exceptions=True
            )
            await long.aclose()
            bad = await asyncio.gather(
                _collect(engine, _request("y", (1, 2, 3), 4, temperature=-1.0)), return_exceptions=True
            )
            return refused[0], bad[0]
        finally:
            await engine.stop()

    refused, bad = asyncio.run(run())
    assert isinstance(refused, Overloaded), refused
    assert refused.retry_after is not None
    assert isinstance(bad, InvalidRequest), bad
    assert unpack_error(pack_error(ValueError("boom"))).__class__ is EngineRequestError


def test_a_dead_engine_process_fails_open_requests_and_health(tiny_dir):
    engine = EngineProcess(_settings(tiny_dir))

    async def run() -> BaseException:
        await engine.start()
        try:
            stream = engine.submit(_request("long", (200, 30, 30), 3000, ignore_eos=True))
            await stream.__anext__()
            os.kill(engine._process.pid, signal.SIGKILL)  # noqa: SLF001 - the crash under test
            failure = await asyncio.gather(_drain(stream), return_exceptions=True)
            assert not engine.health().ready
            with pytest.raises(EngineDead):
                await _collect(engine, _request("after", (1, 2, 3), 2))
            return failure[0]
        finally:
            await engine.stop()

    assert isinstance(asyncio.run(run()), EngineDead)


async def _drain(stream: Any) -> None:
    async for _ in stream:
        pass


def test_errors_defined_outside_the_error_module_cross_with_their_class_and_status():
    from glimpse.engine.lora.adapter import AdapterError

    crossed = unpack_error(pack_error(AdapterError("A LoRA adapter named 'x' is already loaded.")))
    assert type(crossed) is AdapterError
    assert crossed.status_code == 400
    assert crossed.message == "A LoRA adapter named 'x' is already loaded."
    assert crossed.retry_after is None
    overloaded = unpack_error(pack_error(Overloaded("full", retry_after=3)))
    assert (type(overloaded), overloaded.retry_after) == (Overloaded, 3)
    other = unpack_error(pack_error(ValueError("boom")))
    assert type(other) is EngineRequestError
    assert other.retry_after is None
