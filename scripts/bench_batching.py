"""Sanity benchmark: continuous batching vs one-by-one ``generate()``, without HTTP.

Prints one JSON line per concurrency level: output tokens/s of N requests run one
after the other through ``model.generate`` and of the same N requests submitted
at once to ``ContinuousBatcher``, and their ratio. Both generate exactly
``--new`` tokens per request (end-of-sequence ignored) from preprocessed inputs.

    .venv/bin/python scripts/bench_batching.py                       # tiny model, CPU
    python3 scripts/bench_batching.py --real --side 1024 --new 128 --concurrency 1,16,64   # GPU

``--real`` builds the GLM-4.6V-Flash-size model with random weights (as
``../shared/bench/hf_baseline.py`` does); it needs a GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from glimpse.engine.batching import BatcherConfig, ContinuousBatcher, SequenceRequest
from glimpse.engine.protocol import FinishReason, SamplingParams


class _Counter:
    def __init__(self) -> None:
        self.first_token: dict[str, float] = {}
        self.done: set[str] = set()

    def on_token(self, seq_id: str, token_id: int, logprobs: object = None) -> bool:
        self.first_token.setdefault(seq_id, time.perf_counter())
        return False

    def on_finish(self, seq_id: str, reason: FinishReason) -> None:
        self.done.add(seq_id)

    def on_error(self, seq_id: str, error: BaseException) -> None:
        raise error


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _tiny(side: int, directory: Path | None) -> tuple[Any, dict[str, torch.Tensor]]:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from glimpse.engine.tiny_model import ensure_random_tiny_model

    directory = ensure_random_tiny_model(directory)
    processor = AutoProcessor.from_pretrained(directory)
    model = AutoModelForImageTextToText.from_pretrained(directory).eval()
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (side, side, 3), dtype=np.uint8))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe it."}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return model, dict(processor(text=[text], images=[image], return_tensors="pt"))


def _real(side: int) -> tuple[Any, dict[str, torch.Tensor]]:
    from transformers.models.glm46v.configuration_glm46v import Glm46VConfig
    from transformers.models.glm46v.image_processing_pil_glm46v import Glm46VImageProcessorPil
    from transformers.models.glm46v.modeling_glm46v import Glm46VForConditionalGeneration

    rope = {
        "rope_type": "default",
        "rope_theta": 10000.0,
        "mrope_section": [8, 12, 12],
        "partial_rotary_factor": 0.5,
    }
    config = Glm46VConfig(text_config={"rope_parameters": rope})
    with torch.device("cuda"):
        torch.set_default_dtype(torch.bfloat16)
        model = Glm46VForConditionalGeneration(config).eval()
        torch.set_default_dtype(torch.float32)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (side, side, 3), dtype=np.uint8))
    features = Glm46VImageProcessorPil()(images=[image], return_tensors="pt")
    grid = features["image_grid_thw"]
    ids = [151331, 151333, 151336, 198, config.image_start_token_id]
    ids += [config.image_token_id] * int(grid.prod() // 4) + [config.image_end_token_id]
    ids += list(range(1000, 1030)) + [151337, 198]
    input_ids = torch.tensor([ids])
    inputs = {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "mm_token_type_ids": (input_ids == config.image_token_id).long(),
        "pixel_values": features["pixel_values"].to(torch.bfloat16),
        "image_grid_thw": grid,
    }
    return model, inputs


def _sequential(model: Any, inputs: dict[str, torch.Tensor], n: int, new: int) -> float:
    device = next(model.parameters()).device
    on_device = {k: v.to(device) for k, v in inputs.items()}
    _sync(device)
    start = time.perf_counter()
    for _ in range(n):
        model.generate(**on_device, max_new_tokens=new, min_new_tokens=new, do_sample=False)
    _sync(device)
    return time.perf_counter() - start


def _batched(model: Any, inputs: dict[str, torch.Tensor], n: int, new: int) -> tuple[float, float]:
    prompt = int(inputs["input_ids"].shape[1])
    config = BatcherConfig(max_batch_size=n, max_seq_len=prompt + new + 8, prefill_tokens_per_step=prompt * n)
    batcher = ContinuousBatcher(model, config)
    sink = _Counter()
    sampling = SamplingParams(max_new_tokens=new, ignore_eos=True)
    device = batcher.runner.device
    _sync(device)
    start = time.perf_counter()
    for i in range(n):
        batcher.submit(SequenceRequest(f"r{i}", inputs, sink, sampling))
    while len(sink.done) < n:
        batcher.step()
    _sync(device)
    elapsed = time.perf_counter() - start
    ttft = sum(t - start for t in sink.first_token.values()) / n
    return elapsed, ttft


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--real", action="store_true", help="real-size random-weight model on the GPU")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--side", type=int, default=224)
    parser.add_argument("--tiny-dir", type=Path, default=None, help="where the tiny model is built/cached")
    args = parser.parse_args()
    model, inputs = _real(args.side) if args.real else _tiny(args.side, args.tiny_dir)
    with torch.inference_mode():
        _sequential(model, inputs, 1, 4)  # warm-up
        _batched(model, inputs, 2, 4)
        for n in (int(x) for x in args.concurrency.split(",")):
            sequential_s = _sequential(model, inputs, n, args.new)
            batched_s, ttft = _batched(model, inputs, n, args.new)
            tokens = n * args.new
            row = {
                "concurrency": n,
                "prompt_tokens": int(inputs["input_ids"].shape[1]),
                "new_tokens": args.new,
                "sequential_tok_s": round(tokens / sequential_s, 1),
                "batched_tok_s": round(tokens / batched_s, 1),
                "speedup": round(sequential_s / batched_s, 2),
                "batched_mean_ttft_s": round(ttft, 4),
            }
            sys.stdout.write(json.dumps(row) + "\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
