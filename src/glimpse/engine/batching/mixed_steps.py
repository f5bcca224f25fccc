"""GLM-4.xV's steps: every decoding sequence's next token and a budget of prompt chunks in one forward.

The scheduler (``scheduler.Scheduler``) decides who runs; this runner holds the
admitted sequences in slots of the paged KV cache (``kv_cache``, with the prefix
cache's shared blocks, ``prefix_cache``) and, each step,

1. plans the prefill: up to ``prefill_tokens_per_step`` prompt tokens, taken in
   admission order, a long prompt split across steps (``prompt.plan_chunk``),
2. encodes every image that this step's chunks reach in one vision-tower call,
3. runs one forward over the decode token of every decoding sequence and the
   planned chunks, packed ragged (``runner.Glm4vRunner.forward``),
4. samples each row (``sampling.sample_step``) and hands the tokens (and the log-probabilities
   of the rows that asked for them) to the host.

So a running stream waits at most one step's prefill budget for its next token,
however many prompts arrive. A step with no prefill and no prompt in progress
may replay a CUDA graph of the decode step instead (``cuda_graphs``: one per batch
bucket, attention paged by each row's length; padded to length buckets as a fallback).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections import deque
from collections.abc import Sequence
from typing import Any

import torch

from glimpse.engine.batching.cuda_graphs import DecodeGraphs
from glimpse.engine.batching.embedding_cache import embedding_cache_for
from glimpse.engine.batching.interface import BatcherConfig, BatchObserver, StepHost
from glimpse.engine.batching.kv_cache import PagedKVCache, kv_storage_dtype
from glimpse.engine.batching.prefix_cache import BLOCK_TOKENS, PrefixCache, block_keys
from glimpse.engine.batching.prompt import plan_chunk
from glimpse.engine.batching.runner import Chunk, Glm4vRunner
from glimpse.engine.batching.sampling import Sampled, SamplerState, sample_step
from glimpse.engine.batching.sequence import SequenceState
from glimpse.engine.batching.sizing import size_batch
from glimpse.engine.lora.bank import LoraBank
from glimpse.engine.lora.layer import Route
from glimpse.engine.sampling_config import check_vocabulary
from glimpse.errors import ModelNotFound

__all__ = ["MixedSteps"]

logger = logging.getLogger(__name__)

#: A prompt's share of one step: the sequence, its tokens to prefill, its images to encode first.
_Planned = tuple[SequenceState, int, list[int]]


class MixedSteps:
    """A ``StepRunner`` for GLM-4.xV models: slots in one ``PagedKVCache``, mixed prefill + decode steps."""

    def __init__(
        self,
        model: Any,
        config: BatcherConfig,
        *,
        eos_token_ids: frozenset[int] | None = None,
        observer: BatchObserver | None = None,
        lora: LoraBank | None = None,
    ) -> None:
        #: The LoRA adapters sequences may run with, each row its own (``None``: base model only).
        self.lora = lora
        self._observer = observer
        self.runner = Glm4vRunner(model, embedding_cache_for(config, observer))
        if lora is not None:
            self.runner.vision_router = lora.vision_routed
        geometry = self.runner.geometry(kv_storage_dtype(config.kv_cache_dtype))
        free_bytes = torch.cuda.mem_get_info(geometry.device)[0] if geometry.device.type == "cuda" else None
        self.size = size_batch(
            config.max_batch_size,
            geometry=geometry,
            model_config=model.config,
            max_seq_len=config.max_seq_len,
            prefill_tokens=config.prefill_tokens_per_step,
            free_bytes=free_bytes,
            cuda_graphs=config.cuda_graphs,
        )
        config = dataclasses.replace(config, max_batch_size=self.size.slots)
        self.config = config
        on_evict = observer.on_prefix_evictions if observer is not None and config.prefix_cache else None
        self.cache = PagedKVCache(geometry, self.size.slots, config.max_seq_len, on_evict)
        #: Decode steps replayed as CUDA graphs (GPU only, when configured); ``None`` runs them eagerly.
        self.graphs: DecodeGraphs | None = None
        if config.cuda_graphs and self.runner.device.type == "cuda":
            self.graphs = DecodeGraphs(self.runner, self.cache, kv_bucket=config.kv_bucket)
            self.graphs.capture_all()
        self.eos_token_ids = self.runner.eos_token_ids() if eos_token_ids is None else eos_token_ids
        #: The index of blocks by prefix (``prefix_cache``); ``None`` when off.
        self.prefix: PrefixCache | None = PrefixCache(self.cache) if config.prefix_cache else None
        self._by_slot: list[SequenceState] = []  # index == cache slot; prefilling ones included
        self._prefilling: deque[SequenceState] = deque()  # admitted, prompt not all in the cache; FIFO
        logger.info(
            "continuous batcher: %d slots (%s) of %d tokens, %.1f MiB of KV cache in %d blocks (%s), "
            "%.1f MiB kept for a step's activations; %s tokens in flight",
            self.size.slots,
            self.size.reason,
            config.max_seq_len,
            self.cache.nbytes / 2**20,
            self.cache.num_blocks,
            str(geometry.stored_dtype).removeprefix("torch."),
            self.size.reserve_bytes / 2**20,
            config.max_tokens_in_flight or "every slot's",
        )

    @property
    def slots(self) -> int:
        return self.size.slots

    @property
    def kv_cache_bytes(self) -> int:
        """Bytes of the preallocated KV blocks (reported by the engine's health and ``/metrics``)."""
        return self.cache.nbytes

    @property
    def free_slots(self) -> int:
        return self.cache.free

    @property
    def slot_tokens(self) -> int:
        return self.config.max_seq_len

    @property
    def caches_prefixes(self) -> bool:
        return self.prefix is not None

    def can_admit(self, seq: SequenceState, held_back: Sequence[str] = ()) -> bool:
        adapter = seq.request.adapter
        return adapter is None or self.lora is None or self.lora.can_acquire(adapter, held_back)

    def admit(self, seq: SequenceState) -> None:
        request = seq.request
        # The engine refuses these first; an id beyond the logits here would fail the whole step.
        check_vocabulary(request.sampling, self.runner.vocab_size)
        seq.sampler = SamplerState.create(request.sampling, request.inputs["input_ids"], request.constraint)
        seq.prompt = prompt = self.runner.prepare(seq.request.inputs)
        self._acquire_adapter(seq)
        if self.prefix is None:
            seq.slot = self.cache.allocate()
        else:
            seq.image_keys = [image.key for image in prompt.images]
            ids = prompt.token_ids.tolist()
            seq.prompt_keys = block_keys(prompt, seq.image_keys, ids, salt=seq.cache_salt)
            seq.slot, seq.prefilled = self.prefix.admit(seq.prompt_keys, seq.prompt_len)
            seq.hit_blocks = seq.hashed_blocks = seq.prefilled // BLOCK_TOKENS
            self._report_blocks()
        self._by_slot.append(seq)
        self._prefilling.append(seq)

    def release(self, seq: SequenceState, reusable: bool) -> None:
        """Free the slot and its hold on its blocks, moving the last slot's sequence into it (slots
        stay ``0 .. n-1``). With the prefix cache, its full blocks are registered first (they stay
        cached once nobody holds them), or, if it failed, those it registered are dropped."""
        if self.prefix is not None and seq.prompt is not None:
            if reusable:
                length = self.cache.length(seq.slot)
                held = (seq.prompt.token_ids.tolist() + seq.generated_ids)[:length]
                known = seq.prompt_keys[: length // BLOCK_TOKENS]  # the prompt's blocks: hashed at admission
                keys = block_keys(seq.prompt, seq.image_keys, held, known, seq.cache_salt)
                self.prefix.register(seq.slot, keys, seq.hashed_blocks)
            else:
                self.prefix.forget(seq.slot, seq.hit_blocks)
        moved_from = self.cache.release(seq.slot)
        if self.prefix is not None:
            self._report_blocks()
        last = self._by_slot.pop()
        if moved_from is not None:
            last.slot = seq.slot
            self._by_slot[seq.slot] = last
        seq.slot = -1
        if not seq.decoding:
            self._prefilling.remove(seq)
        seq.features.clear()
        if seq.adapter_slot and self.lora is not None and seq.request.adapter is not None:
            self.lora.release(seq.request.adapter)
            seq.adapter_slot = 0

    def _report_blocks(self) -> None:
        if self._observer is not None and self.prefix is not None:
            self._observer.on_prefix_blocks(self.prefix.shared_blocks, self.prefix.entries)

    def _acquire_adapter(self, seq: SequenceState) -> None:
        """Hold the sequence's adapter in the LoRA layers until ``release``; refused if none is served."""
        name = seq.request.adapter
        if name is None:
            return
        if self.lora is None:
            raise ModelNotFound(f"The LoRA adapter '{name}' is not served here.", param="model")
        seq.adapter_slot, info = self.lora.acquire(name)
        seq.cache_salt = info.digest.encode()

    def _routes(
        self, decoding: list[SequenceState], chunks: list[tuple[SequenceState, Chunk]]
    ) -> tuple[list[Route], list[Route]]:
        """Which rows of this step use which adapter, as the forward packs them: the tokens (decode
        rows first, then each chunk's), and the LM head's rows (decode rows, then each chunk that
        ends its prompt). Empty when no row has an adapter."""
        if self.lora is None or not any(s.adapter_slot for s in [*decoding, *(s for s, _ in chunks)]):
            return [], []
        rows: dict[int, list[int]] = {}
        head: dict[int, list[int]] = {}
        for index, seq in enumerate(decoding):
            if seq.adapter_slot:
                rows.setdefault(seq.adapter_slot, []).append(index)
                head.setdefault(seq.adapter_slot, []).append(index)
        offset, logit_row = len(decoding), len(decoding)
        for seq, chunk in chunks:
            count = int(chunk.token_ids.shape[0])
            if seq.adapter_slot:
                rows.setdefault(seq.adapter_slot, []).extend(range(offset, offset + count))
                if chunk.logits:
                    head.setdefault(seq.adapter_slot, []).append(logit_row)
            offset += count
            logit_row += int(chunk.logits)
        if len(rows) == 1 and len(next(iter(rows.values()))) == offset:  # one adapter for every row
            slot = next(iter(rows))
            return [(slot, None)], [(slot, None)]
        device = self.runner.device

        def tensors(by_slot: dict[int, list[int]]) -> list[Route]:
            return [(slot, torch.tensor(at, dtype=torch.long, device=device)) for slot, at in by_slot.items()]

        return tensors(rows), tensors(head)

    def _plan_prefill(self) -> list[_Planned]:
        """Each prefilling prompt's chunk in this step, oldest first, within the token budget."""
        left = self.config.prefill_tokens_per_step
        planned: list[_Planned] = []
        for seq in self._prefilling:
            if left <= 0:
                break
            assert seq.prompt is not None
            count, images = plan_chunk(seq.prompt, seq.prefilled, seq.features, left, alone=not planned)
            if count or images:
                planned.append((seq, count, images))
                left -= count + sum(seq.prompt.images[i].length for i in images)
        return planned

    def _encode_images(self, planned: list[_Planned], host: StepHost) -> list[_Planned]:
        """Encode this step's images in one vision-tower call; on failure, fail their sequences."""
        wanted = [(seq, index) for seq, _, images in planned for index in images]
        if not wanted:
            return planned
        try:
            features = self.runner.encode_images(
                [seq.prompt.images[index] for seq, index in wanted if seq.prompt is not None],
                self._vision_adapters([seq for seq, _ in wanted]),
            )
        except Exception as exc:
            logger.exception("vision tower failed for %d images", len(wanted))
            failed = {id(seq) for seq, _ in wanted}
            for seq, _, _ in planned:
                if id(seq) in failed:
                    host.fail(seq, exc)
            return [plan for plan in planned if id(plan[0]) not in failed]
        for (seq, index), rows in zip(wanted, features, strict=True):
            seq.features[index] = rows
        return planned

    def _vision_adapters(self, seqs: list[SequenceState]) -> list[tuple[int, bytes]]:
        """Each image's LoRA slot for the vision tower and the salt of its embedding-cache key (its
        adapter's digest) when an adapter of these sequences changes the tower; else empty."""
        lora = self.lora
        if lora is None or not any(lora.changes_vision(seq.adapter_slot) for seq in seqs):
            return []
        return [
            (seq.adapter_slot, seq.cache_salt) if lora.changes_vision(seq.adapter_slot) else (0, b"")
            for seq in seqs
        ]

    def step(self, host: StepHost) -> int:
        planned = self._encode_images(self._plan_prefill(), host)
        chunks = [(seq, seq.chunk(count)) for seq, count, _ in planned if count]
        decoding = [seq for seq in self._by_slot if seq.decoding]
        if not decoding and not chunks:
            return 0  # this step only encoded images
        try:
            routes, head_routes = self._routes(decoding, chunks)
            if self.graphs is not None and not self._prefilling and not routes:
                # Decode only, every slot decoding (slots 0 .. n-1 in order), no adapter: the graph path.
                logits = self.runner.decode(
                    self.cache,
                    [seq.last_token for seq in decoding],
                    [seq.positions for seq in decoding],
                    kv_bucket=self.config.kv_bucket,
                    graphs=self.graphs,
                )
            else:
                logits = self._forward(decoding, chunks, routes, head_routes)
            sampled = decoding + [seq for seq, chunk in chunks if chunk.logits]
            result = sample_step(logits, [seq.sampler for seq in sampled])
        except Exception as exc:
            stepped = decoding + [seq for seq, _ in chunks]
            logger.exception("step failed for %d sequences", len(stepped))
            for seq in stepped:
                host.fail(seq, exc)
            return 0
        self._advance(decoding, chunks, sampled, result, host)
        return len(decoding)

    def _forward(
        self,
        decoding: list[SequenceState],
        chunks: list[tuple[SequenceState, Chunk]],
        routes: list[Route],
        head_routes: list[Route],
    ) -> torch.Tensor:
        """The packed forward, with each row's adapter when any row has one."""
        forward = functools.partial(
            self.runner.forward,
            self.cache,
            [seq.slot for seq in decoding],
            [seq.last_token for seq in decoding],
            [seq.positions for seq in decoding],
            [chunk for _, chunk in chunks],
        )
        if not routes or self.lora is None:
            return forward()
        with self.lora.routed(routes, head_routes):
            return forward()

    def _advance(
        self,
        decoding: list[SequenceState],
        chunks: list[tuple[SequenceState, Chunk]],
        sampled: list[SequenceState],
        result: Sampled,
        host: StepHost,
    ) -> None:
        """Move every stepped sequence on by what the step did, and hand out the sampled tokens."""
        for seq in decoding:
            seq.positions = (seq.positions[0] + 1, seq.positions[1] + 1, seq.positions[2] + 1)
        for seq, chunk in chunks:
            seq.prefilled_chunk(int(chunk.token_ids.shape[0]))
            if self.prefix is not None:  # its newly full prompt blocks: other prompts may share them now
                full = seq.prefilled // BLOCK_TOKENS
                self.prefix.register(seq.slot, seq.prompt_keys[:full], seq.hashed_blocks)
                seq.hashed_blocks = max(seq.hashed_blocks, full)
            if seq.decoding:
                self._prefilling.remove(seq)
        for seq, token, logprobs in zip(sampled, result.tokens, result.logprobs, strict=True):
            seq.last_token = token
            if self.prefix is not None:
                seq.generated_ids.append(token)
            host.accept(seq, token, logprobs)
