"""On a CUDA GPU: the in-process engine batches on the GPU and stays token-exact in float32.

Run on a lent GPU with ``pytest -m gpu tests/gpu`` (bench/gpu_check.sh covers the real-size model).
"""

from __future__ import annotations

import asyncio
import io

import pytest
import torch
from PIL import Image
from tests.images import png_bytes
from transformers import AutoModelForImageTextToText, AutoProcessor

from glimpse.config import EngineSettings
from glimpse.engine.hf import HFEngine
from glimpse.engine.protocol import ChatMessage, GenerationRequest, ImagePart, SamplingParams, TextPart
from glimpse.engine.tiny_model import ensure_random_tiny_model

pytestmark = pytest.mark.gpu


def _reference(model_dir, image: Image.Image, question: str, max_new_tokens: int) -> str:
    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir).to("cuda").eval()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[prompt], images=[image], return_tensors="pt").to("cuda")
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return processor.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


@pytest.mark.parametrize("cuda_graphs", [False, True], ids=["eager", "cuda-graphs"])
def test_batched_greedy_answers_on_the_gpu_equal_generate(tmp_path, cuda_graphs):
    model_dir = ensure_random_tiny_model(tmp_path / "tiny")
    images = [
        Image.open(io.BytesIO(png_bytes((40 + 30 * i, 64), (i * 30, 90, 200)))).convert("RGB")
        for i in range(6)
    ]
    settings = EngineSettings(
        model=str(model_dir), device="cuda", dtype="float32", max_batch_size=4, cuda_graphs=cuda_graphs
    )
    engine = HFEngine(settings)
    replays: list[int] = []
    paths: list[str] = []

    async def run() -> list[str]:
        await engine.start()
        try:

            async def ask(i: int) -> str:
                request = GenerationRequest(
                    f"r{i}",
                    (ChatMessage("user", (ImagePart(images[i], str(i)), TextPart("What is it?"))),),
                    SamplingParams(max_new_tokens=24),
                )
                return "".join([event.text async for event in engine.submit(request)])

            answers = await asyncio.gather(*(ask(i) for i in range(len(images))))
            scheduler = engine._worker._scheduler if engine._worker else None
            graphs = getattr(scheduler.steps, "graphs", None) if scheduler is not None else None
            replays.append(graphs.replays if graphs is not None else 0)
            paths.append(graphs.attention if graphs is not None else "eager")
            return answers
        finally:
            await engine.stop()

    answers = asyncio.run(run())
    assert answers == [_reference(model_dir, image, "What is it?", 24) for image in images]
    if cuda_graphs:
        assert replays[0] > 0, "no decode step was replayed as a CUDA graph"
        # paged by each row's length (one graph per batch size), not the padded fallback
        assert paths == ["flex"], paths
