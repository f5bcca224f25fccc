"""Model steps for continuous batching: one packed forward over decode tokens and prefill chunks.

Every step is our own forward over the model's modules and weights (embedding,
the vision tower through the model's ``get_image_features``, the model's rotary
embedding, each decoder layer's norms, projections and MLP, final norm,
``lm_head``), because the model's own forward only knows a cache that grows by
concatenation, one batch row per sequence, padded to the longest. Here a step's
tokens are packed ragged into one row: the last token of every decoding sequence,
then a chunk of each prompt being prefilled (image features laid over their image
tokens' embeddings, as the model's ``masked_scatter`` does). Norms, projections
and MLP run once over the pack; only attention is per sequence
(``attention.ragged_attention``), against that sequence's blocks of the paged cache.

Prompt positions are the model's own M-RoPE ids (``prompt.prepare_prompt``), the
first generated token continues each axis by one, as ``generate()`` does. That
is the same math as ``generate()``, not bit-identical: products over a pack of
tokens do not round exactly like those of one prompt (BLAS picks other kernels),
so logits differ in the last bits (~1e-6 relative in float32) and greedy tokens
agree unless two logits tie to that precision. Tests check token-for-token
equality on the tiny model.

``decode``/``decode_core`` are the fixed-shape decode step that CUDA graphs replay
(``cuda_graphs``), for steps with no prefill: attention paged by each row's length
(``paged_attention``) or padded to a common length (``attention.padded_attention``).

The math follows ``Glm4vTextDecoderLayer`` (GLM-4.1V / GLM-4.6V text model: four
RMS norms per layer, partial rotary, grouped-query attention); other
architectures need their own runner and are refused at construction.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from glimpse.engine.batching.attention import Span, padded_attention, ragged_attention
from glimpse.engine.batching.kv_cache import CacheGeometry, PagedKVCache
from glimpse.engine.batching.paged_attention import DecodeMask, paged_decode_attention
from glimpse.engine.batching.prompt import ImageSpan, PreparedPrompt, prepare_prompt

if TYPE_CHECKING:
    from glimpse.engine.batching.cuda_graphs import DecodeGraphs
    from glimpse.engine.batching.embedding_cache import ImageEmbeddingCache
from glimpse.errors import ModelLoadError

__all__ = ["Chunk", "Glm4vRunner", "generation_eos_ids"]

_LAYER_PARTS = (
    "input_layernorm",
    "post_self_attn_layernorm",
    "post_attention_layernorm",
    "post_mlp_layernorm",
    "mlp",
    "self_attn",
)

RotaryFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]
#: ``(attention module, layer index, normed hidden) -> attention output``
AttendFn = Callable[[Any, int, torch.Tensor], torch.Tensor]
#: ``(each image's LoRA slot, each image's patch count) -> context of the vision-tower call``
VisionRouter = Callable[[Sequence[int], Sequence[int]], contextlib.AbstractContextManager[None]]


def generation_eos_ids(generation_config: Any) -> frozenset[int]:
    """End-of-sequence ids of a generation config, as ``generate()`` reads them (one id or a list)."""
    eos = getattr(generation_config, "eos_token_id", None)
    if eos is None:
        return frozenset()
    return frozenset([int(eos)] if isinstance(eos, int) else (int(t) for t in eos))


@dataclass(slots=True, frozen=True)
class Chunk:
    """Consecutive prompt tokens of one sequence, prefilled in a step after what its slot holds."""

    slot: int
    token_ids: torch.Tensor  # [count], long
    positions: torch.Tensor  # [3, count]: M-RoPE (t, h, w)
    #: ``(offset in the chunk, feature rows)`` laid over the embeddings of image tokens.
    images: Sequence[tuple[int, torch.Tensor]] = ()
    #: Return the logits of its last token (the chunk ends the prompt).
    logits: bool = False


class Glm4vRunner:
    """Runs the steps of a GLM-4.xV ``...ForConditionalGeneration`` model over a ``PagedKVCache``.

    Not thread-safe: the engine thread owns it (and the model).
    """

    def __init__(self, model: Any, embedding_cache: ImageEmbeddingCache | None = None) -> None:
        self.model = model
        #: Features of images seen before (``None``: every image goes through the vision tower).
        self.embedding_cache = embedding_cache
        try:
            self._vlm = model.model
            text = self._vlm.language_model
            self._embed: torch.nn.Module = text.embed_tokens
            self._rotary: torch.nn.Module = text.rotary_emb
            self._norm: torch.nn.Module = text.norm
            self._layers: list[Any] = list(text.layers)
            self._lm_head: torch.nn.Module = model.lm_head
            self.text_config = text.config
            self._image_token_id = int(model.config.image_token_id)
            self._merge_size = int(model.config.vision_config.spatial_merge_size)
        except AttributeError as exc:
            raise ModelLoadError(f"{type(model).__name__} is not supported by the batching engine") from exc
        if not self._layers or not all(hasattr(self._layers[0], part) for part in _LAYER_PARTS):
            raise ModelLoadError(f"{type(model).__name__}: unexpected decoder layer layout for batching")
        attn = self._layers[0].self_attn
        self._num_heads: int = attn.num_heads
        self._num_kv_heads: int = attn.num_key_value_heads
        self._head_dim: int = attn.head_dim
        self._scaling: float = attn.scaling
        # The rotary helper of the attention's own module, so we apply exactly its math.
        self._apply_rotary: RotaryFn = sys.modules[type(attn).__module__].apply_rotary_pos_emb
        first_param = next(model.parameters())
        self.device: torch.device = first_param.device
        self.dtype: torch.dtype = first_param.dtype
        #: Calls of the vision tower so far (one per step that encodes images not in the cache).
        self.vision_calls = 0
        #: Routes each image's patches to its LoRA slot around a vision-tower call (set by the
        #: steps when adapters are served: ``LoraBank.vision_routed``).
        self.vision_router: VisionRouter | None = None

    def geometry(self, storage: torch.dtype | None = None) -> CacheGeometry:
        """The cache this model's layers need; ``storage``: keep keys/values narrower (fp8)."""
        return CacheGeometry(
            num_layers=len(self._layers),
            num_kv_heads=self._num_kv_heads,
            head_dim=self._head_dim,
            dtype=self.dtype,
            device=self.device,
            storage=storage,
        )

    def eos_token_ids(self) -> frozenset[int]:
        return generation_eos_ids(self.model.generation_config)

    @property
    def vocab_size(self) -> int:
        """Token ids the logits cover (GLM's head is wider than its tokenizer)."""
        return int(self._lm_head.get_parameter("weight").shape[0])

    def prepare(self, inputs: Mapping[str, torch.Tensor]) -> PreparedPrompt:
        """A processor output (batch size 1) read for chunked prefill; ``ValueError`` if inconsistent."""
        return prepare_prompt(self._vlm, inputs, self._image_token_id, self._merge_size)

    @torch.inference_mode()
    def encode_images(
        self, images: Sequence[ImageSpan], adapters: Sequence[tuple[int, bytes]] = ()
    ) -> list[torch.Tensor]:
        """Image features ``[tokens, hidden]`` of each image: from the embedding cache, else from one
        vision-tower call over all the others.

        ``adapters``: each image's LoRA slot for the vision tower and what its cache key adds (the
        adapter's digest), when an adapter that changes the tower is among them (``vision_router``
        routes each image's patches to its slot); empty: the base tower for all.
        """
        slots = [slot for slot, _ in adapters] if adapters else [0] * len(images)

        def tower(at: Sequence[int]) -> list[torch.Tensor]:
            return self._vision_tower([images[i] for i in at], [slots[i] for i in at])

        if self.embedding_cache is None:
            return tower(range(len(images)))
        salts = [salt for _, salt in adapters] if adapters else [b""] * len(images)
        keys = [image.key + salt for image, salt in zip(images, salts, strict=True)]
        return self.embedding_cache.encode_keyed(keys, tower, self.device)

    def _vision_tower(self, images: Sequence[ImageSpan], slots: Sequence[int]) -> list[torch.Tensor]:
        """One vision-tower call over ``images`` (with each one's LoRA slot).

        The patches are concatenated as the processor does for a batch of images; the
        tower attends within each image only (by its grid), so each image's features
        are those of its own prompt's forward.
        """
        pixel_values = torch.cat([image.pixel_values for image in images]).to(self.device)
        grid = torch.stack([image.grid for image in images]).to(self.device)
        self.vision_calls += 1
        routed: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
        if self.vision_router is not None and any(slots):
            routed = self.vision_router(slots, [int(image.grid.prod()) for image in images])
        with routed:
            features = self._vlm.get_image_features(pixel_values, grid, return_dict=True).pooler_output
        dtype = self._embed.weight.dtype
        return [f.to(dtype) for f in features]

    @torch.inference_mode()
    def forward(
        self,
        cache: PagedKVCache,
        slots: Sequence[int],
        token_ids: Sequence[int],
        positions: Sequence[tuple[int, int, int]],
        chunks: Sequence[Chunk] = (),
    ) -> torch.Tensor:
        """One step: a decode token for each of ``slots``, then each prefill chunk.

        ``token_ids[i]`` is the last token of ``slots[i]`` and ``positions[i]`` its M-RoPE
        position. Gives the slots the blocks these tokens need, writes every token's key/value
        there and grows the slots.
        Returns float32 logits ``[len(slots) + chunks ending their prompt, vocab]``:
        the decode rows in order, then those chunks' last tokens.
        """
        spans, ids, mrope, placements, wanted = self._pack(cache, slots, token_ids, positions, chunks)
        for span in spans:
            cache.ensure(span.slot, span.cached + span.count)
        cache.sync()
        counts = torch.tensor([span.count for span in spans])
        total = int(counts.sum())
        write_slots = torch.repeat_interleave(torch.tensor([span.slot for span in spans]), counts)
        shift = torch.tensor([span.offset - span.cached for span in spans])
        write_at = torch.arange(total) - torch.repeat_interleave(shift, counts)
        where = cache.locate(write_slots.to(self.device), write_at.to(self.device))
        # Each sequence's table entries, looked up once for every layer.
        tables = [cache.blocks_of(span.slot, span.cached + span.count) for span in spans]

        hidden = self._embed(ids.to(self.device))
        for offset, rows in placements:
            hidden[offset : offset + rows.shape[0]] = rows
        hidden = hidden[None]  # [1, tokens, hidden]: one packed row
        cos, sin = self._rotary(hidden, mrope.to(self.device)[:, None, :])

        def attend(attn: Any, layer: int, normed: torch.Tensor) -> torch.Tensor:
            query, key, value = self._qkv(attn, normed, cos, sin)
            cache.write(layer, key[0].transpose(0, 1), value[0].transpose(0, 1), where)

            def read(index: int) -> tuple[torch.Tensor, torch.Tensor]:
                span = spans[index]
                return cache.read(layer, tables[index], span.cached + span.count)

            out = ragged_attention(query[0], spans, read, self._num_kv_heads, self._scaling)
            result: torch.Tensor = attn.o_proj(out.transpose(0, 1).reshape(1, total, -1))
            return result

        hidden = self._stack(hidden, attend)
        for span in spans:
            cache.grow(span.slot, span.count)
        picked = hidden[0, torch.tensor(wanted, dtype=torch.long, device=self.device)]
        logits: torch.Tensor = self._lm_head(self._norm(picked))
        return logits.to(torch.float32)

    @staticmethod
    def _pack(
        cache: PagedKVCache,
        slots: Sequence[int],
        token_ids: Sequence[int],
        positions: Sequence[tuple[int, int, int]],
        chunks: Sequence[Chunk],
    ) -> tuple[list[Span], torch.Tensor, torch.Tensor, list[tuple[int, torch.Tensor]], list[int]]:
        """Spans, token ids, positions ``[3, tokens]``, image placements and logit rows of a step."""
        n = len(slots)
        spans = [Span(slot, i, 1, cache.length(slot)) for i, slot in enumerate(slots)]
        id_parts = [torch.tensor(list(token_ids), dtype=torch.long)]
        position_parts = [torch.tensor(list(positions), dtype=torch.long).reshape(n, 3).T]
        placements: list[tuple[int, torch.Tensor]] = []
        wanted = list(range(n))
        offset = n
        for chunk in chunks:
            count = int(chunk.token_ids.shape[0])
            spans.append(Span(chunk.slot, offset, count, cache.length(chunk.slot)))
            id_parts.append(chunk.token_ids)
            position_parts.append(chunk.positions)
            placements.extend((offset + at, rows) for at, rows in chunk.images)
            offset += count
            if chunk.logits:
                wanted.append(offset - 1)
        return spans, torch.cat(id_parts), torch.cat(position_parts, dim=1), placements, wanted

    def _stack(self, hidden: torch.Tensor, attend: AttendFn) -> torch.Tensor:
        """The decoder layers (``Glm4vTextDecoderLayer.forward``) with ``attend`` for self-attention."""
        for index, layer in enumerate(self._layers):
            residual = hidden
            hidden = attend(layer.self_attn, index, layer.input_layernorm(hidden))
            hidden = residual + layer.post_self_attn_layernorm(hidden)
            residual = hidden
            hidden = layer.post_mlp_layernorm(layer.mlp(layer.post_attention_layernorm(hidden)))
            hidden = residual + hidden
        return hidden

    def _qkv(
        self, attn: Any, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rotated queries ``[b, heads, t, dim]``, keys and values ``[b, kv_heads, t, dim]`` of ``hidden``."""
        b, t, _ = hidden.shape
        query = attn.q_proj(hidden).view(b, t, -1, self._head_dim).transpose(1, 2)
        key = attn.k_proj(hidden).view(b, t, -1, self._head_dim).transpose(1, 2)
        value = attn.v_proj(hidden).view(b, t, -1, self._head_dim).transpose(1, 2)
        query, key = self._apply_rotary(query, key, cos, sin)
        return query, key, value

    @torch.inference_mode()
    def decode(
        self,
        cache: PagedKVCache,
        token_ids: Sequence[int],
        positions: Sequence[tuple[int, int, int]],
        kv_bucket: int = 1,
        graphs: DecodeGraphs | None = None,
    ) -> torch.Tensor:
        """A decode-only step for slots ``0 .. n-1`` on the fixed-shape path; logits ``[n, vocab]``.

        With ``graphs`` (CUDA graphs, or their path run eagerly) the step is theirs. Without, or
        for a shape they did not capture, it runs the padded path eagerly, the attended length
        rounded up to a multiple of ``kv_bucket``; the mask hides the padding.
        """
        n = len(token_ids)
        lengths = cache.lengths()[:n]
        for slot, length in enumerate(lengths):
            cache.ensure(slot, length + 1)
        cache.sync()
        logits = graphs.run(token_ids, positions, lengths) if graphs is not None else None
        if logits is None:
            needed = max(lengths) + 1
            kv_len = min(cache.max_seq_len, -(-needed // kv_bucket) * kv_bucket)
            ids = torch.tensor(token_ids, dtype=torch.long, device=self.device)[:, None]
            mrope = torch.tensor(positions, dtype=torch.long, device=self.device).T[:, :, None]  # [3, n, 1]
            write_at = torch.tensor(lengths, dtype=torch.long, device=self.device)
            logits = self.decode_core(cache, ids, mrope, write_at, kv_len)
        cache.advance(n)
        return logits

    def decode_core(
        self,
        cache: PagedKVCache,
        ids: torch.Tensor,
        mrope: torch.Tensor,
        write_at: torch.Tensor,
        attention: int | DecodeMask,
    ) -> torch.Tensor:
        """The fixed-shape step's tensor work only (no host sync, no Python state), for a CUDA graph.

        ``ids`` is ``[n, 1]``, ``mrope`` ``[3, n, 1]``, ``write_at`` ``[n]`` (each row's cache length).
        ``attention`` is the padded path's attended length, or the paged path's buffers (for
        these ``n`` rows), which the step fills from the device tables and ``write_at``.
        """
        n = ids.shape[0]
        hidden = self._embed(ids)
        cos, sin = self._rotary(hidden, mrope)
        where = cache.locate(torch.arange(n, device=write_at.device), write_at)
        if isinstance(attention, DecodeMask):
            attention.update(cache.tables, write_at + 1)

        def attend(attn: Any, layer: int, normed: torch.Tensor) -> torch.Tensor:
            query, key, value = self._qkv(attn, normed, cos, sin)
            cache.write(layer, key[:, :, 0], value[:, :, 0], where)
            if isinstance(attention, DecodeMask):
                keys, values = cache.keys[layer], cache.values[layer]
                out = paged_decode_attention(
                    query, keys, values, attention, self._num_kv_heads, self._scaling
                )
            else:
                keys, values = cache.view(layer, n, attention)
                out = padded_attention(query, keys, values, write_at, self._num_kv_heads, self._scaling)
            result: torch.Tensor = attn.o_proj(out)
            return result

        hidden = self._norm(self._stack(hidden, attend))
        logits: torch.Tensor = self._lm_head(hidden[:, -1, :])
        return logits.to(torch.float32)
