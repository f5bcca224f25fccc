"""The HF engine judges a request's images from their sizes with the real GLM-4.6V processor rules."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image
from transformers import AutoProcessor

from glimpse.config import EngineSettings
from glimpse.engine.hf import HFEngine
from glimpse.engine.protocol import ImageSizeCheck
from glimpse.engine.tiny_model import ensure_random_tiny_model
from glimpse.errors import RequestTooLarge

CONTEXT = 8192


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> HFEngine:
    """An HFEngine with the tiny model's processor loaded (no model thread: sizes need none)."""
    directory: Path = ensure_random_tiny_model(tmp_path_factory.mktemp("tiny") / "glm46v")
    engine = HFEngine(EngineSettings(model="tiny"))
    config = SimpleNamespace(text_config=SimpleNamespace(max_position_embeddings=CONTEXT))
    engine.loaded = SimpleNamespace(  # type: ignore[assignment]
        processor=AutoProcessor.from_pretrained(directory),
        model=SimpleNamespace(config=config),
        context_length=CONTEXT,
    )
    return engine


def _image_tokens(engine: HFEngine, size: tuple[int, int]) -> int:
    """What the processor really produces for a decoded image of ``size`` (minus the text)."""
    processor = engine.loaded.processor  # type: ignore[union-attr]
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    with_image = processor(text=[prompt], images=[Image.new("RGB", size)], return_tensors="pt")
    text_only = processor(text=[prompt.replace("<|image|>", "")], return_tensors="pt")
    return int(with_image["input_ids"].shape[-1] - text_only["input_ids"].shape[-1])


def test_the_engine_offers_the_check(engine: HFEngine) -> None:
    assert isinstance(engine, ImageSizeCheck)


def test_images_that_cannot_fit_are_refused_from_their_sizes(engine: HFEngine) -> None:
    """Four 12-megapixel photos: refused before a byte of them is decoded."""
    with pytest.raises(RequestTooLarge, match="^max_tokens is 16 and the images alone take") as caught:
        engine.check_image_sizes([(4000, 3000)] * 4, 16)
    assert caught.value.param == "max_tokens"


def test_the_count_matches_what_the_processor_produces_after_decoding(engine: HFEngine) -> None:
    """The refusal line sits exactly where preprocessing would put it: never refuses what fits."""
    tokens = _image_tokens(engine, (640, 480))
    assert tokens > 100
    engine.check_image_sizes([(640, 480)], CONTEXT - tokens)  # exactly full: allowed
    with pytest.raises(RequestTooLarge):
        engine.check_image_sizes([(640, 480)], CONTEXT - tokens + 1)


def test_no_images_or_no_processor_means_no_opinion(engine: HFEngine) -> None:
    engine.check_image_sizes([], CONTEXT * 10)
    HFEngine(EngineSettings(model="tiny")).check_image_sizes([(10_000, 10_000)], 1)
