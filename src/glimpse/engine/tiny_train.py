"""Train the tiny GLM-4.6V model from scratch on the shapes task (``glimpse train-tiny DIR``).

The model is the real ``Glm46VForConditionalGeneration`` with a small
``Glm46VConfig``; inputs come from the real processor and chat template (see
``tiny_data``), the loss is transformers' own causal-LM loss with labels on the
answer tokens only. Everything is seeded: the same config, seed and thread count
give the same weights. At the end the held-out accuracy table is printed and
written, with the config and file hashes, to ``MANIFEST.json`` in the checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import platform
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glimpse.engine.tiny_model import (
    CHAT_TEMPLATE,
    _build_tokenizer,
    _check_target,
    _model_config,
    staged_directory,
)

__all__ = ["TrainConfig", "TrainingError", "load_config", "task_corpus", "train", "untrained_model"]

MARKER = "GLIMPSE_TINY_MODEL.json"
MANIFEST = "MANIFEST.json"


class TrainingError(Exception):
    """A bad training config or output folder: one line for the user, exit status 2."""


@dataclass(slots=True, frozen=True)
class TrainConfig:
    """Everything that decides the trained weights (with the torch version and thread count)."""

    seed: int = 0
    samples: int = 5000
    #: conversations about one big shape's colour or kind, trained on once before the others
    easy_samples: int = 1500
    epochs: int = 7
    batch_size: int = 16
    lr: float = 1.2e-3
    warmup_steps: int = 50
    weight_decay: float = 0.01
    threads: int = 2
    eval_per_cell: int = 100
    eval_seed: int = 20_261_206
    #: images are resized (aspect kept) to at most this many pixels squared, at least ``min_side`` squared
    image_side: int = 64
    min_side: int = 32
    patch_size: int = 8
    text_hidden: int = 128
    text_layers: int = 3
    text_heads: int = 4
    text_kv_heads: int = 2
    text_ffn: int = 384
    vision_depth: int = 2
    vision_hidden: int = 96
    vision_heads: int = 4
    vision_ffn: int = 192

    def check(self) -> None:
        may_be_zero = ("seed", "eval_seed", "lr", "warmup_steps", "weight_decay", "easy_samples")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value < 0 or (value == 0 and f.name not in may_be_zero):
                raise TrainingError(f"training config: {f.name} must be positive, got {value}")
        if not 0 < self.lr < 1:
            raise TrainingError(f"training config: lr must be between 0 and 1, got {self.lr}")
        if self.text_hidden % self.text_heads or self.text_heads % self.text_kv_heads:
            raise TrainingError(
                "training config: text_hidden must divide by text_heads, and heads by kv heads"
            )
        if (self.text_hidden // self.text_heads) % 8:
            raise TrainingError(
                "training config: the text head size (text_hidden / text_heads) must divide by 8"
            )
        if self.vision_hidden % self.vision_heads:
            raise TrainingError("training config: vision_hidden must divide by vision_heads")
        if self.min_side > self.image_side or self.image_side % (2 * self.patch_size):
            raise TrainingError(
                "training config: image_side must be a multiple of 2 * patch_size, >= min_side"
            )


def load_config(path: Path | None, **overrides: Any) -> TrainConfig:
    """The default config, updated from a JSON file and then from ``overrides`` (not None)."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            values = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise TrainingError(f"cannot read the training config {path}: {exc}") from exc
        if not isinstance(values, dict):
            raise TrainingError(f"training config {path}: expected a JSON object")
    values.update({k: v for k, v in overrides.items() if v is not None})
    names = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise TrainingError(f"training config: unknown setting(s) {', '.join(unknown)}")
    for key, value in values.items():
        wanted = float if names[key] == "float" else int
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or (wanted is int and not isinstance(value, int))
        ):
            raise TrainingError(f"training config: {key} must be a number ({names[key]}), got {value!r}")
    config = TrainConfig(**values)
    config.check()
    return config


