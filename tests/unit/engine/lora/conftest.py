"""A random-weight tiny GLM-4.6V model and PEFT adapters made for it (random, non-zero A and B)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from glimpse.engine.tiny_model import ensure_random_tiny_model

LM = "model.language_model.layers"


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_random_tiny_model(tmp_path_factory.mktemp("tiny-lora") / "glm46v")


@pytest.fixture(scope="session")
def processor(tiny_dir):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_dir)


def fresh_model(tiny_dir: Path):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(tiny_dir, dtype=torch.float32).eval()


def make_adapter(
    tiny_dir: Path,
    out: Path,
    *,
    seed: int,
    rank: int = 4,
    leaves: tuple[str, ...] = (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_up_proj",
        "down_proj",
        "lm_head",
    ),
    rslora: bool = False,
    vision: bool = False,
) -> Path:
    """A PEFT adapter with random A and B (``init_lora_weights=False``), saved as PEFT saves it."""
    from peft import LoraConfig, get_peft_model

    model = fresh_model(tiny_dir)
    names = [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
        and name.rsplit(".", 1)[-1] in leaves
        and (name.startswith(LM) or name == "lm_head" or (vision and name.startswith("model.visual.")))
    ]
    torch.manual_seed(seed)
    config = LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules=names, init_lora_weights=False, use_rslora=rslora
    )
    peft_model = get_peft_model(model, config)
    peft_model.peft_config["default"].base_model_name_or_path = "tiny"
    peft_model.save_pretrained(out, save_embedding_layers=False)
    return out


def peft_reference(tiny_dir: Path, adapter: Path | None):
    """The model ``generate()`` answers with for ``adapter`` (PEFT's own), or the base model."""
    from peft import PeftModel

    model = fresh_model(tiny_dir)
    return model if adapter is None else PeftModel.from_pretrained(model, adapter).eval()
