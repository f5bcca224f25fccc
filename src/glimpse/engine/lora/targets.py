"""Which of a model's linear layers LoRA adapters may change: found by walking the model, not by name lists.

Training (``glimpse finetune``) and serving agree on the answer: by default the
linear layers of the language model's decoder layers (attention projections and
MLP) and the LM head, optionally the vision tower's linear layers too (served
per image). The head is in by default because an adapter that must say
something new (a product code, a field name) needs it: on the tiny model,
adapters of the decoder layers alone could not learn to emit tokens the base
model never emits (the loss stalled near uniform), with the head they did within
a few dozen steps. The embeddings stay out: serving looks them up by id.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["LoraTargets", "head_name", "language_model_prefix", "lora_targets", "vision_prefix"]

_VISION_NAMES = ("visual", "vision_tower", "vision_model", "vision_encoder")


def _name_of(model: Any, target: Any) -> str | None:
    if target is None:
        return None
    return next((str(name) for name, module in model.named_modules() if module is target and name), None)


def language_model_prefix(model: Any) -> str:
    """The qualified name of the text decoder (``model.language_model`` for GLM-4.xV)."""
    found = _name_of(model, model.get_decoder() if hasattr(model, "get_decoder") else None)
    if found is not None:
        return found
    for name, _module in model.named_modules():
        if name.endswith(("language_model", "text_model")):
            return str(name)
    raise ValueError(f"{type(model).__name__}: cannot find its language model")


def head_name(model: Any) -> str | None:
    """The qualified name of the LM head (``lm_head``), if the model has a linear one."""
    import torch

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return _name_of(model, head) if isinstance(head, torch.nn.Linear) else None


def vision_prefix(model: Any) -> str | None:
    """The qualified name of the vision tower, if the model has one under a usual name."""
    for name, _module in model.named_modules():
        if name.rsplit(".", 1)[-1] in _VISION_NAMES:
            return str(name)
    return None


def _linear_names(model: Any, start: str) -> list[str]:
    import torch

    return [
        str(name)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.startswith(start)
    ]


class LoraTargets:
    """The modules an adapter trains (PEFT's ``target_modules``, as exact qualified names, so no other
    module that shares a leaf name, such as a patch-embedding convolution, is caught)."""

    def __init__(self, model: Any, leaves: Iterable[str] = (), *, vision: bool = False) -> None:
        wanted = {leaf.strip() for leaf in leaves if leaf.strip()}
        names = _linear_names(model, language_model_prefix(model) + ".layers.")
        head = head_name(model)
        if head is not None:
            names.append(head)
        if vision:
            tower = vision_prefix(model)
            if tower is None:
                raise ValueError(f"{type(model).__name__}: no vision tower found to adapt")
            names += _linear_names(model, tower + ".")
        if wanted:
            available = sorted({name.rsplit(".", 1)[-1] for name in names})
            unknown = sorted(wanted - set(available))
            if unknown:
                raise ValueError(
                    f"no linear layer named {', '.join(unknown)} in the adapted part of the model; "
                    f"choose among {', '.join(available)}"
                )
            names = [name for name in names if name.rsplit(".", 1)[-1] in wanted]
        if not names:
            raise ValueError(f"{type(model).__name__}: no linear layers to adapt")
        self.names = names


def lora_targets(model: Any, leaves: Iterable[str] = (), *, vision: bool = False) -> LoraTargets:
    """``LoraTargets`` of ``model``; ``ValueError`` with a readable message if there are none."""
    return LoraTargets(model, leaves, vision=vision)
