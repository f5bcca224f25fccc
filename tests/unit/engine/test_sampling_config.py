"""Defaults from a checkpoint's ``generation_config``; the limits every in-process path enforces."""

from __future__ import annotations

import logging

import pytest
from transformers import GenerationConfig

from glimpse.engine.protocol import SamplingDefaults, SamplingParams
from glimpse.engine.sampling_config import check_sampling, check_vocabulary, checkpoint_defaults
from glimpse.errors import InvalidRequest

#: As GLM-4.6V-Flash-style checkpoints recommend: sample, with a top-k and a repetition penalty.
SAMPLED = GenerationConfig(do_sample=True, temperature=0.8, top_p=0.6, top_k=2, repetition_penalty=1.1)


def test_a_sampling_checkpoint_gives_its_recommended_settings():
    assert checkpoint_defaults(SAMPLED) == SamplingDefaults(
        temperature=0.8, top_p=0.6, top_k=2, repetition_penalty=1.1
    )


def test_a_greedy_checkpoint_stays_greedy_but_keeps_its_penalty():
    config = GenerationConfig(do_sample=False, temperature=0.7, repetition_penalty=1.3)
    assert checkpoint_defaults(config) == SamplingDefaults(temperature=0.0, repetition_penalty=1.3)
    assert checkpoint_defaults(GenerationConfig()) == SamplingDefaults()
    assert checkpoint_defaults(None) == SamplingDefaults()


def test_sampling_without_a_temperature_samples_at_one_as_generate_does():
    assert checkpoint_defaults(GenerationConfig(do_sample=True)).temperature == 1.0


def test_unusable_checkpoint_values_are_skipped_with_a_warning(caplog):
    config = GenerationConfig(do_sample=True, temperature=0.5)
    config.top_p, config.min_p, config.top_k = 0.0, 0.1, 2.5
    with caplog.at_level(logging.WARNING, logger="glimpse.engine.sampling_config"):
        defaults = checkpoint_defaults(config)
    assert defaults == SamplingDefaults(temperature=0.5, min_p=0.1)
    assert "top_p" in caplog.text
    assert "top_k" in caplog.text


def test_request_values_win_and_unset_ones_take_the_defaults():
    defaults = checkpoint_defaults(SAMPLED)
    unset = SamplingParams(8).resolved(defaults)
    assert (unset.temperature, unset.top_p, unset.top_k, unset.repetition_penalty) == (0.8, 0.6, 2, 1.1)
    assert (unset.min_p, unset.presence_penalty, unset.frequency_penalty) == (0.0, 0.0, 0.0)
    assert not unset.greedy
    mine = SamplingParams(8, temperature=0.0, top_k=0, repetition_penalty=1.0, seed=4).resolved(defaults)
    assert (mine.temperature, mine.top_k, mine.repetition_penalty, mine.seed) == (0.0, 0, 1.0, 4)
    assert mine.greedy
    assert mine.top_p == 0.6  # unset: the checkpoint's
    assert mine.resolved(SamplingDefaults()) == mine  # resolving twice changes nothing


def test_an_unresolved_temperature_is_greedy():
    assert SamplingParams(1).greedy
    assert not SamplingParams(1, temperature=0.5).greedy


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", float("nan")),
        ("top_p", 1.01),
        ("top_k", 1.5),
        ("min_p", -0.1),
        ("repetition_penalty", -1.0),
        ("presence_penalty", float("-inf")),
    ],
)
def test_check_names_the_field_it_refuses(field, value):
    with pytest.raises(InvalidRequest) as info:
        check_sampling(SamplingParams(1, **{field: value}))
    assert info.value.param == field
    check_sampling(SamplingParams(1))  # unset is always fine


@pytest.mark.parametrize(
    ("settings", "param"),
    [
        ({"logprobs": 21}, "top_logprobs"),
        ({"logprobs": -1}, "top_logprobs"),
        ({"logit_bias": ((5, 100.5),)}, "logit_bias"),
        ({"logit_bias": ((5, float("nan")),)}, "logit_bias"),
        ({"logit_bias": ((-1, 1.0),)}, "logit_bias"),
    ],
)
def test_logprobs_and_logit_bias_out_of_range_are_refused_by_name(settings, param):
    with pytest.raises(InvalidRequest) as err:
        check_sampling(SamplingParams(1, **settings))
    assert err.value.param == param


def test_logprobs_and_logit_bias_at_their_limits_pass():
    check_sampling(SamplingParams(1, logprobs=20, logit_bias=((0, -100.0), (7, 100.0))))
    check_sampling(SamplingParams(1, logprobs=0))


def test_a_bias_on_a_token_beyond_the_logits_is_refused():
    check_vocabulary(SamplingParams(1, logit_bias=((99, 1.0),)), vocab_size=100)
    with pytest.raises(InvalidRequest, match="100, 250") as err:
        check_vocabulary(SamplingParams(1, logit_bias=((3, 1.0), (250, 1.0), (100, 2.0))), vocab_size=100)
    assert err.value.param == "logit_bias"
