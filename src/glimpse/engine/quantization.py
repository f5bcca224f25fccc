"""Weight-only quantization by torchao, applied while the model loads.

Only the language model's linear layers (and, by default, the LM head) are
quantized: they hold most of a VLM's weights, while the vision tower is small and
the embeddings are a lookup table that weight-only kernels do not speed up.
The layers are picked by name on a ``meta``-device copy of the model (no memory)
and handed to transformers' torchao integration as the list *not* to convert, so
each weight is quantized as it is read from the checkpoint: the full-precision
model never exists whole. The same integration writes and reads quantized
safetensors, so ``glimpse quantize`` output loads through ``from_pretrained`` alone.

Every check here fails before loading with one ``QuantizationUnsupported`` line
that names the option and what to do instead, never with a silent fallback to
full precision.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Literal

from glimpse.errors import QuantizationUnsupported

__all__ = [
    "METHODS",
    "Method",
    "checkpoint_quantization",
    "kept_modules",
    "check_supported",
    "loading_config",
    "require_fp8_hardware",
    "resident_weight_bytes",
    "torchao_config",
]

logger = logging.getLogger(__name__)

Method = Literal["none", "int8", "int4", "fp8"]
METHODS: tuple[Method, ...] = ("none", "int8", "int4", "fp8")

#: Where torchao comes from: the model extra installs it (scripts/install.sh does).
TORCHAO_HINT = "pip install 'torchao>=0.18,<0.19' (part of glimpse-serve[model])"
#: Int4 groups: the largest that divides a layer's input width is used.
_INT4_GROUP_SIZE = 128


def _require_torchao() -> None:
    try:
        import torchao  # noqa: F401
    except ModuleNotFoundError as exc:
        raise QuantizationUnsupported(
            f"--quantization needs torchao, which is not installed: {TORCHAO_HINT}; "
            "or serve without --quantization."
        ) from exc


def require_fp8_hardware(option: str, device: str, instead: str) -> None:
    """Refuse ``option`` in one line unless this is a CUDA GPU with fp8 hardware (compute capability
    8.9 or newer: Ada, Hopper); ``instead`` says what to do."""
    import torch

    if device != "cuda":
        raise QuantizationUnsupported(
            f"{option} needs a CUDA GPU with fp8 support (compute capability 8.9 or newer), "
            f"and the model runs on the CPU here; {instead}."
        )
    major, minor = torch.cuda.get_device_capability()
    if (major, minor) < (8, 9):
        raise QuantizationUnsupported(
            f"{option} needs a GPU of compute capability 8.9 or newer (Ada, Hopper); this "
            f"{torch.cuda.get_device_name()} is {major}.{minor}: {instead}."
        )


def check_supported(method: str, device: str, dtype: Any) -> None:
    """Refuse, in one line, a method this device, dtype or installation cannot run.

    fp8 wants a GPU with fp8 support (compute capability 8.9: Ada and Hopper). int4 on a
    GPU runs torchao's tinygemm kernel, which takes bfloat16 only; on the CPU it runs
    torchao's CPU int4 layout in float32 or bfloat16.
    """
    import torch

    if method not in METHODS:
        raise QuantizationUnsupported(
            f"--quantization {method!r} is not a method Glimpse knows; use one of {', '.join(METHODS)}."
        )
    if method == "none":
        return
    _require_torchao()
    if method == "fp8":
        require_fp8_hardware("--quantization fp8", device, "use --quantization int8 (or int4)")
    if method == "int4" and device == "cuda" and dtype != torch.bfloat16:
        raise QuantizationUnsupported(
            f"--quantization int4 on a GPU computes in bfloat16 only, and --dtype is {dtype}; "
            "use --dtype bfloat16 (or auto), or --quantization int8."
        )


def torchao_config(method: str, device: str) -> Any:
    """The torchao config for a method: weight-only, per output row (int8, fp8) or per group (int4).

    ``set_inductor_config=False``: torchao otherwise changes torch.compile's global
    settings, which nothing here compiles with.
    """
    from torchao.quantization import Float8WeightOnlyConfig, Int4WeightOnlyConfig, Int8WeightOnlyConfig

    if method == "int8":
        return Int8WeightOnlyConfig(set_inductor_config=False)
    if method == "fp8":
        return Float8WeightOnlyConfig(set_inductor_config=False)
    if method == "int4":
        if device == "cpu":  # the tinygemm layout packs on CUDA only; this one has a CPU kernel
            from torchao.prototype.quantization.int4.inference_workflow import PrototypeInt4WeightOnlyConfig

            return PrototypeInt4WeightOnlyConfig(group_size=_INT4_GROUP_SIZE, set_inductor_config=False)
        return Int4WeightOnlyConfig(
            group_size=_INT4_GROUP_SIZE, int4_packing_format="tile_packed_to_4d", set_inductor_config=False
        )
    raise QuantizationUnsupported(f"--quantization {method!r} has no torchao config; use int8, int4 or fp8.")


def _language_model(model: Any) -> Any:
    inner = getattr(model, "model", model)
    language = getattr(inner, "language_model", None)
    if language is None and hasattr(model, "get_decoder"):
        language = model.get_decoder()
    if language is None:
        raise QuantizationUnsupported(
            f"--quantization could not find the language model inside {type(model).__name__}; "
            "serve this model without --quantization."
        )
    return language


def kept_modules(model: Any, *, lm_head: bool, vision: bool) -> list[str]:
    """Names of every linear and embedding layer to leave in full precision."""
    import torch

    language_ids = {id(m) for m in _language_model(model).modules()}
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is getattr(model.get_input_embeddings(), "weight", None)
    kept = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Embedding):
            kept.append(name)
        elif isinstance(module, torch.nn.Linear):
            quantized = (lm_head and not tied) if module is head else (id(module) in language_ids or vision)
            if not quantized:
                kept.append(name)
    return kept


def loading_config(
    source: str,
    method: str,
    device: str,
    *,
    lm_head: bool = True,
    vision: bool = False,
    trust_remote_code: bool = False,
) -> Any:
    """A ``TorchAoConfig`` for ``from_pretrained`` that quantizes exactly the chosen layers.

    The layer names come from the model built on the ``meta`` device, which costs no
    memory. transformers matches ``modules_to_not_convert`` as regular expressions
    from the start of a weight's name, so names are escaped and end at a dot
    (``layers.1.`` must not also keep ``layers.10.``).
    """
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText, TorchAoConfig

    config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        skeleton = AutoModelForImageTextToText.from_config(config, trust_remote_code=trust_remote_code)
    kept = kept_modules(skeleton, lm_head=lm_head, vision=vision)
    return TorchAoConfig(
        quant_type=torchao_config(method, device),
        modules_to_not_convert=[re.escape(name) + r"\." for name in kept],
        include_input_output_embeddings=True,  # lets the LM head through; embeddings are in ``kept``
    )


def checkpoint_quantization(source: str, trust_remote_code: bool = False) -> str | None:
    """The method a pre-quantized checkpoint was written with (``None``: a full-precision one)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    quant = getattr(config, "quantization_config", None)
    if quant is None:
        return None
    if isinstance(quant, dict):
        method = str(quant.get("quant_method", "unknown"))
        kind = quant.get("quant_type", {})
        name = str(kind.get("default", {}).get("_type", "")) if isinstance(kind, dict) else str(kind)
    else:
        method = str(getattr(quant, "quant_method", "unknown"))
        name = type(getattr(quant, "quant_type", None)).__name__
    for bits in ("int8", "int4", "fp8"):
        if bits.replace("fp", "float") in name.lower():
            return bits
    return method


def resident_weight_bytes(model: Any) -> int:
    """Bytes the model's parameters and buffers hold, quantized tensors at their real storage.

    A torchao weight is a tensor subclass whose own ``nbytes`` reports the logical
    full-precision size; its storage is the inner tensors ``__tensor_flatten__``
    names (int8 data and scales, packed int4 data, ...). Shared (tied) weights count once.
    """
    seen: set[int] = set()
    total = 0
    for tensor in (*model.parameters(), *model.buffers()):
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        total += _storage_bytes(tensor)
    return total


def _storage_bytes(tensor: Any) -> int:
    flatten = getattr(tensor, "__tensor_flatten__", None)
    if flatten is None:  # a plain tensor (Parameter included)
        return int(tensor.nbytes)
    names, _ = flatten()
    return sum(_storage_bytes(getattr(tensor, name)) for name in names)
