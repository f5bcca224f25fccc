"""Continuous batching over an in-process transformers model, free of HTTP and asyncio.

``ContinuousBatcher`` is driven by the engine thread; ``submit``/``cancel`` may be
called from any thread, and results come back through each request's ``TokenSink``.
"""

from glimpse.engine.batching.embedding_cache import (
    EmbeddingCacheObserver,
    ImageEmbeddingCache,
    embedding_cache_for,
    image_key,
)
from glimpse.engine.batching.interface import (
    BatcherConfig,
    BatcherStats,
    BatchObserver,
    SequenceRequest,
    TokenSink,
)
from glimpse.engine.batching.kv_cache import CacheGeometry, SlotKVCache
from glimpse.engine.batching.penalties import OpenAIPenalties, apply_penalties
from glimpse.engine.batching.prompt import ImageSpan, PreparedPrompt, plan_chunk
from glimpse.engine.batching.runner import Chunk, Glm4vRunner, generation_eos_ids
from glimpse.engine.batching.sampling import SamplerState, draw_tokens, sample_tokens
from glimpse.engine.batching.scheduler import ContinuousBatcher
from glimpse.engine.batching.warpers import RowWarp, filter_logits

__all__ = [
    "BatchObserver",
    "BatcherConfig",
    "BatcherStats",
    "CacheGeometry",
    "Chunk",
    "ContinuousBatcher",
    "EmbeddingCacheObserver",
    "Glm4vRunner",
    "ImageEmbeddingCache",
    "ImageSpan",
    "OpenAIPenalties",
    "PreparedPrompt",
    "RowWarp",
    "SamplerState",
    "SequenceRequest",
    "SlotKVCache",
    "TokenSink",
    "apply_penalties",
    "draw_tokens",
    "embedding_cache_for",
    "filter_logits",
    "generation_eos_ids",
    "image_key",
    "plan_chunk",
    "sample_tokens",
]
