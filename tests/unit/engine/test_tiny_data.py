"""Training inputs: the served chat template and processor, labels on the answers only."""

from __future__ import annotations

import random

import pytest
import torch

from glimpse.engine.tiny_data import IGNORE, collate, encode_sample, encoded_pool
from glimpse.engine.tiny_task import Picture, Question, Sample, Turn, make_sample
from glimpse.engine.tiny_train import TrainConfig, untrained_model


@pytest.fixture(scope="module")
def processor():
    return untrained_model(TrainConfig(text_layers=1, vision_depth=1))[1]


def _sample() -> Sample:
    pic = Picture("red", "circle", 1, "left", 200, 120, 1)
    turns = [
        Turn(Question("color", "en", "What color is the shape?"), "It is red."),
        Turn(Question("position", "zh", "图形在哪里？"), "在左边。"),
    ]
    return Sample([pic], turns, ["JPEG"], [80])


@pytest.mark.parametrize("seed", range(4))  # image before or after the text, thinking off or not
def test_labels_are_the_answers_and_their_end_of_turn_only(processor, seed):
    encoded = encode_sample(processor, _sample(), random.Random(seed))
    tokenizer = processor.tokenizer
    labelled = encoded.labels[encoded.labels != IGNORE]
    assert tokenizer.decode(labelled) == "It is red.<|user|>在左边。<|user|>"
    text = tokenizer.decode(encoded.input_ids)
    assert text.count("<|image|>") == int(encoded.image_grid_thw.prod()) // 4
    assert "What color is the shape?" in text
    assert "图形在哪里？" in text


def test_a_batch_is_right_padded_with_images_in_order(processor):
    rng = random.Random(0)
    one = encode_sample(processor, _sample(), rng)
    short = _sample()
    short.turns = short.turns[:1]
    two = encode_sample(processor, short, rng)
    batch = collate([one, two], pad_id=processor.tokenizer.pad_token_id)
    assert batch["input_ids"].shape == (2, len(one.input_ids))
    assert int(batch["attention_mask"][1].sum()) == len(two.input_ids)
    assert (batch["labels"][1, len(two.input_ids) :] == IGNORE).all()
    assert batch["pixel_values"].shape[0] == one.pixel_values.shape[0] + two.pixel_values.shape[0]


def test_the_pool_is_the_same_whatever_the_worker_count(processor):
    one = encoded_pool(processor, 6, seed=3, workers=1, chunk=2)
    two = encoded_pool(processor, 6, seed=3, workers=2, chunk=2)
    assert len(one) == len(two) == 6
    for a, b in zip(one, two, strict=True):
        assert torch.equal(a.input_ids, b.input_ids)
        assert torch.equal(a.pixel_values, b.pixel_values)
        assert a.picture == b.picture
    assert any(e.picture is not None for e in one)  # one-picture conversations carry their labels


def test_extra_pictures_are_drawn_near_the_input_size_with_every_question_about_them(processor):
    from glimpse.engine.tiny_data import picture_pool
    from glimpse.engine.tiny_task import answer

    one = picture_pool(processor, 12, seed=4, workers=1, side=112, chunk=5)
    again = picture_pool(processor, 12, seed=4, workers=2, side=112, chunk=5)
    assert [e.picture for e in one] == [e.picture for e in again]
    assert all(torch.equal(a.pixel_values, b.pixel_values) for a, b in zip(one, again, strict=True))
    assert all(torch.equal(a.input_ids, b.input_ids) for a, b in zip(one, again, strict=True))
    for e in one:
        assert 112**2 * 0.9 <= e.picture.width * e.picture.height <= 112**2 * 2.1
        assert 1 <= e.picture.count <= 4
        t, h, w = e.image_grid_thw[0].tolist()
        assert e.pixel_values.shape[0] == t * h * w
        assert h * w * 8 * 8 <= 112**2
        text = processor.tokenizer.decode(e.input_ids)
        assert text.count("<|image|>") == h * w // 4
        answers = processor.tokenizer.decode(e.labels[e.labels != IGNORE]).split("<|user|>")[:-1]
        tasks = ("color", "shape", "count", "describe") + (("position",) if e.picture.count == 1 else ())
        expected = {answer(e.picture, task, lang) for task in tasks for lang in ("en", "zh")}
        assert len(answers) == len(tasks)
        assert set(answers) <= expected


