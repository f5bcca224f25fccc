"""Image preprocessing throughput of the engine's pool (chat template + GLM-4.6V image processor).

Usage: python bench/preprocess.py [--side 1024] [--images 32]
The processor configuration is the real GLM-4.6V one (the tiny model carries it), so the cost is
the real model's. Prints images/s with 1 worker and with the engine's default pool size.
"""

from __future__ import annotations

import argparse
import io
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from transformers import AutoProcessor

from glimpse.engine.preprocess import chat_messages
from glimpse.engine.protocol import ChatMessage, GenerationRequest, ImagePart, SamplingParams, TextPart
from glimpse.engine.tiny_model import ensure_random_tiny_model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--side", type=int, default=1024)
    parser.add_argument("--images", type=int, default=32)
    args = parser.parse_args()
    processor = AutoProcessor.from_pretrained(ensure_random_tiny_model(Path("/tmp/glimpse-bench-tiny")))
    rng = np.random.default_rng(0)
    jpegs = []
    for _ in range(args.images):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (args.side, args.side, 3), dtype=np.uint8)).save(buffer, "JPEG")
        jpegs.append(buffer.getvalue())

    def prepare(data: bytes) -> int:
        image = Image.open(io.BytesIO(data)).convert("RGB")  # decode, as intake does
        request = GenerationRequest(
            "b",
            (ChatMessage("user", (ImagePart(image, "x"), TextPart("Describe."))),),
            SamplingParams(max_new_tokens=1),
        )
        messages, images = chat_messages(request)
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return int(processor(text=[prompt], images=images, return_tensors="pt")["input_ids"].shape[-1])

    prepare(jpegs[0])
    default_workers = min(8, os.cpu_count() or 2)
    for workers in sorted({1, default_workers}):
        with ThreadPoolExecutor(workers) as pool:
            started = time.perf_counter()
            tokens = list(pool.map(prepare, jpegs))
            elapsed = time.perf_counter() - started
        print(
            f"{workers} worker(s): {len(jpegs) / elapsed:.1f} images/s, "
            f"{1000 * elapsed / len(jpegs):.1f} ms each "
            f"(decode + template + processor; {tokens[0]} prompt tokens per {args.side}² image)"
        )


if __name__ == "__main__":
    main()
