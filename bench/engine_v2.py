"""CPU benchmark of the batching engine (issue 15): mixed steps, one vision call a step, ragged attention.

Usage:
    nice -n 19 python bench/engine_v2.py                 # all figures (several minutes on 2 cores)
    nice -n 19 python bench/engine_v2.py --requests 16 --static 8 --json out.json   # shorter
    nice -n 19 python bench/engine_v2.py --only decode   # figure 3 alone (a minute or two)
    nice -n 19 python bench/engine_v2.py --only saturated   # figure 1 alone

The model is a random-weight GLM-4.6V (``Glm46VForConditionalGeneration``), built in memory:
the text model of ``--hidden`` x ``--layers`` (default 256 x 4, 8 query / 2 key-value heads,
M-RoPE, partial rotary, as the real one), the tiny model's vision tower and the real image
processor, so a 1024² image is 1,369 image tokens (5,476 patches) and its vision tower alone
costs on the order of a second on a small CPU. ``--threads`` defaults to 1, what the server
uses on a 2-core machine (every core but one). Figures are timed in CPU seconds of this
process by default (``--clock cpu``): with one torch thread that is the work done, whatever
else shares the machine (a wall clock on a busy shared machine times the neighbours too);
``--clock wall`` on a quiet machine. Prints, v2 against plain ``generate()``:

1. saturated requests/s at ``--concurrency`` 16 (closed loop, ``--requests`` in all) of
   ``--side``² images x ``--new`` tokens (end-of-sequence ignored), against ``generate()`` one
   request at a time and against one ``generate()`` over a static batch of ``--static``; the
   best of ``--rounds`` rounds, and the same without the vision tower's seconds (the same
   work in every mode, and most of it here);
2. the longest gap between two tokens of a running stream while 8 requests with ``--side``²
   images arrive at once, as a multiple of the median step of that window (from the arrival
   to the last of the 8's first token; goal <= 3x) and of a decode-only step, at ``--budget``
   prefill tokens per step and, for contrast, with every prompt in one step;
3. the decode step at batch 16 with one ``--long``-token sequence among 15 short ones, as a
   multiple of all short (goal <= 1.3x): ragged attention (eager steps), and the fixed-shape
   step CUDA graphs replay (run eagerly here), paged by each row's length with flex attention
   (compiled: the kernel a GPU graph runs, here the CPU's; its compile is outside the timing),
   paged through the gather backend (every row read to ``max_seq_len``: the CPU test path),
   and padded to a length bucket (the fallback); then the attention alone (every layer's, no
   projections or MLP) for flex and padded. The caches are filled with random keys/values (a
   step's cost depends on lengths, not values);
4. vision-tower calls per step when the 8 images arrive together (goal 1).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from glimpse.engine.batching import (
    BatcherConfig,
    ContinuousBatcher,
    Glm4vRunner,
    PagedKVCache,
    SequenceRequest,
)
from glimpse.engine.batching.attention import padded_attention
from glimpse.engine.batching.cuda_graphs import DecodeGraphs
from glimpse.engine.batching.paged_attention import DecodeMask, paged_decode_attention
from glimpse.engine.protocol import FinishReason, SamplingParams
from glimpse.engine.tiny_model import ensure_random_tiny_model

#: What the figures are timed with: process CPU time by default (see ``--clock``).
_clock = time.process_time


@dataclass
class _Sink:
    times: dict[str, list[float]] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)

    def on_token(self, seq_id: str, token_id: int, logprobs: object = None) -> bool:
        self.times.setdefault(seq_id, []).append(_clock())
        return False

    def on_finish(self, seq_id: str, reason: FinishReason) -> None:
        self.done.add(seq_id)

    def on_error(self, seq_id: str, error: BaseException) -> None:
        raise error


def _model(tiny: Path, hidden: int, layers: int) -> Any:
    from transformers import AutoConfig, GenerationConfig, Glm46VForConditionalGeneration

    config = AutoConfig.from_pretrained(tiny)
    text = config.text_config
    text.hidden_size, text.num_hidden_layers, text.intermediate_size = hidden, layers, 4 * hidden
    text.num_attention_heads, text.num_key_value_heads = 8, 2
    text.max_position_embeddings = 32768
    config.vision_config.out_hidden_size = hidden  # the merger feeds the text model
    rotary_half = hidden // 8 // 4  # head_dim * partial_rotary_factor 0.5, halved
    third = rotary_half // 3
    text.rope_parameters = {
        "rope_type": "default",
        "rope_theta": 10000.0,
        "mrope_section": [rotary_half - 2 * third, third, third],
        "partial_rotary_factor": 0.5,
    }
    torch.manual_seed(0)
    model = Glm46VForConditionalGeneration._from_config(config, attn_implementation="sdpa").eval()
    model.generation_config = GenerationConfig.from_pretrained(tiny)
    return model


def _inputs(processor: Any, side: int, count: int, seed: int = 0) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)) for _ in range(count)]
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe it."}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return dict(processor(text=[text] * count, images=images, return_tensors="pt"))


def _one(batch: dict[str, torch.Tensor], index: int) -> dict[str, torch.Tensor]:
    """Request ``index`` of a processor batch of same-size images (each image has the same patches)."""
    rows = int(batch["image_grid_thw"][index].prod())
    out = {k: v[index : index + 1] for k, v in batch.items() if k not in ("pixel_values", "image_grid_thw")}
    out["pixel_values"] = batch["pixel_values"][index * rows : (index + 1) * rows]
    out["image_grid_thw"] = batch["image_grid_thw"][index : index + 1]
    return out


def _generate(model: Any, inputs: dict[str, torch.Tensor], new: int) -> float:
    start = _clock()
    model.generate(**inputs, max_new_tokens=new, min_new_tokens=new, do_sample=False)
    return _clock() - start


def _batcher(model: Any, slots: int, seq_len: int, budget: int) -> ContinuousBatcher:
    # No prefix cache: the saturated run cycles through 8 images, and a repeat would skip its
    # prefill, which generate() pays every time (bench/prefix_cache.py measures the cache).
    config = BatcherConfig(
        max_batch_size=slots, max_seq_len=seq_len, prefill_tokens_per_step=budget, prefix_cache=False
    )
    return ContinuousBatcher(model, config)


def _saturated(model: Any, prompts: list[dict[str, torch.Tensor]], args: argparse.Namespace) -> float:
    """Seconds for a closed loop of ``args.concurrency`` to run ``args.requests`` requests."""
    length = int(prompts[0]["input_ids"].shape[1])
    batcher = _batcher(model, args.concurrency, length + args.new + 8, args.budget)
    sink = _Sink()
    sampling = SamplingParams(max_new_tokens=args.new, ignore_eos=True)
    submitted = 0
    start = _clock()
    while len(sink.done) < args.requests:
        while submitted < args.requests and submitted - len(sink.done) < args.concurrency:
            batcher.submit(
                SequenceRequest(f"r{submitted}", prompts[submitted % len(prompts)], sink, sampling)
            )
            submitted += 1
        batcher.step()
    return _clock() - start


def _burst(
    model: Any, prompts: list[dict[str, torch.Tensor]], stream: dict[str, torch.Tensor], budget: int, new: int
) -> dict[str, Any]:
    """A running stream's token gaps while 8 image requests arrive at once.

    The window runs from the arrival to the step that gives the last of the 8 its first
    token; the gap that spans the arrival counts.
    """
    length = max(int(p["input_ids"].shape[1]) for p in prompts)
    batcher = _batcher(model, 16, length + 512, budget)
    runner = batcher.runner
    sink = _Sink()
    batcher.submit(
        SequenceRequest("stream", stream, sink, SamplingParams(max_new_tokens=500, ignore_eos=True))
    )
    while len(sink.times.get("stream", [])) < 5:
        batcher.step()
    before = len(sink.times["stream"])
    for i, prompt in enumerate(prompts[:8]):
        batcher.submit(
            SequenceRequest(f"a{i}", prompt, sink, SamplingParams(max_new_tokens=new, ignore_eos=True))
        )
    steps: list[float] = []
    calls: list[int] = []
    while not all(f"a{i}" in sink.times for i in range(8)):
        count, begin = runner.vision_calls, _clock()
        batcher.step()
        steps.append(_clock() - begin)
        calls.append(runner.vision_calls - count)
    decode_only = []
    for _ in range(10):  # every prompt in: decode steps at batch 9
        begin = _clock()
        batcher.step()
        decode_only.append(_clock() - begin)
    times = sink.times["stream"][before - 1 : before + len(steps)]
    for seq_id in ["stream", *(f"a{i}" for i in range(8))]:
        batcher.cancel(seq_id)
    batcher.step()
    return {
        "budget": budget,
        "steps": len(steps),
        "longest_gap_s": round(max(b - a for a, b in zip(times, times[1:], strict=False)), 3),
        "median_step_s": round(statistics.median(steps), 3),
        "median_decode_step_s": round(statistics.median(decode_only), 4),
        "vision_calls_per_step_max": max(calls),
        "vision_calls": sum(calls),
    }


#: The decode-step paths of figure 3: ragged (eager steps) and the fixed-shape step's attentions.
_DECODE_PATHS = ("ragged", "flex", "gather", "padded")


def _filled_cache(geometry: Any, lengths: list[int], max_seq_len: int) -> PagedKVCache:
    """Slots of ``lengths`` tokens of random keys/values (a step's cost depends on lengths only)."""
    generator = torch.Generator().manual_seed(0)
    cache = PagedKVCache(geometry, len(lengths), max_seq_len)
    for slot, length in enumerate(lengths):
        cache.allocate()
        cache.ensure(slot, length)
        blocks = torch.tensor(cache.block_table(slot))
        for layer in range(geometry.num_layers):
            for tensor in (cache.keys[layer], cache.values[layer]):
                tensor[:, blocks] = torch.randn(tensor[:, blocks].shape, generator=generator)
        cache.grow(slot, length)
    cache.sync()
    return cache


def _decode_steps(model: Any, long: int, short: int, repeats: int) -> dict[str, Any]:
    """Median decode step at batch 16: all ``short`` tokens, then one of them ``long``."""
    runner = Glm4vRunner(model)
    geometry = runner.geometry()
    result: dict[str, Any] = {"long_tokens": long, "short_tokens": short}
    for case in ("all_short", "one_long"):
        lengths = [long if case == "one_long" and slot == 0 else short for slot in range(16)]
        cache = _filled_cache(geometry, lengths, long + 2 * repeats * len(_DECODE_PATHS) + 8)
        for path in _DECODE_PATHS:
            graphs = None
            if path in ("flex", "gather"):
                graphs = DecodeGraphs(runner, cache, capture=False, attention=path)
            times = []
            for _ in range(repeats):
                lengths = cache.lengths()
                positions = [(n, n, n) for n in lengths]
                tokens = [7] * 16
                begin = _clock()
                if path == "ragged":
                    runner.forward(cache, list(range(16)), tokens, positions)
                else:
                    runner.decode(cache, tokens, positions, kv_bucket=256, graphs=graphs)
                times.append(_clock() - begin)
            result[f"{path}_{case}_step_s"] = round(statistics.median(times[2:]), 5)
        result.update(_decode_attention(runner, cache, case, repeats))
    for path in (*_DECODE_PATHS, "flex_attention", "padded_attention"):
        ratio = result[f"{path}_one_long_step_s"] / result[f"{path}_all_short_step_s"]
        result[f"{path}_one_long_x_all_short"] = round(ratio, 2)
    return result


def _decode_attention(runner: Glm4vRunner, cache: PagedKVCache, case: str, repeats: int) -> dict[str, float]:
    """Median seconds of a decode step's attention alone (every layer, random queries), paged
    with flex against padded to a multiple of 256 keys."""
    geometry = cache.geometry
    n, kv_heads = cache.used, geometry.num_kv_heads
    query = torch.randn(n, kv_heads * 4, 1, geometry.head_dim)  # _model's 8 query heads over 2
    lengths = torch.tensor(cache.lengths())
    mask = DecodeMask(n, cache.num_blocks, cache.tables.shape[1], geometry.device, "flex")
    kv_len = min(cache.max_seq_len, -(-int(lengths.max()) // 256) * 256)  # as ``runner.decode``
    out: dict[str, float] = {}
    for path in ("flex", "padded"):
        times = []
        for _ in range(repeats):
            begin = _clock()
            if path == "flex":
                mask.update(cache.tables, lengths)
            for layer in range(geometry.num_layers):
                if path == "flex":
                    paged_decode_attention(query, cache.keys[layer], cache.values[layer], mask, kv_heads, 0.1)
                else:
                    keys, values = cache.view(layer, n, kv_len)
                    padded_attention(query, keys, values, lengths - 1, kv_heads, 0.1)
            times.append(_clock() - begin)
        out[f"{path}_attention_{case}_step_s"] = round(statistics.median(times[2:]), 6)
    return out


class _VisionTime:
    """CPU seconds spent in the vision tower, through the model's ``get_image_features``
    (``generate()`` and the batcher both call it), so each mode's figure can be read without
    the part that every mode pays alike."""

    def __init__(self, model: Any) -> None:
        self.seconds = 0.0
        vlm = model.model
        real = vlm.get_image_features

        def timed(*args: Any, **kwargs: Any) -> Any:
            begin = _clock()
            try:
                return real(*args, **kwargs)
            finally:
                self.seconds += _clock() - begin

        vlm.get_image_features = timed


def _throughput(
    model: Any, processor: Any, prompts: list[dict[str, torch.Tensor]], args: argparse.Namespace
) -> dict[str, Any]:
    """Requests/s of each mode, the best of ``args.rounds`` rounds run in turn (a shared machine
    slows some rounds down), with and without the vision tower's seconds."""
    vision = _VisionTime(model)
    static_batch = _inputs(processor, args.side, args.static, seed=1)
    modes: dict[str, tuple[int, Callable[[], float]]] = {
        "generate_one_at_a_time": (
            args.sequential,
            lambda: sum(_generate(model, prompts[i % 8], args.new) for i in range(args.sequential)),
        ),
        "generate_static_batch": (args.static, lambda: _generate(model, static_batch, args.new)),
        "v2": (args.requests, lambda: _saturated(model, prompts, args)),
    }
    best: dict[str, tuple[float, float]] = {}
    for _ in range(args.rounds):
        for name, (requests, run) in modes.items():
            vision.seconds = 0.0
            seconds = run()
            rps, without = requests / seconds, requests / (seconds - vision.seconds)
            if name not in best or rps > best[name][0]:
                best[name] = (rps, without)
    result: dict[str, Any] = {}
    for name, (rps, without) in best.items():
        result[f"{name}_rps"] = round(rps, 3)
        result[f"{name}_rps_without_vision"] = round(without, 3)
    for base in ("generate_one_at_a_time", "generate_static_batch"):
        result[f"v2_x_{base}"] = round(best["v2"][0] / best[base][0], 2)
        result[f"v2_x_{base}_without_vision"] = round(best["v2"][1] / best[base][1], 2)
    return result


def _figures_1_2_4(
    model: Any,
    processor: Any,
    prompts: list[dict[str, torch.Tensor]],
    args: argparse.Namespace,
    report: dict[str, Any],
) -> None:
    """Figures 1, 2 and 4 (and the one-image costs) into ``report``."""
    stream = dict(processor(text=["Tell me a long story."], return_tensors="pt"))
    _generate(model, prompts[0], 2)  # warm-up
    begin = _clock()
    model.model.get_image_features(prompts[0]["pixel_values"], prompts[0]["image_grid_thw"])
    report["vision_one_image_s"] = round(_clock() - begin, 3)
    begin = _clock()
    model(**prompts[0], logits_to_keep=1)
    report["prefill_one_prompt_s"] = round(_clock() - begin, 3)

    report["saturated"] = _throughput(model, processor, prompts, args)

    burst = _burst(model, prompts, stream, args.budget, args.new)
    one_step = _burst(model, prompts, stream, 1 << 20, args.new)
    burst["longest_gap_x_median_step"] = round(burst["longest_gap_s"] / burst["median_step_s"], 2)
    burst["longest_gap_x_median_decode_step"] = round(
        burst["longest_gap_s"] / burst["median_decode_step_s"], 1
    )
    # The same burst with every prompt in one step, against the chunked run's median step.
    one_step["longest_gap_x_chunked_median_step"] = round(
        one_step["longest_gap_s"] / burst["median_step_s"], 2
    )
    report["burst"], report["burst_in_one_step"] = burst, one_step


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--side", type=int, default=1024)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=32, help="requests in the saturated run")
    parser.add_argument("--sequential", type=int, default=3, help="generate() calls one at a time")
    parser.add_argument("--static", type=int, default=16, help="static batch size for generate()")
    parser.add_argument("--rounds", type=int, default=2, help="throughput rounds (the best counts)")
    parser.add_argument("--budget", type=int, default=2048, help="prefill tokens per step")
    parser.add_argument("--long", type=int, default=8192)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the server's default here)")
    parser.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        default="cpu",
        help="time CPU seconds of this process (default: robust on a shared machine) or wall seconds",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--only",
        choices=("decode", "saturated"),
        help="print only this figure (3: the decode step; 1: saturated requests/s)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    global _clock
    _clock = time.process_time if args.clock == "cpu" else time.perf_counter
    from transformers import AutoProcessor

    tiny = ensure_random_tiny_model(Path("/tmp/glimpse-bench-tiny"))
    processor = AutoProcessor.from_pretrained(tiny)
    model = _model(tiny, args.hidden, args.layers)
    batch = _inputs(processor, args.side, 1 if args.only == "decode" else 8)
    prompts = [_one(batch, i) for i in range(int(batch["image_grid_thw"].shape[0]))]
    report: dict[str, Any] = {
        "clock": args.clock,
        "torch_threads": torch.get_num_threads(),
        "text_parameters_m": round(sum(p.numel() for p in model.model.language_model.parameters()) / 1e6, 2),
        "prompt_tokens": int(prompts[0]["input_ids"].shape[1]),
        "budget": args.budget,
    }
    with torch.inference_mode():
        if args.only is None:
            _figures_1_2_4(model, processor, prompts, args, report)
        if args.only == "saturated":
            report["saturated"] = _throughput(model, processor, prompts, args)
        else:
            report["decode"] = _decode_steps(model, args.long, report["prompt_tokens"] + args.new, 20)
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
