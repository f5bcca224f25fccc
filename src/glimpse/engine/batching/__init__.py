"""Continuous batching over an in-process transformers model, free of HTTP and asyncio.

``ContinuousBatcher`` is driven by the engine thread; ``submit``/``cancel`` may be
called from any thread, and results come back through each request's ``TokenSink``.
"""

from glimpse.engine.batching.interface import (
    BatcherConfig,
    BatcherStats,
    BatchObserver,
    SequenceRequest,
    TokenSink,
)
from glimpse.engine.batching.kv_cache import CacheGeometry, SlotKVCache
from glimpse.engine.batching.penalties import OpenAIPenalties, apply_penalties
from glimpse.engine.batching.runner import Glm4vRunner, Prefill, generation_eos_ids
from glimpse.engine.batching.sampling import SamplerState, draw_tokens, sample_tokens
from glimpse.engine.batching.scheduler import ContinuousBatcher
from glimpse.engine.batching.warpers import RowWarp, filter_logits

__all__ = [
    "BatchObserver",
    "BatcherConfig",
    "BatcherStats",
    "CacheGeometry",
    "ContinuousBatcher",
    "Glm4vRunner",
    "OpenAIPenalties",
    "Prefill",
    "RowWarp",
    "SamplerState",
    "SequenceRequest",
    "SlotKVCache",
    "TokenSink",
    "apply_penalties",
    "draw_tokens",
    "filter_logits",
    "generation_eos_ids",
    "sample_tokens",
]
