"""The scheduler and its step runners over an in-process transformers model, free of HTTP and asyncio.

A ``Scheduler`` is driven by the engine thread; ``submit``/``cancel`` may be
called from any thread, and results come back through each request's ``TokenSink``.
Its ``StepRunner`` is ``MixedSteps`` (continuous batching, GLM-4.xV) or
``GenerateSteps`` (any model, one at a time); ``ContinuousBatcher`` is the
scheduler over ``MixedSteps``.
"""

from glimpse.engine.batching.embedding_cache import (
    EmbeddingCacheObserver,
    ImageEmbeddingCache,
    embedding_cache_for,
)
from glimpse.engine.batching.generate_steps import GenerateSteps, generation_config_for
from glimpse.engine.batching.image_keys import image_key
from glimpse.engine.batching.interface import (
    BatcherConfig,
    BatcherStats,
    BatchObserver,
    SequenceRequest,
    StepHost,
    StepRunner,
    TokenSink,
)
from glimpse.engine.batching.kv_cache import CacheGeometry, PagedKVCache
from glimpse.engine.batching.logprobs import RowBias, SampledLogprobs, add_bias, token_logprobs
from glimpse.engine.batching.mixed_steps import MixedSteps
from glimpse.engine.batching.penalties import OpenAIPenalties, apply_penalties
from glimpse.engine.batching.prompt import ImageSpan, PreparedPrompt, plan_chunk
from glimpse.engine.batching.runner import Chunk, Glm4vRunner, generation_eos_ids
from glimpse.engine.batching.sampling import Sampled, SamplerState, draw_tokens, sample_step, sample_tokens
from glimpse.engine.batching.scheduler import ContinuousBatcher, Scheduler
from glimpse.engine.batching.warpers import RowWarp, filter_logits

__all__ = [
    "BatchObserver",
    "BatcherConfig",
    "BatcherStats",
    "CacheGeometry",
    "Chunk",
    "ContinuousBatcher",
    "GenerateSteps",
    "EmbeddingCacheObserver",
    "Glm4vRunner",
    "ImageEmbeddingCache",
    "ImageSpan",
    "MixedSteps",
    "OpenAIPenalties",
    "PreparedPrompt",
    "RowBias",
    "RowWarp",
    "Sampled",
    "SampledLogprobs",
    "SamplerState",
    "Scheduler",
    "SequenceRequest",
    "PagedKVCache",
    "StepHost",
    "StepRunner",
    "TokenSink",
    "add_bias",
    "apply_penalties",
    "draw_tokens",
    "embedding_cache_for",
    "filter_logits",
    "generation_config_for",
    "generation_eos_ids",
    "image_key",
    "plan_chunk",
    "sample_step",
    "sample_tokens",
    "token_logprobs",
]
