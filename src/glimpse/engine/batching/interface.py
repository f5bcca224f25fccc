"""What the continuous batcher takes in and reports out: requests, sinks, settings, observers.

Kept apart from the scheduler's logic so the engine can build requests and sinks
without reading how sequences are scheduled.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import torch

from glimpse.config import EngineSettings
from glimpse.engine.grammar import TokenConstraint
from glimpse.engine.protocol import FinishReason, SamplingParams

__all__ = ["BatchObserver", "BatcherConfig", "BatcherStats", "SequenceRequest", "TokenSink"]


class TokenSink(Protocol):
    """Where a sequence's results go. Called on the engine thread: return quickly, never block."""

    def on_token(self, seq_id: str, token_id: int) -> bool:
        """One new token (end-of-sequence tokens included); return True to stop here (stop string)."""
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


@dataclass(slots=True, frozen=True)
class BatcherConfig:
    max_batch_size: int = 16
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
