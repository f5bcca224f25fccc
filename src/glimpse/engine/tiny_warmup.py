"""The first stage of training the tiny model: the vision tower alone learns what the pictures show.

Trained end to end from scratch, the tower hardly learns shapes, counts or places:
its only teacher is the language model's loss, reached through attention that
starts out averaging every image token, so the answer barely depends on any one
patch. Measured on this task (112-pixel pictures, 2-core CPU): after 600 steps
the whole model still answered shape, count and position at chance; the tower
alone with a probe over the mean of its tokens stayed at chance on shape after
400 steps; with the maximum over its tokens it reached 74 %, and a per-patch
MLP with that maximum 93 % after 300 steps.

So the tower (patch embedding, blocks, merger) first trains for a few hundred
steps on the pictures' labels through small probe heads over the maximum and the
mean of its output tokens. The heads are then thrown away; the whole model goes
on with transformers' own language-model loss on the answers (``tiny_train``).

A picture's labels say little about each token, and shape and count were still
learnt slowly (held-out probe: shape 84 %, count 69 % after 1,200 steps; the
trained model answered them as often). So each output token also gets targets of
its own (``token_targets``), from where ``tiny_task.layout`` drew the shapes: what
its cell shows (background or the shape) and whether a shape's centre is in it.
Measured after 400 steps (same pool and seed): shape 72 -> 77 %, count 58 -> 62 %;
after the full 1,200, shape 84 -> 95 %, count 69 -> 78 %; with them the probe kept learning
up to 2,400 steps (shape 98 %, count 84 %); they are on in the shipped model
(``vision_dense_weight`` 1.0). Count stayed the weakest: the heads learnt it from the tokens'
area more than from the shapes one by one (the centre head marked a picture's centres exactly
in only a third of the held-out pictures).

So the centre head's scores, summed over a picture's tokens, are also pulled towards the
picture's count (``count_sum_weight``): a shape whose centre sits near a cell's edge may then
light two cells by half each, but not two by three quarters. Rounded, that sum was the right
count for 33 % of the held-out pictures without the term and 83 % with it (weight 2, 2,400
steps; it does not replace the pooled count head, which reached 85 %). The language model then
counted right 86-90 % of the time, against 72-78 % before (the held-out table, with the rotary
base below and 1-to-4 shapes equally often in training).

The tower's rotary base is lowered from GLM-4.6V's 10,000 (``TrainConfig.vision_rope_theta``):
over 14 patches a side only two of its six frequencies per axis turn by more than a few
degrees, which leaves little to tell a neighbouring patch from one two away. With base 20,
after 1,200 steps: shape 92 -> 94 %, count by centres 67 -> 72 %.

The tower still answered its own training pictures far better than new ones (shape 99.9
against 97 %, count 98 against 85 %), so it also learns from pictures drawn near the input size
(``tiny_data.picture_pool``; the language model then learns from their conversations too) and
sees half of its pictures mirrored (``mirrored``). With both, and 2,900 steps, its held-out probe
read shape 98.8 % and count 93.8 %. With 48,000 such pictures rather than 24,000, so that each is
seen about once and a half rather than two and a half times, the whole model counted 92.7 % right
rather than 90.4 % (3,000 held-out questions; ``TrainConfig.extra_pictures``). Its patch
embedding, merge and position table run as the matrix products they are (``tiny_fast``).

Tried and not taken: each shape's centre taught spread over the four cells around it (so that a
centre near a cell's edge is not all in one cell, and without the positives' weight, which would
inflate every cell of the spread): probe count 86 % against 93 %, the whole model's count row
82-85 % in its 100-question table. A quarter of the extra pictures drawn with small shapes (under
an eighth of the input side once resized, where nearly all shape errors are): shape 97.1 -> 98.2 %
but count 92.7 -> 90.1 % (3,000 questions a row).
"""

from __future__ import annotations

import dataclasses
import math
import random
from typing import Any

import numpy as np
from PIL import Image

from glimpse.engine.tiny_fast import fast_tower
from glimpse.engine.tiny_task import COLORS, POSITIONS, SHAPES, Picture, layout, shape_mask

__all__ = [
    "TargetCache",
    "label",
    "mirrored",
    "probe_heads",
    "token_targets",
    "tower_tokens",
    "warm_up_vision",
]

#: what the probe heads predict, and their classes
LABELS: dict[str, tuple[Any, ...]] = {
    "color": tuple(COLORS),
    "shape": tuple(SHAPES),
    "count": (1, 2, 3, 4),
    "position": tuple(POSITIONS),
}
#: each probe's share of the loss: colour and place are learnt in a few dozen steps, shape and
#: count slowly (equal weights: shape 47 % after 400 steps; these, without gradient clipping: 68 %)
WEIGHTS = {"color": 1.0, "shape": 3.0, "count": 2.0, "position": 1.0}


