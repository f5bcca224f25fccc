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
from glimpse.engine.protocol import SamplingDefaults
from glimpse.engine.sampling_config import checkpoint_defaults
from glimpse.errors import ModelLoadError

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
    """Fail fast (before the server starts) when the runtime or the model cannot be found at all."""
    check_runtime_installed()
    from transformers import AutoConfig

    source, _ = resolve_model_path(settings)
    try:
        AutoConfig.from_pretrained(source, trust_remote_code=settings.trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - any failure here means "cannot load"; explained to the user
        raise _explain(settings.model, exc) from exc


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
    try:
        processor = AutoProcessor.from_pretrained(source, trust_remote_code=settings.trust_remote_code)
        model = AutoModelForImageTextToText.from_pretrained(
            source, dtype=dtype, trust_remote_code=settings.trust_remote_code
        )
    except Exception as exc:  # noqa: BLE001 - translated into one explained error at the boundary
        raise _explain(settings.model, exc) from exc
    model = model.to(device).eval()
    elapsed = time.monotonic() - started
    logger.info(
        "model loaded",
        extra={
            "model": settings.model,
            "device": device,
            "dtype": str(dtype),
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
    )
