"""Temperature, top-k, top-p and min-p for many rows at once, each row with its own values.

The same rules, in the same order, as transformers' warpers in ``generate()``
(``TemperatureLogitsWarper``, ``TopKLogitsWarper``, ``TopPLogitsWarper``,
``MinPLogitsWarper``, each keeping at least one token): the tests compare the
filtered logits with theirs. One ascending sort per step serves top-k and top-p for
every row; a step whose rows use neither sorts nothing. A row's "off" values
(``top_k`` 0, ``top_p`` 1, ``min_p`` 0) leave it as temperature alone makes it, so a
row's result never depends on which other rows share the step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["RowWarp", "filter_logits"]


@dataclass(slots=True, frozen=True)
class RowWarp:
    """One row's settings, as the warpers take them (temperature > 0: greedy rows never get here)."""

    temperature: float
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0


def filter_logits(logits: torch.Tensor, rows: Sequence[RowWarp]) -> torch.Tensor:
    """``logits`` ``[m, vocab]`` over each row's temperature; the tokens its cut-offs drop at ``-inf``."""
    if len(rows) != logits.shape[0]:
        raise ValueError(f"{logits.shape[0]} rows of logits for {len(rows)} settings")
    vocab = logits.shape[-1]
    # One host-to-device copy for every per-row value. ``1 - top_p`` is taken in double
    # precision first, as transformers compares with that Python float.
    table = torch.tensor(
        [[r.temperature, min(r.top_k, vocab), 1.0 - r.top_p, r.min_p] for r in rows],
        dtype=torch.float32,
    ).to(logits.device)
    temperature, top_k, top_p_cut, min_p = table.unbind(dim=1)
    scores = logits / temperature[:, None]
    cut_k = any(r.top_k > 0 for r in rows)
    cut_p = any(r.top_p < 1.0 for r in rows)
    cut_min = any(r.min_p > 0.0 for r in rows)
    if not (cut_k or cut_p):
        return _min_p(scores, min_p) if cut_min else scores
    ordered, order = scores.sort(dim=-1)  # ascending, as TopPLogitsWarper sorts
    if cut_k:
        k = top_k.long()
        # The k-th largest value sits at ascending position vocab - k; a row without top-k
        # takes position 0 (its smallest value), below which nothing lies.
        kth = ordered.gather(1, torch.where(k > 0, vocab - k, 0)[:, None])
        ordered = ordered.masked_fill(ordered < kth, float("-inf"))
    if cut_p:
        cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
        remove = cumulative <= top_p_cut[:, None]
        remove[:, -1] = False  # the most likely token always stays
        remove &= (top_p_cut > 0)[:, None]  # rows without top-p are left alone
        ordered = ordered.masked_fill(remove, float("-inf"))
    if cut_min:
        ordered = _min_p(ordered, min_p)
    return torch.empty_like(ordered).scatter_(1, order, ordered)


def _min_p(scores: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Drop tokens less likely than ``min_p`` times the row's most likely one (which always stays)."""
    probs = scores.softmax(dim=-1)
    threshold = min_p[:, None] * probs.amax(dim=-1, keepdim=True)
    return scores.masked_fill(probs < threshold, float("-inf"))
