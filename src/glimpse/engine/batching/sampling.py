"""Per-sequence token selection inside one decode batch.

Each running sequence brings its own settings: greedy rows take the arg-max
(first index on ties, as ``generate()``), sampled rows apply their temperature
and nucleus (top-p) cut and draw from their own ``torch.Generator``. A seeded
request therefore draws the same tokens whatever else shares the batch.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from glimpse.engine.protocol import SamplingParams

__all__ = ["SamplerState", "sample_tokens", "top_p_filter"]


@dataclass(slots=True)
class SamplerState:
    """How one sequence picks its tokens: greedy unless it has a ``generator`` (set by ``create``
    for sampled requests, as ``SamplingParams.greedy`` decides)."""

    temperature: float = 0.0
    top_p: float = 1.0
    generator: torch.Generator | None = None

    @property
    def greedy(self) -> bool:
        return self.generator is None

    @classmethod
    def create(cls, sampling: SamplingParams, device: torch.device) -> SamplerState:
        if sampling.greedy:
            return cls()
        if not 0.0 < sampling.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {sampling.top_p}")
        generator = torch.Generator(device=device)
        # An unseeded request still gets its own stream, so it never perturbs a seeded neighbour.
        seed = sampling.seed
        generator.manual_seed(seed if seed is not None else random.getrandbits(63))  # noqa: S311
        return cls(temperature=sampling.temperature, top_p=sampling.top_p, generator=generator)


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Set to ``-inf`` the logits outside the smallest set whose probability reaches ``top_p``.

    Same rule as transformers' ``TopPLogitsWarper`` (the most likely token always stays).
    """
    if top_p >= 1.0:
        return logits
    sorted_logits, sorted_index = torch.sort(logits, descending=False, dim=-1)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cumulative <= (1.0 - top_p)
    remove_sorted[..., -1:] = False
    remove = remove_sorted.scatter(-1, sorted_index, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def sample_tokens(logits: torch.Tensor, states: Sequence[SamplerState]) -> list[int]:
    """Pick one token per row of ``logits`` (``[n, vocab]``, float32) by that row's settings."""
    if len(states) != logits.shape[0]:
        raise ValueError(f"{logits.shape[0]} rows of logits for {len(states)} sequences")
    tokens = logits.argmax(dim=-1)
    sampled = [i for i, state in enumerate(states) if not state.greedy]
    for row in sampled:
        state = states[row]
        # Shifted so the largest is 0 before scaling: the same distribution, and no overflow.
        row_logits = logits[row]
        scores = top_p_filter((row_logits - row_logits.max()) / state.temperature, state.top_p)
        probs = scores.softmax(dim=-1)
        tokens[row] = torch.multinomial(probs, num_samples=1, generator=state.generator)[0]
    return [int(t) for t in tokens.tolist()]
