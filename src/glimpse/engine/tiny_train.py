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

__all__ = [
    "TrainConfig",
    "TrainingError",
    "load_config",
    "task_corpus",
    "tiny_processor",
    "train",
    "untrained_model",
]

MARKER = "GLIMPSE_TINY_MODEL.json"
MANIFEST = "MANIFEST.json"


class TrainingError(Exception):
    """A bad training config or output folder: one line for the user, exit status 2."""


@dataclass(slots=True, frozen=True)
class TrainConfig:
    """Everything that decides the trained weights (with the torch version and thread count)."""

    seed: int = 0
    #: training conversations generated (most of them ask every question about one picture), their
    #: pictures of every size the task has (``extra_pictures`` adds more). 18,000 seen twice rather
    #: than 12,000 three times: the same steps, and the language model had answered 5 points better
    #: on its training pictures than on fresh ones (shape 98 / 93 %, count 90 / 85 %); held-out
    #: describe 79/81 -> 81/81 %, two images 70/62 -> 79/66 %. 12,000 with 24,000 extra pictures
    #: answered shape / count 96.7 / 91.1 % against 18,000's 97.4 / 91.9 %
    samples: int = 18_000
    #: processes that generate them before training starts
    workers: int = 2
    #: steps of the vision tower alone on the pictures' labels (see ``tiny_warmup``): its held-out
    #: probe kept learning shape and count up to 2,400 (shape 93 -> 96 -> 98 %, count 73 -> 85 -> 84 %
    #: at 1,200 / 2,000 / 2,400 of a 2,400-step run); with the extra and mirrored pictures below,
    #: 2,900 rather than 2,400 steps took the whole model's shape / count rows from 95.9 / 89.7 % to
    #: 96.6 / 90.4 % (1,500 held-out questions each) for about 100 s more
    vision_warmup_steps: int = 2900
    vision_warmup_lr: float = 2e-3
    #: weight of the warm-up's per-token targets (what each token shows, where the shapes' centres
    #: are; ``tiny_warmup``). Without them (0) the probe learnt shape and count more slowly
    #: (84 / 69 % against 95 / 78 % after 1,200 steps)
    vision_dense_weight: float = 1.0
    #: weight of how far each picture's summed centre scores are from its count (``tiny_warmup``),
    #: which teaches the centre head to mark each shape once
    vision_count_sum_weight: float = 2.0
    #: pictures drawn near the input size, each with every question about it
    #: (``tiny_data.picture_pool``), and the share of the warm-up's pictures flipped left to right
    #: (``tiny_warmup.mirrored``): the tower answered its own training pictures far better than new
    #: ones (probe shape 99.9 against 97 %, count 98 against 85 %). With both, for the warm-up alone,
    #: the whole model's held-out shape / count rows went from 95.7 / 86.7 % to 96.7 / 88.8 % (1,500
    #: questions each). The language model learns from their conversations too: one pass over the
    #: 42,000 conversations rather than two over the 18,000 took those rows from 96.6 / 90.4 % to
    #: 97.4 / 91.9 % (the same warmed-up tower), for 188 more steps. 48,000 rather than 24,000 for
    #: the warm-up (the language model still on the first 24,000's conversations) took the shape /
    #: count / describe rows from 97.0 / 90.4 / 89.7 % to 97.1 / 92.7 / 92.4 % (3,000 held-out
    #: questions a row, seed 5151), for about 40 s more (the pool's patches in half precision)
    extra_pictures: int = 48_000
    #: how many of them the language model also learns from, each with its conversation: its
    #: steps were not what held it back (two passes over its 42,000 conversations rather than one,
    #: on the same tower: 97.4 / 90.6 / 89.6 % against 97.0 / 90.4 / 89.7 %, for about 340 s more)
    extra_conversations: int = 24_000
    vision_mirror: float = 0.5
    #: share of the whole-model steps with the warmed-up tower frozen, while the rest learns to read
    #: it. 1.0: frozen throughout, which answered as well as thawing it after 30 % (shape 87/88 %
    #: against 87/85 % in an early recipe; on the shipped recipe's 42,000 conversations, shape /
    #: count 97.4 / 91.9 % against 96.9 / 92.2 %, 1,500 questions each, the thawed run 65 s longer)
    #: and lets each step skip the tower (``_fit``)
    vision_frozen_share: float = 1.0
    #: the tower's learning rate after that, relative to the rest's
    vision_lr_scale: float = 0.5
    #: passes over the conversations by the whole model. With 12,000 conversations held-out
    #: answers still improved from 2 to 3 passes with the tower frozen (by 4 the training loss was
    #: near 0), but new conversations teach more than old ones seen again (above)
    epochs: int = 1
    batch_size: int = 32
    #: batches sorted by length together (``_batches``; 1: each drawn at random). A random batch of
    #: 32 is padded to 131 tokens on average for 102 of conversation; in runs of 8 to 108
    length_group: int = 8
    lr: float = 2e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    threads: int = 2
    eval_per_cell: int = 100
    eval_seed: int = 20_261_206
    #: images are resized (aspect kept) to at most this many pixels squared, at least ``min_side``
    #: squared; equal by default, so a shape always covers the same share of patches as of the picture
    image_side: int = 112
    min_side: int = 112
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
    #: the tower's 2-D rotary base. GLM-4.6V's 10,000 suits its 100-odd patches a side; over this
    #: tower's 14 only two of the six frequencies per axis turn by more than a few degrees
    vision_rope_theta: float = 20.0
    #: the language model's rotary base: small, so the image rows and columns (the M-RoPE
    #: sections that get the slowest frequencies) still turn by a readable angle per step
    text_rope_theta: float = 10.0

    def check(self) -> None:
        may_be_zero = (
            "seed",
            "eval_seed",
            "lr",
            "warmup_steps",
            "weight_decay",
            "vision_warmup_steps",
            "vision_dense_weight",
            "vision_count_sum_weight",
            "extra_pictures",
            "extra_conversations",
            "vision_mirror",
            "vision_frozen_share",
            "vision_lr_scale",
        )
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value < 0 or (value == 0 and f.name not in may_be_zero):
                raise TrainingError(f"training config: {f.name} must be positive, got {value}")
        if self.vision_mirror > 1:
            raise TrainingError(f"training config: vision_mirror is a share, got {self.vision_mirror}")
        for name in ("lr", "vision_warmup_lr"):
            if not 0 < getattr(self, name) < 1:
                raise TrainingError(
                    f"training config: {name} must be between 0 and 1, got {getattr(self, name)}"
                )
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
    processor = tiny_processor(config)
    return _untrained_weights(config, processor.tokenizer), processor


