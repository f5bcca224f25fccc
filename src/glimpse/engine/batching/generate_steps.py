"""Any image-text-to-text model, one sequence at a time through ``model.generate()``.

Models the mixed-step runner does not know (anything but GLM-4.xV) are served by
this ``StepRunner``: one slot, and a "step" that is the slot's whole generation,
its tokens streamed to the scheduler as ``generate()`` makes them. The scheduler
still makes every decision: a token it says ended the sequence (end of sequence,
``max_new_tokens``, a stop string) or a cancellation stops ``generate()`` at the
next token, through a stopping criterion.

Sampling is ``generate()``'s own, from the checkpoint's ``generation_config``
with the request's settings written over it (``logit_bias`` as its
``sequence_bias``, which ``generate()`` applies first, as the batch does), plus
OpenAI's presence and frequency penalties, which transformers lacks, and a
structured-output grammar. Log-probabilities are read from the logits after all
of those, before the warpers, and scaled by the temperature: the batch's
definition (``logprobs``).
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Sequence
from typing import Any

import torch

from glimpse.engine.batching.image_keys import IMAGE_KEYS
from glimpse.engine.batching.interface import StepHost
from glimpse.engine.batching.logprobs import SampledLogprobs, token_logprobs
from glimpse.engine.batching.penalties import OpenAIPenalties
from glimpse.engine.batching.runner import generation_eos_ids
from glimpse.engine.batching.sequence import SequenceState
from glimpse.engine.grammar import GrammarLogitsProcessor
from glimpse.engine.lora.bank import LoraBank
from glimpse.engine.lora.layer import VisionRoutes
from glimpse.engine.protocol import FinishReason, SamplingDefaults, SamplingParams
from glimpse.errors import ModelNotFound

__all__ = ["GenerateSteps", "generation_config_for"]

logger = logging.getLogger(__name__)


def generation_config_for(base: Any, sampling: SamplingParams) -> Any:
    """``base`` (a model's ``generation_config``) with ``sampling`` written over it, each setting that acts.

    ``generate()`` fills a ``None`` from the model's config and then its own defaults
    (``top_k`` 50), so for a sampled request "off" is written as the value that turns
    each warper off; a greedy request runs no warper, and only its repetition penalty matters.
    """
    config = copy.deepcopy(base)
    sampling = sampling.resolved(SamplingDefaults())  # the engine has resolved it; neutral if not
    config.max_new_tokens = sampling.max_new_tokens
    config.min_new_tokens = sampling.max_new_tokens if sampling.ignore_eos else None
    config.do_sample = not sampling.greedy
    config.num_beams = 1
    config.repetition_penalty = float(sampling.repetition_penalty or 1.0)
    if sampling.logit_bias:
        config.sequence_bias = [[[token], bias] for token, bias in sampling.logit_bias]
    if sampling.greedy:  # the warpers do not run: whatever generate() fills in is unused
        config.temperature = config.top_p = config.top_k = config.min_p = None
    else:
        config.temperature = sampling.temperature
        config.top_p = sampling.top_p
        config.top_k = sampling.top_k
        config.min_p = sampling.min_p  # 0.0, not None: the checkpoint's own min_p must not come back
    return config


class _LogitsRecorder:
    """A ``generate()`` logits processor, last before the warpers: keeps the step's logits for the
    log-probabilities of the token ``generate()`` then picks from them."""

    def __init__(self, temperature: float, top: int) -> None:
        self._temperature = temperature
        self._top = top
        self._scores: torch.Tensor | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self._scores = scores.clone()
        return scores

    def logprobs(self, token_id: int) -> SampledLogprobs | None:
        if self._scores is None:
            return None
        return token_logprobs(self._scores[-1:], [self._temperature], [token_id], [self._top])[0]


class _Streamer:
    """``generate()`` streamer that hands each new token to the scheduler."""

    def __init__(self, seq: SequenceState, host: StepHost, recorder: _LogitsRecorder | None = None) -> None:
        self._seq = seq
        self._host = host
        self._recorder = recorder
        self._prompt_seen = False
        #: The scheduler ended the sequence (or it was cancelled): generate() must stop.
        self.ended = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:  # generate() first pushes the prompt
            self._prompt_seen = True
            return
        for token_id in value.reshape(-1).tolist():
            if self.ended:
                return
            self._seq.last_token = int(token_id)
            logprobs = None if self._recorder is None else self._recorder.logprobs(int(token_id))
            self.ended = self._host.accept(self._seq, int(token_id), logprobs)

    def end(self) -> None:
        return None


class _StopWhenEnded:
    """Stops ``generate()`` once the scheduler ended the sequence or the caller cancelled it."""

    def __init__(self, seq: SequenceState, host: StepHost, streamer: _Streamer) -> None:
        self._seq = seq
        self._host = host
        self._streamer = streamer

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        stop = self._streamer.ended or self._host.cancel_requested(self._seq)
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


class GenerateSteps:
    """A one-slot ``StepRunner`` over ``model.generate()``."""

    def __init__(
        self, model: Any, *, device: Any, dtype: Any, slot_tokens: int, lora: LoraBank | None = None
    ) -> None:
        self._model = model
        #: The LoRA adapters a sequence may run with (the whole ``generate()`` call uses its one).
        self.lora = lora
        self._device = device
        self._dtype = dtype
        self._slot_tokens = slot_tokens
        self._seq: SequenceState | None = None

    @property
    def eos_token_ids(self) -> frozenset[int]:
        """Read at each token, as ``generate()`` reads its config at each call."""
        return generation_eos_ids(self._model.generation_config)

    @property
    def slots(self) -> int:
        return 1

    @property
    def free_slots(self) -> int:
        return 0 if self._seq is not None else 1

    @property
    def slot_tokens(self) -> int:
        return self._slot_tokens

    def can_admit(self, seq: SequenceState, held_back: Sequence[str] = ()) -> bool:
        adapter = seq.request.adapter
        return adapter is None or self.lora is None or self.lora.can_acquire(adapter, held_back)

    def admit(self, seq: SequenceState) -> None:
        assert self._seq is None, "one sequence at a time"
        name = seq.request.adapter
        if name is not None:
            if self.lora is None:
                raise ModelNotFound(f"The LoRA adapter '{name}' is not served here.", param="model")
            seq.adapter_slot, _info = self.lora.acquire(name)
        seq.slot = 0
        self._seq = seq

    @property
    def caches_prefixes(self) -> bool:
        return False

    def release(self, seq: SequenceState, reusable: bool) -> None:
        if self._seq is seq:
            self._seq = None
        seq.slot = -1
        if seq.adapter_slot and self.lora is not None and seq.request.adapter is not None:
            self.lora.release(seq.request.adapter)
            seq.adapter_slot = 0

    def step(self, host: StepHost) -> int:
        seq = self._seq
        if seq is None:
            return 0
        try:
            self._generate(seq, host)
        except Exception as exc:  # noqa: BLE001 - one request failed; the engine carries on
            host.fail(seq, exc)
        return 1

    def _generate(self, seq: SequenceState, host: StepHost) -> None:
        inputs = {
            k: (v.to(self._device) if hasattr(v, "to") else v)
            for k, v in seq.request.inputs.items()
            if k != IMAGE_KEYS  # for the prefix cache; not a model input
        }
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self._dtype)
        sampling = seq.request.sampling
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        recorder = None
        if sampling.logprobs is not None:
            temperature = 1.0 if sampling.greedy or sampling.temperature is None else sampling.temperature
            recorder = _LogitsRecorder(temperature, sampling.logprobs)
        streamer = _Streamer(seq, host, recorder)
        processors = self._penalties(seq) + ([recorder] if recorder is not None else [])
        routed: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
        if self.lora is not None and seq.adapter_slot:
            routes = [(seq.adapter_slot, None)]
            routed = self.lora.routed(routes, routes, VisionRoutes.whole(seq.adapter_slot))
        with torch.inference_mode(), routed:
            self._model.generate(
                **inputs,
                generation_config=generation_config_for(self._model.generation_config, sampling),
                logits_processor=processors,
                streamer=streamer,
                stopping_criteria=[_StopWhenEnded(seq, host, streamer)],
            )
        if self._seq is seq and not streamer.ended and not host.cancel_requested(seq):
            # generate() stopped on its own (an end token outside our set, the model's max_length).
            host.end(seq, FinishReason.STOP)

    @staticmethod
    def _penalties(seq: SequenceState) -> list[Any]:
        """What ``generate()`` lacks: OpenAI's presence and frequency penalties, then the grammar."""
        presence = seq.request.sampling.presence_penalty or 0.0
        frequency = seq.request.sampling.frequency_penalty or 0.0
        processors: list[Any] = []
        if presence != 0.0 or frequency != 0.0:
            processors.append(OpenAIPenalties(seq.prompt_len, presence, frequency))
        if seq.request.constraint is not None:
            processors.append(GrammarLogitsProcessor(seq.request.constraint, seq.prompt_len))
        return processors
