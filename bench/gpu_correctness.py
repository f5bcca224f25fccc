"""On the GPU: a 1024x1024 request answers, and greedy batched answers equal single-request generate().

The server runs the real-size random-weight model in bfloat16; the reference is the same
checkpoint through model.generate() one request at a time. Near-ties in bfloat16 can flip a
token between batch shapes, so besides exact equality the script reports where answers first
differ (it never hides a difference).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import time

import httpx
import numpy as np
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor


def _png(side: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


async def _ask(client: httpx.AsyncClient, png: bytes, max_tokens: int) -> dict:
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    body = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": url}},
                    {"type": "text", "text": "Describe the image."},
                ],
            }
        ],
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    response = await client.post("/v1/chat/completions", json=body, headers={"Cache-Control": "no-cache"})
    response.raise_for_status()
    return response.json()


def _reference(
    model_dir: str, pngs: list[bytes], max_tokens: int, device: str, dtype: torch.dtype
) -> list[str]:
    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    answers = []
    for png in pngs:
        image = Image.open(io.BytesIO(png)).convert("RGB")
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}
        ]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = processor(text=[prompt], images=[image], return_tensors="pt").to(device)
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=max_tokens, do_sample=False)
        answers.append(processor.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return answers


async def main(url: str, model_dir: str, device: str, dtype: torch.dtype) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        started = time.perf_counter()
        one = await _ask(client, _png(1024, 0), 128)
        print(f"1024x1024 single request: {time.perf_counter() - started:.2f} s, usage {one['usage']}")
        pngs = [_png(side, seed) for seed, side in enumerate([448, 1024, 672, 448, 896, 1024, 560, 448])]
        served = await asyncio.gather(*(_ask(client, png, 32) for png in pngs))
    expected = _reference(model_dir, pngs, 32, device, dtype)
    same = sum(s["choices"][0]["message"]["content"] == e for s, e in zip(served, expected, strict=True))
    print(f"greedy batched == generate(): {same}/{len(pngs)} identical")
    for s, e in zip(served, expected, strict=True):
        got = s["choices"][0]["message"]["content"]
        if got != e:
            first = next(
                (i for i, (a, b) in enumerate(zip(got, e, strict=False)) if a != b), min(len(got), len(e))
            )
            print(f"  differs from character {first} of {len(e)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    args = parser.parse_args()
    asyncio.run(main(args.url, args.model_dir, args.device, getattr(torch, args.dtype)))