def test_the_pool_keeps_patches_in_half_precision_and_collate_reads_them_as_float32(processor):
    from glimpse.engine.tiny_data import _from_arrays, _to_arrays

    rng = random.Random(5)
    encoded = [encode_sample(processor, make_sample(rng), rng) for _ in range(4)]
    pooled = [_from_arrays(_to_arrays(e)) for e in encoded]
    for e, p in zip(encoded, pooled, strict=True):
        assert e.pixel_values.dtype == torch.float32
        assert p.pixel_values.dtype == torch.float16
        # normalized 8-bit pixels (steps of about 0.015) are held to within 0.002
        assert 0 < (p.pixel_values.float() - e.pixel_values).abs().max() < 0.002
        for field in ("input_ids", "labels", "mm_token_type_ids", "image_grid_thw"):
            assert torch.equal(getattr(p, field), getattr(e, field))
        assert p.picture == e.picture
    batch = collate(pooled, pad_id=0)
    assert batch["pixel_values"].dtype == torch.float32
    assert torch.allclose(batch["pixel_values"], collate(encoded, pad_id=0)["pixel_values"], atol=0.002)


def test_the_extra_pictures_do_not_depend_on_their_conversations(processor, monkeypatch):
    from glimpse.engine import tiny_data

    plain = tiny_data.picture_pool(processor, 4, seed=4, workers=1, side=112)
    monkeypatch.setattr(tiny_data, "training_text", lambda proc, sample, rng: rng.random() and "")
    monkeypatch.setattr(tiny_data, "encode_samples", _pixels_only)
    silent = tiny_data.picture_pool(processor, 4, seed=4, workers=1, side=112)
    assert [e.picture for e in plain] == [e.picture for e in silent]
    assert all(torch.equal(a.pixel_values, b.pixel_values) for a, b in zip(plain, silent, strict=True))


def _pixels_only(processor, prepared):
    """The pictures as the warm-up alone would use them: the image processor, no text."""
    from glimpse.engine.tiny_data import Encoded, decoded_images

    images = [image for sample, _ in prepared for image in decoded_images(sample)]
    inputs = processor.image_processor(images=images, return_tensors="pt")
    grids = inputs["image_grid_thw"]
    empty = torch.zeros(0, dtype=torch.long)
    return [
        Encoded(empty, empty, empty, pixels, grid[None], sample.pictures[0])
        for (sample, _), pixels, grid in zip(
            prepared, inputs["pixel_values"].split(grids.prod(-1).tolist()), grids, strict=True
        )
    ]


def test_conversations_processed_together_equal_each_processed_alone(processor):
    from glimpse.engine.tiny_data import encode_samples, training_text
    from glimpse.engine.tiny_task import make_study_sample

    rng = random.Random(8)
    prepared = []
    for _ in range(6):  # one- and two-picture conversations of different lengths
        sample = make_study_sample(rng, full=0.5, two_images=0.3)
        prepared.append((sample, training_text(processor, sample, rng)))
    together = encode_samples(processor, prepared)
    assert {len(s.pictures) for s, _ in prepared} == {1, 2}
    for (sample, text), e in zip(prepared, together, strict=True):
        alone = encode_samples(processor, [(sample, text)])[0]
        for field in ("input_ids", "labels", "mm_token_type_ids", "pixel_values", "image_grid_thw"):
            assert torch.equal(getattr(e, field), getattr(alone, field)), field
        assert e.picture == (sample.pictures[0] if len(sample.pictures) == 1 else None)
