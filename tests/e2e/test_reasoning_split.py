"""A server with ``reasoning_parser=think-tags``: thinking and answer equal generate()'s, cut at the tags.

The tiny model's weights are random, so it "thinks" only by chance: the first two cases are
inputs where its greedy answer contains ``<think>`` (found by search); the others contain no tag.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import httpx
import pytest
import torch
from PIL import Image
from tests.e2e.harness import GlimpseServer
from tests.images import png_bytes


@pytest.fixture(scope="module")
def thinking_server(tiny_env, tmp_path_factory) -> Iterator[GlimpseServer]:
    env = {**tiny_env, "GLIMPSE_ENGINE__REASONING_PARSER": "think-tags"}
    log = tmp_path_factory.mktemp("logs") / "thinking.log"
    with GlimpseServer(["--model", "tiny"], env=env, log_path=log) as server:
        yield server


def _split_reference(reference, png: bytes, question: str, max_new: int) -> tuple[str, str]:
    """generate()'s tokens, cut at <think>/</think> the way a reasoning parser reads them."""
    model, processor = reference
    tokenizer = processor.tokenizer
    start, end = tokenizer.convert_tokens_to_ids("<think>"), tokenizer.convert_tokens_to_ids("</think>")
    image = Image.open(io.BytesIO(png)).convert("RGB")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[prompt], images=[image], return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new, do_sample=False)
    answer, thought, segment, thinking = [], [], [], False
    for token in out[0, inputs["input_ids"].shape[1] :].tolist() + [None]:
        if token in (start, end, None):
            (thought if thinking else answer).append(tokenizer.decode(segment, skip_special_tokens=True))
            segment, thinking = [], (token == start) if token is not None else thinking
        else:
            segment.append(token)
    return "".join(answer), "".join(thought)


CASES = [
    ("Describe the image in detail.", 11, True),
    ("Is this safe?", 7, True),
    ("What is it?", 2, False),
    ("这张图片里有什么？", 5, False),
]


def _png(c: int) -> bytes:
    return png_bytes((64 + 16 * (c % 5), 64 + 24 * (c % 3)), ((37 * c) % 256, (91 * c) % 256, (13 * c) % 256))


@pytest.mark.parametrize(("question", "case", "thinks"), CASES)
def test_answers_and_thoughts_match_generate(thinking_server, reference, question, case, thinks):
    png = _png(case)
    expected_answer, expected_thought = _split_reference(reference, png, question, 120)
    assert bool(expected_thought) == thinks  # the case still exercises what it is meant to
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": question}]
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": 120}
    reply = httpx.post(f"{thinking_server.base_url}/v1/chat/completions", json=body, timeout=120).json()
    message = reply["choices"][0]["message"]
    assert message["content"] == expected_answer
    assert message.get("reasoning_content", "") == expected_thought
