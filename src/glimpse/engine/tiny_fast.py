"""Faster equivalents of parts of the vision tower, for training the tiny model on the CPU.

The tiny model's tower sees batches of 32 small pictures of about 196 patches each.
There, two of transformers' code paths, written for a few large images on a GPU,
cost more than the arithmetic they do:

- the patch embedding and the 2 x 2 merge are convolutions whose kernel equals their
  stride and their input: one output per input block, so each is one matrix product.
  On the CPU the convolutions, backward pass included, took about a sixth of a
  warm-up step;
- the position table is resampled to each picture's grid with a bicubic
  ``grid_sample``, whose backward pass on the CPU took 24 ms of a 0.19 s warm-up step.
  The resampling is linear in the table, so it is a matrix (one per grid shape,
  made once by resampling the identity) times the table.

``fast_tower`` swaps them in for a ``with`` block and gives the modules their own
``forward`` back afterwards. The results equal the original code's up to rounding
(tested, gradients included), so the trained weights load into the plain model.

The attention, run once per picture, was not worth batching: one masked call over
the batch, padded to its longest picture, took as long (its matrix products are most
of its cost, at about 60 GFLOP/s).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

__all__ = ["fast_tower"]


@contextlib.contextmanager
def fast_tower(tower: Any) -> Iterator[None]:
    """Run ``tower`` (a ``Glm4vVisionModel``) with the faster equivalents inside the block."""
    swapped = [
        (tower.patch_embed.proj, _product(tower.patch_embed.proj)),
        (tower.downsample, _product(tower.downsample)),
        (tower.embeddings, _matrix_positions(tower.embeddings)),
    ]
    for module, forward in swapped:
        module.forward = forward
    try:
        yield
    finally:
        for module, _ in swapped:
            del module.forward


def _product(conv: Any) -> Any:
    """A convolution with kernel = stride = input size, as the matrix product it is."""
    import torch

    def forward(x: Any) -> Any:
        weight = conv.weight.reshape(conv.weight.shape[0], -1)
        out = torch.nn.functional.linear(x.reshape(x.shape[0], -1), weight, conv.bias)
        return out.reshape(out.shape[0], out.shape[1], *([1] * (x.dim() - 2)))

    return forward


def _matrix_positions(embeddings: Any) -> Any:
    """``Glm4vVisionEmbeddings.forward`` with the bicubic resampling as a product of matrices."""
    import torch

    cache: dict[tuple[int, ...], Any] = {}

    def forward(hidden: Any, lengths: Any, image_shapes: Any, h_coords: Any, w_coords: Any) -> Any:
        table = embeddings.position_embedding.weight
        parts, start = [], 0
        for length, shape in zip(torch.as_tensor(lengths).tolist(), image_shapes.tolist(), strict=True):
            key = tuple(shape)
            if key not in cache:
                rows = slice(start, start + length)
                cache[key] = _resampling(h_coords[rows], w_coords[rows], shape[1], shape[2], table.shape[0])
            parts.append(cache[key])
            start += length
        resampled = torch.cat(parts) @ table.float()
        return hidden + resampled.to(table.dtype)

    return forward


def _resampling(h_coords: Any, w_coords: Any, height: int, width: int, positions: int) -> Any:
    """The (patches x positions) matrix that ``grid_sample`` applies to the position table."""
    import torch

    side = int(positions**0.5)
    with torch.no_grad():
        identity = torch.eye(positions).reshape(1, positions, side, side)
        x = ((w_coords.float() + 0.5) / width) * 2 - 1
        y = ((h_coords.float() + 0.5) / height) * 2 - 1
        grid = torch.stack((x, y), dim=-1)[None, :, None, :]
        out = torch.nn.functional.grid_sample(
            identity, grid, mode="bicubic", align_corners=False, padding_mode="border"
        )
    return out[0, :, :, 0].T.contiguous()
