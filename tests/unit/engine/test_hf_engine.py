"""HFEngine on the tiny model on the CPU: the one-at-a-time path's queue and finish reasons, and shutdown."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from PIL import Image

from glimpse.config import EngineSettings
from glimpse.engine.hf import HFEngine
from glimpse.engine.protocol import (
    ChatMessage,
    FinishReason,
    GenerationRequest,
    ImagePart,
    SamplingParams,
    TextPart,
)
from glimpse.engine.tiny_model import ensure_random_tiny_model
from glimpse.errors import EngineDead, Overloaded

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_random_tiny_model(tmp_path_factory.mktemp("tiny") / "glm46v")


def _request(request_id: str, max_new_tokens: int, *, ignore_eos: bool = False) -> GenerationRequest:
    image = Image.new("RGB", (48, 40), (200, 40, 90))
    content = (ImagePart(image, request_id), TextPart("What is it?"))
    return GenerationRequest(
        request_id,
        (ChatMessage("user", content),),
        SamplingParams(max_new_tokens=max_new_tokens, ignore_eos=ignore_eos),
    )


async def _collect(engine: HFEngine, request: GenerationRequest) -> tuple[list[int], FinishReason | None]:
    tokens: list[int] = []
    reason = None
    async for event in engine.submit(request):
        tokens.extend(event.token_ids)
        reason = event.finish_reason or reason
    return tokens, reason


def _engine(tiny_dir: Path, **overrides: object) -> HFEngine:
    return HFEngine(EngineSettings(model=str(tiny_dir), device="cpu", warmup=False, **overrides))


@pytest.mark.parametrize("batching", [False, True], ids=["generate", "batcher"])
def test_a_request_that_waited_past_the_queue_timeout_is_refused(tiny_dir, batching):
    engine = _engine(tiny_dir, batching=batching, max_batch_size=1, queue_timeout_s=0.3)

    async def run() -> tuple[object, object]:
        await engine.start()
        try:
            long = asyncio.create_task(_collect(engine, _request("long", 1500, ignore_eos=True)))
            await asyncio.sleep(0.5)  # "long" holds the only place
            waiting = await asyncio.gather(_collect(engine, _request("late", 4)), return_exceptions=True)
            return (await long), waiting[0]
        finally:
            await engine.stop()

    long, late = asyncio.run(run())
    assert long[1] == FinishReason.LENGTH  # type: ignore[index]
    assert isinstance(late, Overloaded), late
    assert late.retry_after is not None


def test_an_end_of_sequence_token_as_the_last_allowed_one_is_a_stop(tiny_dir):
    # generate() and the batcher must agree: EOS ends the answer, whatever the budget was.
    engine = _engine(tiny_dir, batching=False)

    async def run() -> tuple[list[int], FinishReason | None]:
        await engine.start()
        try:
            free, _ = await _collect(engine, _request("free", 4, ignore_eos=True))
            assert engine.loaded is not None
            engine.loaded.model.generation_config.eos_token_id = free[3]  # the 4th token ends it
            return await _collect(engine, _request("eos", 4))
        finally:
            await engine.stop()

    tokens, reason = asyncio.run(run())
    assert len(tokens) == 4
    assert reason == FinishReason.STOP


@pytest.mark.parametrize("batching", [False, True], ids=["generate", "batcher"])
def test_a_request_still_preparing_at_stop_fails_at_once_instead_of_hanging(tiny_dir, batching):
    engine = _engine(tiny_dir, batching=batching)
    prepare = engine._prepare

    def slow_prepare(request: GenerationRequest) -> object:
        time.sleep(0.5)  # still in the preprocessing pool when stop() runs
        return prepare(request)

    engine._prepare = slow_prepare  # type: ignore[method-assign]

    async def run() -> tuple[BaseException | None, float]:
        await engine.start()
        started = time.monotonic()
        late = asyncio.create_task(_collect(engine, _request("late", 4)))
        await asyncio.sleep(0.1)
        await engine.stop()
        try:
            await late
        except BaseException as exc:  # noqa: BLE001 - the test inspects what came back
            return exc, time.monotonic() - started
        return None, time.monotonic() - started

    error, waited = asyncio.run(asyncio.wait_for(run(), 20))
    assert isinstance(error, EngineDead), error
    assert waited < 5
