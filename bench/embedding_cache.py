"""Time to first token of a new question about a known image: image embedding cache on vs off (issue 16).

Usage:
    nice -n 19 python bench/embedding_cache.py [--side 1024] [--questions 4] [--json FILE]

The model is the engine benchmark's (``bench/engine_v2.py``): a random-weight GLM-4.6V
built in memory, text model ``--hidden`` x ``--layers`` (256 x 4), the tiny model's vision
tower and the real image processor (a 1024² image is 1,369 image tokens, 5,476 patches),
one torch thread, timed in CPU seconds of this process (``--clock cpu``) as that
benchmark explains.

Two batchers share the model, one with the embedding cache and one without. Each is
first asked one question about a ``--side``² image (the cache's copy is made then);
then, alternating between the two, ``--questions`` new questions about the same image
(other text, so the result cache would not help), each alone in its batcher. Printed:
the median time from submission to the first token of those questions in each mode, the
ratio, the vision-tower calls each made, and, for scale, one vision-tower call and one
``image_key`` (the SHA-256 of the image's pixel values that a lookup costs) on their own.

With the cache on, the first token still waits for the text prefill of the whole prompt
(image tokens included); the prefix KV cache (issue 16, not built yet) is what removes that.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_v2 import _model as engine_v2_model  # noqa: E402 -- the engine benchmark's model

from glimpse.engine.batching import (  # noqa: E402
    BatcherConfig,
    ContinuousBatcher,
    ImageEmbeddingCache,
    SequenceRequest,
    image_key,
)
from glimpse.engine.protocol import FinishReason, SamplingParams  # noqa: E402
from glimpse.engine.tiny_model import ensure_random_tiny_model  # noqa: E402

_clock = time.process_time

QUESTIONS = [
    "Describe this picture.",
    "What colours are in the top left corner?",
    "Is there any text in the image? Read it.",
    "How many distinct objects can you see?",
    "Would this work as a desktop wallpaper?",
    "Which part of the image is the brightest?",
    "Describe the texture in two sentences.",
    "Is the picture noisy or smooth?",
    "What would you name this image?",
]


class _FirstToken:
    def __init__(self) -> None:
        self.first: dict[str, float] = {}
        self.done: set[str] = set()

    def on_token(self, seq_id: str, token_id: int, logprobs: object = None) -> bool:
        self.first.setdefault(seq_id, _clock())
        return True  # the first token is all this benchmark times

    def on_finish(self, seq_id: str, reason: FinishReason) -> None:
        self.done.add(seq_id)

    def on_error(self, seq_id: str, error: BaseException) -> None:
        raise error


def _inputs(processor: Any, image: Image.Image, question: str) -> dict[str, torch.Tensor]:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return dict(processor(text=[text], images=[image], return_tensors="pt"))


def _ttft(batcher: ContinuousBatcher, seq_id: str, inputs: dict[str, torch.Tensor]) -> float:
    sink = _FirstToken()
    start = _clock()
    batcher.submit(SequenceRequest(seq_id, inputs, sink, SamplingParams(max_new_tokens=4)))
    while seq_id not in sink.done:
        batcher.step()
    return sink.first[seq_id] - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--side", type=int, default=1024)
    parser.add_argument("--questions", type=int, default=4, help="new questions timed per mode")
    parser.add_argument("--budget", type=int, default=2048, help="prefill tokens per step")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if not 1 <= args.questions < len(QUESTIONS):
        parser.error(f"--questions must be 1..{len(QUESTIONS) - 1}")
    torch.set_num_threads(args.threads)
    global _clock
    _clock = time.process_time if args.clock == "cpu" else time.perf_counter
    from transformers import AutoProcessor

    tiny = ensure_random_tiny_model(Path("/tmp/glimpse-bench-tiny"))
    processor = AutoProcessor.from_pretrained(tiny)
    model = engine_v2_model(tiny, args.hidden, args.layers)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (args.side, args.side, 3), dtype=np.uint8))
    prompts = [_inputs(processor, image, q) for q in QUESTIONS[: args.questions + 1]]
    length = max(int(p["input_ids"].shape[1]) for p in prompts)
    config = BatcherConfig(max_batch_size=2, max_seq_len=length + 16, prefill_tokens_per_step=args.budget)
    cache = ImageEmbeddingCache(256 << 20)
    batchers = {"off": ContinuousBatcher(model, config), "on": ContinuousBatcher(model, config)}
    batchers["on"].runner.embedding_cache = cache

    with torch.inference_mode():
        begin = _clock()
        model.model.get_image_features(prompts[0]["pixel_values"], prompts[0]["image_grid_thw"])
        tower_s = _clock() - begin
    begin = _clock()
    span = batchers["on"].runner.prepare(prompts[0]).images[0]
    image_key(span)
    key_s = _clock() - begin

    first = {mode: _ttft(b, f"{mode}-first", prompts[0]) for mode, b in batchers.items()}
    times: dict[str, list[float]] = {"off": [], "on": []}
    for index, prompt in enumerate(prompts[1:], start=1):
        for mode, batcher in batchers.items():
            times[mode].append(_ttft(batcher, f"{mode}-{index}", prompt))
    median = {mode: statistics.median(values) for mode, values in times.items()}
    report = {
        "clock": args.clock,
        "side": args.side,
        "prompt_tokens": int(prompts[1]["input_ids"].shape[1]),
        "image_tokens": span.length,
        "vision_tower_s": round(tower_s, 4),
        "image_key_s": round(key_s, 4),
        "first_question_ttft_s": {mode: round(value, 4) for mode, value in first.items()},
        "new_question_ttft_s": {mode: [round(v, 4) for v in values] for mode, values in times.items()},
        "median_s": {mode: round(value, 4) for mode, value in median.items()},
        "speedup": round(median["off"] / median["on"], 2),
        "vision_calls": {mode: b.runner.vision_calls for mode, b in batchers.items()},
        "cache_entries": len(cache),
        "cache_mb": round(cache.nbytes / 2**20, 2),
    }
    print(  # noqa: T201
        f"{args.side}² image ({report['image_tokens']} image tokens, "
        f"{report['prompt_tokens']} prompt tokens), "
        f"{args.clock} clock: vision tower {tower_s:.3f} s, image_key {key_s:.3f} s\n"
        f"first question TTFT: off {first['off']:.3f} s, on {first['on']:.3f} s\n"
        f"new question about the same image, TTFT median of {args.questions}: off {median['off']:.3f} s, "
        f"on {median['on']:.3f} s = {report['speedup']:.2f}x faster (goal of the full design: >= 3x)\n"
        f"vision-tower calls: off {report['vision_calls']['off']}, on {report['vision_calls']['on']}; "
        f"cache {report['cache_entries']} entry, {report['cache_mb']} MB"
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
