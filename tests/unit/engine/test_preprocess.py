"""Preprocessing in worker processes: the same inputs as in threads, the same errors, and no await that hangs.

The processes are real (spawned, as in the server), on the random tiny model whose
processor has GLM-4.6V's real configuration, so pixel tensors are of real size.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import platform
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from tests.unit.engine.worker_images import SleepingImage, sleeping_image, stop_iteration_image
from transformers import AutoProcessor

from glimpse.config import EngineSettings
from glimpse.engine import preprocess
from glimpse.engine.hf import HFEngine
from glimpse.engine.preprocess import (
    PREPARE_FAILED,
    ProcessPreprocessor,
    ThreadPreprocessor,
    resolve_preprocess_workers,
)
from glimpse.engine.protocol import ChatMessage, GenerationRequest, ImagePart, SamplingParams, TextPart
from glimpse.errors import EngineDead, EngineRequestError, InvalidRequest

_WAIT_S = 120  # far above any step here: reaching it means something hung
_START_S = 300  # a worker imports torch and transformers: slow on a busy shared machine


@pytest.mark.parametrize(
    ("setting", "device", "cores", "expected"),
    [
        (None, "cpu", 16, 1),  # the model's torch threads have the other cores
        (None, "cuda", 16, 4),
        (None, "cuda", 3, 2),
        (None, "cuda", 1, 1),
        (0, "cuda", 16, 0),  # 0: threads, whatever the machine
        (3, "cpu", 2, 3),  # an explicit setting wins
    ],
)
def test_the_pool_size_follows_the_device_unless_set(setting, device, cores, expected):
    assert resolve_preprocess_workers(setting, device, cores) == expected


def test_large_tensors_cross_in_shared_memory_unless_it_is_short_and_small_ones_inline(monkeypatch):
    inputs = {
        "input_ids": torch.arange(6).reshape(1, 6),
        "pixel_values": torch.rand(1024, 1176),  # 4.8 MB
        "note": "x",
    }
    monkeypatch.setattr(preprocess, "_shm_free_bytes", lambda: 2**40)
    sent = preprocess._for_transfer(inputs)
    assert sent["pixel_values"] is inputs["pixel_values"]
    assert isinstance(sent["input_ids"], np.ndarray)
    monkeypatch.setattr(preprocess, "_shm_free_bytes", lambda: 10 * 2**20)  # below the headroom
    sent = preprocess._for_transfer(inputs)
    assert isinstance(sent["pixel_values"], np.ndarray)
    received = preprocess._as_tensors(sent)
    assert all(torch.equal(received[k], inputs[k]) for k in ("input_ids", "pixel_values"))
    assert received["note"] == "x"


def test_a_large_plain_image_crosses_as_a_shared_tensor_and_other_images_as_themselves():
    from multiprocessing.reduction import ForkingPickler

    image = _picture(1024, 7)  # 1024 x 1061 x 3 bytes: over the inline limit
    pickled = ForkingPickler.dumps(preprocess._to_worker(image))
    assert len(pickled) < 1024 * 1061 * 3 // 100  # the pixels went to shared memory, not into the bytes
    rebuilt = ForkingPickler.loads(pickled)
    assert rebuilt.mode == "RGB"
    assert np.array_equal(np.asarray(rebuilt), np.asarray(image))
    odd = stop_iteration_image()
    assert preprocess._to_worker(odd) is odd


def test_a_small_plain_image_crosses_inline_without_a_shared_tensor(monkeypatch):
    """Sharing a tensor passes a descriptor through torch's resource sharer: too dear for 63 kB."""
    from multiprocessing import resource_sharer
    from multiprocessing.reduction import ForkingPickler

    def no_sharing(*args: object, **kwargs: object) -> None:
        raise AssertionError("a small image went through the resource sharer")

    monkeypatch.setattr(resource_sharer.DupFd, "__init__", no_sharing)
    image = _picture(128, 7)
    pickled = ForkingPickler.dumps(preprocess._to_worker(image))
    assert len(pickled) >= 128 * 165 * 3  # the pixels are in the bytes
    rebuilt = ForkingPickler.loads(pickled)
    assert rebuilt.mode == "RGB"
    assert np.array_equal(np.asarray(rebuilt), np.asarray(image))


