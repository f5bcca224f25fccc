"""Per-row ``logit_bias`` and log-probabilities, checked against direct torch computations;
rows that ask for neither are left exactly as they were."""

from __future__ import annotations

import pytest
import torch

from glimpse.engine.batching import RowBias, SamplerState, add_bias, sample_step, token_logprobs
from glimpse.engine.protocol import SamplingParams

VOCAB = 50


def _logits(rows: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, VOCAB, generator=torch.Generator().manual_seed(seed)) * 3


def _state(**settings) -> SamplerState:
    return SamplerState.create(SamplingParams(1, **settings), torch.tensor([[1, 2, 3]]))


def test_token_logprobs_are_the_log_softmax_over_temperature_at_the_chosen_and_top_tokens():
    logits = _logits(3)
    temperatures, chosen, tops = [1.0, 0.5, 1.7], [4, 9, 0], [3, 0, 5]
    results = token_logprobs(logits, temperatures, chosen, tops)
    for row, result in enumerate(results):
        expected = torch.log_softmax(logits[row].double() / temperatures[row], dim=-1)
        assert result.token_id == chosen[row]
        assert result.logprob == pytest.approx(float(expected[chosen[row]]), abs=1e-5)
        values, ids = expected.topk(tops[row])
        assert [token for token, _ in result.top] == ids.tolist()
        assert [lp for _, lp in result.top] == pytest.approx(values.tolist(), abs=1e-5)


def test_add_bias_adds_to_the_listed_rows_only_and_leaves_its_input_alone():
    logits = _logits(3)
    before = logits.clone()
    biases = [RowBias.of([(3, 5.0), (7, -100.0)]), RowBias.of([(0, 2.5)])]
    assert None not in biases
    out = add_bias(logits, [0, 2], [b for b in biases if b is not None])
    expected = before.clone()
    expected[0, 3] += 5.0
    expected[0, 7] -= 100.0
    expected[2, 0] += 2.5
    assert torch.equal(out, expected)
    assert torch.equal(logits, before)
    assert RowBias.of([]) is None


def test_a_bias_moves_the_greedy_choice():
    logits = _logits(1, seed=3)
    top, runner_up = logits[0].topk(2).indices.tolist()
    assert sample_step(logits, [_state(logit_bias=((top, -100.0),))]).tokens == [runner_up]
    low = int(logits[0].argmin())
    assert sample_step(logits, [_state(logit_bias=((low, 100.0),))]).tokens == [low]


def test_step_logprobs_follow_bias_penalties_and_temperature_for_the_rows_that_ask():
    logits = _logits(4, seed=7)
    biased = _state(logit_bias=((5, 4.0),), logprobs=2)
    penalised = _state(presence_penalty=1.5, logprobs=0)
    penalised.counts = torch.zeros(VOCAB)
    penalised.seen_in_prompt = torch.zeros(VOCAB, dtype=torch.bool)
    penalised.counts[int(logits[1].argmax())] = 1.0  # the answer so far holds the favourite
    sampled = _state(temperature=0.6, seed=11, top_k=5, logprobs=4)
    plain = _state()
    direct = [  # before the step: it counts the chosen tokens
        torch.log_softmax(
            logits[0].index_put((torch.tensor([5]),), torch.tensor([4.0]), accumulate=True), -1
        ),
        torch.log_softmax(logits[1] - 1.5 * (penalised.counts > 0), -1),
        torch.log_softmax(logits[2] / 0.6, -1),
    ]
    result = sample_step(logits.clone(), [biased, penalised, sampled, plain])
    assert result.logprobs[3] is None
    for row, expected in enumerate(direct):
        found = result.logprobs[row]
        assert found is not None
        assert found.token_id == result.tokens[row]
        assert found.logprob == pytest.approx(float(expected[result.tokens[row]]), abs=1e-5)
        count = [2, 0, 4][row]
        assert [token for token, _ in found.top] == expected.topk(count).indices.tolist()
    # A greedy row's token is its own most likely one; a sampled row's is one its top-k allowed.
    assert result.logprobs[0].top[0] == (result.tokens[0], pytest.approx(result.logprobs[0].logprob))
    assert result.tokens[2] in direct[2].topk(5).indices.tolist()


def test_rows_that_ask_for_nothing_choose_as_they_would_alone():
    plain_settings = [{}, {"temperature": 0.9, "seed": 4}, {"frequency_penalty": 0.5}]
    for step in range(20):
        logits = _logits(6, seed=step)
        alone_states = [_state(**s) for s in plain_settings]
        alone = sample_step(logits[:3].clone(), alone_states).tokens
        mixed_states = [_state(**s) for s in plain_settings] + [
            _state(logprobs=5),
            _state(logit_bias=((1, 50.0), (2, -20.0)), temperature=1.3, seed=9, logprobs=1),
            _state(logit_bias=((0, 100.0),)),
        ]
        mixed = sample_step(logits.clone(), mixed_states)
        assert mixed.tokens[:3] == alone
        assert mixed.logprobs[:3] == [None, None, None]
        assert mixed.tokens[5] == 0


