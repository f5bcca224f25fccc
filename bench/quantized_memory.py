"""Resident weight bytes of the full-size GLM-4.6V-Flash architecture, quantized layer by layer.

Usage:
    python bench/quantized_memory.py --quantization int8            # count, one layer at a time
    python bench/quantized_memory.py --quantization int4 --keep     # keep every quantized layer resident

The model (real GLM-4.6V-Flash sizes, about 10 B parameters) is built on the ``meta``
device, which holds no memory; then each module that owns weights (one linear layer,
one embedding, one norm) is materialised in bfloat16 on the CPU, filled with random
values, and quantized with the layer choice ``glimpse serve --quantization`` makes
(the language model's linear layers and the LM head; the vision tower and the
embeddings stay bfloat16). The full-precision model never exists whole, so the peak
RSS stays near the quantized size (``--keep``) or near one layer (the default, which
counts each layer's real storage and drops it, for machines with less memory than
the quantized model needs).

Printed: parameters, the bfloat16 size (computed), the resident bytes after
quantization per part and in all (summed from each tensor's real storage: int8 or
packed int4 data, scales and zero points), and the process's peak RSS from
``resource.getrusage`` with the mode it was measured in. It does not load from a
checkpoint and does not answer a request (on a 2-core CPU a 10 B model answers in minutes).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from typing import Any

import torch

from glimpse.engine.quantization import kept_modules, resident_weight_bytes, torchao_config


def _full_size_config() -> Any:
    from transformers import Glm46VConfig

    from glimpse.engine.tiny_model import _FULL_TEXT_CONFIG

    return Glm46VConfig(text_config=dict(_FULL_TEXT_CONFIG))


def _part(name: str) -> str:
    if name == "lm_head":
        return "lm head"
    if "visual" in name:
        return "vision tower"
    if "embed_tokens" in name:
        return "embeddings"
    if "language_model" in name:
        return "language model"
    return "other"


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def measure(method: str, keep: bool) -> dict[str, Any]:
    from torchao.quantization import quantize_
    from transformers import Glm46VForConditionalGeneration

    config = _full_size_config()
    with torch.device("meta"):
        model = Glm46VForConditionalGeneration(config).to(torch.bfloat16)
    kept = set(kept_modules(model, lm_head=True, vision=False)) if method != "none" else None
    quant = torchao_config(method, "cpu") if method != "none" else None
    generator = torch.Generator().manual_seed(0)
    parameters = sum(p.numel() for p in model.parameters())
    by_part: dict[str, int] = {}
    quantized_layers = 0
    started = time.monotonic()
    for name, module in list(model.named_modules()):
        own = list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))
        if not own:
            continue
        module.to_empty(device="cpu", recurse=False)
        with torch.no_grad():
            for tensor in (*module.parameters(recurse=False), *module.buffers(recurse=False)):
                if tensor.is_floating_point():
                    tensor.normal_(0.0, 0.02, generator=generator)
        if (
            quant is not None
            and kept is not None
            and isinstance(module, torch.nn.Linear)
            and name not in kept
        ):
            quantize_(module, quant, filter_fn=None)
            quantized_layers += 1
        size = resident_weight_bytes(_Own(module))
        by_part[_part(name)] = by_part.get(_part(name), 0) + size
        if not keep:
            module.to("meta")  # drop this layer's storage: only the count stays
    return {
        "parameters": parameters,
        "bf16_bytes": parameters * 2,
        "by_part": by_part,
        "resident_bytes": sum(by_part.values()),
        "quantized_layers": quantized_layers,
        "peak_rss_bytes": _peak_rss_bytes(),
        "seconds": time.monotonic() - started,
    }


class _Own(torch.nn.Module):
    """A view of one module's own weights only (its children are counted on their own)."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self._tensors = [*module.parameters(recurse=False), *module.buffers(recurse=False)]

    def parameters(self, recurse: bool = True) -> Any:
        return iter(self._tensors)

    def buffers(self, recurse: bool = True) -> Any:
        return iter(())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--quantization", choices=["none", "int8", "int4"], default="int8")
    parser.add_argument(
        "--keep", action="store_true", help="Keep every quantized layer resident (peak RSS = the model)."
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads.")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = measure(args.quantization, args.keep)
    gib = 2**30
    out = sys.stdout
    out.write(
        f"full-size GLM-4.6V-Flash architecture (random weights), quantization {args.quantization}, "
        f"{result['quantized_layers']} linear layers quantized, in {result['seconds']:.0f} s\n"
    )
    out.write(
        f"parameters: {result['parameters'] / 1e9:.2f} B; bfloat16: {result['bf16_bytes'] / gib:.2f} GiB\n"
    )
    for part, size in sorted(result["by_part"].items()):
        out.write(f"  {part}: {size / gib:.2f} GiB\n")
    out.write(
        f"resident weight bytes: {result['resident_bytes'] / gib:.2f} GiB ({result['resident_bytes']} B)\n"
    )
    mode = "every layer kept resident" if args.keep else "one layer resident at a time, the rest counted"
    out.write(f"peak RSS of this process: {result['peak_rss_bytes'] / gib:.2f} GiB ({mode})\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
