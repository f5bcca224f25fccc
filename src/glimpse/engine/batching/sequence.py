"""One request inside the continuous batcher, from the queue to its last token."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from glimpse.engine.batching.interface import SequenceRequest
from glimpse.engine.batching.prompt import PreparedPrompt, image_parts
from glimpse.engine.batching.runner import Chunk
from glimpse.engine.batching.sampling import SamplerState

__all__ = ["SequenceState"]


@dataclass(slots=True)
class SequenceState:
    """A request and where it is: waiting, prefilling chunk by chunk, or decoding."""

    request: SequenceRequest
    prompt_len: int
    enqueued_at: float
    #: Created on the engine thread at admission (its generator lives on the model's device).
    sampler: SamplerState = field(default_factory=SamplerState)
    #: Set at admission, with the cache slot.
    prompt: PreparedPrompt | None = None
    slot: int = -1
    #: Prompt tokens in the cache so far; the sequence decodes once all are.
    prefilled: int = 0
    #: Features of encoded images whose tokens are not all prefilled yet, by image index.
    features: dict[int, torch.Tensor] = field(default_factory=dict)
    last_token: int = -1
    positions: tuple[int, int, int] = (0, 0, 0)
    generated: int = 0
    #: The tokens generated so far (kept by runners that cache prefixes: they are part of one).
    generated_ids: list[int] = field(default_factory=list)
    #: Content hash of each of the prompt's images (set at admission when prefixes are cached).
    image_keys: list[bytes] = field(default_factory=list)
    #: The prefix cache's key of each whole block of the prompt (set with ``image_keys``).
    prompt_keys: list[bytes] = field(default_factory=list)
    #: Whole blocks its table got from the prefix cache at admission (shared, never written).
    hit_blocks: int = 0
    #: Blocks of its table registered in the prefix cache so far (the hit ones included).
    hashed_blocks: int = 0
    #: The LoRA layers' slot of its adapter (0: the base model), held from admission to release.
    adapter_slot: int = 0
    #: Starts its prefix-cache key chain: keys and values computed with one adapter are not another's.
    cache_salt: bytes = b""

    @property
    def seq_id(self) -> str:
        return self.request.seq_id

    @property
    def reserve(self) -> int:
        return self.prompt_len + self.request.sampling.max_new_tokens

    @property
    def decoding(self) -> bool:
        return self.prompt is not None and self.prefilled == self.prompt_len

    def chunk(self, count: int) -> Chunk:
        """The next ``count`` prompt tokens, with the features of the image tokens among them."""
        assert self.prompt is not None
        start, end = self.prefilled, self.prefilled + count
        return Chunk(
            slot=self.slot,
            token_ids=self.prompt.token_ids[start:end],
            positions=self.prompt.positions[:, start:end],
            images=image_parts(self.prompt, start, count, self.features),
            logits=end == self.prompt_len,
        )

    def prefilled_chunk(self, count: int) -> None:
        """Record ``count`` more prompt tokens in the cache; drop the features no chunk needs now."""
        assert self.prompt is not None
        self.prefilled += count
        for index in [i for i in self.features if self.prompt.images[i].end <= self.prefilled]:
            del self.features[index]
        if self.decoding:
            self.positions = self.prompt.next_positions
