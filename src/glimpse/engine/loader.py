"""Find and load a Hugging Face image-text-to-text model with the Auto classes.

The same code path serves the real GLM-4.6V-Flash checkpoint, any other
image-text-to-text model, and the project's tiny models, so tests
exercise exactly what production runs. Failures become one ``ModelLoadError``
whose message says what was tried and how to fix it, because the person reading
it is an operator at a terminal, not a developer reading a traceback.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glimpse.config import TINY_MODEL, EngineSettings
from glimpse.cpu_share import cpu_threads
from glimpse.engine.kv_cache_dtype import check_kv_cache_dtype
from glimpse.engine.protocol import SamplingDefaults
from glimpse.engine.sampling_config import checkpoint_defaults
from glimpse.errors import ModelLoadError, QuantizationUnsupported

__all__ = ["LoadedModel", "check_model_available", "load_model", "resolve_device", "resolve_model_path"]

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class LoadedModel:
    model: Any
    processor: Any
    device: str
    dtype: Any
    source: str
    is_tiny: bool
    load_seconds: float
    #: The weight quantization in effect ("none", or the method asked for / the checkpoint's).
    quantization: str = "none"
    #: Bytes the parameters and buffers hold (quantized ones at their real storage).
    weight_bytes: int = 0

    @property
    def sampling_defaults(self) -> SamplingDefaults:
        """What a request's unset sampling fields become: the checkpoint's ``generation_config``."""
        return checkpoint_defaults(getattr(self.model, "generation_config", None))

    @property
    def context_length(self) -> int | None:
        """Longest sequence the text model was built for (``max_position_embeddings``), if it says."""
        config = self.model.config
        length = getattr(getattr(config, "text_config", config), "max_position_embeddings", None)
        return int(length) if length is not None else None


def resolve_model_path(settings: EngineSettings) -> tuple[str, bool]:
    """Return (path or hub id to load, whether it is the tiny model).

    ``tiny`` is the trained checkpoint shipped in the package, or the one in
    ``tiny_model_dir`` when that is set (a model ``glimpse train-tiny`` or
    ``glimpse make-tiny-model`` wrote there).
    """
    if settings.model == TINY_MODEL:
        from glimpse.engine.tiny_model import shipped_tiny_model_dir

        return str(settings.tiny_model_dir or shipped_tiny_model_dir()), True
    return settings.model, False


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(
            "--device cuda was asked for, but torch sees no CUDA GPU on this machine "
            f"(torch {torch.__version__}). Use --device cpu, or install a CUDA build of torch."
        )
    return device


def _resolve_dtype(dtype: str, device: str) -> Any:
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device == "cuda" else torch.float32
    return getattr(torch, dtype)


def _explain(model: str, exc: BaseException) -> ModelLoadError:
    local = Path(model).expanduser()
    if local.exists():
        tried = (
            f"'{model}' is a local directory, but transformers could not load an image-text-to-text "
            f"model and processor from it ({type(exc).__name__}: {exc})."
        )
        fix = (
            "Check that the directory holds config.json, the weights (*.safetensors), the tokenizer and "
            "preprocessor/processor config, as written by save_pretrained."
        )
    else:
        tried = (
            f"'{model}' is not a local directory, so it was looked up as a Hugging Face model id, "
            f"in the local cache and then on the Hub, and that failed ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'no detail'})."
        )
        fix = (
            "If this machine is offline, download the model where there is internet "
            f"(`hf download {model} --local-dir ./{local.name}`), copy the folder here and pass "
            "--model with that folder; if the model is gated, set HF_TOKEN; "
            "to try Glimpse without any weights, use --model tiny."
        )
    return ModelLoadError(f"Could not load model '{model}'. {tried} {fix}")


#: What ``pip install glimpse-serve`` leaves out (a CPU machine needs its own torch build).
MODEL_EXTRA_HINT = "pip install 'glimpse-serve[model]'"


def check_runtime_installed() -> None:
    """``ModelLoadError`` in one line when torch or transformers is missing (an optional extra)."""
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ModuleNotFoundError as exc:
        missing = exc.name or "torch/transformers"
        raise ModelLoadError(
            f"The in-process engine needs the model runtime, and {missing} is not installed: "
            f"{MODEL_EXTRA_HINT} (or serve other servers' models with --engine upstream)."
        ) from exc


def check_model_available(settings: EngineSettings) -> None:
    """Fail fast (before the server starts) when the runtime or the model cannot be found at all,
    when the quantization or KV-cache dtype asked for cannot run here, or when a configured LoRA
    adapter cannot be served.
    """
    check_runtime_installed()
    from transformers import AutoConfig

    source, _ = resolve_model_path(settings)
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=settings.trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - any failure here means "cannot load"; explained to the user
        raise _explain(settings.model, exc) from exc
    device = resolve_device(settings.device)
    _quantization_plan(settings, source, device, _resolve_dtype(settings.dtype, device), build=False)
    check_kv_cache_dtype(settings, device, config)
    if settings.lora_modules:
        from glimpse.engine.lora.preflight import check_adapters

        check_adapters(settings, config, source)


def _quantization_plan(
    settings: EngineSettings, source: str, device: str, dtype: Any, *, build: bool = True
) -> tuple[str, dict[str, Any]]:
    """The quantization in effect and the ``from_pretrained`` arguments that apply it.

    A checkpoint written quantized (``glimpse quantize``) loads as it is; asking for
    another method on it is refused rather than silently ignored. ``build=False``
    only checks (no ``meta`` model is built).
    """
    from glimpse.engine import quantization as quant

    written = quant.checkpoint_quantization(source, settings.trust_remote_code)
    if written is not None:
        if settings.quantization not in ("none", written):
            raise QuantizationUnsupported(
                f"--quantization {settings.quantization}: the checkpoint '{settings.model}' is already "
                f"quantized ({written}); drop --quantization, or quantize the full-precision model."
            )
        if written in quant.METHODS:  # another library's checkpoint is transformers' to check
            quant.check_supported(written, device, dtype)
        return written, {}
    quant.check_supported(settings.quantization, device, dtype)
    if settings.quantization == "none" or not build:
        return settings.quantization, {}
    config = quant.loading_config(
        source,
        settings.quantization,
        device,
        lm_head=settings.quantize_lm_head,
        vision=settings.quantize_vision,
        trust_remote_code=settings.trust_remote_code,
    )
    # Loaded straight onto the device: each weight is quantized there as it is read.
    return settings.quantization, {"quantization_config": config, "device_map": device}


def _mapped_checkpoint_files() -> dict[str, list[tuple[int, int]]]:
    """Address ranges this process maps from ``*.safetensors`` files, by file (Linux; elsewhere none)."""
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return {}
    mapped: dict[str, list[tuple[int, int]]] = {}
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].endswith(".safetensors"):
            start, end = (int(address, 16) for address in fields[0].split("-"))
            mapped.setdefault(fields[5], []).append((start, end))
    return mapped


def _copy_out_of_checkpoint_files(model: Any) -> int:
    """Copy the full-precision tensors that still point into memory-mapped checkpoint files; return the bytes.

    transformers reads safetensors through ``mmap``, and a tensor kept at the file's dtype
    (embeddings, vision tower, norms) stays a view of that mapping. Quantized while loading, the
    quantized weights are fresh memory, but every shard still holds some kept tensor (each layer's
    norms), so no mapping closes and the full-precision pages read to quantize stay in the
    process's RSS: on the full-size GLM-4.6V-Flash, 12-14 GiB of bf16 pages beside ~5 GiB of model.
    Copying the kept tensors (a few GiB at most: what was not quantized) lets each mapping close.
    One file at a time, so at most one file's kept tensors exist twice. Only plain tensors whose
    memory lies in such a mapping are copied: torchao's tensors were built in fresh memory, and
    weights converted to another dtype while loading were copied already.
    """
    import torch

    by_file = _mapped_checkpoint_files()
    if not by_file:
        return 0
    tensors = [
        t for t in (*model.parameters(), *model.buffers()) if type(t) in (torch.Tensor, torch.nn.Parameter)
    ]
    copied = 0
    with torch.no_grad():
        for ranges in by_file.values():
            for tensor in tensors:
                address = tensor.untyped_storage().data_ptr()
                if any(start <= address < end for start, end in ranges):
                    tensor.data = tensor.data.clone()  # the same Parameter: tied weights stay tied
                    copied += tensor.nbytes
    if copied:
        logger.info("copied %.1f MiB of kept weights out of the checkpoint's mapped files", copied / 2**20)
    return copied


def load_model(settings: EngineSettings) -> LoadedModel:
    """Load processor and model onto the chosen device. Blocking: call from the engine thread."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    started = time.monotonic()
    source, is_tiny = resolve_model_path(settings)
    device = resolve_device(settings.device)
    dtype = _resolve_dtype(settings.dtype, device)
    threads = None
    if device == "cpu":  # on a GPU torch's CPU threads barely work; leave them alone
        import torch

        threads = cpu_threads(settings.cpu_threads)
        torch.set_num_threads(threads)
    quantization, quantize_kwargs = _quantization_plan(settings, source, device, dtype)
    check_kv_cache_dtype(settings, device)
    try:
        processor = AutoProcessor.from_pretrained(source, trust_remote_code=settings.trust_remote_code)
        model = AutoModelForImageTextToText.from_pretrained(
            source, dtype=dtype, trust_remote_code=settings.trust_remote_code, **quantize_kwargs
        )
    except Exception as exc:  # noqa: BLE001 - translated into one explained error at the boundary
        raise _explain(settings.model, exc) from exc
    model = model.to(device).eval()
    if device == "cpu" and quantize_kwargs:
        _copy_out_of_checkpoint_files(model)
    elapsed = time.monotonic() - started
    from glimpse.engine.quantization import resident_weight_bytes

    weight_bytes = resident_weight_bytes(model)
    logger.info(
        "model loaded: %.1f MiB of weights (quantization %s)",
        weight_bytes / 2**20,
        quantization,
        extra={
            "model": settings.model,
            "device": device,
            "dtype": str(dtype),
            "quantization": quantization,
            "weight_bytes": weight_bytes,
            "cpu_threads": threads,
            "load_seconds": round(elapsed, 2),
        },
    )
    return LoadedModel(
        model=model,
        processor=processor,
        device=device,
        dtype=dtype,
        source=source,
        is_tiny=is_tiny,
        load_seconds=elapsed,
        quantization=quantization,
        weight_bytes=weight_bytes,
    )
