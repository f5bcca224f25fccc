"""OpenAI's ``logit_bias`` and ``logprobs`` for many rows at once, computed only for the rows that ask.

The definitions every in-process path shares (the README states them):

- a row's bias is added to its logits first, before the penalties (vLLM's order;
  transformers' ``sequence_bias`` sits at the same place in ``generate()``);
- a row's log-probabilities are the log-softmax of the logits the sampler chose from:
  after the bias, the penalties and the grammar mask, divided by the row's temperature
  (1 for a greedy row), before top-k, top-p and min-p cut the tail. So a greedy row's
  token is its own most likely one, and a sampled row's token was drawn from this
  distribution with the cut-offs' tokens removed; a token the grammar forbids is at
  ``-inf``. The top tokens come most likely first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["RowBias", "SampledLogprobs", "add_bias", "token_logprobs"]


@dataclass(slots=True, frozen=True)
class SampledLogprobs:
    """The chosen token's log-probability and the row's most likely tokens (``(id, logprob)``), by id."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(slots=True, frozen=True)
class RowBias:
    """One row's ``logit_bias`` as tensors (on the CPU: a step sends every row's in one copy)."""

    ids: torch.Tensor  # long [k]
    values: torch.Tensor  # float32 [k]

    @classmethod
    def of(cls, pairs: Sequence[tuple[int, float]]) -> RowBias | None:
        """The bias of ``(token id, bias)`` pairs; ``None`` for none."""
        if not pairs:
            return None
        ids, values = zip(*pairs, strict=True)
        return cls(torch.tensor(ids, dtype=torch.long), torch.tensor(values, dtype=torch.float32))


def add_bias(logits: torch.Tensor, rows: Sequence[int], biases: Sequence[RowBias]) -> torch.Tensor:
    """A copy of ``logits`` ``[n, vocab]`` with ``biases[i]`` added to row ``rows[i]`` (others unchanged)."""
    counts = torch.tensor([bias.ids.numel() for bias in biases])
    where = torch.stack(
        [torch.repeat_interleave(torch.tensor(list(rows)), counts), torch.cat([b.ids for b in biases])]
    ).to(logits.device)
    values = torch.cat([bias.values for bias in biases]).to(logits.device)
    return logits.index_put((where[0], where[1]), values, accumulate=True)


def token_logprobs(
    logits: torch.Tensor, temperatures: Sequence[float], chosen: Sequence[int], tops: Sequence[int]
) -> list[SampledLogprobs]:
    """Per row of ``logits`` ``[m, vocab]``: the log-softmax of ``logits / temperature``, read at the
    chosen token and at the row's ``tops[i]`` largest entries."""
    device = logits.device
    scale = torch.tensor(list(temperatures), dtype=torch.float32).to(device)
    logp = (logits / scale[:, None]).log_softmax(dim=-1)
    index = torch.tensor(list(chosen), dtype=torch.long).to(device)
    parts = [logp.gather(1, index[:, None]).double()]
    k = min(max(tops, default=0), logp.shape[-1])
    if k:
        values, ids = logp.topk(k, dim=-1)
        parts += [values.double(), ids.double()]  # float64 holds every token id exactly
    table = torch.cat(parts, dim=1).tolist()  # one copy to the host for every row's numbers
    results = []
    for row, token, top in zip(table, chosen, tops, strict=True):
        count = min(top, k)
        pairs = tuple((int(row[1 + k + j]), row[1 + j]) for j in range(count))
        results.append(SampledLogprobs(token, row[0], pairs))
    return results
