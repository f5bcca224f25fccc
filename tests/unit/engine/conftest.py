"""Fixtures shared by the engine's tests: the random tiny model (files, loaded), its grammars, logging."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from glimpse.engine.batching import generation_eos_ids
from glimpse.engine.grammar import Grammars
from glimpse.engine.tiny_model import ensure_random_tiny_model


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The random tiny model's files, built once; a test that changes them works on a copy."""
    return ensure_random_tiny_model(tmp_path_factory.mktemp("tiny") / "glm46v")


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """For tests of ``main()``: it installs its log handler on stderr, which pytest closes after each test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    directory = tiny_dir
    processor = AutoProcessor.from_pretrained(directory)
    model = AutoModelForImageTextToText.from_pretrained(directory, dtype=torch.float32).eval()
    return model, processor


@pytest.fixture(scope="module")
def grammars(tiny) -> Grammars:
    model, processor = tiny
    vocab = model.get_output_embeddings().weight.shape[0]
    return Grammars(processor.tokenizer, vocab, generation_eos_ids(model.generation_config))
