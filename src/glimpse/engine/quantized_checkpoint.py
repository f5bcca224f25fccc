"""``glimpse quantize``: write a quantized checkpoint that ``glimpse serve --model DIR`` loads as it is.

The model is loaded with the same quantization ``serve --quantization`` applies
(layer by layer, as the weights are read) and written by ``save_pretrained``,
which stores torchao's tensors as plain safetensors plus their layout in the
metadata; the processor, tokenizer and chat template are written beside it, so
the folder is a complete model. The weights are written in shards of at most
``SHARD_BYTES`` (with ``model.safetensors.index.json``, as transformers writes and
reads any sharded checkpoint), straight from the model's own tensors, so writing
adds at most about one shard to the quantized model in memory.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from glimpse.config import EngineSettings
from glimpse.errors import ModelLoadError, QuantizationUnsupported

__all__ = ["write_quantized"]

logger = logging.getLogger(__name__)

#: Largest weights file written: what a GPU's tensors copied to the host for one file can add.
SHARD_BYTES = 2 * 2**30

#: torchao's safetensors support knows these layouts; its CPU int4 layout is not among them.
_SAVABLE = {"int8": ("cpu", "cuda"), "fp8": ("cuda",), "int4": ("cuda",)}


def _check_target(directory: Path) -> Path:
    target = directory.expanduser().resolve()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ModelLoadError(
            f"Refusing to write the quantized model to {target}: it exists and is not an empty folder. "
            "Name a new or empty folder."
        )
    return target


def _flatten_without_copies(state_dict: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """torchao's ``flatten_tensor_state_dict``, with the model's own tensors as the entries.

    torchao clones every quantized tensor of the state dict at once, so saving held the
    quantized model twice (8.2 GiB more for the full-size int8 GLM-4.6V-Flash). Here torchao
    flattens one tensor at a time, so its names and metadata stay its own, and its copy is
    dropped for the inner tensor it was made from; safetensors writes from a CPU tensor's
    memory, so nothing is copied. Every shard carries the whole metadata, as transformers
    writes it: its loader merges the shards' metadata and looks each tensor up in it.
    """
    from torchao.prototype.safetensors.safetensors_support import flatten_tensor_state_dict

    tensors: dict[str, Any] = {}
    metadata: dict[str, str] = {}
    for name, tensor in state_dict.items():
        flat, meta = flatten_tensor_state_dict({name: tensor})
        module, _, attribute = name.rpartition(".")
        prefix = f"{module}._{attribute}_"
        for key in flat:
            tensors[key] = tensor if key == name else getattr(tensor, key.removeprefix(prefix)).detach()
        metadata[name] = meta[name]
    metadata["tensor_names"] = json.dumps(list(state_dict))
    return tensors, metadata


@contextmanager
def _saved_without_copies(model: Any) -> Iterator[None]:
    """While in effect, ``model.save_pretrained`` flattens torchao's tensors without copying them."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None:
        raise ModelLoadError(
            f"{type(model).__name__} was loaded without a quantizer; nothing to save quantized."
        )
    quantizer.get_state_dict_and_metadata = lambda m: _flatten_without_copies(m.state_dict())
    try:
        yield
    finally:
        del quantizer.get_state_dict_and_metadata


def write_quantized(settings: EngineSettings, directory: Path, *, shard_bytes: int = SHARD_BYTES) -> Path:
    """Load ``settings.model`` quantized with ``settings.quantization`` and save it to ``directory``."""
    from glimpse.engine.loader import load_model, resolve_device

    method = settings.quantization
    if method == "none":
        raise QuantizationUnsupported(
            "glimpse quantize needs --quantization int8, int4 or fp8 (none would copy the model)."
        )
    device = resolve_device(settings.device)
    if device not in _SAVABLE.get(method, ()):
        raise QuantizationUnsupported(
            f"--quantization {method}: torchao cannot save this method's weights from the {device} "
            f"(it can from: {', '.join(_SAVABLE[method])}); use --quantization int8, or quantize at "
            f"start-up with glimpse serve --quantization {method}."
        )
    target = _check_target(Path(directory))
    loaded = load_model(settings)
    if loaded.quantization != method:
        raise QuantizationUnsupported(
            f"'{settings.model}' loaded with quantization {loaded.quantization}, not {method}; "
            "quantize the full-precision model."
        )
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with _saved_without_copies(loaded.model):
            loaded.model.save_pretrained(staging, max_shard_size=shard_bytes)
        loaded.processor.save_pretrained(staging)
        note = {"quantization": method, "source": loaded.source, "written_by": "glimpse quantize"}
        (staging / "GLIMPSE_QUANTIZED.json").write_text(json.dumps(note) + "\n")
        if target.exists():
            target.rmdir()
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info(
        "wrote quantized checkpoint", extra={"directory": str(target), "weight_bytes": loaded.weight_bytes}
    )
    return target
