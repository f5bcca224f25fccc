"""The tiny GLM-4.6V model and helpers to compare batched output with ``generate()``."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch
from PIL import Image

from glimpse.engine.batching import SampledLogprobs
from glimpse.engine.protocol import FinishReason


@pytest.fixture(scope="session")
def processor(tiny_dir):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_dir)


@pytest.fixture(scope="session")
def model(tiny_dir):
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(0)
    return AutoModelForImageTextToText.from_pretrained(tiny_dir, dtype=torch.float32).eval()


def make_inputs(
    processor, size: tuple[int, int], question: str, color: tuple[int, int, int] = (120, 30, 200)
):
    """Processor output for one user turn: an image of ``size`` with a gradient, then ``question``."""
    image = Image.new("RGB", size, color)
    for x in range(0, size[0], 7):
        for y in range(0, size[1], 5):
            image.putpixel((x, y), ((x * 3) % 256, (y * 5) % 256, (x + y) % 256))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return dict(processor(text=[text], images=[image], return_tensors="pt"))


def make_multi_image_inputs(processor, sizes: list[tuple[int, int]], question: str):
    """Processor output for one user turn with several images (in ``sizes``), then ``question``."""
    images = []
    for index, size in enumerate(sizes):
        image = Image.new("RGB", size, (60 * index % 256, 200 - 30 * index, 90))
        for x in range(0, size[0], 5):
            image.putpixel((x, (x * 3 + index) % size[1]), (255, 255, 255))
        images.append(image)
    content = [{"type": "image"} for _ in sizes] + [{"type": "text", "text": question}]
    messages = [{"role": "user", "content": content}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return dict(processor(text=[text], images=images, return_tensors="pt"))


def make_text_inputs(processor, question: str):
    messages = [{"role": "user", "content": [{"type": "text", "text": question}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return dict(processor(text=[text], return_tensors="pt"))


def reference(model, inputs, max_new_tokens: int, **kwargs) -> list[int]:
    """What a single-request greedy ``generate()`` produces after the prompt."""
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, **kwargs)
    return out[0, inputs["input_ids"].shape[1] :].tolist()


@dataclass
class RecordingSink:
    """Collects what the batcher reports, per sequence id."""

    tokens: dict[str, list[int]] = field(default_factory=dict)
    finished: dict[str, FinishReason] = field(default_factory=dict)
    errors: dict[str, BaseException] = field(default_factory=dict)
    stop_after: dict[str, int] = field(default_factory=dict)
    raise_after: dict[str, int] = field(default_factory=dict)
    logprobs: dict[str, list[SampledLogprobs | None]] = field(default_factory=dict)

    def on_token(self, seq_id: str, token_id: int, logprobs: SampledLogprobs | None = None) -> bool:
        assert seq_id not in self.finished
        assert seq_id not in self.errors
        got = self.tokens.setdefault(seq_id, [])
        got.append(token_id)
        self.logprobs.setdefault(seq_id, []).append(logprobs)
        if len(got) == self.raise_after.get(seq_id, -1):
            raise RuntimeError("sink broke")
        return len(got) == self.stop_after.get(seq_id, -1)

    def on_finish(self, seq_id: str, reason: FinishReason) -> None:
        assert seq_id not in self.finished
        assert seq_id not in self.errors
        self.finished[seq_id] = reason

    def on_error(self, seq_id: str, error: BaseException) -> None:
        assert seq_id not in self.finished
        assert seq_id not in self.errors
        self.errors[seq_id] = error

    def done(self, seq_id: str) -> bool:
        return seq_id in self.finished or seq_id in self.errors
