"""Decode throughput with LoRA adapters in the running batch: none, one, four (tiny model, CPU).

Usage: nice -n 19 python bench/lora.py [--batch 16] [--new 48] [--rank 8] [--rounds 3] [--json FILE]

The batching engine (no HTTP) on the shipped tiny model, one torch thread. Each run submits
``--batch`` requests at once (a picture and a colour question each; ``ignore_eos``, ``--new``
answer tokens) and steps the batcher until all are done. Configurations:

- ``plain``: no LoRA layers in the model at all (the engine as it runs without ``--lora``);
- ``lora-0``: LoRA layers installed, four adapters loaded, every row on the base model;
- ``lora-1``: every row on one adapter;
- ``lora-4``: rows spread over four adapters (a quarter each).

Adapters are random (PEFT, ``init_lora_weights=False``), rank ``--rank``, on every linear layer
of the language model and the LM head (``glimpse finetune``'s default targets). The runs are
interleaved, ``--rounds`` of each; printed: answer tokens per CPU second of this process (the
median of the rounds; CPU time, since the machine may be shared) and per wall second.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from glimpse.engine.batching import BatcherConfig, ContinuousBatcher, SequenceRequest
from glimpse.engine.lora.bank import LoraBank
from glimpse.engine.lora.targets import lora_targets
from glimpse.engine.protocol import SamplingParams
from glimpse.engine.tiny_model import shipped_tiny_model_dir

CONFIGS = ("plain", "lora-0", "lora-1", "lora-4")


class _Sink:
    def __init__(self) -> None:
        self.tokens = 0
        self.done: set[str] = set()

    def on_token(self, seq_id: str, token_id: int, logprobs: object = None) -> bool:
        self.tokens += 1
        return False

    def on_finish(self, seq_id: str, reason: Any) -> None:
        self.done.add(seq_id)

    def on_error(self, seq_id: str, error: BaseException) -> None:
        raise error


def _model() -> Any:
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(shipped_tiny_model_dir(), dtype=torch.float32).eval()


def _adapters(root: Path, rank: int) -> list[Path]:
    from peft import LoraConfig, get_peft_model

    paths = []
    for seed in range(4):
        model = _model()
        torch.manual_seed(seed)
        config = LoraConfig(
            r=rank, lora_alpha=rank, target_modules=lora_targets(model).names, init_lora_weights=False
        )
        peft_model = get_peft_model(model, config)
        peft_model.peft_config["default"].base_model_name_or_path = "tiny"
        path = root / f"adapter{seed}"
        peft_model.save_pretrained(str(path), save_embedding_layers=False)
        paths.append(path)
    return paths


def _prompts(batch: int) -> list[dict[str, Any]]:
    import random

    from transformers import AutoProcessor

    from glimpse.engine.prompt_tokens import PromptEncoder
    from glimpse.engine.tiny_task import ask, draw, random_picture

    encoder = PromptEncoder(AutoProcessor.from_pretrained(shipped_tiny_model_dir()))
    rng = random.Random(3)  # noqa: S311 - reproducible pictures
    prompts = []
    for _ in range(batch):
        picture = draw(random_picture(rng, count=1, size=(128, 96)))
        question = ask("color", "en", rng).text
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        prompts.append(encoder.encode(messages, [picture], {}))
    return prompts


def _engine(config: str, adapters: list[Path], batch: int) -> tuple[ContinuousBatcher, list[str | None]]:
    model = _model()
    bank = None
    names: list[str | None] = [None] * batch
    if config != "plain":
        bank = LoraBank(model, max_resident=4, max_rank=64, parent="tiny", served_names=("tiny",))
        for index, path in enumerate(adapters):
            bank.add(bank.read(f"a{index}", path))
        used = int(config.split("-")[1])
        if used:
            names = [f"a{i % used}" for i in range(batch)]
    settings = BatcherConfig(max_batch_size=batch, max_seq_len=512, prefix_cache=False)
    return ContinuousBatcher(model, settings, lora=bank), names


def _run(config: str, adapters: list[Path], prompts: list[dict[str, Any]], new: int) -> tuple[float, float]:
    batcher, names = _engine(config, adapters, len(prompts))
    sink = _Sink()
    sampling = SamplingParams(max_new_tokens=new, ignore_eos=True)
    cpu, wall = time.process_time(), time.perf_counter()
    for index, (inputs, name) in enumerate(zip(prompts, names, strict=True)):
        batcher.submit(SequenceRequest(f"s{index}", inputs, sink, sampling, adapter=name))
    while len(sink.done) < len(prompts):
        batcher.step()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return sink.tokens / cpu, sink.tokens / wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--new", type=int, default=48)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    prompts = _prompts(args.batch)
    results: dict[str, list[tuple[float, float]]] = {config: [] for config in CONFIGS}
    with tempfile.TemporaryDirectory() as tmp:
        adapters = _adapters(Path(tmp), args.rank)
        for _ in range(args.rounds):
            for config in CONFIGS:
                results[config].append(_run(config, adapters, prompts, args.new))
    summary = {
        config: {
            "tokens_per_cpu_s": round(statistics.median(r[0] for r in runs), 1),
            "tokens_per_wall_s": round(statistics.median(r[1] for r in runs), 1),
        }
        for config, runs in results.items()
    }
    base = summary["plain"]["tokens_per_cpu_s"]
    print(f"{args.batch} sequences x {args.new} tokens, rank {args.rank}, {args.rounds} rounds, 1 thread")
    for config, row in summary.items():
        share = row["tokens_per_cpu_s"] / base
        print(
            f"{config:7s} {row['tokens_per_cpu_s']:8.1f} tokens/CPU s ({share:5.1%} of plain)"
            f"  {row['tokens_per_wall_s']:8.1f} tokens/wall s"
        )
    if args.json is not None:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "results": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