def task_corpus() -> tuple[str, ...]:
    """Every question and answer phrase, so that the tokenizer learns them as few tokens."""
    from glimpse.engine.tiny_task import COLORS, POSITIONS, SHAPES, TASKS, Picture, answer, ask

    rng = random.Random(0)
    lines = []
    for color in COLORS:
        for shape in SHAPES:
            for count, position in [(1, p) for p in POSITIONS] + [(n, None) for n in (2, 3, 4)]:
                picture = Picture(color, shape, count, position, 64, 64, 0)
                for task in TASKS:
                    if task == "position" and position is None:
                        continue
                    for lang in ("en", "zh"):
                        lines.append(ask(task, lang, rng).text + " " + answer(picture, task, lang))
    return tuple(lines)


def untrained_model(config: TrainConfig) -> tuple[Any, Any]:
    """The seeded, untrained model and its processor for ``config``."""
    import torch
    from transformers import (
        GenerationConfig,
        Glm46VForConditionalGeneration,
        Glm46VImageProcessor,
        Glm46VProcessor,
        Glm46VVideoProcessor,
    )

    tokenizer = _build_tokenizer(extra_corpus=task_corpus())
    head = config.text_hidden // config.text_heads
    rotary = head // 2  # partial_rotary_factor 0.5; mrope_section sums to rotary / 2
    section = [rotary // 2 - 2 * (rotary // 6), rotary // 6, rotary // 6]
    text = {
        "hidden_size": config.text_hidden,
        "num_hidden_layers": config.text_layers,
        "num_attention_heads": config.text_heads,
        "num_key_value_heads": config.text_kv_heads,
        "intermediate_size": config.text_ffn,
        "max_position_embeddings": 8192,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": section,
            "partial_rotary_factor": 0.5,
        },
    }
    vision = {
        "depth": config.vision_depth,
        "hidden_size": config.vision_hidden,
        "num_heads": config.vision_heads,
        "intermediate_size": config.vision_ffn,
        "out_hidden_size": config.text_hidden,
        "patch_size": config.patch_size,
        "image_size": config.image_side,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }
    model_config = _model_config(tokenizer, text_config=text, vision_config=vision)
    torch.manual_seed(config.seed)
    model = Glm46VForConditionalGeneration(model_config)
    _scale_vision_init(model)
    model.generation_config = GenerationConfig(
        eos_token_id=model_config.eos_token_id, pad_token_id=model_config.pad_token_id, do_sample=False
    )
    # smart_resize counts the two temporal copies of an image in its pixel bounds
    size = {"shortest_edge": 2 * config.min_side**2, "longest_edge": 2 * config.image_side**2}
    processor = Glm46VProcessor(
        image_processor=Glm46VImageProcessor(size=size, patch_size=config.patch_size, merge_size=2),
        tokenizer=tokenizer,
        video_processor=Glm46VVideoProcessor(patch_size=config.patch_size, merge_size=2),
        chat_template=CHAT_TEMPLATE,
    )
    return model, processor


def _scale_vision_init(model: Any) -> None:
    """Re-draw the vision tower's weights with std 1/sqrt(fan_in) (seeded by the caller).

    The default std of 0.02 suits wide layers; in this narrow tower, and through the
    merger's gated MLP (a product of two such layers), it shrinks the image-dependent
    part of the image tokens to about a thousandth of their size, so the language
    model learns to ignore them and the tower collapses to a constant.
    """
    import torch

    with torch.no_grad():
        for module in model.model.visual.modules():
            weight = getattr(module, "weight", None)
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv3d)) and weight is not None:
                fan_in = weight[0].numel()
                weight.normal_(0.0, fan_in**-0.5)
                if module.bias is not None:
                    module.bias.zero_()


def _writable_target(directory: Path) -> Path:
    from glimpse.errors import ModelLoadError

    try:
        target = _check_target(Path(directory))
        target.parent.mkdir(parents=True, exist_ok=True)
        probe = Path(tempfile.mkdtemp(prefix=".tiny-", dir=target.parent))
        probe.rmdir()
    except ModelLoadError as exc:
        raise TrainingError(exc.message) from exc
    except OSError as exc:
        blocker = next((p for p in Path(directory).absolute().parents if p.exists()), None)
        why = f"{blocker} is a file" if blocker is not None and not blocker.is_dir() else exc.strerror or exc
        raise TrainingError(f"cannot write the trained model to {directory}: {why}") from exc
    return target


