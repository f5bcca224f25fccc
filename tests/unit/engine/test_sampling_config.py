"""Defaults from a checkpoint's ``generation_config``; the limits every in-process path enforces."""

from __future__ import annotations

import logging

import pytest
from transformers import GenerationConfig

from glimpse.engine.protocol import SamplingDefaults, SamplingParams
from glimpse.engine.sampling_config import check_sampling, checkpoint_defaults
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
