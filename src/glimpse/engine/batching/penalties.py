"""Repetition, presence and frequency penalties, for many rows at once.

Two definitions meet here, each as its source defines it:

- ``repetition_penalty`` is transformers' (``RepetitionPenaltyLogitsProcessor``, also
  vLLM's): every token seen in the prompt or the answer so far has its logit divided
  by the penalty when positive, multiplied when negative;
- ``presence_penalty`` and ``frequency_penalty`` are OpenAI's (also vLLM's): over the
  answer's tokens only, ``logit -= frequency * count + presence * (count > 0)``.

They apply in that order (vLLM's), before temperature and the cut-offs, and greedy rows
take their arg-max after them, as ``generate()`` applies its logits processors before
the arg-max. A row's "off" values (1, 0, 0) leave its logits bit for bit as they were.
"""

from __future__ import annotations

import torch

__all__ = ["OpenAIPenalties", "apply_penalties", "prompt_mask"]


def prompt_mask(prompt_ids: torch.Tensor, vocab_size: int, device: torch.device) -> torch.Tensor:
    """``[vocab]`` bool: which tokens the prompt holds (ids beyond the vocabulary are not logits)."""
    ids = prompt_ids.reshape(-1).to(device=device, dtype=torch.long)
    mask = torch.zeros(vocab_size, dtype=torch.bool, device=device)
    mask[ids[ids < vocab_size]] = True
    return mask


def apply_penalties(
    logits: torch.Tensor,
    seen_in_prompt: torch.Tensor,
    counts: torch.Tensor,
    repetition: torch.Tensor,
    presence: torch.Tensor,
    frequency: torch.Tensor,
) -> torch.Tensor:
    """Penalised copy of ``logits`` ``[m, vocab]``.

    ``seen_in_prompt`` ``[m, vocab]`` bool, ``counts`` ``[m, vocab]`` float (how often each
    token is in the answer so far); ``repetition``, ``presence``, ``frequency`` ``[m]``.
    """
    in_answer = counts > 0
    seen = seen_in_prompt | in_answer
    rep = repetition[:, None]
    repeated = torch.where(logits < 0, logits * rep, logits / rep)
    logits = torch.where(seen, repeated, logits)
    return logits - frequency[:, None] * counts - presence[:, None] * in_answer


class OpenAIPenalties:
    """A ``generate()`` logits processor for ``presence_penalty`` / ``frequency_penalty``.

    transformers has ``repetition_penalty`` but not these two; passed in ``logits_processor``,
    it runs after the repetition penalty and before the warpers (temperature, top-k, ...),
    the order the batch sampler uses, with the same arithmetic.
    """

    def __init__(self, prompt_len: int, presence: float, frequency: float) -> None:
        self._prompt_len = prompt_len
        self._presence = presence
        self._frequency = frequency

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        # Two parameters exactly: ``LogitsProcessorList`` demands every further one as a keyword.
        rows, vocab = scores.shape
        answer = input_ids[:, self._prompt_len :]  # tokens generate() picked: all within the vocabulary
        counts = torch.zeros(rows, vocab, dtype=scores.dtype, device=scores.device)
        counts.scatter_add_(1, answer, torch.ones_like(answer, dtype=scores.dtype))
        unseen = torch.zeros(rows, vocab, dtype=torch.bool, device=scores.device)
        ones = torch.ones(rows, dtype=scores.dtype, device=scores.device)
        return apply_penalties(scores, unseen, counts, ones, ones * self._presence, ones * self._frequency)
