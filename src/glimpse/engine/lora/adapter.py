"""Read a PEFT LoRA adapter directory and check it against the model it is to be served on.

Only what the per-row serving path computes exactly as PEFT does is accepted:
plain LoRA (``lora_B(lora_A(x)) * scaling``, rsLoRA's scaling included) on linear
layers of the language model's decoder layers, its LM head and the vision tower,
weights in safetensors (a pickled ``adapter_model.bin`` could run code when
loaded). Everything else is refused with a message that names the adapter, what
is wrong and what to do, because the reader is an operator at a terminal or a
client of ``/v1/load_lora_adapter``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glimpse.errors import InvalidRequest

__all__ = ["AdapterError", "LoraAdapter", "base_names_match", "read_adapter"]

_CONFIG = "adapter_config.json"
_WEIGHTS = "adapter_model.safetensors"
_PREFIX = "base_model.model."
#: Options of PEFT's LoraConfig that change the math; any other value than these is refused.
_PLAIN = {
    "use_dora": False,
    "fan_in_fan_out": False,
    "bias": "none",
    "modules_to_save": None,
    "rank_pattern": {},
    "alpha_pattern": {},
    "layer_replication": None,
    "target_parameters": None,
    "use_qalora": False,
    "alora_invocation_tokens": None,
}


class AdapterError(InvalidRequest):
    """An adapter that cannot be served here: at start-up the server does not start (exit 2),
    at run time the load request gets 400."""

    code = "invalid_lora_adapter"


@dataclass(slots=True, frozen=True)
class LoraAdapter:
    """An adapter's weights, read to the CPU: ``module -> (A [r, in], B [out, r], scaling)``."""

    name: str
    path: Path
    rank: int
    base_model: str | None
    #: SHA-256 of the weights file: part of cache keys, so a reloaded name never serves old answers.
    digest: str
    weights: Mapping[str, tuple[Any, Any, float]]

    @property
    def modules(self) -> tuple[str, ...]:
        return tuple(self.weights)


def _config(name: str, path: Path) -> dict[str, Any]:
    file = path / _CONFIG
    if not path.is_dir():
        raise AdapterError(
            f"LoRA adapter '{name}': {path} is not a directory (expected a PEFT adapter folder)."
        )
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AdapterError(
            f"LoRA adapter '{name}': {path} has no {_CONFIG}; is it a PEFT adapter folder?"
        ) from None
    except (OSError, ValueError) as exc:
        raise AdapterError(f"LoRA adapter '{name}': {file} is unreadable or not JSON ({exc}).") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        kind = config.get("peft_type") if isinstance(config, dict) else None
        raise AdapterError(f"LoRA adapter '{name}': {file} is a {kind or 'non-PEFT'} config, not LoRA.")
    for option, plain in _PLAIN.items():
        value = config.get(option, plain)
        if (value != plain) if isinstance(plain, str) else bool(value):
            raise AdapterError(
                f"LoRA adapter '{name}': {option}={value!r} is not supported for serving (plain LoRA on "
                "linear layers only)."
            )
    return config


def _tensors(name: str, path: Path) -> tuple[dict[str, Any], str]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    file = path / _WEIGHTS
    if not file.is_file():
        hint = (
            " (adapter_model.bin is not read: convert it to safetensors)"
            if (path / "adapter_model.bin").exists()
            else ""
        )
        raise AdapterError(f"LoRA adapter '{name}': {path} has no {_WEIGHTS}{hint}.")
    try:
        data = file.read_bytes()
        tensors = load_file(str(file), device="cpu")
    except (OSError, SafetensorError, ValueError) as exc:
        raise AdapterError(f"LoRA adapter '{name}': {file} is corrupt or unreadable ({exc}).") from None
    return tensors, hashlib.sha256(data).hexdigest()