def tiny_processor(config: TrainConfig) -> Any:
    """The real ``Glm46VProcessor`` with the tiny model's tokenizer, patch size and pixel bounds."""
    from transformers import Glm46VImageProcessor, Glm46VProcessor, Glm46VVideoProcessor

    tokenizer = _build_tokenizer(extra_corpus=task_corpus())
    # smart_resize counts the two temporal copies of an image in its pixel bounds
    size = {"shortest_edge": 2 * config.min_side**2, "longest_edge": 2 * config.image_side**2}
    return Glm46VProcessor(
        image_processor=Glm46VImageProcessor(size=size, patch_size=config.patch_size, merge_size=2),
        tokenizer=tokenizer,
        video_processor=Glm46VVideoProcessor(patch_size=config.patch_size, merge_size=2),
        chat_template=CHAT_TEMPLATE,
    )


def _untrained_weights(config: TrainConfig, tokenizer: Any) -> Any:
    import torch
    from transformers import GenerationConfig, Glm46VForConditionalGeneration

    head = config.text_hidden // config.text_heads
    rotary = head // 2  # partial_rotary_factor 0.5; mrope_section sums to rotary / 2
    # text positions turn every section alike; rows and columns get the most of it
    section = [rotary // 2 - 2 * (3 * rotary // 16), 3 * rotary // 16, 3 * rotary // 16]
    text = {
        "hidden_size": config.text_hidden,
        "num_hidden_layers": config.text_layers,
        "num_attention_heads": config.text_heads,
        "num_key_value_heads": config.text_kv_heads,
        "intermediate_size": config.text_ffn,
        "max_position_embeddings": 8192,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": config.text_rope_theta,
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
        "rope_parameters": {"rope_type": "axial", "rope_theta": config.vision_rope_theta},
    }
    model_config = _model_config(tokenizer, text_config=text, vision_config=vision)
    torch.manual_seed(config.seed)
    model = Glm46VForConditionalGeneration(model_config)
    _scale_vision_init(model)
    model.generation_config = GenerationConfig(
        eos_token_id=model_config.eos_token_id, pad_token_id=model_config.pad_token_id, do_sample=False
    )
    return model


def _scale_vision_init(model: Any) -> None:
    """Re-draw the vision tower's weights with std 1/sqrt(fan_in) (seeded by the caller).

    The default std of 0.02 suits wide layers; in this narrow tower, and through the
    merger's gated MLP (a product of two such layers), it shrinks the image-dependent
    part of the image tokens to about a thousandth of their size, so the language
    model learns to ignore them and the tower collapses to a constant. The position
    table starts as 2-D sines and cosines (see ``_sincos_positions``).
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
        table = model.model.visual.embeddings.position_embedding.weight
        table.copy_(_sincos_positions(int(table.shape[0] ** 0.5), table.shape[1]))


def _sincos_positions(side: int, dim: int) -> Any:
    """A ``side`` x ``side`` table of 2-D sine-cosine codes (row half, column half), values in [-1, 1].

    The tower's only absolute position signal is this table (its attention's rotary
    code is relative). Drawn with std 0.02 next to unit-size patch features it stays
    too faint to learn from: a probe of the tower alone, on where a single shape is
    in pictures of mixed sizes, stayed at chance (22 % of 5) after 400 steps, and
    reached 92 % after 300 with this start. Its grid is interpolated to every picture's
    own grid, so the codes say where a patch is relative to the picture's sides.
    """
    import torch

    quarter = dim // 4
    freqs = 1.0 / (100 ** (torch.arange(quarter, dtype=torch.float32) / quarter))
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")

    def code(coords: Any) -> Any:
        angles = coords.reshape(-1, 1).float() * freqs
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    table = torch.cat([code(rows), code(cols)], dim=1)
    return torch.nn.functional.pad(table, (0, dim - table.shape[1]))


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
    """Train, evaluate on a fresh held-out set, save to ``directory``; returns the manifest.

    Two stages: the vision tower alone on the pictures' labels (``tiny_warmup``),
    then the whole model on the answers with transformers' own loss.
    """
    import torch
    from rich.progress import Progress

    from glimpse.engine.tiny_data import encoded_pool, picture_pool
    from glimpse.engine.tiny_eval import evaluate, format_table
    from glimpse.engine.tiny_warmup import warm_up_vision

    target = _writable_target(directory)
    started, cpu_started = time.monotonic(), time.process_time()
    processor = tiny_processor(config)  # before any torch work: the pool's workers are forked
    with Progress(transient=False) as progress:
        progress.add_task(f"generating {config.samples + config.extra_pictures} conversations", total=None)
        pool = encoded_pool(processor, config.samples, config.seed, config.workers)
        extra = picture_pool(processor, config.extra_pictures, config.seed, config.workers, config.image_side)
        pooled_seconds = time.monotonic() - started
        torch.set_num_threads(config.threads)
        torch.use_deterministic_algorithms(True)
        model = _untrained_weights(config, processor.tokenizer)
        warm_losses, probe_accuracy = warm_up_vision(
            model,
            pool,
            steps=config.vision_warmup_steps,
            batch_size=config.batch_size,
            lr=config.vision_warmup_lr,
            seed=config.seed,
            progress=progress,
            dense_weight=config.vision_dense_weight,
            count_sum_weight=config.vision_count_sum_weight,
            extra=extra,
            mirror=config.vision_mirror,
        )
        progress.console.print(f"vision warm-up: held-out probe accuracy {probe_accuracy}")
        rng = random.Random(config.seed)
        plan = _batches(pool + extra[: config.extra_conversations], config, rng)
        losses = _fit(model, plan, config, int(processor.tokenizer.pad_token_id), progress)
    train_seconds = time.monotonic() - started
    cpu_seconds = time.process_time() - cpu_started
    model.eval()
    table = evaluate(model, processor, seed=config.eval_seed, per_cell=config.eval_per_cell)
    print(format_table(table))  # noqa: T201 - the command's result
    manifest = {
        "what": "Glimpse's tiny GLM-4.6V test model, trained on the shapes task (not GLM-4.6V)",
        "command": command,
        "config": dataclasses.asdict(config),
        "train_seconds": round(train_seconds, 1),
        "data_seconds": round(pooled_seconds, 1),
        "train_cpu_seconds_main_process": round(cpu_seconds, 1),
        "vision_warmup_final_loss": _tail_mean(warm_losses),
        "vision_warmup_probe_accuracy": probe_accuracy,
        "final_loss": _tail_mean(losses),
        "steps": len(losses),
        "parameters": sum(p.numel() for p in model.parameters()),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "versions": {"torch": torch.__version__, "transformers": _version("transformers")},
        "accuracy": {"eval_seed": config.eval_seed, "per_cell": config.eval_per_cell, "table": table},
    }
    _save(model, processor, target, manifest)
    return manifest


def _batches(pool: list[Any], config: TrainConfig, rng: random.Random) -> list[list[Any]]:
    """The whole-model steps' batches: each pass over ``pool`` in a fresh random order.

    With ``length_group`` above 1, each run of that many batches is sorted by length
    before it is cut, and the pass's batches are then shuffled: a batch is padded to its
    longest conversation, and two-picture conversations are twice as long as most.
    """
    size, group = config.batch_size, config.length_group
    plan: list[list[Any]] = []
    for _ in range(config.epochs):
        epoch = rng.sample(pool, len(pool))
        if group <= 1:
            plan.extend(epoch[b * size : (b + 1) * size] for b in range(len(pool) // size))
            continue
        batches: list[list[Any]] = []
        for start in range(0, len(pool) // size * size, size * group):
            run = sorted(epoch[start : start + size * group], key=lambda e: len(e.input_ids))
            batches.extend(run[i : i + size] for i in range(0, len(run) - size + 1, size))
        rng.shuffle(batches)
        plan.extend(batches)
    return plan


def _tail_mean(losses: list[float]) -> float | None:
    return round(sum(losses[-20:]) / len(losses[-20:]), 4) if losses else None


def _fit(model: Any, plan: list[list[Any]], config: TrainConfig, pad_id: int, progress: Any) -> list[float]:
    """One optimizer step per batch of ``plan``; returns the losses.

    The vision tower stays frozen for the first ``vision_frozen_share`` of the steps:
    the language model's first, noisy gradients would otherwise undo the warm-up
    before it has learnt to read the tower (as LLaVA first trains only its projector).
    Frozen throughout (share 1.0, the default), the tower's output for each picture is
    computed once (``_frozen_tower_features``) and every step runs the language model
    alone on it: a step then costs about half as much, so the language model gets
    more of them in the same time.
    """
    import torch

    total = len(plan)
    tower = list(model.model.visual.parameters())
    in_tower = {id(p) for p in tower}
    rest = [p for p in model.parameters() if id(p) not in in_tower]
    optimizer = torch.optim.AdamW(
        [{"params": rest, "scale": 1.0}, {"params": tower, "scale": config.vision_lr_scale}],
        lr=config.lr,
        weight_decay=config.weight_decay,
        betas=(0.9, 0.98),
    )
    frozen_until = round(config.vision_frozen_share * total)
    features = _frozen_tower_features(model, plan) if frozen_until >= total else None
    bar = progress.add_task("training", total=total)
    model.train()
    losses: list[float] = []
    for step, chunk in enumerate(plan):
        if step in (0, frozen_until):  # frozen from the start, thawed once
            for p in tower:
                p.requires_grad_(step >= frozen_until)
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, total, config) * group["scale"]
        loss = _answer_loss(model, chunk, pad_id, features)
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


def _frozen_tower_features(model: Any, plan: list[list[Any]]) -> dict[int, Any]:
    """The frozen tower's output tokens for every conversation in ``plan``, by ``id`` of its ``Encoded``."""
    import torch

    from glimpse.engine.tiny_fast import fast_tower
    from glimpse.engine.tiny_warmup import tower_tokens

    unique = list({id(e): e for chunk in plan for e in chunk}.values())
    features: dict[int, Any] = {}
    with torch.inference_mode(), fast_tower(model.model.visual):
        for start in range(0, len(unique), 64):
            batch = unique[start : start + 64]
            tokens, per_image = tower_tokens(model.model.visual, batch)
            images = iter(per_image)  # a conversation's pictures are consecutive
            sizes = [sum(next(images) for _ in range(len(e.image_grid_thw))) for e in batch]
            for e, part in zip(batch, tokens.split(sizes), strict=True):
                features[id(e)] = part.clone()
    return features


