"""Time to first token of follow-ups and repeated images, the engine's caches on against off, in one run.

Usage: nice -n 19 python bench/prefix_cache.py [--side 1024] [--new 32] [--conversations 6]
                     [--concurrency 3] [--workload-side 448] [--json FILE]

The batching engine (no HTTP) on the mid-size random GLM-4.6V of ``bench/engine_v2.py`` (text
model 256 wide, 4 layers; the tiny model's vision tower and the real image processor, so a
1024² image is 1,369 tokens), one torch thread, CPU seconds of this process. For the caches off and on (the
prefix cache and the image embedding cache, 256 MB), a fresh engine:

1. turn 1 (an image and a question, ``--new`` answer tokens), then turn 2: the same
   conversation with the answer and a new question: turn 2's time to first token;
2. a new question about the same image in a new conversation: its time to first token;
3. a saturated 3-turn workload: ``--conversations`` conversations, each with its own
   ``--workload-side``² image, ``--concurrency`` at a time on as many cache slots (the batch is
   full whenever a turn waits), each turn sent when the previous one answered: requests (turns)
   per second. The paged cache keeps finished turns' blocks in the blocks no running sequence
   needs, so a full batch still hits.

Greedy answers must be the same with the cache on and off (checked; exits 1 if not).
Goals (issue 16): follow-up >= 5x faster to first token, new question about a known image >= 3x.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_v2 import _model  # noqa: E402 -- the mid-size model the engine benchmark uses

from glimpse.engine.batching import BatcherConfig, ContinuousBatcher, SequenceRequest  # noqa: E402
from glimpse.engine.protocol import FinishReason, SamplingParams  # noqa: E402
from glimpse.engine.tiny_model import ensure_random_tiny_model  # noqa: E402

_clock: Callable[[], float] = time.process_time
FOLLOW_UP_GOAL = 5.0
KNOWN_IMAGE_GOAL = 3.0


@dataclass
class _Sink:
    submitted: dict[str, float] = field(default_factory=dict)
    first: dict[str, float] = field(default_factory=dict)
    tokens: dict[str, list[int]] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)

    def on_token(self, seq_id: str, token_id: int, logprobs: Any = None) -> bool:
        self.first.setdefault(seq_id, _clock())
        self.tokens.setdefault(seq_id, []).append(token_id)
        return False

    def on_finish(self, seq_id: str, reason: FinishReason) -> None:
        self.done.add(seq_id)

    def on_error(self, seq_id: str, error: BaseException) -> None:
        raise error

    def ttft(self, seq_id: str) -> float:
        return self.first[seq_id] - self.submitted[seq_id]


def _image(side: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8))


def _inputs(
    processor: Any, image: Image.Image, turns: list[tuple[str, str | None]]
) -> dict[str, torch.Tensor]:
    messages: list[dict[str, Any]] = []
    for index, (question, answer) in enumerate(turns):
        content: list[dict[str, Any]] = [{"type": "text", "text": question}]
        if index == 0:
            content.insert(0, {"type": "image"})
        messages.append({"role": "user", "content": content})
        if answer is not None:
            messages.append({"role": "assistant", "content": answer})
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return dict(processor(text=[text], images=[image], return_tensors="pt"))


class _Engine:
    def __init__(self, model: Any, prefix_cache: bool, seq_len: int, slots: int) -> None:
        config = BatcherConfig(
            max_batch_size=slots,
            max_seq_len=seq_len,
            prefill_tokens_per_step=4096,
            prefix_cache=prefix_cache,
            # "on" is both of issue 16's engine caches: the prefix cache and the image embedding cache.
            image_embedding_cache_bytes=(256 << 20) if prefix_cache else 0,
        )
        self.batcher = ContinuousBatcher(model, config)
        self.sink = _Sink()

    def submit(self, seq_id: str, inputs: dict[str, torch.Tensor], new: int) -> None:
        self.sink.submitted[seq_id] = _clock()
        sampling = SamplingParams(max_new_tokens=new, ignore_eos=True)
        self.batcher.submit(SequenceRequest(seq_id, inputs, self.sink, sampling))

    def run(self, seq_ids: list[str]) -> None:
        while not all(s in self.sink.done for s in seq_ids):
            self.batcher.step()


def _single(model: Any, processor: Any, args: argparse.Namespace, prefix_cache: bool) -> dict[str, Any]:
    engine = _Engine(model, prefix_cache, seq_len=4096, slots=4)
    image = _image(args.side, 1)
    first = _inputs(processor, image, [("Describe this picture.", None)])
    engine.submit("t1", first, args.new)
    engine.run(["t1"])
    answer = processor.tokenizer.decode(engine.sink.tokens["t1"], skip_special_tokens=True)
    second = _inputs(processor, image, [("Describe this picture.", answer), ("What else is there?", None)])
    engine.submit("t2", second, args.new)
    engine.run(["t2"])
    other = _inputs(processor, image, [("How many colours are in it?", None)])
    engine.submit("k", other, args.new)
    engine.run(["k"])
    sink = engine.sink
    return {
        "turn1_ttft_s": round(sink.ttft("t1"), 3),
        "follow_up_ttft_s": round(sink.ttft("t2"), 3),
        "known_image_ttft_s": round(sink.ttft("k"), 3),
        "follow_up_prompt_tokens": int(second["input_ids"].shape[1]),
        "answers": [sink.tokens[s] for s in ("t1", "t2", "k")],
    }


def _workload(model: Any, processor: Any, args: argparse.Namespace, prefix_cache: bool) -> dict[str, Any]:
    # Saturated: as many slots as conversations at once, so the batch is full while turns wait.
    engine = _Engine(model, prefix_cache, seq_len=4096, slots=args.concurrency)
    questions = ["Describe this picture.", "What else is there?", "Summarize it in one line."]
    images = [_image(args.workload_side, 100 + c) for c in range(args.conversations)]
    history: dict[int, list[tuple[str, str | None]]] = {c: [] for c in range(args.conversations)}
    waiting = list(range(args.conversations))
    active: dict[str, tuple[int, int]] = {}
    start = _clock()
    turns_done = 0
    while waiting or active:
        while waiting and len(active) < args.concurrency:
            conversation = waiting.pop(0)
            turn = len(history[conversation])
            turns = [*history[conversation], (questions[turn], None)]
            seq_id = f"c{conversation}-t{turn}"
            engine.submit(seq_id, _inputs(processor, images[conversation], turns), args.new)
            active[seq_id] = (conversation, turn)
        engine.batcher.step()
        for seq_id in [s for s in active if s in engine.sink.done]:
            conversation, turn = active.pop(seq_id)
            answer = processor.tokenizer.decode(engine.sink.tokens[seq_id], skip_special_tokens=True)
            history[conversation].append((questions[turn], answer))
            turns_done += 1
            if turn + 1 < len(questions):
                waiting.append(conversation)
    seconds = _clock() - start
    ttfts = [engine.sink.ttft(s) for s in engine.sink.first if "-t0" not in s]
    return {
        "requests": turns_done,
        "seconds": round(seconds, 2),
        "requests_per_s": round(turns_done / seconds, 3),
        "later_turns_median_ttft_s": round(float(np.median(ttfts)), 3),
        "answers": {s: engine.sink.tokens[s] for s in sorted(engine.sink.tokens)},
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--side", type=int, default=1024)
    parser.add_argument("--new", type=int, default=32)
    parser.add_argument("--conversations", type=int, default=6)
    parser.add_argument("--concurrency", type=int, default=3)
    parser.add_argument("--workload-side", type=int, default=448)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoProcessor

    tiny = ensure_random_tiny_model(Path("/tmp/glimpse-bench-tiny"))
    processor = AutoProcessor.from_pretrained(tiny)
    model = _model(tiny, args.hidden, args.layers)
    report: dict[str, Any] = {"clock": "cpu", "torch_threads": torch.get_num_threads()}
    with torch.inference_mode():
        single = {mode: _single(model, processor, args, mode == "on") for mode in ("off", "on")}
        workload = {mode: _workload(model, processor, args, mode == "on") for mode in ("off", "on")}
    same = single["off"].pop("answers") == single["on"].pop("answers") and (
        workload["off"].pop("answers") == workload["on"].pop("answers")
    )
    report.update(single=single, workload=workload, answers_identical=same)
    follow = single["off"]["follow_up_ttft_s"] / single["on"]["follow_up_ttft_s"]
    known = single["off"]["known_image_ttft_s"] / single["on"]["known_image_ttft_s"]
    rate = workload["on"]["requests_per_s"] / workload["off"]["requests_per_s"]
    report["ratios"] = {
        "follow_up_ttft_off_over_on": round(follow, 2),
        "known_image_ttft_off_over_on": round(known, 2),
        "three_turn_workload_requests_per_s_on_over_off": round(rate, 2),
    }
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    sys.stdout.write(
        f"follow-up TTFT {follow:.2f}x faster (goal >= {FOLLOW_UP_GOAL}x) "
        f"{'PASS' if follow >= FOLLOW_UP_GOAL else 'FAIL'}; new question about a known image "
        f"{known:.2f}x (goal >= {KNOWN_IMAGE_GOAL}x) {'PASS' if known >= KNOWN_IMAGE_GOAL else 'FAIL'}; "
        f"saturated 3-turn workload {workload['on']['requests_per_s']:.3f} requests/s on vs "
        f"{workload['off']['requests_per_s']:.3f} off ({rate:.2f}x); "
        f"answers {'identical' if same else 'DIFFER'}\n"
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if same and follow >= FOLLOW_UP_GOAL and known >= KNOWN_IMAGE_GOAL else 1


if __name__ == "__main__":
    raise SystemExit(main())
