"""Per-sequence token selection inside one decode batch, as batched tensor operations.

Each running sequence brings its own settings. A step works on all rows at once:

1. rows with a ``logit_bias`` get it added (``logprobs.add_bias``), then rows with a
   penalty get it (``penalties``: one pass over just those rows); rows under a grammar
   (structured output) then get its mask (``constraints``);
2. every row's arg-max (first index on ties, as ``generate()``) is the greedy answer;
3. sampled rows (one pass over just those) go through their temperature and cut-offs
   (``warpers``) and draw by inverse CDF: one uniform number per row, from that row's
   own generator, located in the row's cumulative distribution;
4. rows that asked for log-probabilities get them from the same logits (``logprobs``).

A step with only greedy, unpenalised rows is one arg-max. The draw for a row depends
on its logits, its settings and its own generator only, so a seeded request draws
the same tokens whatever else shares the batch. Generators live on the CPU (a row's
number costs no device launch; the numbers travel in one copy per step).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch

from glimpse.engine.batching.constraints import accept_tokens, constrain_logits
from glimpse.engine.batching.logprobs import RowBias, SampledLogprobs, add_bias, token_logprobs
from glimpse.engine.batching.penalties import apply_penalties, prompt_mask
from glimpse.engine.batching.warpers import RowWarp, filter_logits
from glimpse.engine.grammar import TokenConstraint
from glimpse.engine.protocol import SamplingDefaults, SamplingParams
from glimpse.engine.sampling_config import check_sampling

__all__ = ["Sampled", "SamplerState", "draw_tokens", "sample_step", "sample_tokens"]

_NEUTRAL = SamplingDefaults()
_T = TypeVar("_T")


@dataclass(slots=True)
class SamplerState:
    """How one sequence picks its tokens: greedy unless it has a ``generator`` (set by ``create``
    for sampled requests, as ``SamplingParams.greedy`` decides), penalised if its penalties are on.

    The penalty state (which tokens the prompt holds, how often each one is in the answer)
    is allocated at the sequence's first step, on the logits' device, and only for
    penalised sequences: greedy and plain sampled rows carry none.
    """

    warp: RowWarp | None = None
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    generator: torch.Generator | None = None
    #: The prompt's token ids, kept until the first step turns them into ``seen_in_prompt``.
    prompt_ids: torch.Tensor | None = None
    seen_in_prompt: torch.Tensor | None = None
    counts: torch.Tensor | None = None
    #: Structured output: the grammar this sequence's tokens must follow.
    constraint: TokenConstraint | None = None
    #: OpenAI's ``logit_bias``, added to this row's logits before anything else.
    bias: RowBias | None = None
    #: Log-probabilities wanted: ``None`` none, ``k`` the chosen token's and the ``k`` most likely.
    logprobs: int | None = None

    @property
    def greedy(self) -> bool:
        return self.generator is None

    @property
    def temperature(self) -> float:
        """What the row's logits are divided by before the draw (and for its log-probabilities)."""
        return 1.0 if self.warp is None else self.warp.temperature

    @property
    def finished(self) -> bool:
        """The sequence's grammar is complete (it took its stop token): the answer ends here."""
        return self.constraint is not None and self.constraint.finished

    @property
    def penalised(self) -> bool:
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0

    @classmethod
    def create(
        cls,
        sampling: SamplingParams,
        prompt_ids: torch.Tensor | None = None,
        constraint: TokenConstraint | None = None,
    ) -> SamplerState:
        """The state for ``sampling``; fields nobody resolved take their neutral values.

        Raises ``InvalidRequest`` for settings the sampler cannot use. ``prompt_ids`` is
        needed only for a repetition penalty (it counts the prompt's tokens too);
        ``constraint`` is the request's grammar (structured output), if it has one.
        """
        check_sampling(sampling)
        s, n = sampling, _NEUTRAL
        repetition = _or(s.repetition_penalty, n.repetition_penalty)
        state = cls(
            repetition_penalty=repetition,
            presence_penalty=_or(s.presence_penalty, n.presence_penalty),
            frequency_penalty=_or(s.frequency_penalty, n.frequency_penalty),
            prompt_ids=prompt_ids if repetition != 1.0 else None,
            constraint=constraint,
            bias=RowBias.of(s.logit_bias),
            logprobs=s.logprobs,
        )
        if not s.greedy:
            state.warp = RowWarp(
                _or(s.temperature, n.temperature),
                top_k=_or(s.top_k, n.top_k),
                top_p=_or(s.top_p, n.top_p),
                min_p=_or(s.min_p, n.min_p),
            )
            # An unseeded request still gets its own stream, so it never perturbs a seeded neighbour.
            seed = s.seed if s.seed is not None else random.getrandbits(63)  # noqa: S311
            state.generator = torch.Generator().manual_seed(seed)
        return state

    def penalty_rows(self, vocab_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(seen_in_prompt, counts)``, each ``[vocab]``, made at the first call."""
        if self.seen_in_prompt is None or self.counts is None:
            if self.prompt_ids is not None:
                self.seen_in_prompt = prompt_mask(self.prompt_ids, vocab_size, device)
            else:
                self.seen_in_prompt = torch.zeros(vocab_size, dtype=torch.bool, device=device)
            self.counts = torch.zeros(vocab_size, dtype=torch.float32, device=device)
            self.prompt_ids = None
        return self.seen_in_prompt, self.counts


def _or(value: _T | None, default: _T) -> _T:
    return default if value is None else value


@dataclass(slots=True, frozen=True)
class Sampled:
    """A step's tokens, one per row, and the log-probabilities of the rows that asked for them."""

    tokens: list[int]
    #: Per row: its log-probabilities if its sequence asked for them, else ``None``.
    logprobs: list[SampledLogprobs | None]


def sample_tokens(logits: torch.Tensor, states: Sequence[SamplerState]) -> list[int]:
    """Pick one token per row of ``logits`` (``[n, vocab]``, float32) by that row's settings."""
    return sample_step(logits, states).tokens


def sample_step(logits: torch.Tensor, states: Sequence[SamplerState]) -> Sampled:
    """One token per row of ``logits`` (``[n, vocab]``, float32), and each asking row's log-probabilities.

    Rows under a grammar are masked in place (``logits`` is the step's scratch output).
    """
    if len(states) != logits.shape[0]:
        raise ValueError(f"{logits.shape[0]} rows of logits for {len(states)} sequences")
    biased = [i for i, state in enumerate(states) if state.bias is not None]
    if biased:
        logits = add_bias(logits, biased, [bias for i in biased if (bias := states[i].bias) is not None])
    penalised = [i for i, state in enumerate(states) if state.penalised]
    if penalised:
        logits = _penalise(logits, penalised, [states[i] for i in penalised])
    constrain_logits(logits, states)
    tokens = logits.argmax(dim=-1)
    sampled = [i for i, state in enumerate(states) if not state.greedy]
    if sampled:
        index = torch.tensor(sampled, device=logits.device)
        drawn = draw_tokens(logits.index_select(0, index), [states[i] for i in sampled])
        tokens = tokens.index_copy(0, index, drawn)
    chosen: list[int] = tokens.tolist()
    logprobs = _logprobs(logits, states, chosen)
    for i in penalised:
        counts = states[i].counts
        assert counts is not None
        counts[chosen[i]] += 1
    accept_tokens(states, chosen)
    return Sampled(chosen, logprobs)


def _logprobs(
    logits: torch.Tensor, states: Sequence[SamplerState], chosen: list[int]
) -> list[SampledLogprobs | None]:
    """The log-probabilities of the rows that asked (one pass over just those rows); ``None`` elsewhere."""
    found: list[SampledLogprobs | None] = [None] * len(states)
    asked = [i for i, state in enumerate(states) if state.logprobs is not None]
    if not asked:
        return found
    rows = logits.index_select(0, torch.tensor(asked, device=logits.device))
    tops = [top for i in asked if (top := states[i].logprobs) is not None]
    computed = token_logprobs(rows, [states[i].temperature for i in asked], [chosen[i] for i in asked], tops)
    for i, entry in zip(asked, computed, strict=True):
        found[i] = entry
    return found


def _penalise(logits: torch.Tensor, rows: list[int], states: list[SamplerState]) -> torch.Tensor:
    vocab, device = logits.shape[-1], logits.device
    parts = [state.penalty_rows(vocab, device) for state in states]
    params = torch.tensor(
        [[s.repetition_penalty, s.presence_penalty, s.frequency_penalty] for s in states],
        dtype=torch.float32,
    ).to(device)
    index = torch.tensor(rows, device=device)
    penalised = apply_penalties(
        logits.index_select(0, index),
        torch.stack([seen for seen, _ in parts]),
        torch.stack([counts for _, counts in parts]),
        *params.unbind(dim=1),
    )
    return logits.index_copy(0, index, penalised)


def draw_tokens(logits: torch.Tensor, states: Sequence[SamplerState]) -> torch.Tensor:
    """One token per row of ``logits`` ``[m, vocab]``, drawn by each (sampled) row's settings."""
    warps = [state.warp for state in states if state.warp is not None]
    if len(warps) != len(states):
        raise ValueError("greedy rows have nothing to draw")
    scores = filter_logits(logits, warps)
    cdf = scores.softmax(dim=-1).cumsum(dim=-1)
    # One number in [0, 1) per row, from the row's own generator (CPU), in one copy.
    uniform = torch.cat([torch.rand(1, generator=state.generator) for state in states]).to(logits.device)
    total = cdf[:, -1]
    # Strictly below the total, so the first entry above it is a token with probability > 0.
    target = torch.minimum(uniform * total, torch.nextafter(total, torch.zeros_like(total)))
    picked = torch.searchsorted(cdf, target[:, None], right=True).squeeze(1)
    return picked.clamp_(max=logits.shape[-1] - 1)
