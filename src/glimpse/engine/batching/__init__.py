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
from glimpse.engine.batching.prompt import ImageSpan, PreparedPrompt, plan_chunk
from glimpse.engine.batching.runner import Chunk, Glm4vRunner, generation_eos_ids
from glimpse.engine.batching.sampling import SamplerState, sample_tokens, top_p_filter
from glimpse.engine.batching.scheduler import ContinuousBatcher

__all__ = [
    "BatchObserver",
    "BatcherConfig",
    "BatcherStats",
    "CacheGeometry",
    "Chunk",
    "ContinuousBatcher",
    "Glm4vRunner",
    "ImageSpan",
    "PreparedPrompt",
    "SamplerState",
    "SequenceRequest",
    "SlotKVCache",
    "TokenSink",
    "sample_tokens",
    "generation_eos_ids",
    "plan_chunk",
    "top_p_filter",
]
