"""What ``model.generate`` answers for one request, computed directly, to compare with the server."""

from __future__ import annotations

import io
from typing import Any

import torch
from PIL import Image


def generate_directly(
    reference: tuple[Any, Any], png: bytes, question: str, max_new_tokens: int, **template_kwargs: Any
) -> tuple[str, int]:
    """Greedy answer and its token count from the processor + ``model.generate``, no server involved."""
    model, processor = reference
    image = Image.open(io.BytesIO(png)).convert("RGB")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False, **template_kwargs
    )
    inputs = processor(text=[prompt], images=[image], return_tensors="pt")
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new_tokens = output[0, inputs["input_ids"].shape[1] :]
    return processor.decode(new_tokens, skip_special_tokens=True), int(new_tokens.shape[0])
