"""The tiny model's task: deterministic pictures in bounds, answers in the question's language, grading."""

from __future__ import annotations

import random

import numpy as np
import pytest

from glimpse.engine.tiny_task import (
    COLORS,
    POSITIONS,
    SHAPES,
    TASKS,
    Picture,
    answer,
    ask,
    draw,
    encode,
    grade,
    layout,
    make_sample,
    random_picture,
    shape_mask,
)


def test_pictures_are_deterministic_and_within_the_size_bounds():
    rng = random.Random(5)
    for _ in range(200):
        pic = random_picture(rng)
        assert 64 <= pic.width <= 1024
        assert 64 <= pic.height <= 768
        assert max(pic.width, pic.height) <= 4 * min(pic.width, pic.height)
        assert (pic.count == 1) == (pic.position is not None)
    pic = random_picture(random.Random(1), size=(300, 200))
    assert encode(draw(pic), "PNG") == encode(draw(pic), "PNG")


def test_the_shape_has_its_colour_and_stays_in_its_region():
    pic = Picture("red", "square", 1, "left", 400, 200, 3)
    img = draw(pic)
    red = [
        (x, y)
        for x in range(0, 400, 4)
        for y in range(0, 200, 4)
        if (lambda p: p[0] > 150 and p[1] < 100 and p[2] < 100)(img.getpixel((x, y)))
    ]
    assert red, "no red pixels"
    assert max(x for x, _ in red) < 400 / 2
    assert min(y for _, y in red) > 0
    assert max(y for _, y in red) < 200


def test_the_layout_is_where_the_shapes_are_drawn():
    rng = random.Random(11)
    for _ in range(40):
        pic = random_picture(rng, color="blue")
        where, image, mask = layout(pic), draw(pic), shape_mask(pic)
        assert len(where.centres) == pic.count
        for x, y in where.centres:
            assert mask.getpixel((int(x), int(y))) == 255
            r, g, b = image.getpixel((int(x), int(y)))
            assert b > 150, (pic, (r, g, b))
            assert max(r, g) < 110, (pic, (r, g, b))
        covered = float((np.asarray(mask) > 0).mean())
        side = where.size / max(pic.width, pic.height)
        assert covered >= pic.count * 0.35 * side * side  # a triangle covers 0.45 of its box


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_reference_answers_grade_right_and_name_the_vocabulary(lang):
    rng = random.Random(2)
    for color in COLORS:
        for shape in SHAPES:
            for count, position in [(1, p) for p in POSITIONS] + [(n, None) for n in (2, 3, 4)]:
                pic = Picture(color, shape, count, position, 100, 100, 0)
                for task in TASKS:
                    if task == "position" and position is None:
                        continue
                    text = answer(pic, task, lang)
                    assert grade(pic, task, lang, text), text
                    assert ask(task, lang, rng).text


def test_examples_from_the_issue():
    pic = Picture("red", "circle", 1, "left", 100, 100, 0)
    assert answer(pic, "describe", "en") == "a red circle on the left"
    assert answer(pic, "describe", "zh") == "左边有一个红色的圆形"
    three = Picture("blue", "triangle", 3, None, 100, 100, 0)
    assert answer(three, "describe", "en") == "3 blue triangles"
    assert answer(three, "count", "zh") == "有3个图形。"


@pytest.mark.parametrize(
    ("task", "lang", "text", "right"),
    [
        ("color", "en", "It is red.", True),
        ("color", "en", "It is blue.", False),
        ("color", "en", "red or blue", False),  # naming two colours is not an answer
        ("color", "en", "是红色。", False),  # wrong language
        ("color", "zh", "是红色。", True),
        ("shape", "en", "It is a circle.", True),
        ("count", "en", "There are 2 shapes.", False),
        ("position", "zh", "在左边。", True),
        ("position", "en", "It is on the right.", False),
        ("describe", "en", "a red circle on the left", True),
        ("describe", "en", "a red square on the left", False),
        ("describe", "zh", "左边有一个红色的圆形", True),
    ],
)
def test_grading(task, lang, text, right):
    pic = Picture("red", "circle", 1, "left", 100, 100, 0)
    assert grade(pic, task, lang, text) is right


def test_questions_vary_lightly_and_samples_are_reproducible():
    texts = {ask("color", "en", random.Random(i)).text for i in range(60)}
    assert len(texts) > 10
    assert any("please" in t.lower() for t in texts)
    two = ask("color", "zh", random.Random(0), image_index=1).text
    assert two.startswith(("第二张图", "请问第二张图"))
    first = make_sample(random.Random(9))
    again = make_sample(random.Random(9))
    assert first == again
