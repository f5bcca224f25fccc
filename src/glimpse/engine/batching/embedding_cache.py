"""The vision tower's output for images seen before, kept in a bounded least-recently-used cache.

A new question about a known image (a follow-up, or another user asking about the
same product photo) needs the same image features again; the vision tower is the
costliest part of such a prompt's prefill. Entries are keyed by the image's content
key (``image_keys``: a SHA-256 of the vision tower's whole input, its ``pixel_values``
rows and grid, computed in preprocessing when it can be):

- exact: equal keys mean equal tower inputs, so the features are those the tower would
  compute (greedy answers do not change); two images that differ in any pixel the
  processor keeps, or the same image processed with other settings (resize bounds,
  normalisation), differ in their key, whatever image-token ids they share;
- the same key as the prefix cache's, computed once per image, off the engine thread.

Entries live in host memory: on a GPU, the KV cache is sized from the memory free at
start, and a cache that grew on the device would eat the headroom the steps need. A
hit copies the features to the device (a few MB), far less than recomputing them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Protocol

import torch

from glimpse.engine.batching.interface import BatcherConfig
from glimpse.engine.batching.prompt import ImageSpan

__all__ = ["EmbeddingCacheObserver", "ImageEmbeddingCache", "embedding_cache_for"]


class EmbeddingCacheObserver(Protocol):
    """Where the cache reports what the metrics need (called on the engine thread)."""

    def on_image_embeddings(self, hits: int, misses: int, evictions: int) -> None:
        """One lookup of a step's images: found, computed by the vision tower, and entries dropped."""


class ImageEmbeddingCache:
    """Features ``[tokens, hidden]`` by ``image_key``, at most ``max_bytes`` of them; not thread-safe."""

    def __init__(self, max_bytes: int, observer: EmbeddingCacheObserver | None = None) -> None:
        if max_bytes <= 0:
            raise ValueError("an image embedding cache needs a positive size")
        self.max_bytes = max_bytes
        self._observer = observer
        self._entries: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> torch.Tensor | None:
        features = self._entries.get(key)
        if features is not None:
            self._entries.move_to_end(key)
        return features

    def put(self, key: bytes, features: torch.Tensor) -> int:
        """Keep a host copy of ``features``, dropping the least recently used; returns entries dropped.

        Features larger than the whole cache are not kept (they would only flush it).
        """
        size = features.numel() * features.element_size()
        if size > self.max_bytes or key in self._entries:
            return 0
        evicted = 0
        while self.nbytes + size > self.max_bytes:
            _, old = self._entries.popitem(last=False)
            self.nbytes -= old.numel() * old.element_size()
            evicted += 1
        # A copy, never a view: the tower's output for a step is one tensor that the per-image
        # features slice, and a view would keep all of it alive.
        self._entries[key] = features.detach().to("cpu", copy=True)
        self.nbytes += size
        return evicted

    def encode(
        self,
        images: Sequence[ImageSpan],
        tower: Callable[[Sequence[ImageSpan]], list[torch.Tensor]],
        device: torch.device,
    ) -> list[torch.Tensor]:
        """Each image's features: from the cache, else from one ``tower`` call over the missing ones.

        An image that appears twice among ``images`` (two prompts about it in one step) is
        encoded once.
        """
        keys = [image.key for image in images]
        return self.encode_keyed(keys, lambda missing: tower([images[i] for i in missing]), device)

    def encode_keyed(
        self,
        keys: Sequence[bytes],
        tower: Callable[[list[int]], list[torch.Tensor]],
        device: torch.device,
    ) -> list[torch.Tensor]:
        """``encode`` for images known by their keys: ``tower`` gets the positions (in ``keys``) of
        the images to compute. A key may carry more than the image's (a LoRA adapter that changes
        the tower: its features are its own)."""
        found: dict[bytes, torch.Tensor] = {}
        missing: dict[bytes, int] = {}
        for index, key in enumerate(keys):
            if key in found or key in missing:
                continue
            cached = self.get(key)
            if cached is None:
                missing[key] = index
            else:
                found[key] = cached.to(device)
        evicted = 0
        if missing:
            computed = tower(list(missing.values()))
            for key, features in zip(missing, computed, strict=True):
                found[key] = features
                evicted += self.put(key, features)
        if self._observer is not None:
            self._observer.on_image_embeddings(len(keys) - len(missing), len(missing), evicted)
        return [found[key] for key in keys]


def embedding_cache_for(
    config: BatcherConfig, observer: EmbeddingCacheObserver | None = None
) -> ImageEmbeddingCache | None:
    """The cache ``config`` asks for, or ``None`` when its size is 0 (off)."""
    if config.image_embedding_cache_bytes <= 0:
        return None
    return ImageEmbeddingCache(config.image_embedding_cache_bytes, observer)
