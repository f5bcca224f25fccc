"""Which GPU fits GLM-4.6V-Flash with which weights, and how many 1024² requests its KV cache holds.

Usage: python bench/gpu_sizing.py [--max-seq-len 2048] [--prefill 2048] [--context-gib 1.0]

Computed, not measured on a GPU: for each card and weight format, the memory left
after the CUDA context and the resident weights is split as the server's batch
sizing splits it at start-up on a GPU with CUDA graphs on
(``glimpse.engine.batching.sizing``): 10 % kept back, one step's activations (the
reserve ``size_batch`` computes), and what is left becomes KV-cache slots of
``--max-seq-len`` tokens each, one slot per running request (256 at most unless
``max_batch_size`` says more). The fp8-KV column keeps the bf16 activation reserve:
an fp8 cache halves the bytes per token, not the activations.

The KV bytes per token come from the real GLM-4.6V-Flash architecture (the config
``glimpse make-tiny-model --full-size`` builds, on the ``meta`` device: no memory):
layers × KV heads × head dim × 2 (keys and values) × bytes per element. The weight
bytes are the resident sizes bench/quantized_memory.py measured (README, *Quantized
memory benchmark*); bfloat16 is computed from the parameter count. A 1024² image is
as many tokens as GLM-4.6V's image processor makes of it (``smart_resize``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch

from glimpse.engine.batching import sizing
from glimpse.engine.batching.kv_cache import CacheGeometry
from glimpse.engine.batching.sizing import size_batch

GIB = 2**30
#: Card memory as ``nvidia-smi`` reports it, about (GiB): a "16 GB" card holds 16 GiB.
CARDS = (
    ("16 GB (RTX 4060 Ti 16 GB, 4080, A4000)", 16.0),
    ("24 GB (RTX 3090, 4090, A5000, L4)", 24.0),
    ("48 GB (RTX 6000 Ada, A6000, L40S)", 48.0),
    ("80 GB (H100, A100 80 GB)", 80.0),
)
#: Resident weight bytes measured by bench/quantized_memory.py on the full-size architecture
#: (README: int8 11.00 GiB, int4 7.16 GiB; the vision tower and embeddings in bfloat16).
MEASURED_WEIGHTS_GIB = {"int8": 11.00, "int4": 7.16}


def full_size_model() -> Any:
    """GLM-4.6V-Flash's architecture on the ``meta`` device (shapes only)."""
    from transformers import AutoModelForImageTextToText, Glm46VConfig

    from glimpse.engine.tiny_model import _FULL_TEXT_CONFIG

    config = Glm46VConfig(text_config=dict(_FULL_TEXT_CONFIG))
    with torch.device("meta"):
        return AutoModelForImageTextToText.from_config(config)


def image_tokens(side: int) -> int:
    """Tokens GLM-4.6V's image processor makes of a ``side``² image (28-pixel cells after merging)."""
    from transformers.models.glm4v.image_processing_glm4v import smart_resize

    height, width = smart_resize(2, side, side, max_pixels=28 * 28 * 15000)
    return int(height // 28) * int(width // 28)


def geometry(model: Any, dtype: torch.dtype) -> CacheGeometry:
    attn = model.model.language_model.layers[0].self_attn
    return CacheGeometry(
        num_layers=len(model.model.language_model.layers),
        num_kv_heads=int(attn.config.num_key_value_heads),
        head_dim=int(attn.head_dim),
        dtype=dtype,
        device=torch.device("meta"),
    )


def reserve_bytes(model: Any, kv: CacheGeometry, args: argparse.Namespace) -> int:
    """One step's activation reserve as the server computes it (prefill budget, 256 rows, CUDA graphs)."""
    return size_batch(
        None,
        geometry=kv,
        model_config=model.config,
        max_seq_len=args.max_seq_len,
        prefill_tokens=args.prefill,
        free_bytes=1 << 50,
        cuda_graphs=True,
    ).reserve_bytes


def requests(free: int, reserve: int, kv_bytes_per_token: int, max_seq_len: int) -> str:
    """Slots that fit: ``(free × 0.9 − reserve) // (KV bytes per token × max_seq_len)``, as size_batch."""
    fits = max(0, int(free * (1 - sizing._HEADROOM)) - reserve) // (kv_bytes_per_token * max_seq_len)
    if fits > sizing.MAX_AUTO_BATCH:  # the server stops there unless GLIMPSE_ENGINE__MAX_BATCH_SIZE says more
        return f"{sizing.MAX_AUTO_BATCH} (cap; room for {fits})"
    return str(fits)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--max-seq-len", type=int, default=2048, help="Tokens per KV-cache slot.")
    parser.add_argument(
        "--prefill", type=int, default=2048, help="GLIMPSE_ENGINE__PREFILL_TOKENS_PER_STEP (activations)."
    )
    parser.add_argument(
        "--context-gib", type=float, default=1.0, help="CUDA context and library workspaces, not free."
    )
    args = parser.parse_args(argv)
    model = full_size_model()
    params = sum(p.numel() for p in model.parameters())
    weights = {"bf16 (computed)": params * 2 / GIB, **MEASURED_WEIGHTS_GIB}
    bf16_kv, fp8_kv = geometry(model, torch.bfloat16), geometry(model, torch.float8_e4m3fn)
    # The activations are in the model's dtype whatever the KV cache's: bf16 for both columns.
    reserve = reserve_bytes(model, bf16_kv, args)
    print(
        f"{params / 1e9:.2f} B parameters; KV per token: {bf16_kv.num_layers} layers x "
        f"{bf16_kv.num_kv_heads} KV heads x {bf16_kv.head_dim} x 2 (K, V) x 2 bytes = "
        f"{bf16_kv.bytes_per_token:,} bytes in bf16 "
        f"({fp8_kv.bytes_per_token:,} in fp8); a {args.max_seq_len}-token slot: "
        f"{bf16_kv.bytes_per_token * args.max_seq_len / 2**20:.0f} MiB in bf16; a 1024² image: "
        f"{image_tokens(1024):,} tokens; activation reserve (prefill {args.prefill} tokens, "
        f"{sizing.MAX_AUTO_BATCH} rows, CUDA graphs): {reserve / GIB:.2f} GiB; "
        f"CUDA context: {args.context_gib} GiB; {sizing._HEADROOM:.0%} of the rest kept back"
    )
    print(
        "| card | weights | left after context and weights | 1024² requests at once, KV bf16 "
        "| KV fp8 (halves KV bytes) |"
    )
    print("|---|---|---|---|---|")
    for label, card in CARDS:
        for name, gib in weights.items():
            free = int((card - args.context_gib - gib) * GIB)
            if free <= 0:
                print(f"| {label} | {name} {gib:.2f} GiB | - | does not load | does not load |")
                continue
            cells = [
                requests(free, reserve, kv.bytes_per_token, args.max_seq_len) for kv in (bf16_kv, fp8_kv)
            ]
            print(f"| {label} | {name} {gib:.2f} GiB | {free / GIB:.2f} GiB | {cells[0]} | {cells[1]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
