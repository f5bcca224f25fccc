"""What the continuous batcher takes in and reports out: requests, sinks, settings, observers.

Kept apart from the scheduler's logic so the engine can build requests and sinks
without reading how sequences are scheduled.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

import torch

from glimpse.config import EngineSettings
from glimpse.engine.batching.logprobs import SampledLogprobs
from glimpse.engine.grammar import TokenConstraint
from glimpse.engine.protocol import FinishReason, SamplingParams

if TYPE_CHECKING:
    from glimpse.engine.batching.sequence import SequenceState

__all__ = [
    "BatchObserver",
    "BatcherConfig",
    "BatcherStats",
    "SequenceRequest",
    "StepHost",
    "StepRunner",
    "TokenSink",
]


class TokenSink(Protocol):
    """Where a sequence's results go. Called on the engine thread: return quickly, never block."""

    def on_token(self, seq_id: str, token_id: int, logprobs: SampledLogprobs | None = None) -> bool:
        """One new token (end-of-sequence tokens included); return True to stop here (stop string).

        ``logprobs``: the token's log-probabilities, when the request asked for them (not for
        the end-of-sequence token that ends the answer).
        """
        ...

    def on_finish(self, seq_id: str, reason: FinishReason) -> None:
        """The sequence ended normally or was cancelled; no further calls follow."""
        ...

    def on_error(self, seq_id: str, error: BaseException) -> None:
        """The sequence failed (prefill error, queue timeout, decode failure); no further calls follow."""
        ...


@dataclass(slots=True, frozen=True)
class SequenceRequest:
    """One prompt, already through the processor (batch size 1), to generate from.

    ``sampling.stop`` is not used here: stop strings need detokenized text, so the
    sink matches them and returns True from ``on_token``. Nor is ``sampling.response_format``:
    ``constraint`` is its grammar, compiled before the request gets here.
    """

    seq_id: str
    inputs: Mapping[str, torch.Tensor]
    sink: TokenSink
    sampling: SamplingParams
    #: Structured output: the grammar the answer follows; it ends the sequence once complete.
    constraint: TokenConstraint | None = None
    #: The LoRA adapter this sequence runs with (``None``: the base model).
    adapter: str | None = None


@dataclass(slots=True, frozen=True)
class BatcherConfig:
    #: Sequences decoded together (KV-cache slots); None: sized from the machine (``sizing``).
    max_batch_size: int | None = 16
    #: Longest sequence (prompt + generated tokens) a cache slot holds.
    max_seq_len: int = 4096
    #: Most prompt + max_new_tokens reserved by running sequences together (None: slots only).
    max_tokens_in_flight: int | None = None
    #: Most requests waiting for a slot (beyond the free ones); then ``submit`` raises ``Overloaded``.
    #: None: unbounded.
    max_waiting: int | None = None
    queue_timeout_s: float | None = None
    #: Prompt tokens prefilled per step, in the same forward as every running sequence's next
    #: token; longer prompts are split across steps. An image counts its tokens once more in the
    #: step that encodes it.
    prefill_tokens_per_step: int = 8192
    #: The padded decode path (CUDA graphs) attends to a length rounded up to this, so shapes repeat.
    kv_bucket: int = 64
    #: Replay decode steps as CUDA graphs (on a CUDA device only).
    cuda_graphs: bool = False
    #: Index full KV blocks by their prefix, so prompts that start the same share them (``prefix_cache``).
    prefix_cache: bool = True
    #: Host memory for the vision tower's output of images seen before (0: no cache).
    image_embedding_cache_bytes: int = 0
    #: What the KV cache stores: "auto" (the model's dtype) or "fp8" (``kv_cache.FP8_KV_DTYPE``).
    #: Taken on any device, the CPU included (tests run an fp8 cache there): whether this
    #: machine should is decided from the settings before the model loads
    #: (``engine.kv_cache_dtype.check_kv_cache_dtype``), not here.
    kv_cache_dtype: Literal["auto", "fp8"] = "auto"

    @classmethod
    def from_settings(cls, settings: EngineSettings, max_seq_len: int) -> BatcherConfig:
        return cls(
            max_batch_size=settings.max_batch_size,
            max_seq_len=max_seq_len,
            max_tokens_in_flight=settings.max_tokens_in_flight,
            max_waiting=settings.max_queue,
            queue_timeout_s=settings.queue_timeout_s,
            prefill_tokens_per_step=settings.prefill_tokens_per_step,
            kv_bucket=settings.kv_bucket,
            cuda_graphs=settings.cuda_graphs,
            prefix_cache=settings.prefix_cache,
            image_embedding_cache_bytes=settings.image_embedding_cache_mb * 2**20,
            kv_cache_dtype=settings.kv_cache_dtype,
        )


