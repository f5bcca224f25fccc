"""Vision-tower time per image with LoRA adapters of the tower: none, one, four (tiny model, CPU).

Usage: nice -n 19 python bench/lora_vision.py [--images 8] [--size 224] [--rank 8] [--rounds 5] [--calls 5]

The batching runner's ``encode_images`` (one tower call for all images, the embedding cache off)
on the shipped tiny model, one torch thread. Configurations:

- ``plain``: no LoRA layers in the model;
- ``lora-0``: LoRA layers installed, four tower adapters resident, every image on the base tower;
- ``tower-1``: every image on one adapter;
- ``tower-4``: images spread over four adapters.

Adapters are random (PEFT, ``init_lora_weights=False``), rank ``--rank``, on every linear layer of
the vision tower (blocks and patch merger). Interleaved rounds of ``--calls`` tower calls each;
printed: CPU milliseconds per image (the median of the rounds; CPU time, since the machine may be
shared).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from glimpse.engine.batching.prompt import ImageSpan
from glimpse.engine.batching.runner import Glm4vRunner
from glimpse.engine.lora.bank import LoraBank
from glimpse.engine.lora.targets import lora_targets, vision_prefix
from glimpse.engine.tiny_model import shipped_tiny_model_dir

CONFIGS = ("plain", "lora-0", "tower-1", "tower-4")


def _model() -> Any:
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(shipped_tiny_model_dir(), dtype=torch.float32).eval()


def _adapters(root: Path, rank: int) -> list[Path]:
    from peft import LoraConfig, get_peft_model

    paths = []
    for seed in range(4):
        model = _model()
        tower = f"{vision_prefix(model)}."
        names = [name for name in lora_targets(model, vision=True).names if name.startswith(tower)]
        torch.manual_seed(seed)
        config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=names, init_lora_weights=False)
        peft_model = get_peft_model(model, config)
        peft_model.peft_config["default"].base_model_name_or_path = "tiny"
        path = root / f"adapter{seed}"
        peft_model.save_pretrained(str(path), save_embedding_layers=False)
        paths.append(path)
    return paths


def _inputs(count: int, size: int) -> list[dict[str, Any]]:
    from PIL import Image
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(shipped_tiny_model_dir())
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Which colour?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    pictures = [Image.new("RGB", (size, size), (30 * i % 256, 120, 90)) for i in range(count)]
    return [dict(processor(text=[text], images=[picture], return_tensors="pt")) for picture in pictures]


def _setup(
    config: str, adapters: list[Path], inputs: list[dict[str, Any]]
) -> tuple[Any, list[ImageSpan], list[int]]:
    model = _model()
    runner = Glm4vRunner(model)
    slots = [0] * len(inputs)
    if config != "plain":
        bank = LoraBank(model, max_resident=4, max_rank=64, parent="tiny", served_names=("tiny",))
        held = []
        for index, path in enumerate(adapters):
            bank.add(bank.read(f"a{index}", path))
            held.append(bank.acquire(f"a{index}")[0])
        runner.vision_router = bank.vision_routed
        used = int(config.split("-")[1])
        if used:
            slots = [held[i % used] for i in range(len(inputs))]
    spans = [runner.prepare(item).images[0] for item in inputs]
    return runner, spans, slots


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=5, help="Tower calls per configuration and round.")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    inputs = _inputs(args.images, args.size)
    with tempfile.TemporaryDirectory() as tmp:
        adapters = _adapters(Path(tmp), args.rank)
        setups = {config: _setup(config, adapters, inputs) for config in CONFIGS}
    times: dict[str, list[float]] = {config: [] for config in CONFIGS}
    for _ in range(args.rounds):
        for config, (runner, spans, slots) in setups.items():
            routed = [(slot, b"") for slot in slots] if any(slots) else []
            cpu = time.process_time()
            for _ in range(args.calls):
                runner.encode_images(spans, routed)
            times[config].append((time.process_time() - cpu) / (args.calls * len(spans)) * 1000)
    plain = statistics.median(times["plain"])
    print(f"{args.images} images of {args.size}², rank {args.rank}, {args.rounds} rounds, 1 thread")
    for config, runs in times.items():
        median = statistics.median(runs)
        print(f"{config:8s} {median:7.2f} CPU ms per image ({plain / median:5.1%} of plain speed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
