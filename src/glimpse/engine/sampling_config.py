"""Sampling settings every in-process path agrees on: their limits, and the checkpoint's defaults.

A request's unset fields default to the checkpoint's ``generation_config`` (as vLLM
does with ``--generation-config auto``): ``temperature``, ``top_p``, ``top_k``,
``min_p`` and ``repetition_penalty``, the values the model's authors recommend.
One difference from vLLM: a checkpoint whose ``generation_config`` does not sample
(``do_sample`` false or unset, as ``generate()`` reads it) keeps greedy decoding for an
unset temperature, where vLLM would sample at 1.0; so such a checkpoint answers as
``model.generate()`` would, and Glimpse's documented default (greedy) holds.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

from glimpse.engine.protocol import SamplingDefaults, SamplingParams
from glimpse.errors import InvalidRequest

__all__ = [
    "LOGIT_BIAS_LIMIT",
    "MAX_TOP_LOGPROBS",
    "check_sampling",
    "check_vocabulary",
    "checkpoint_defaults",
]

logger = logging.getLogger(__name__)

Number = float | int

#: Per field: the test a value must pass for the sampling math to be defined, and its wording.
_LIMITS: dict[str, tuple[Callable[[Number], bool], str]] = {
    "temperature": (lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0"),
    "top_p": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "top_k": (lambda v: isinstance(v, int) and v >= 0, "an integer >= 0 (0: no limit)"),
    "min_p": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "repetition_penalty": (lambda v: math.isfinite(v) and v > 0, "a finite number > 0"),
    "presence_penalty": (math.isfinite, "a finite number"),
    "frequency_penalty": (math.isfinite, "a finite number"),
}

#: OpenAI's limits: at most 20 alternatives per token, a bias within [-100, 100].
MAX_TOP_LOGPROBS = 20
LOGIT_BIAS_LIMIT = 100.0

#: ``generation_config`` attributes read as defaults (``temperature`` is read apart, see the module doc).
_FROM_CHECKPOINT = ("top_p", "top_k", "min_p", "repetition_penalty")


def check_sampling(sampling: SamplingParams) -> None:
    """Raise ``InvalidRequest`` naming the first set field whose value the sampler cannot use."""
    for name, (valid, rule) in _LIMITS.items():
        value = getattr(sampling, name)
        if value is not None and not (isinstance(value, int | float) and valid(value)):
            raise InvalidRequest(f"{name} must be {rule}, got {value!r}.", param=name)
    top = sampling.logprobs
    if top is not None and not (isinstance(top, int) and 0 <= top <= MAX_TOP_LOGPROBS):
        raise InvalidRequest(
            f"top_logprobs must be an integer from 0 to {MAX_TOP_LOGPROBS}, got {top!r}.",
            param="top_logprobs",
        )
    for token, bias in sampling.logit_bias:
        if token < 0 or not (math.isfinite(bias) and abs(bias) <= LOGIT_BIAS_LIMIT):
            raise InvalidRequest(
                f"logit_bias maps token ids (integers >= 0) to biases from -{LOGIT_BIAS_LIMIT:g} to "
                f"{LOGIT_BIAS_LIMIT:g}; got {token} -> {bias!r}.",
                param="logit_bias",
            )


def check_vocabulary(sampling: SamplingParams, vocab_size: int) -> None:
    """Raise ``InvalidRequest`` if ``logit_bias`` names a token the model's logits do not have."""
    unknown = sorted(token for token, _ in sampling.logit_bias if token >= vocab_size)
    if unknown:
        raise InvalidRequest(
            f"logit_bias names token ids the model does not have (its ids are 0 to {vocab_size - 1}): "
            f"{', '.join(map(str, unknown[:5]))}.",
            param="logit_bias",
        )


def checkpoint_defaults(generation_config: Any) -> SamplingDefaults:
    """The defaults a checkpoint's ``generation_config`` recommends; unusable values are logged, skipped."""
    if generation_config is None:
        return SamplingDefaults()
    found: dict[str, Number] = {}
    if getattr(generation_config, "do_sample", None) is True:
        temperature = getattr(generation_config, "temperature", None)
        found["temperature"] = 1.0 if temperature is None else temperature  # generate()'s own default
    for name in _FROM_CHECKPOINT:
        value = getattr(generation_config, name, None)
        if value is not None:
            found[name] = value
    usable: dict[str, Number] = {}
    for name, value in found.items():
        valid, rule = _LIMITS[name]
        if isinstance(value, int | float) and not isinstance(value, bool) and valid(value):
            usable[name] = value if name == "top_k" else float(value)
        else:
            logger.warning("ignoring the checkpoint's %s=%r: it must be %s", name, value, rule)
    return SamplingDefaults(**usable)  # type: ignore[arg-type]
