"""Structured output inside the batch: each constrained row's grammar mask, and its tokens fed back.

A step masks the rows whose sequence has an active grammar (``engine.grammar``),
after the penalties and before the arg-max and the draw, so greedy and sampled rows
alike choose among the tokens their grammar allows; every other row's logits are
left bit for bit as they were, so an unconstrained answer does not depend on a
constrained neighbour. Once the tokens are chosen, each constrained row's matcher
accepts its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from glimpse.engine.grammar import TokenConstraint, mask_logits

__all__ = ["accept_tokens", "constrain_logits"]


class _Constrained(Protocol):
    @property
    def constraint(self) -> TokenConstraint | None: ...


def constrain_logits(logits: torch.Tensor, states: Sequence[_Constrained]) -> None:
    """Mask, in place, the tokens each row's active grammar forbids (rows without one untouched)."""
    rows = [
        (row, state.constraint)
        for row, state in enumerate(states)
        if state.constraint is not None and state.constraint.active
    ]
    mask_logits(logits, rows)


def accept_tokens(states: Sequence[_Constrained], tokens: Sequence[int]) -> None:
    """Feed each constrained row's matcher the token chosen for it."""
    for state, token in zip(states, tokens, strict=True):
        if state.constraint is not None:
            state.constraint.accept(token)