def _answer_loss(model: Any, chunk: list[Any], pad_id: int, features: dict[int, Any] | None) -> Any:
    """Transformers' own loss on the answers; with ``features``, the images' tokens are taken from them.

    The image tokens go where the model itself would put them (its placeholder mask,
    in order) and the positions are the model's own 3-D ones, so the loss equals the
    plain forward's (tested).
    """
    import torch

    from glimpse.engine.tiny_data import collate

    inputs = collate(chunk, pad_id)
    if features is None:
        return model(**inputs).loss
    ids = inputs["input_ids"]
    embeds = model.get_input_embeddings()(ids)
    image = torch.cat([features[id(e)] for e in chunk]).to(embeds.dtype)
    mask, _ = model.model.get_placeholder_mask(ids, embeds, image_features=image)
    embeds = embeds.masked_scatter(mask, image)
    positions = model.model.compute_3d_position_ids(
        input_ids=ids,
        image_grid_thw=inputs["image_grid_thw"],
        video_grid_thw=None,
        inputs_embeds=embeds,
        attention_mask=inputs["attention_mask"],
        past_key_values=None,
        mm_token_type_ids=inputs["mm_token_type_ids"],
    )
    return model(
        inputs_embeds=embeds,
        attention_mask=inputs["attention_mask"],
        position_ids=positions,
        labels=inputs["labels"],
    ).loss


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
