"""Model step functions for continuous batching: one-sequence prefill, batched decode.

Prefill runs the model's own ``forward`` on one prompt with exactly the inputs
``generate()`` builds for its first step (4-row M-RoPE position ids, the 2-D
attention mask, ``logits_to_keep=1``), so the prompt's keys/values and the first
token's logits are those of a single-request ``generate()``. The keys/values are
then copied into a slot of the ``SlotKVCache``.

Decode is our own forward over the model's modules and weights (embedding, the
model's rotary embedding, each decoder layer's norms, projections and MLP, final
norm, ``lm_head``), because the model's attention only knows a cache that grows
by concatenation. Only attention is ours: every running sequence writes its new
key/value into its slot, then one ``scaled_dot_product_attention`` call covers
the padded batch, with a boolean mask that hides each row's unused tail (the
query heads of one key/value group are laid out as query rows, so keys and values
are read in place, never repeated per head). That is
the same math as ``generate()``; it is not bit-identical, because a matrix
product over a batch of ``n`` rows does not round exactly like ``n`` products of
one row (BLAS picks other kernels), so logits differ in the last bits (~1e-7
relative in float32) and greedy tokens agree unless two logits tie to that
precision. Tests check token-for-token equality on the tiny model.

The decode math follows ``Glm4vTextDecoderLayer`` (GLM-4.1V / GLM-4.6V text
model: four RMS norms per layer, partial rotary, grouped-query attention); other
architectures need their own runner and are refused at construction.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F  # noqa: N812

from glimpse.engine.batching.kv_cache import CacheGeometry, SlotKVCache

if TYPE_CHECKING:
    from glimpse.engine.batching.cuda_graphs import DecodeGraphs
from glimpse.errors import ModelLoadError

__all__ = ["MODEL_INPUT_KEYS", "Glm4vRunner", "Prefill", "generation_eos_ids"]

#: The processor outputs that prefill passes to the model; anything else is ignored.
MODEL_INPUT_KEYS = (
    "input_ids",
    "attention_mask",
    "mm_token_type_ids",
    "pixel_values",
    "image_grid_thw",
    "pixel_values_videos",
    "video_grid_thw",
)

_LAYER_PARTS = (
    "input_layernorm",
    "post_self_attn_layernorm",
    "post_attention_layernorm",
    "post_mlp_layernorm",
    "mlp",
    "self_attn",
)

RotaryFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def generation_eos_ids(generation_config: Any) -> frozenset[int]:
    """End-of-sequence ids of a generation config, as ``generate()`` reads them (one id or a list)."""
    eos = getattr(generation_config, "eos_token_id", None)
    if eos is None:
        return frozenset()
    return frozenset([int(eos)] if isinstance(eos, int) else (int(t) for t in eos))


@dataclass(slots=True, frozen=True)
class Prefill:
    """One prompt after its forward pass."""

    logits: torch.Tensor  # [vocab], float32: the first generated token's logits
    kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer, [1, kv_heads, length, head_dim]
    length: int  # prompt tokens now in the cache
    next_positions: tuple[int, int, int]  # M-RoPE (t, h, w) position of the first generated token


class Glm4vRunner:
    """Runs prefill and decode steps of a GLM-4.xV ``...ForConditionalGeneration`` model.

    Not thread-safe: the engine thread owns it (and the model).
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        try:
            self._vlm = model.model
            text = self._vlm.language_model
            self._embed: torch.nn.Module = text.embed_tokens
            self._rotary: torch.nn.Module = text.rotary_emb
            self._norm: torch.nn.Module = text.norm
            self._layers: list[Any] = list(text.layers)
            self._lm_head: torch.nn.Module = model.lm_head
            self.text_config = text.config
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

    def geometry(self) -> CacheGeometry:
        return CacheGeometry(
            num_layers=len(self._layers),
            num_kv_heads=self._num_kv_heads,
            head_dim=self._head_dim,
            dtype=self.dtype,
            device=self.device,
        )

    def eos_token_ids(self) -> frozenset[int]:
        return generation_eos_ids(self.model.generation_config)

    @torch.inference_mode()
    def prefill(self, inputs: Mapping[str, torch.Tensor]) -> Prefill:
        """Forward one prompt (batch size 1) as ``generate()``'s first step does."""
        from transformers import DynamicCache

        batch = {k: v.to(self.device) for k, v in inputs.items() if k in MODEL_INPUT_KEYS and v is not None}
        input_ids = batch["input_ids"]
        if input_ids.dim() != 2 or input_ids.shape[0] != 1:
            raise ValueError(f"prefill takes one prompt, got input_ids of shape {tuple(input_ids.shape)}")
        attention_mask = batch.setdefault("attention_mask", torch.ones_like(input_ids))
        position_ids = self._prompt_position_ids(batch, attention_mask)
        out = self.model(
            **batch,
            position_ids=position_ids,
            past_key_values=DynamicCache(config=self.text_config),
            use_cache=True,
            logits_to_keep=1,
            return_dict=True,
        )
        kv = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        t, h, w = (int(p) + 1 for p in position_ids[1:, 0, -1].tolist())
        return Prefill(
            logits=out.logits[0, -1].to(dtype=torch.float32, copy=True),
            kv=kv,
            length=int(input_ids.shape[1]),
            next_positions=(t, h, w),
        )

    def _prompt_position_ids(
        self, batch: dict[str, torch.Tensor], attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """``[4, 1, length]``: text positions then M-RoPE (t, h, w), as ``generate()`` builds them."""
        text = attention_mask.long().cumsum(-1) - 1
        text = text.masked_fill(attention_mask == 0, 0)
        has_vision = batch.get("image_grid_thw") is not None or batch.get("video_grid_thw") is not None
        if has_vision and batch.get("mm_token_type_ids") is not None:
            vision, _ = self._vlm.get_rope_index(
                batch["input_ids"],
                mm_token_type_ids=batch["mm_token_type_ids"],
                image_grid_thw=batch.get("image_grid_thw"),
                video_grid_thw=batch.get("video_grid_thw"),
                attention_mask=attention_mask,
            )
        else:
            vision = text.unsqueeze(0).expand(3, -1, -1)
        return torch.cat([text[None, ...], vision], dim=0)

    @torch.inference_mode()
    def decode(
        self,
        cache: SlotKVCache,
        token_ids: Sequence[int],
        positions: Sequence[tuple[int, int, int]],
        kv_bucket: int = 1,
        graphs: DecodeGraphs | None = None,
    ) -> torch.Tensor:
        """One decode step for slots ``0 .. n-1``; returns their next-token logits ``[n, vocab]`` (float32).

        ``token_ids[i]`` is the last token of slot ``i`` and ``positions[i]`` its M-RoPE
        position. ``kv_bucket`` rounds the attended length up, so shapes repeat across
        steps (for compiled kernels and CUDA graphs); the mask hides the padding.
        With ``graphs`` (CUDA only), the step replays a captured graph when it can.
        """
        n = len(token_ids)
        lengths = cache.lengths()[:n]
        kv_len = min(cache.max_seq_len, -(-(max(lengths) + 1) // kv_bucket) * kv_bucket)
        logits = graphs.run(token_ids, positions, lengths, kv_len) if graphs is not None else None
        if logits is None:
            ids = torch.tensor(token_ids, dtype=torch.long, device=self.device)[:, None]
            mrope = torch.tensor(positions, dtype=torch.long, device=self.device).T[:, :, None]  # [3, n, 1]
            write_at = torch.tensor(lengths, dtype=torch.long, device=self.device)
            logits = self.decode_core(cache, ids, mrope, write_at, kv_len)
        cache.advance(n)
        return logits

    def decode_core(
        self,
        cache: SlotKVCache,
        ids: torch.Tensor,
        mrope: torch.Tensor,
        write_at: torch.Tensor,
        kv_len: int,
    ) -> torch.Tensor:
        """The step's tensor work only (no host sync, no Python state), so a CUDA graph can capture it.

        ``ids`` is ``[n, 1]``, ``mrope`` ``[3, n, 1]``, ``write_at`` ``[n]`` (each row's cache length).
        """
        mask = torch.arange(kv_len, device=write_at.device)[None, :] <= write_at[:, None]
        mask = mask[:, None, None, :]  # [n, 1, 1, kv_len]: row i sees its own tokens only
        hidden = self._embed(ids)
        cos, sin = self._rotary(hidden, mrope)
        for index, layer in enumerate(self._layers):
            residual = hidden
            hidden = layer.input_layernorm(hidden)
            hidden = self._attention(layer.self_attn, hidden, cos, sin, cache, index, write_at, kv_len, mask)
            hidden = residual + layer.post_self_attn_layernorm(hidden)
            residual = hidden
            hidden = layer.post_mlp_layernorm(layer.mlp(layer.post_attention_layernorm(hidden)))
            hidden = residual + hidden
        hidden = self._norm(hidden)
        logits: torch.Tensor = self._lm_head(hidden[:, -1, :])
        return logits.to(torch.float32)

    def _attention(
        self,
        attn: Any,
        hidden: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: SlotKVCache,
        layer: int,
        write_at: torch.Tensor,
        kv_len: int,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        n = hidden.shape[0]
        query = attn.q_proj(hidden).view(n, 1, -1, self._head_dim).transpose(1, 2)
        key = attn.k_proj(hidden).view(n, 1, -1, self._head_dim).transpose(1, 2)
        value = attn.v_proj(hidden).view(n, 1, -1, self._head_dim).transpose(1, 2)
        query, key = self._apply_rotary(query, key, cos, sin)
        cache.write_step(layer, key, value, write_at)
        keys, values = cache.view(layer, n, kv_len)
        # Grouped-query attention without repeating keys/values: the query heads that
        # share a key/value head become that head's "query rows" (one token, so no
        # causality among them). SDPA then reads each cached key/value once, and the
        # masked call stays on fused kernels (no ``enable_gqa`` + mask fallback).
        group = self._num_heads // self._num_kv_heads
        query = query.reshape(n, self._num_kv_heads, group, self._head_dim)
        out = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=self._scaling)
        out = out.reshape(n, 1, self._num_heads * self._head_dim)
        result: torch.Tensor = attn.o_proj(out)
        return result
