"""One content key per image, shared by the prefix cache and the image embedding cache.

The key is a SHA-256 over what the vision tower takes for the image: its pixel rows
as the processor produced them (dtype, shape, bytes) and its grid. Equal keys mean
equal tower inputs, so cached features or keys/values are exactly those the model
would compute; a picture that differs in any pixel the processor keeps, or the same
picture processed with other settings, has another key, whatever image-token ids
it shares. SHA-256, not a faster non-cryptographic hash, so that nobody can make a
picture whose key collides with another user's (a cache would then answer about
that user's picture).

Hashing reads ~26 MB for a 1024² image (about 20 ms on one core), so preprocessing
computes the keys (``image_keys``, off the engine thread) and sends them with the
inputs under ``IMAGE_KEYS``; the engine hashes only images that arrive without one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["IMAGE_KEYS", "image_key", "image_keys"]

#: The inputs entry where preprocessing leaves each image's key (``[images, 32]`` bytes).
IMAGE_KEYS = "glimpse_image_keys"


def image_key(pixel_values: torch.Tensor, grid: torch.Tensor) -> bytes:
    """SHA-256 over one image's tower input: its pixel rows' dtype, shape and bytes, and its grid."""
    pixels = pixel_values.detach().to("cpu").contiguous()
    digest = hashlib.sha256()
    digest.update(repr((str(pixels.dtype), tuple(pixels.shape), grid.tolist())).encode())
    digest.update(pixels.reshape(-1).view(torch.uint8).numpy().data)
    return digest.digest()


def image_keys(inputs: Mapping[str, Any]) -> torch.Tensor | None:
    """Every image's ``image_key`` in a processor output, as ``[images, 32]`` bytes (None: no images)."""
    pixel_values, grid = inputs.get("pixel_values"), inputs.get("image_grid_thw")
    if pixel_values is None or grid is None:
        return None
    keys, start = [], 0
    for count, image_grid in zip(grid.prod(-1).tolist(), grid, strict=True):
        keys.append(list(image_key(pixel_values[start : start + count], image_grid)))
        start += count
    return torch.tensor(keys, dtype=torch.uint8)
