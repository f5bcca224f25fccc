from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import TopPLogitsWarper

from glimpse.engine.batching import SamplerState, sample_tokens, top_p_filter
from glimpse.engine.protocol import SamplingParams

CPU = torch.device("cpu")


def _create(temperature: float, top_p: float, seed: int | None) -> SamplerState:
    return SamplerState.create(SamplingParams(1, temperature=temperature, top_p=top_p, seed=seed), CPU)


@pytest.mark.parametrize("top_p", [0.05, 0.3, 0.75, 0.95])
def test_top_p_matches_transformers_warper(top_p):
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(3)) * 3
    expected = TopPLogitsWarper(top_p=top_p)(torch.zeros((3, 1), dtype=torch.long), logits.clone())
    assert torch.equal(top_p_filter(logits, top_p), expected)


def test_greedy_rows_take_the_first_maximum():
    logits = torch.tensor([[0.0, 2.0, 2.0, 1.0], [5.0, 0.0, 0.0, 5.0]])
    assert sample_tokens(logits, [SamplerState(), SamplerState()]) == [1, 0]


def test_seeded_rows_repeat_and_unseeded_rows_do_not_disturb_them():
    logits = torch.zeros(2, 1000)

    def draw(seed, neighbour):
        states = [_create(1.0, 1.0, seed), neighbour]
        return [sample_tokens(logits, states)[0] for _ in range(20)]

    first = draw(11, SamplerState())
    assert first == draw(11, _create(1.0, 1.0, None))
    assert first != draw(12, SamplerState())


def test_small_top_p_keeps_only_the_most_likely_token():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.5]])
    state = _create(1.0, 0.1, 0)
    assert {sample_tokens(logits, [state])[0] for _ in range(50)} == {1}


def test_temperature_spreads_the_draws():
    logits = torch.tensor([[0.0, 0.5, 0.2, 0.4]])
    state = _create(2.0, 1.0, 0)
    assert len({sample_tokens(logits, [state])[0] for _ in range(200)}) == 4


def test_invalid_settings_are_rejected():
    with pytest.raises(ValueError, match="top_p"):
        _create(1.0, 1.5, None)
    with pytest.raises(ValueError, match="rows"):
        sample_tokens(torch.zeros(2, 4), [SamplerState()])
    assert _create(0.0, 1.5, None).greedy  # greedy ignores top_p


@pytest.mark.parametrize("temperature", [1e-38, 1e-6])
def test_a_vanishing_temperature_is_greedy_and_never_fails_its_neighbours(temperature):
    # Dividing float32 logits by 1e-38 overflows to inf and the softmax to NaN; the API
    # accepts any temperature >= 0, so such a request must neither fail nor take others down.
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.5], [50.0, 49.0, 0.0, 0.0]])
    tiny = _create(temperature, 1.0, 0)
    neighbour = _create(1.0, 1.0, 3)
    assert tiny.greedy
    for _ in range(20):
        assert sample_tokens(logits, [tiny, neighbour])[0] == 1


def test_a_small_temperature_above_the_greedy_cut_samples_without_overflow():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.5]]) * 1e4  # large logits, small temperature
    state = _create(1e-4, 1.0, 0)
    assert not state.greedy
    assert {sample_tokens(logits, [state])[0] for _ in range(20)} == {1}
