"""The vision warm-up's mirrored pictures and their labels and per-token targets."""

from __future__ import annotations

import random

import pytest
import torch
from PIL import ImageOps

from glimpse.engine.tiny_data import Encoded
from glimpse.engine.tiny_task import draw, random_picture
from glimpse.engine.tiny_train import TrainConfig, untrained_model
from glimpse.engine.tiny_warmup import (
    label,
    mirrored,
    token_targets,
)


@pytest.fixture(scope="module")
def model_and_processor():
    return untrained_model(TrainConfig(text_layers=1, vision_depth=1))


def _encoded(processor, picture, image=None) -> Encoded:
    inputs = processor.image_processor(images=[image or draw(picture)], return_tensors="pt")
    return Encoded(None, None, None, inputs["pixel_values"], inputs["image_grid_thw"], picture)


@pytest.mark.parametrize("seed", range(4))
def test_a_mirrored_picture_is_what_the_processor_makes_of_the_flipped_image(model_and_processor, seed):
    _, processor = model_and_processor
    picture = random_picture(random.Random(seed), count=1, position=("left", "right", "top", "center")[seed])
    plain = _encoded(processor, picture)
    flipped = _encoded(processor, picture, ImageOps.mirror(draw(picture)))
    m = mirrored(plain)
    assert torch.equal(m.pixel_values, flipped.pixel_values)
    assert not torch.equal(m.pixel_values, plain.pixel_values)
    assert label(m, "position") == {"left": "right", "right": "left"}.get(picture.position, picture.position)
    assert label(m, "shape") == picture.shape
    assert label(m, "color") == picture.color
    assert torch.equal(mirrored(m).pixel_values, plain.pixel_values)
    assert not mirrored(m).mirrored
    _, rows, cols = (int(v) // 2 for v in plain.image_grid_thw[0].tolist())
    for a, b in zip(token_targets(plain, {}), token_targets(m, {}), strict=True):
        assert torch.equal(b.reshape(rows, cols), a.reshape(rows, cols).flip(1))
