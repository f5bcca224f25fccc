"""Check the configured LoRA adapters before the server starts: a bad one is exit status 2, not a
server that comes up and then fails to load its model."""

from __future__ import annotations

from typing import Any

from glimpse.config import EngineSettings
from glimpse.engine.lora.adapter import AdapterError, check_against, read_adapter
from glimpse.engine.lora.bank import servable_shapes
from glimpse.errors import ModelLoadError

__all__ = ["check_adapters"]


def check_adapters(settings: EngineSettings, config: Any, source: str) -> None:
    """Read each adapter of ``settings.lora_modules`` and check it against the model ``config``
    describes (built on the ``meta`` device: shapes only, no weights); ``ModelLoadError`` if one
    cannot be served."""
    import torch
    from transformers import AutoModelForImageTextToText

    if not settings.lora_modules:
        return
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config, trust_remote_code=settings.trust_remote_code)
    shapes = servable_shapes(model)
    names = (settings.model, settings.served_model_name or settings.model, source)
    for name, path in settings.lora_paths.items():
        if name in names[:2]:
            raise ModelLoadError(
                f"--lora {name}=...: '{name}' is the base model's name; give the adapter another."
            )
        try:
            check_against(
                read_adapter(name, path.expanduser(), max_rank=settings.max_lora_rank), shapes, names
            )
        except AdapterError as exc:
            raise ModelLoadError(exc.message) from exc
