"""Whether ``kv_cache_dtype`` can be honoured here, decided before the model loads.

An fp8 KV cache follows the rule of ``--quantization fp8``: a CUDA GPU of
compute capability 8.9 or newer (Ada, Hopper), the GPUs with fp8 hardware. Only
the continuous-batching engine has a KV cache of its own (``batching.kv_cache``);
a model served one request at a time through ``generate()`` keeps transformers'
cache in the model's dtype, so fp8 there would be silently ignored. Each case is
one ``QuantizationUnsupported`` line naming the option and what to do, never a
fallback to the model's dtype.

The engine's own ``BatcherConfig.kv_cache_dtype`` takes fp8 on any device: the
refusal is here, at the settings, so tests can run an fp8 cache on the CPU.
"""

from __future__ import annotations

import logging
from typing import Any

from glimpse.config import EngineSettings
from glimpse.engine.quantization import require_fp8_hardware
from glimpse.errors import ModelLoadError, QuantizationUnsupported

__all__ = ["check_kv_cache_dtype", "needs_batching"]

logger = logging.getLogger(__name__)


def needs_batching(reason: str) -> QuantizationUnsupported:
    """The refusal when the batching engine, the only one with this cache, cannot run (``reason``)."""
    return QuantizationUnsupported(
        f"--kv-cache-dtype fp8 sets the continuous-batching engine's KV cache, and that engine cannot run "
        f"here ({reason}); drop --kv-cache-dtype (or set GLIMPSE_ENGINE__KV_CACHE_DTYPE=auto)."
    )


def check_kv_cache_dtype(settings: EngineSettings, device: str, model_config: Any | None = None) -> None:
    """Refuse, in one line, an fp8 KV cache this device or model cannot have.

    ``model_config`` (the checkpoint's ``AutoConfig``): also check that the batching engine
    takes the model, on a ``meta``-device copy of it (no memory, no weights read).
    """

    if settings.kv_cache_dtype == "auto":
        return
    require_fp8_hardware(
        "--kv-cache-dtype fp8", device, "drop --kv-cache-dtype (the cache keeps the model's dtype)"
    )
    if not settings.batching:
        raise needs_batching("batching is off: GLIMPSE_ENGINE__BATCHING=false")
    if model_config is not None:
        _check_batchable(model_config, settings.trust_remote_code)


def _check_batchable(model_config: Any, trust_remote_code: bool) -> None:
    """``needs_batching`` unless the batching runner takes this model's layout."""
    import torch
    from transformers import AutoModelForImageTextToText

    from glimpse.engine.batching.runner import Glm4vRunner

    try:
        with torch.device("meta"):
            skeleton = AutoModelForImageTextToText.from_config(
                model_config, trust_remote_code=trust_remote_code
            )
    except Exception:  # noqa: BLE001 - the load itself fails later and explains why; not this check's
        logger.debug("no meta model to check the batching runner on", exc_info=True)
        return
    try:
        Glm4vRunner(skeleton)
    except ModelLoadError as exc:
        raise needs_batching(exc.message) from exc