def test_asking_for_logprobs_does_not_change_a_seeded_rows_draws():
    def draws(**extra) -> list[int]:
        state = _state(temperature=1.0, seed=21, top_p=0.9, **extra)
        return [sample_step(_logits(1, seed=s), [state]).tokens[0] for s in range(30)]

    assert draws(logprobs=3) == draws()


# -- through the model: the continuous batch and generate(), against generate()'s own scores -------


def _generated(model, inputs, max_new: int, **kwargs) -> tuple[list[int], list[torch.Tensor]]:
    """Greedy ``generate()``: its tokens, and the log-softmax of the scores it chose each one from."""
    with torch.inference_mode():
        out = model.generate(
            **inputs,
            max_new_tokens=max_new,
            do_sample=False,
            output_scores=True,
            return_dict_in_generate=True,
            **kwargs,
        )
    tokens = out.sequences[0, inputs["input_ids"].shape[1] :].tolist()
    return tokens, [torch.log_softmax(score[0].float(), dim=-1) for score in out.scores]


def _check_logprobs(reported, tokens, expected, top: int, eos: frozenset[int]) -> None:
    assert len(reported) == len(tokens)
    for entry, token, logp in zip(reported, tokens, expected, strict=True):
        if token in eos:  # the token that ends the answer is no part of it
            assert entry is None
            continue
        assert entry is not None
        assert entry.token_id == token
        assert entry.logprob == pytest.approx(float(logp[token]), abs=1e-4)
        assert [t for t, _ in entry.top] == logp.topk(top).indices.tolist()
        assert entry.top[0][0] == token  # greedy: the chosen token is the most likely one


def _run_batch(scheduler, sink, requests, max_steps=300) -> None:
    for request in requests:
        scheduler.submit(request)
    for _ in range(max_steps):
        scheduler.step()
        if all(sink.done(request.seq_id) for request in requests):
            return
    raise AssertionError("sequences did not finish")


@pytest.fixture(scope="module")
def prompts(processor):
    from .conftest import make_inputs, make_text_inputs

    return {
        "plain": make_inputs(processor, (64, 48), "What is it?"),
        "logprobs": make_inputs(processor, (90, 60), "Describe the picture."),
        "biased": make_text_inputs(processor, "Say something."),
    }


@pytest.mark.slow
@pytest.mark.parametrize("runner", ["batch", "generate"])
def test_logprobs_and_bias_through_the_model_match_generate(model, prompts, runner):
    from glimpse.engine.batching import (
        BatcherConfig,
        ContinuousBatcher,
        GenerateSteps,
        Scheduler,
        SequenceRequest,
    )

    from .conftest import RecordingSink, reference

    max_new = 10
    plain = reference(model, prompts["plain"], max_new)
    tokens, logps = _generated(model, prompts["logprobs"], max_new)
    unbiased = reference(model, prompts["biased"], max_new)
    other = next(token for token in [*unbiased, 5] if token != unbiased[0])  # ids are distinct, as in JSON
    bias = ((unbiased[0], -100.0), (other, 3.0))
    biased, _ = _generated(model, prompts["biased"], max_new, sequence_bias=[[[t], b] for t, b in bias])
    assert biased != unbiased

    if runner == "batch":
        scheduler: Scheduler = ContinuousBatcher(model, BatcherConfig(max_batch_size=4, max_seq_len=1024))
    else:
        steps = GenerateSteps(model, device=torch.device("cpu"), dtype=torch.float32, slot_tokens=1024)
        scheduler = Scheduler(steps, BatcherConfig(max_seq_len=1024))
    sink = RecordingSink()
    settings = {"plain": {}, "logprobs": {"logprobs": 3}, "biased": {"logit_bias": bias}}
    requests = [
        SequenceRequest(name, prompts[name], sink, SamplingParams(max_new, **settings[name]))
        for name in ("plain", "logprobs", "biased")
    ]
    _run_batch(scheduler, sink, requests)

    assert not sink.errors
    assert sink.tokens["plain"] == plain  # its neighbours ask for logprobs and a bias: unchanged
    assert sink.logprobs["plain"] == [None] * len(plain)
    assert sink.tokens["logprobs"] == tokens
    _check_logprobs(sink.logprobs["logprobs"], tokens, logps, 3, scheduler.eos_token_ids)
    assert sink.tokens["biased"] == biased
    assert sink.logprobs["biased"] == [None] * len(biased)
