"""``glimpse quantize``: write a quantized checkpoint that ``glimpse serve --model DIR`` loads as it is.

The model is loaded with the same quantization ``serve --quantization`` applies
(layer by layer, as the weights are read) and written by ``save_pretrained``,
which stores torchao's tensors as plain safetensors plus their layout in the
metadata; the processor, tokenizer and chat template are written beside it, so
the folder is a complete model.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from glimpse.config import EngineSettings
from glimpse.errors import ModelLoadError, QuantizationUnsupported

__all__ = ["write_quantized"]

logger = logging.getLogger(__name__)

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


def write_quantized(settings: EngineSettings, directory: Path) -> Path:
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
        loaded.model.save_pretrained(staging)
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
