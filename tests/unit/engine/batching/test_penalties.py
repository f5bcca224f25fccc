"""Penalties: transformers' repetition penalty, OpenAI's presence and frequency penalties."""

from __future__ import annotations

import torch
from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

from glimpse.engine.batching import OpenAIPenalties, apply_penalties
from glimpse.engine.batching.penalties import prompt_mask

VOCAB = 50


def _openai(logits: torch.Tensor, answer: list[int], presence: float, frequency: float) -> torch.Tensor:
    """OpenAI's definition, token by token: mu[j] - c[j] * frequency - (c[j] > 0) * presence."""
    out = logits.clone()
    for token in set(answer):
        count = answer.count(token)
        out[token] = logits[token] - count * frequency - presence
    return out


def _counts(answer: list[int]) -> torch.Tensor:
    return torch.bincount(torch.tensor(answer, dtype=torch.long), minlength=VOCAB).float()


def test_repetition_penalty_matches_transformers_over_prompt_and_answer():
    logits = torch.randn(2, VOCAB, generator=torch.Generator().manual_seed(0)) * 3
    prompts = [[1, 2, 3, 3, 40], [7, 8]]
    answers = [[5, 2, 5], [9]]
    penalties = [1.3, 0.7]
    ours = apply_penalties(
        logits,
        torch.stack([prompt_mask(torch.tensor(p), VOCAB, logits.device) for p in prompts]),
        torch.stack([_counts(a) for a in answers]),
        torch.tensor(penalties),
        torch.zeros(2),
        torch.zeros(2),
    )
    for row in range(2):
        ids = torch.tensor([prompts[row] + answers[row]])
        theirs = RepetitionPenaltyLogitsProcessor(penalties[row])(ids, logits[row : row + 1].clone())
        assert torch.equal(ours[row], theirs[0])


def test_presence_and_frequency_follow_openai_over_the_answer_only():
    logits = torch.randn(3, VOCAB, generator=torch.Generator().manual_seed(1))
    answers = [[4, 4, 4, 9], [4], [30, 31, 30]]
    presence = [0.5, -1.0, 0.0]
    frequency = [0.25, 0.0, 2.0]
    in_prompt = torch.zeros(3, VOCAB, dtype=torch.bool)
    in_prompt[:, 4] = True  # prompt tokens do not count for these two
    ours = apply_penalties(
        logits,
        in_prompt,
        torch.stack([_counts(a) for a in answers]),
        torch.ones(3),
        torch.tensor(presence),
        torch.tensor(frequency),
    )
    for row in range(3):
        expected = _openai(logits[row], answers[row], presence[row], frequency[row])
        torch.testing.assert_close(ours[row], expected)


def test_off_values_leave_logits_bit_for_bit():
    logits = torch.randn(1, VOCAB) * 10
    logits[0, 3] = float("-inf")
    seen = torch.ones(1, VOCAB, dtype=torch.bool)
    ours = apply_penalties(
        logits, seen, torch.full((1, VOCAB), 2.0), torch.ones(1), torch.zeros(1), torch.zeros(1)
    )
    assert torch.equal(ours, logits)


def test_prompt_ids_beyond_the_vocabulary_are_ignored():
    mask = prompt_mask(torch.tensor([[0, 5, VOCAB + 3]]), VOCAB, torch.device("cpu"))
    assert mask.nonzero().flatten().tolist() == [0, 5]


def test_the_generate_processor_counts_only_tokens_after_the_prompt():
    logits = torch.randn(1, VOCAB, generator=torch.Generator().manual_seed(2))
    ids = torch.tensor([[4, 4, 7, 11, 11, 12]])  # prompt of 3, answer [11, 11, 12]
    out = OpenAIPenalties(prompt_len=3, presence=0.3, frequency=0.2)(ids, logits.clone())
    torch.testing.assert_close(out[0], _openai(logits[0], [11, 11, 12], 0.3, 0.2))