def _lr_at(step: int, total: int, config: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(directory: Path, config: TrainConfig, command: str = "") -> dict[str, Any]:
    """Train, evaluate on a fresh held-out set, save to ``directory``; returns the manifest."""
    import torch
    from rich.progress import Progress

    from glimpse.engine.tiny_data import encode_sample
    from glimpse.engine.tiny_eval import evaluate, format_table
    from glimpse.engine.tiny_task import make_easy_sample, make_sample

    target = _writable_target(directory)
    started, cpu_started = time.monotonic(), time.process_time()
    torch.set_num_threads(config.threads)
    torch.use_deterministic_algorithms(True)
    model, processor = untrained_model(config)
    rng = random.Random(config.seed)
    pad_id = int(processor.tokenizer.pad_token_id)
    with Progress(transient=False) as progress:
        prepare = progress.add_task("preparing conversations", total=config.samples + config.easy_samples)
        easy: list[Any] = []
        data: list[Any] = []
        for i in range(config.easy_samples + config.samples):
            sample = make_easy_sample(rng) if i < config.easy_samples else make_sample(rng)
            (easy if i < config.easy_samples else data).append(encode_sample(processor, sample, rng))
            progress.advance(prepare)
        batches = [rng.sample(easy, len(easy))]
        for _epoch in range(config.epochs):
            batches.append(rng.sample(data, len(data)))
        plan = [
            epoch[b * config.batch_size : (b + 1) * config.batch_size]
            for epoch in batches
            for b in range(len(epoch) // config.batch_size)
        ]
        losses = _fit(model, plan, config, pad_id, progress)
    train_seconds, cpu_seconds = time.monotonic() - started, time.process_time() - cpu_started
    model.eval()
    table = evaluate(model, processor, seed=config.eval_seed, per_cell=config.eval_per_cell)
    print(format_table(table))  # noqa: T201 - the command's result
    manifest = {
        "what": "Glimpse's tiny GLM-4.6V test model, trained on the shapes task (not GLM-4.6V)",
        "command": command,
        "config": dataclasses.asdict(config),
        "train_seconds": round(train_seconds, 1),
        "train_cpu_seconds": round(cpu_seconds, 1),
        "final_loss": round(sum(losses[-20:]) / max(1, len(losses[-20:])), 4),
        "steps": len(losses),
        "parameters": sum(p.numel() for p in model.parameters()),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "versions": {"torch": torch.__version__, "transformers": _version("transformers")},
        "accuracy": {"eval_seed": config.eval_seed, "per_cell": config.eval_per_cell, "table": table},
    }
    _save(model, processor, target, manifest)
    return manifest


def _fit(model: Any, plan: list[list[Any]], config: TrainConfig, pad_id: int, progress: Any) -> list[float]:
    """One optimizer step per batch of ``plan``; returns the losses."""
    import torch

    from glimpse.engine.tiny_data import collate

    total = len(plan)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.98)
    )
    bar = progress.add_task("training", total=total)
    model.train()
    losses: list[float] = []
    for step, chunk in enumerate(plan):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, total, config)
        loss = model(**collate(chunk, pad_id)).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(float(loss.detach()))
        recent = sum(losses[-20:]) / len(losses[-20:])
        progress.update(bar, advance=1, description=f"training (loss {recent:.3f})")
        if not progress.console.is_terminal and (step + 1) % max(1, total // 20) == 0:
            progress.console.print(f"step {step + 1}/{total} loss {recent:.3f}")
    return losses


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def _save(model: Any, processor: Any, directory: Path, manifest: dict[str, Any]) -> None:
    note = {"warning": "a tiny test model trained on shapes, not GLM-4.6V", "trained": True}
    with staged_directory(directory) as staging:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        (staging / MARKER).write_text(json.dumps(note) + "\n")
        manifest["files"] = {
            p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(staging.iterdir())
            if p.is_file()
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
