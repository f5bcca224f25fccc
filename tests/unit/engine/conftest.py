"""Fixtures shared by the engine's grammar tests: the random tiny model and its grammars."""

from __future__ import annotations

import pytest
import torch

from glimpse.engine.batching import generation_eos_ids
from glimpse.engine.grammar import Grammars
from glimpse.engine.tiny_model import ensure_random_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    directory = ensure_random_tiny_model(tmp_path_factory.mktemp("tiny") / "glm46v")
    processor = AutoProcessor.from_pretrained(directory)
    model = AutoModelForImageTextToText.from_pretrained(directory, dtype=torch.float32).eval()
    return model, processor


@pytest.fixture(scope="module")
def grammars(tiny) -> Grammars:
    model, processor = tiny
    vocab = model.get_output_embeddings().weight.shape[0]
    return Grammars(processor.tokenizer, vocab, generation_eos_ids(model.generation_config))
