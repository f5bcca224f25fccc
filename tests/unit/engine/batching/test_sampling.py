from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

from glimpse.engine.batching import RowWarp, SamplerState, filter_logits, sample_tokens
from glimpse.engine.protocol import SamplingParams
from glimpse.errors import InvalidRequest

VOCAB = 64


def _create(temperature: float = 1.0, seed: int | None = None, prompt=None, **settings) -> SamplerState:
    sampling = SamplingParams(1, temperature=temperature, seed=seed, **settings)
    return SamplerState.create(sampling, None if prompt is None else torch.tensor([prompt]))


def _logits(step: int, rows: int = 1) -> torch.Tensor:
    return torch.randn(rows, VOCAB, generator=torch.Generator().manual_seed(100 + step)) * 2


def test_greedy_rows_take_the_first_maximum():
    logits = torch.tensor([[0.0, 2.0, 2.0, 1.0], [5.0, 0.0, 0.0, 5.0]])
    assert sample_tokens(logits, [SamplerState(), SamplerState()]) == [1, 0]


def test_unset_fields_are_neutral_greedy_without_penalty_state():
    state = SamplerState.create(SamplingParams(1), torch.tensor([[1, 2, 3]]))
    assert state.greedy
    assert not state.penalised
    sample_tokens(_logits(0), [state])
    assert state.counts is None  # the fast path carries nothing


NEIGHBOURS = {
    "greedy": lambda: SamplerState(),
    "unseeded": lambda: _create(0.9),
    "other-seed": lambda: _create(1.2, seed=99, top_k=4),
    "penalised-greedy": lambda: _create(0.0, prompt=[1, 2], repetition_penalty=1.5, frequency_penalty=0.5),
    "everything": lambda: _create(0.7, seed=3, top_k=10, top_p=0.8, min_p=0.05, presence_penalty=1.0),
}


@pytest.mark.parametrize(
    "settings",
    [{}, {"top_k": 5}, {"top_p": 0.7, "min_p": 0.1}, {"repetition_penalty": 1.2, "presence_penalty": 0.4}],
    ids=["plain", "top_k", "top_p+min_p", "penalties"],
)
def test_a_seeded_row_draws_the_same_tokens_whatever_its_neighbours(settings):
    def run(neighbours: list[str]) -> list[int]:
        mine = _create(0.8, seed=11, prompt=[3, 4], **settings)
        others = [NEIGHBOURS[name]() for name in neighbours]
        drawn = []
        for step in range(25):
            logits = _logits(step, rows=1 + len(others))
            logits[1:] = torch.randn(len(others), VOCAB)  # neighbours' logits vary run to run
            states = [*others[: len(others) // 2], mine, *others[len(others) // 2 :]]
            row = len(others) // 2
            mixed = torch.cat([logits[1 : 1 + row], logits[:1], logits[1 + row :]])
            drawn.append(sample_tokens(mixed, states)[row])
        return drawn

    alone = run([])
    assert len(set(alone)) > 1
    assert run(list(NEIGHBOURS)) == alone
    assert run(["greedy", "penalised-greedy"]) == alone


def test_draws_follow_the_filtered_distribution():
    logits = _logits(1)
    state = _create(0.9, seed=5, top_k=6, top_p=0.95)
    probs = filter_logits(logits, [RowWarp(0.9, top_k=6, top_p=0.95)]).softmax(dim=-1)[0]
    draws = 4000
    seen = torch.bincount(
        torch.tensor([sample_tokens(logits, [state])[0] for _ in range(draws)]), minlength=VOCAB
    )
    assert set(seen.nonzero().flatten().tolist()) <= set(probs.nonzero().flatten().tolist())
    assert torch.allclose(seen / draws, probs, atol=0.03)


def test_unseeded_rows_draw_differently():
    logits = torch.zeros(1, 1000)
    a, b = _create(1.0), _create(1.0)
    assert [sample_tokens(logits, [a])[0] for _ in range(10)] != [
        sample_tokens(logits, [b])[0] for _ in range(10)
    ]


def test_a_greedy_row_with_a_repetition_penalty_is_argmax_after_transformers_processor():
    prompt = [5, 6, 7]
    state = _create(0.0, prompt=prompt, repetition_penalty=1.8)
    neighbour = SamplerState()
    ids = list(prompt)
    for step in range(12):
        logits = _logits(step, rows=2)
        logits[0, ids[-1]] += 3.0  # make repeating attractive
        expected = int(
            RepetitionPenaltyLogitsProcessor(1.8)(torch.tensor([ids]), logits[:1].clone())[0].argmax()
        )
        tokens = sample_tokens(logits, [state, neighbour])
        assert tokens[0] == expected
        assert tokens[1] == int(logits[1].argmax())  # an unpenalised greedy neighbour is untouched
        ids.append(tokens[0])


def test_a_frequency_penalty_counts_every_answer_token():
    state = _create(0.0, frequency_penalty=2.0)
    logits = torch.zeros(1, VOCAB)
    logits[0, :3] = torch.tensor([3.0, 2.5, 2.0])
    # 3 -> 1 after one use, so token 1 (2.5) wins; then 0.5 vs 1.0 vs 2.0 -> token 2; ...
    assert [sample_tokens(logits, [state])[0] for _ in range(4)] == [0, 1, 2, 0]
    assert state.counts is not None
    assert state.counts[:3].tolist() == [2.0, 1.0, 1.0]


@pytest.mark.parametrize(
    ("settings", "param"),
    [
        ({"top_p": 1.5}, "top_p"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"min_p": 1.5}, "min_p"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"presence_penalty": float("nan")}, "presence_penalty"),
        ({"frequency_penalty": float("inf")}, "frequency_penalty"),
        ({"temperature": -1.0}, "temperature"),
    ],
)
def test_unusable_settings_are_refused_naming_the_field(settings, param):
    with pytest.raises(InvalidRequest) as info:
        SamplerState.create(SamplingParams(1, **{"temperature": 1.0, **settings}))
    assert info.value.param == param


def test_rows_and_states_must_agree():
    with pytest.raises(ValueError, match="rows"):
        sample_tokens(torch.zeros(2, 4), [SamplerState()])


@pytest.mark.parametrize("temperature", [1e-38, 1e-6])
def test_a_vanishing_temperature_is_greedy_and_never_fails_its_neighbours(temperature):
    # Dividing float32 logits by 1e-38 overflows to inf and the softmax to NaN; the API
    # accepts any temperature >= 0, so such a request must neither fail nor take others down.
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.5], [50.0, 49.0, 0.0, 0.0]])
    tiny = _create(temperature, seed=0)
    neighbour = _create(1.0, seed=3)
    assert tiny.greedy
    for _ in range(20):
        assert sample_tokens(logits, [tiny, neighbour])[0] == 1


def test_a_small_temperature_above_the_greedy_cut_samples_without_overflow():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.5]]) * 1e4  # large logits, small temperature
    state = _create(1e-4, seed=0)
    assert not state.greedy
    assert {sample_tokens(logits, [state])[0] for _ in range(20)} == {1}


def test_a_filtered_token_is_never_drawn_even_at_the_top_of_the_range():
    # Only the first two tokens survive top-k; the last entries of the cumulative sum are flat.
    logits = torch.tensor([[5.0, 4.9, 0.0, 0.0, 0.0]])
    state = _create(1.0, seed=1, top_k=2)
    assert {sample_tokens(logits, [state])[0] for _ in range(300)} == {0, 1}