def warm_up_vision(
    model: Any,
    pool: list[Any],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    progress: Any,
    dense_weight: float = 0.0,
    count_sum_weight: float = 0.0,
    extra: list[Any] | None = None,
    mirror: float = 0.0,
) -> tuple[list[float], dict[str, float]]:
    """Train ``model.model.visual`` on the pool's one-picture conversations and the ``extra`` pictures.

    Each picture is seen flipped left to right with probability ``mirror``. Returns
    the losses and the probes' accuracy per label on the pool's last pictures (a
    fifth, at most 256), which the warm-up does not train on (the whole model still does).
    """
    import torch

    tower = model.model.visual
    labelled = [e for e in pool if e.picture is not None]
    cut = len(labelled) - min(256, len(labelled) // 5)
    held_out, labelled = labelled[cut:], labelled[:cut] + list(extra or [])
    flips = random.Random(seed + 1)
    if not labelled or steps == 0:
        return [], {}
    heads = probe_heads(model.config.text_config.hidden_size, seed, dense=bool(dense_weight))
    params = [*tower.parameters(), *heads.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    rng = random.Random(seed)
    order: list[int] = []
    bar = progress.add_task("vision warm-up", total=steps)
    tower.train()
    losses: list[float] = []
    targets: TargetCache = {}
    with fast_tower(tower):
        for step in range(steps):
            if len(order) < batch_size:
                order = rng.sample(range(len(labelled)), len(labelled))
            batch = [labelled[order.pop()] for _ in range(batch_size)]
            if mirror:
                batch = [mirrored(e) if flips.random() < mirror else e for e in batch]
            for group in optimizer.param_groups:
                group["lr"] = (
                    lr * min(1.0, (step + 1) / 50) * (0.55 + 0.45 * math.cos(math.pi * step / steps))
                )
            loss = _probe_loss(tower, heads, batch, dense_weight, targets, count_sum_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            recent = sum(losses[-20:]) / len(losses[-20:])
            progress.update(bar, advance=1, description=f"vision warm-up (loss {recent:.3f})")
    return losses, _probe_accuracy(tower, heads, held_out)


def mirrored(encoded: Any) -> Any:
    """``encoded`` with its picture flipped left to right: the patches the processor would have made
    of the flipped picture (rows of merge-size blocks of patches, each patch row-major), its left
    and right swapped in the labels and per-token targets."""
    _, rows, cols = (int(v) for v in encoded.image_grid_thw[0].tolist())
    merge, patch = 2, int(math.isqrt(encoded.pixel_values.shape[1] // 6))  # 3 channels x 2 frames
    blocks = encoded.pixel_values.reshape(rows // merge, cols // merge, merge, merge, 6, patch, patch)
    flipped = blocks.flip(1, 3, 6).reshape(encoded.pixel_values.shape)
    return dataclasses.replace(encoded, pixel_values=flipped, mirrored=not encoded.mirrored)


def probe_heads(width: int, seed: int, *, dense: bool) -> Any:
    """The probe heads over tower tokens ``width`` wide: one per label over the pooled tokens,
    and with ``dense`` the per-token ``cell`` and ``centre`` heads."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    layers = {name: torch.nn.Linear(2 * width, len(c)) for name, c in LABELS.items()}
    for layer in layers.values():
        torch.nn.init.normal_(layer.weight, 0.0, (2 * width) ** -0.5, generator=generator)
        torch.nn.init.zeros_(layer.bias)
    if dense:  # made only when used: they draw from torch's generator
        layers["cell"] = torch.nn.Linear(width, 1 + len(SHAPES))
        layers["centre"] = torch.nn.Linear(width, 1)
    return torch.nn.ModuleDict(layers)


def _probe_accuracy(tower: Any, heads: Any, pictures: list[Any]) -> dict[str, float]:
    import torch

    right: dict[str, int] = {}
    asked: dict[str, int] = {}
    tower.eval()
    with torch.inference_mode():
        for start in range(0, len(pictures), 64):
            batch = pictures[start : start + 64]
            tokens, sizes = tower_tokens(tower, batch)
            outcomes = {
                name: (logits.argmax(-1) == targets).tolist()
                for name, (logits, targets) in _pooled_logits(heads, tokens, sizes, batch).items()
            }
            if "centre" in heads:  # the count as the sum of the centre head's scores, rounded
                scores = _centre_scores(heads, tokens, sizes)
                outcomes["count by centres"] = [
                    round(float(s)) == e.picture.count for s, e in zip(scores, batch, strict=True)
                ]
            for name, hits in outcomes.items():
                right[name] = right.get(name, 0) + sum(hits)
                asked[name] = asked.get(name, 0) + len(hits)
    tower.train()
    return {name: round(right[name] / asked[name], 3) for name in right if asked[name]}


def _probe_loss(
    tower: Any,
    heads: Any,
    batch: list[Any],
    dense_weight: float,
    cache: TargetCache,
    count_sum_weight: float = 0.0,
) -> Any:
    """The pooled heads' summed cross-entropy, plus ``dense_weight`` times the per-token heads',
    plus ``count_sum_weight`` times how far each picture's summed centre scores are from its count."""
    import torch

    tokens, sizes = tower_tokens(tower, batch)
    logits = _pooled_logits(heads, tokens, sizes, batch)
    parts = [WEIGHTS[k] * torch.nn.functional.cross_entropy(x, y) for k, (x, y) in logits.items()]
    if dense_weight:
        cells, centres = zip(*(token_targets(e, cache) for e in batch), strict=True)
        cell_target, centre_target = torch.cat(cells), torch.cat(centres)
        parts.append(
            dense_weight
            * torch.nn.functional.cross_entropy(heads["cell"](tokens), cell_target, ignore_index=-100)
        )
        parts.append(
            dense_weight
            * torch.nn.functional.binary_cross_entropy_with_logits(
                heads["centre"](tokens).squeeze(-1), centre_target, pos_weight=torch.tensor(4.0)
            )
        )
        if count_sum_weight:
            counts = torch.tensor([float(e.picture.count) for e in batch])
            # the head applied again, not its logits above reused: reusing them sums the two
            # gradients in another order, and the shipped weights would no longer replay bit for bit
            sums = _centre_scores(heads, tokens, sizes)
            parts.append(count_sum_weight * torch.nn.functional.smooth_l1_loss(sums, counts))
    return torch.stack(parts).sum()


def _centre_scores(heads: Any, tokens: Any, sizes: list[int]) -> Any:
    """Each picture's centre-head probabilities summed over its tokens: its count, once learnt."""
    import torch

    probabilities = torch.sigmoid(heads["centre"](tokens).squeeze(-1))
    return torch.stack([part.sum() for part in torch.split(probabilities, sizes)])


def tower_tokens(tower: Any, batch: list[Any]) -> tuple[Any, list[int]]:
    """The tower's output tokens for the batch's pictures, and how many each picture has."""
    import torch

    pixels = torch.cat([e.pixel_values for e in batch]).float()
    grids = torch.cat([e.image_grid_thw for e in batch])
    return tower(pixels, grid_thw=grids).pooler_output, (grids.prod(-1) // 4).tolist()


def _pooled_logits(heads: Any, tokens: Any, sizes: list[int], batch: list[Any]) -> dict[str, tuple[Any, Any]]:
    """Each label head's logits over the maximum and the mean of each picture's tokens, with targets."""
    import torch

    pooled = torch.stack([torch.cat([t.max(0).values, t.mean(0)]) for t in torch.split(tokens, sizes)])
    out = {}
    for name, classes in LABELS.items():
        rows = [row for row, e in enumerate(batch) if label(e, name) is not None]
        if rows:
            targets = torch.tensor([classes.index(label(batch[row], name)) for row in rows])
            out[name] = (heads[name](pooled[rows]), targets)
    return out


#: left and right swapped, for a mirrored picture's place
_MIRRORED_PLACE = {"left": "right", "right": "left"}


def label(encoded: Any, name: str) -> Any:
    """The picture's ``name`` label (None: it has none), as the possibly mirrored pixels show it."""
    value = getattr(encoded.picture, name)
    return _MIRRORED_PLACE.get(value, value) if name == "position" and encoded.mirrored else value


#: each picture's per-token targets, made once per warm-up
TargetCache = dict[tuple[Picture, int, int], tuple[Any, Any]]


def token_targets(encoded: Any, cache: TargetCache) -> tuple[Any, Any]:
    """Per output token (row-major over the merged grid): what it shows, and whether a centre is in it.

    What it shows: 0 for background, 1 + the shape's index where the shapes cover
    more than a third of its cell, -100 (not taught) in between.
    """
    import torch

    _, rows, cols = (int(v) // 2 for v in encoded.image_grid_thw[0].tolist())
    if encoded.mirrored:
        cells, centres = token_targets(dataclasses.replace(encoded, mirrored=False), cache)
        return cells.reshape(rows, cols).flip(1).reshape(-1), centres.reshape(rows, cols).flip(1).reshape(-1)

    picture = encoded.picture
    key = (picture, rows, cols)
    if key not in cache:
        small = shape_mask(picture).resize((cols, rows), Image.Resampling.BOX)
        cover = torch.from_numpy(np.asarray(small, dtype=np.int16).reshape(-1))
        cells = torch.full((rows * cols,), -100, dtype=torch.long)
        cells[cover < 26] = 0
        cells[cover > 85] = 1 + tuple(SHAPES).index(picture.shape)
        centres = torch.zeros(rows * cols)
        for x, y in layout(picture).centres:
            row = min(rows - 1, int(y / picture.height * rows))
            col = min(cols - 1, int(x / picture.width * cols))
            centres[row * cols + col] = 1.0
        cache[key] = (cells, centres)
    return cache[key]
