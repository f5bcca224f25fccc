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
"""

from __future__ import annotations

import math
import random
from typing import Any

from glimpse.engine.tiny_task import COLORS, POSITIONS, SHAPES

__all__ = ["warm_up_vision"]

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
    model: Any, pool: list[Any], *, steps: int, batch_size: int, lr: float, seed: int, progress: Any
) -> tuple[list[float], dict[str, float]]:
    """Train ``model.model.visual`` on the pool's one-picture conversations.

    Returns the losses and the probes' accuracy per label on the last pictures (a
    fifth, at most 256), which the warm-up does not train on (the whole model still does).
    """
    import torch

    tower = model.model.visual
    labelled = [e for e in pool if e.picture is not None]
    cut = len(labelled) - min(256, len(labelled) // 5)
    held_out, labelled = labelled[cut:], labelled[:cut]
    if not labelled or steps == 0:
        return [], {}
    width = model.config.text_config.hidden_size
    generator = torch.Generator().manual_seed(seed)
    layers = {name: torch.nn.Linear(2 * width, len(c)) for name, c in LABELS.items()}
    for layer in layers.values():
        torch.nn.init.normal_(layer.weight, 0.0, (2 * width) ** -0.5, generator=generator)
        torch.nn.init.zeros_(layer.bias)
    heads = torch.nn.ModuleDict(layers)
    params = [*tower.parameters(), *heads.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    rng = random.Random(seed)
    order: list[int] = []
    bar = progress.add_task("vision warm-up", total=steps)
    tower.train()
    losses: list[float] = []
    for step in range(steps):
        if len(order) < batch_size:
            order = rng.sample(range(len(labelled)), len(labelled))
        batch = [labelled[order.pop()] for _ in range(batch_size)]
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 50) * (0.55 + 0.45 * math.cos(math.pi * step / steps))
        loss = _probe_loss(tower, heads, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        recent = sum(losses[-20:]) / len(losses[-20:])
        progress.update(bar, advance=1, description=f"vision warm-up (loss {recent:.3f})")
    return losses, _probe_accuracy(tower, heads, held_out)


def _probe_accuracy(tower: Any, heads: Any, pictures: list[Any]) -> dict[str, float]:
    import torch

    right: dict[str, int] = dict.fromkeys(LABELS, 0)
    asked: dict[str, int] = dict.fromkeys(LABELS, 0)
    tower.eval()
    with torch.inference_mode():
        for start in range(0, len(pictures), 64):
            batch = pictures[start : start + 64]
            for name, (logits, targets) in _probe_logits(tower, heads, batch).items():
                right[name] += int((logits.argmax(-1) == targets).sum())
                asked[name] += len(targets)
    tower.train()
    return {name: round(right[name] / asked[name], 3) for name in LABELS if asked[name]}


def _probe_loss(tower: Any, heads: Any, batch: list[Any]) -> Any:
    """The heads' summed cross-entropy."""
    import torch

    logits = _probe_logits(tower, heads, batch)
    parts = [WEIGHTS[k] * torch.nn.functional.cross_entropy(x, y) for k, (x, y) in logits.items()]
    return torch.stack(parts).sum()


def _probe_logits(tower: Any, heads: Any, batch: list[Any]) -> dict[str, tuple[Any, Any]]:
    """Each head's logits over the maximum and the mean of each picture's output tokens, with targets."""
    import torch

    pixels = torch.cat([e.pixel_values for e in batch])
    grids = torch.cat([e.image_grid_thw for e in batch])
    tokens = tower(pixels, grid_thw=grids).pooler_output
    sizes = (grids.prod(-1) // 4).tolist()
    pooled = torch.stack([torch.cat([t.max(0).values, t.mean(0)]) for t in torch.split(tokens, sizes)])
    out = {}
    for name, classes in LABELS.items():
        rows = [row for row, e in enumerate(batch) if getattr(e.picture, name) is not None]
        if rows:
            targets = torch.tensor([classes.index(getattr(batch[row].picture, name)) for row in rows])
            out[name] = (heads[name](pooled[rows]), targets)
    return out