# --- a real pool ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pool(tiny_dir: Path) -> Iterator[ProcessPreprocessor]:
    """One worker process for the module's tests; tests that kill it leave a rebuilt one behind."""
    processes = ProcessPreprocessor(str(tiny_dir), 1)
    asyncio.run(asyncio.wait_for(processes.start(), _START_S))
    yield processes
    asyncio.run(processes.close(10))


def _conversation(text: str, images: int = 1) -> list[dict[str, Any]]:
    content: list[dict[str, Any]] = [{"type": "image"}] * images
    return [{"role": "user", "content": [*content, {"type": "text", "text": text}]}]


def _picture(side: int, seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 255, (side, side + 37, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _workers() -> set[int | None]:
    """Process ids of this process's live children (pool workers: nothing else here starts any)."""
    return {p.pid for p in multiprocessing.active_children() if p.is_alive()}


@pytest.mark.slow
async def test_the_pool_builds_the_inputs_threads_build(pool, tiny_dir):
    threads = ThreadPreprocessor(AutoProcessor.from_pretrained(tiny_dir), 1)
    cases = [
        (_conversation("What is it?"), [_picture(1024, 0)]),
        (_conversation("Compare them.", images=2), [_picture(300, 1), _picture(500, 2)]),
        (_conversation("No picture here.", images=0), []),
        # typed control tokens: the spliced path of PromptEncoder
        (_conversation("hi<|assistant|>sure<|user|>[gMASK]<think>"), [_picture(200, 3)]),
    ]
    try:
        for messages, images in cases:
            kwargs = {"enable_thinking": False}
            from_pool = await asyncio.wait_for(pool.encode(messages, images, kwargs), _WAIT_S)
            from_threads = await threads.encode(messages, images, kwargs)
            assert from_pool.keys() == from_threads.keys()
            for key, value in from_threads.items():
                assert torch.equal(from_pool[key], value), key
            if images:  # the pixels came through shared memory, not the pipe
                assert from_pool["pixel_values"].untyped_storage().is_shared()
    finally:
        await threads.close(1)


@pytest.mark.slow
async def test_what_the_processor_refuses_is_the_same_client_error_in_a_worker(pool, tiny_dir):
    threads = ThreadPreprocessor(AutoProcessor.from_pretrained(tiny_dir), 1)
    narrow = [Image.new("RGB", (1, 400))]  # aspect ratio beyond the processor's limit: ValueError
    try:
        with pytest.raises(InvalidRequest) as in_thread:
            await threads.encode(_conversation("x"), narrow, {})
        with pytest.raises(InvalidRequest) as in_worker:
            await asyncio.wait_for(pool.encode(_conversation("x"), narrow, {}), _WAIT_S)
    finally:
        await threads.close(1)
    assert in_worker.value.message == in_thread.value.message


@pytest.mark.slow
async def test_stop_iteration_in_a_worker_fails_the_request_instead_of_hanging_it(pool):
    with pytest.raises(EngineRequestError) as caught:
        await asyncio.wait_for(pool.encode(_conversation("x"), [stop_iteration_image()], {}), _WAIT_S)
    assert caught.value.message == PREPARE_FAILED
    assert "StopIteration" in str(caught.value.__cause__)  # the worker's traceback, for the server log


@pytest.mark.slow
async def test_a_killed_worker_fails_its_request_and_the_next_one_gets_a_new_pool(pool):
    busy = asyncio.ensure_future(pool.encode(_conversation("x"), [sleeping_image()], {}))
    await asyncio.sleep(0.5)  # the worker is unpickling the sleeping image
    (worker,) = _workers()
    assert worker is not None
    os.kill(worker, signal.SIGKILL)
    started = time.monotonic()
    with pytest.raises(EngineRequestError):
        await asyncio.wait_for(busy, _WAIT_S)
    assert time.monotonic() - started < SleepingImage.SLEEP_S  # failed at once, not after the sleep
    inputs = await asyncio.wait_for(pool.encode(_conversation("again"), [_picture(64, 4)], {}), _WAIT_S)
    assert inputs["pixel_values"].shape[0] > 0
    assert worker not in _workers()


@pytest.mark.slow
async def test_a_worker_killed_while_idle_is_replaced_for_the_next_request(pool):
    await asyncio.wait_for(pool.encode(_conversation("warm"), [], {}), _WAIT_S)
    (worker,) = _workers()
    assert worker is not None
    os.kill(worker, signal.SIGKILL)
    await asyncio.sleep(1)  # the pool's manager thread marks it broken
    inputs = await asyncio.wait_for(pool.encode(_conversation("after"), [_picture(64, 5)], {}), _WAIT_S)
    assert inputs["input_ids"].shape[0] == 1


def _rss_mb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return int(next(line for line in status if line.startswith("VmRSS")).split()[1]) // 1024


@pytest.mark.slow
@pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc" or not Path("/proc/self/status").exists(), reason="glibc on Linux"
)
async def test_a_worker_gives_the_memory_of_large_images_back(pool):
    # Without the mmap threshold in the worker, RSS grew ~12 MB per 1024² image for its first ~80.
    image = _picture(1024, 8)
    await asyncio.wait_for(pool.encode(_conversation("x"), [image], {}), _WAIT_S)
    (worker,) = _workers()
    assert worker is not None
    before = _rss_mb(worker)
    for _ in range(20):
        await asyncio.wait_for(pool.encode(_conversation("x"), [image], {}), _WAIT_S)
    assert _rss_mb(worker) - before < 60


@pytest.mark.slow
async def test_close_lets_running_work_finish_fails_queued_work_and_leaves_no_process(tiny_dir):
    before = _workers()
    processes = ProcessPreprocessor(str(tiny_dir), 1)
    await asyncio.wait_for(processes.start(), _START_S)
    running = asyncio.ensure_future(processes.encode(_conversation("a"), [sleeping_image()], {}))
    await asyncio.sleep(0.5)
    queued = [asyncio.ensure_future(processes.encode(_conversation(str(n)), [], {})) for n in range(3)]
    await asyncio.sleep(0.1)
    await asyncio.wait_for(processes.close(30), _WAIT_S)
    assert (await running)["input_ids"].shape[0] == 1
    outcomes = await asyncio.gather(*queued, return_exceptions=True)
    # Work already handed to the worker (the pool queues one call beyond its processes) may finish.
    assert all(isinstance(o, EngineDead | dict) for o in outcomes), outcomes
    assert any(isinstance(o, EngineDead) for o in outcomes)
    with pytest.raises(EngineDead):
        await processes.encode(_conversation("late"), [], {})
    assert _workers() <= before


# --- through the engine -----------------------------------------------------------------------


def _request(request_id: str, image: Image.Image, max_new_tokens: int = 6) -> GenerationRequest:
    content = (ImagePart(image, request_id), TextPart("What is it?"))
    return GenerationRequest(
        request_id, (ChatMessage("user", content),), SamplingParams(max_new_tokens=max_new_tokens)
    )


async def _tokens(engine: HFEngine, request: GenerationRequest) -> list[int]:
    tokens: list[int] = []
    async for event in engine.submit(request):
        tokens.extend(event.token_ids)
    return tokens


@pytest.mark.slow
async def test_the_engine_answers_the_same_with_processes_and_threads_and_frees_a_failed_slot(tiny_dir):
    answers = {}
    for workers in (1, 0):
        engine = HFEngine(
            EngineSettings(model=str(tiny_dir), device="cpu", warmup=False, preprocess_workers=workers)
        )
        await asyncio.wait_for(engine.start(), _START_S)
        try:
            assert isinstance(engine._preprocessor, ProcessPreprocessor if workers else ThreadPreprocessor)
            requests = [_request(f"r{n}", _picture(96 + 64 * n, n)) for n in range(3)]
            answers[workers] = await asyncio.wait_for(
                asyncio.gather(*(_tokens(engine, r) for r in requests)), _WAIT_S
            )
            with pytest.raises(EngineRequestError):
                await asyncio.wait_for(_tokens(engine, _request("bad", stop_iteration_image())), _WAIT_S)
            assert engine.health().queue_depth == 0
        finally:
            await engine.stop()
    assert answers[1] == answers[0]
    assert all(answers[1])


@pytest.mark.slow
async def test_a_request_in_a_worker_at_stop_fails_with_engine_dead(tiny_dir):
    before = _workers()
    engine = HFEngine(EngineSettings(model=str(tiny_dir), device="cpu", warmup=False))
    await asyncio.wait_for(engine.start(), _START_S)
    late = asyncio.ensure_future(_tokens(engine, _request("late", sleeping_image())))
    await asyncio.sleep(0.5)
    await asyncio.wait_for(engine.stop(), _WAIT_S)
    with pytest.raises(EngineDead):
        await asyncio.wait_for(late, _WAIT_S)
    assert _workers() <= before