@dataclass(slots=True, frozen=True)
class BatcherStats:
    waiting: int
    running: int
    free_slots: int
    reserved_tokens: int


class BatchObserver(Protocol):
    """Where the scheduler reports what the metrics need (called on the engine thread)."""

    def on_admit(self, queue_wait_s: float) -> None:
        """A sequence leaves the queue for a cache slot (prefill starts) after waiting ``queue_wait_s``."""

    def on_decode_step(self, batch_size: int) -> None:
        """One step decoded a token for ``batch_size`` sequences (prefill chunks not counted)."""

    def on_prefix_reuse(self, prompt_tokens: int, reused_tokens: int) -> None:
        """An admitted prompt of ``prompt_tokens`` found ``reused_tokens`` of them in the prefix cache."""

    def on_prefix_evictions(self, count: int) -> None:
        """``count`` cached KV blocks were taken back for new tokens (no never-cached block was free)."""

    def on_prefix_blocks(self, shared: int, cached: int) -> None:
        """After an admission or a release: KV blocks held by several sequences, and blocks in the
        prefix cache's index."""

    def on_image_embeddings(self, hits: int, misses: int, evictions: int) -> None:
        """A step's images: found in the embedding cache, run through the vision tower, entries dropped."""


class StepHost(Protocol):
    """What a ``StepRunner`` reports back to the scheduler during a step (engine thread)."""

    def accept(self, seq: SequenceState, token_id: int, logprobs: SampledLogprobs | None = None) -> bool:
        """One new token of ``seq`` (with its log-probabilities if the request asked for them);
        True when that ended the sequence (the runner stops feeding it)."""
        ...

    def fail(self, seq: SequenceState, error: BaseException) -> None:
        """``seq`` failed on its own (its images, its prompt); the others in the step carry on."""
        ...

    def end(self, seq: SequenceState, reason: FinishReason) -> None:
        """The model stopped ``seq`` for a reason the scheduler did not decide (``generate()``'s own)."""
        ...

    def cancel_requested(self, seq: SequenceState) -> bool:
        """Whether the caller has cancelled ``seq`` since the step began (checked between tokens)."""
        ...


class StepRunner(Protocol):
    """How one model advances its sequences; the scheduler decides everything else.

    Queueing, admission (counted once), timeouts, cancellation, observer calls and
    the stop decisions (end of sequence, ``max_new_tokens``, stop strings) live in
    the scheduler; a runner only holds sequences in its slots and steps them.
    """

    @property
    def eos_token_ids(self) -> frozenset[int]:
        """Tokens that end a sequence (unless its sampling says ``ignore_eos``)."""
        ...

    @property
    def slots(self) -> int:
        """Sequences this runner holds at once."""
        ...

    @property
    def free_slots(self) -> int: ...

    @property
    def slot_tokens(self) -> int:
        """Most prompt + answer tokens one sequence may hold."""
        ...

    def can_admit(self, seq: SequenceState, held_back: Sequence[str] = ()) -> bool:
        """Whether ``seq`` may take a free slot now: its LoRA adapter can be made resident, without
        taking the slot promised to ``held_back``, the adapters of the sequences ahead of it that
        could not be admitted (queue order)."""
        ...

    def admit(self, seq: SequenceState) -> None:
        """Take ``seq`` into a free slot (prompt prepared here); raises if its prompt is unusable."""
        ...

    @property
    def caches_prefixes(self) -> bool:
        """Whether admission may find part of a prompt already in the cache (``seq.prefilled``)."""
        ...

    def release(self, seq: SequenceState, reusable: bool) -> None:
        """Free ``seq``'s slot (it finished, failed or was cancelled); ``reusable``: its keys and
        values are sound (it did not fail), so a prefix cache may keep them."""
        ...

    def step(self, host: StepHost) -> int:
        """Advance the held sequences by one step; returns how many decoded a token in it.

        Failures of some sequences go to ``host.fail``; an exception escaping here
        means the engine itself is broken, and every sequence is failed with it.
        """
        ...
