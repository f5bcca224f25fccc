"""LoRA adapters for the tests: one trained with ``glimpse finetune`` on the tiny model (colours answered
as product codes, ``COLOR-RED``), one with random weights. Built once per test session."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from glimpse.engine.tiny_model import shipped_tiny_model_dir
from glimpse.finetune import FinetuneOptions, finetune
from glimpse.finetune.colour_codes import write_colour_codes

#: The short schedule the tests train with (measured in the README's walk-through).
SAMPLES, EPOCHS, LR = 300, 8, 5e-3


def train_colour_codes(root: Path, samples: int = SAMPLES, **overrides: Any) -> tuple[Path, dict[str, Any]]:
    """Finetune the tiny model on ``samples`` colour questions answered as codes; (adapter dir, report)."""
    data = write_colour_codes(root / "data", samples, seed=1)
    options: dict[str, Any] = {"data": data, "out": root / "adapter", "model": "tiny", "lr": LR}
    # One thread: the same weights, so the same accuracy, whatever machine runs the tests.
    options |= {"epochs": EPOCHS, "val_fraction": 0.2, "threads": 1} | overrides
    report = finetune(FinetuneOptions(**options), Console(file=io.StringIO()))
    return root / "adapter", report


def random_adapter(out: Path, *, seed: int = 5, rank: int = 4) -> Path:
    """A PEFT adapter of the shipped tiny model with large random A and B on a few layers (no training):
    it changes answers, without meaning."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(shipped_tiny_model_dir(), dtype=torch.float32)
    names = [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
        and name.startswith("model.language_model.")
        and name.endswith(("self_attn.v_proj", "mlp.down_proj"))
    ]
    torch.manual_seed(seed)
    # Scaled up (alpha 32 r): random deltas too small to change the base model's answers prove nothing.
    config = LoraConfig(r=rank, lora_alpha=32 * rank, target_modules=names, init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    peft_model.peft_config["default"].base_model_name_or_path = "tiny"
    peft_model.save_pretrained(out, save_embedding_layers=False)
    return out