def _pairs(name: str, tensors: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``module -> {"A": tensor, "B": tensor}`` from PEFT's saved keys."""
    pairs: dict[str, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        module, _, part = key.removeprefix(_PREFIX).rpartition(".lora_")
        if part not in ("A.weight", "B.weight") or not module:
            raise AdapterError(
                f"LoRA adapter '{name}': weight {key!r} is not a LoRA A/B matrix of a linear layer "
                "(embeddings, biases and extra trained modules cannot be served)."
            )
        pairs.setdefault(module, {})[part[0]] = tensor
    for module, pair in pairs.items():
        if set(pair) != {"A", "B"}:
            raise AdapterError(f"LoRA adapter '{name}': {module} has only its lora_{''.join(pair)} weight.")
    if not pairs:
        raise AdapterError(f"LoRA adapter '{name}': the weights file holds no LoRA matrices.")
    return pairs


def read_adapter(name: str, path: Path, *, max_rank: int) -> LoraAdapter:
    """The adapter in ``path``, read and checked on its own (``check_against`` checks it fits the model)."""
    config = _config(name, path)
    rank = int(config.get("r", 0))
    alpha = float(config.get("lora_alpha", rank))
    if rank < 1:
        raise AdapterError(f"LoRA adapter '{name}': rank r={rank} in {_CONFIG} is not a positive number.")
    if rank > max_rank:
        raise AdapterError(
            f"LoRA adapter '{name}' has rank {rank}, above this server's limit of {max_rank} "
            "(raise GLIMPSE_ENGINE__MAX_LORA_RANK / --max-lora-rank to serve it)."
        )
    scaling = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    tensors, digest = _tensors(name, path)
    weights: dict[str, tuple[Any, Any, float]] = {}
    for module, pair in _pairs(name, tensors).items():
        a, b = pair["A"], pair["B"]
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != rank or b.shape[1] != rank:
            raise AdapterError(
                f"LoRA adapter '{name}': {module} has A {tuple(a.shape)} and B {tuple(b.shape)}, "
                f"which do not make a rank-{rank} pair."
            )
        weights[module] = (a, b, scaling)
    base = config.get("base_model_name_or_path")
    return LoraAdapter(name, path, rank, base if isinstance(base, str) else None, digest, weights)


def base_names_match(adapter_base: str | None, served: tuple[str, ...]) -> bool:
    """Whether the adapter's recorded base model is one of the served model's names.

    Compared by last path component, case aside: ``zai-org/GLM-4.6V-Flash`` and a local
    copy in ``/models/GLM-4.6V-Flash`` are the same model. No recorded base matches any.
    """
    if not adapter_base:
        return True
    last = adapter_base.rstrip("/").rsplit("/", 1)[-1].lower()
    return any(last == name.rstrip("/").rsplit("/", 1)[-1].lower() for name in served if name)


def check_against(
    adapter: LoraAdapter, shapes: Mapping[str, tuple[int, int]], served_names: tuple[str, ...]
) -> None:
    """Refuse ``adapter`` unless each of its modules is one of ``shapes`` (the servable linear layers,
    ``name -> (in_features, out_features)``) with matching sizes, and its base is this model."""
    name = adapter.name
    if not base_names_match(adapter.base_model, served_names):
        raise AdapterError(
            f"LoRA adapter '{name}' was trained for base model '{adapter.base_model}', not for the model "
            f"served here ({served_names[0]}). If that is the same model under another name, set "
            f'"base_model_name_or_path" in its adapter_config.json to "{served_names[0]}".'
        )
    for module, (a, b, _scale) in adapter.weights.items():
        if module not in shapes:
            raise AdapterError(
                f"LoRA adapter '{name}' changes {module}, which is not a linear layer of this model's "
                "language model decoder, LM head or vision tower (adapters of the embeddings or of "
                "convolutions are not served); it may be for another base model."
            )
        features = shapes[module]
        if (int(a.shape[1]), int(b.shape[0])) != features:
            raise AdapterError(
                f"LoRA adapter '{name}' was trained for another base model: {module} takes {a.shape[1]} "
                f"inputs and gives {b.shape[0]} outputs in the adapter, {features[0]} and {features[1]} here."
            )
