"""The tiny model's task: pictures of simple shapes, questions about them, and how answers are graded.

Everything here is deterministic given a ``random.Random``: the training set, the
held-out evaluation set and the tests draw from the same generator with different
seeds. Images are plain or mildly noisy backgrounds with 1 to 4 shapes of one
colour and one kind, any size from 64x64 to 1024x768 (the long side at most 4
times the short one), encoded as JPEG (quality >= 60), PNG or WebP.

Questions and answers come in English and Chinese; the answer is a short phrase
in the question's language that names the word(s) of the vocabulary below.
"""

from __future__ import annotations

import io
import math
import random
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from PIL import Image, ImageDraw

__all__ = [
    "COLORS",
    "FORMATS",
    "POSITIONS",
    "SHAPES",
    "TASKS",
    "Layout",
    "Picture",
    "Question",
    "Turn",
    "Sample",
    "answer",
    "ask",
    "draw",
    "encode",
    "grade",
    "layout",
    "make_sample",
    "make_study_sample",
    "random_picture",
    "shape_mask",
    "study_turns",
]

Lang = Literal["en", "zh"]
Task = Literal["color", "shape", "count", "position", "describe"]
TASKS: tuple[Task, ...] = ("color", "shape", "count", "position", "describe")

#: name -> (Chinese, RGB)
COLORS: dict[str, tuple[str, tuple[int, int, int]]] = {
    "red": ("红色", (220, 30, 30)),
    "green": ("绿色", (30, 160, 50)),
    "blue": ("蓝色", (35, 70, 225)),
    "yellow": ("黄色", (245, 215, 30)),
    "black": ("黑色", (15, 15, 15)),
    "white": ("白色", (248, 248, 248)),
    "orange": ("橙色", (250, 135, 20)),
    "purple": ("紫色", (135, 45, 175)),
}
#: name -> (Chinese, English plural)
SHAPES: dict[str, tuple[str, str]] = {
    "circle": ("圆形", "circles"),
    "square": ("正方形", "squares"),
    "triangle": ("三角形", "triangles"),
}
#: name -> (Chinese, English phrase)
POSITIONS: dict[str, tuple[str, str]] = {
    "left": ("左边", "on the left"),
    "right": ("右边", "on the right"),
    "top": ("上边", "at the top"),
    "bottom": ("下边", "at the bottom"),
    "center": ("中间", "in the center"),
}
FORMATS = ("JPEG", "PNG", "WEBP")

_QUESTIONS: dict[tuple[Task, Lang], tuple[str, ...]] = {
    ("color", "en"): (
        "What color is the shape?",
        "What colour is the shape?",
        "What color is it?",
        "Which color is the shape?",
    ),
    ("shape", "en"): ("What shape is it?", "What shape is this?", "Which shape is it?"),
    ("count", "en"): ("How many shapes are there?", "How many shapes are in the image?", "Count the shapes."),
    ("position", "en"): ("Where is the shape?", "Where is the shape in the image?", "Where is it?"),
    ("describe", "en"): ("Describe the image.", "Describe this image.", "What is in the image?"),
    ("color", "zh"): ("图中图形是什么颜色？", "图形是什么颜色？", "这个图形是什么颜色？"),
    ("shape", "zh"): ("这是什么形状？", "图中图形是什么形状？", "这个图形是什么形状？"),
    ("count", "zh"): ("图中有几个图形？", "图里有多少个图形？", "有几个图形？"),
    ("position", "zh"): ("图形在哪里？", "图形在图中的什么位置？", "图形在什么位置？"),
    ("describe", "zh"): ("描述这张图片。", "描述一下这张图片。", "图片里有什么？"),
}
_ORDINALS = {"en": ("first", "second"), "zh": ("第一", "第二")}


@dataclass(slots=True, frozen=True)
class Picture:
    """What an image shows: ``count`` shapes of one kind and colour; ``position`` when there is one."""

    color: str
    shape: str
    count: int
    position: str | None
    width: int
    height: int
    seed: int


@dataclass(slots=True, frozen=True)
class Question:
    task: Task
    lang: Lang
    text: str
    #: which image of a two-image message the question is about (0 or 1), None with one image
    image_index: int | None = None


@dataclass(slots=True, frozen=True)
class Turn:
    question: Question
    answer: str


@dataclass(slots=True)
class Sample:
    """One conversation: the pictures (sent with the first question) and the turns about them."""

    pictures: list[Picture]
    turns: list[Turn]
    formats: list[str] = field(default_factory=list)
    qualities: list[int] = field(default_factory=list)


def _vary(text: str, lang: Lang, rng: random.Random) -> str:
    """Light variation: an optional "please", case and the final punctuation."""
    if lang == "zh":
        body = text.rstrip("？。")
        end = text[len(body) :]
        if rng.random() < 0.25:
            body = ("请" if body.startswith("描述") else "请问") + body
        end = rng.choice([end, end, "?" if end == "？" else ".", ""])
        return body + end
    body = text.rstrip("?.")
    end = text[len(body) :]
    if rng.random() < 0.25:
        imperative = body.startswith(("Describe", "Count"))
        body = "Please " + body[0].lower() + body[1:] if imperative else body + ", please"
    case = rng.random()
    if case < 0.15:
        body = body.lower()
    elif case < 0.2:
        body = body.upper()
    return body + rng.choice([end, end, end, "", " ?" if end == "?" else " ."])


def ask(task: Task, lang: Lang, rng: random.Random, image_index: int | None = None) -> Question:
    """A question of ``task`` in ``lang``; with ``image_index``, about the first or second image."""
    text = rng.choice(_QUESTIONS[(task, lang)])
    if image_index is not None:
        ordinal = _ORDINALS[lang][image_index]
        if lang == "en":
            text = text.replace("the shape", f"the shape in the {ordinal} image")
            if "image" not in text:
                text = text.rstrip("?.") + f" in the {ordinal} image?"
        else:
            text = f"{ordinal}张图中" + text.removeprefix("图中")
    return Question(task, lang, _vary(text, lang, rng), image_index)


def answer(picture: Picture, task: Task, lang: Lang) -> str:
    """The reference answer: a short phrase naming the vocabulary word(s) in ``lang``."""
    color_zh, _ = COLORS[picture.color]
    shape_zh, shape_plural = SHAPES[picture.shape]
    if task == "color":
        return f"It is {picture.color}." if lang == "en" else f"是{color_zh}。"
    if task == "shape":
        return f"It is a {picture.shape}." if lang == "en" else f"是{shape_zh}。"
    if task == "count":
        if lang == "zh":
            return f"有{picture.count}个图形。"
        return "There is 1 shape." if picture.count == 1 else f"There are {picture.count} shapes."
    if task == "position":
        assert picture.position is not None
        where_zh, where_en = POSITIONS[picture.position]
        return f"It is {where_en}." if lang == "en" else f"在{where_zh}。"
    if picture.count > 1:
        return (
            f"{picture.count} {picture.color} {shape_plural}"
            if lang == "en"
            else (f"有{picture.count}个{color_zh}的{shape_zh}")
        )
    assert picture.position is not None
    where_zh, where_en = POSITIONS[picture.position]
    return (
        f"a {picture.color} {picture.shape} {where_en}"
        if lang == "en"
        else (f"{where_zh}有一个{color_zh}的{shape_zh}")
    )


def random_picture(
    rng: random.Random,
    *,
    count: int | None = None,
    color: str | None = None,
    shape: str | None = None,
    position: str | None = None,
    size: tuple[int, int] | None = None,
) -> Picture:
    """A random picture description (any argument fixes that attribute)."""
    if size is None:
        while True:
            width = round(math.exp(rng.uniform(math.log(64), math.log(1024))))
            height = round(math.exp(rng.uniform(math.log(64), math.log(768))))
            if max(width, height) <= 4 * min(width, height):
                break
        size = (width, height)
    count = count if count is not None else rng.choice([1, 1, 2, 3, 4])
    if count == 1 and position is None:
        position = rng.choice(list(POSITIONS))
    return Picture(
        color=color or rng.choice(list(COLORS)),
        shape=shape or rng.choice(list(SHAPES)),
        count=count,
        position=position if count == 1 else None,
        width=size[0],
        height=size[1],
        seed=rng.getrandbits(32),
    )


def _background(rgb: tuple[int, int, int], rng: random.Random) -> tuple[int, int, int]:
    """A muted background colour far enough from the shape's colour."""
    while True:
        grey = rng.randint(0, 255)
        tint = [max(0, min(255, grey + rng.randint(-25, 25))) for _ in range(3)]
        if math.dist(tint, rgb) > 160:
            return (tint[0], tint[1], tint[2])


def _centres(picture: Picture, size: float, rng: random.Random) -> list[tuple[float, float]]:
    w, h = picture.width, picture.height
    half = size / 2
    if picture.position is not None:
        regions = {
            "left": ((0.08, 0.28), (0.3, 0.7)),
            "right": ((0.72, 0.92), (0.3, 0.7)),
            "top": ((0.3, 0.7), (0.08, 0.28)),
            "bottom": ((0.3, 0.7), (0.72, 0.92)),
            "center": ((0.42, 0.58), (0.42, 0.58)),
        }
        (x0, x1), (y0, y1) = regions[picture.position]
        x = min(max(rng.uniform(x0, x1) * w, half + 1), w - half - 1)
        y = min(max(rng.uniform(y0, y1) * h, half + 1), h - half - 1)
        return [(x, y)]
    while True:  # rejection sampling: shapes apart from each other
        centres: list[tuple[float, float]] = []
        for _ in range(200):
            c = (rng.uniform(half + 1, w - half - 1), rng.uniform(half + 1, h - half - 1))
            if all(math.dist(c, o) > size * 1.25 for o in centres):
                centres.append(c)
                if len(centres) == picture.count:
                    return centres
        size *= 0.9
        half = size / 2


def _size(picture: Picture, rng: random.Random) -> float:
    """The shapes' size: from 1/8 of the short side; 40 % of the pictures show big shapes.

    Big shapes fill much of the picture, so that even a model that has not yet learnt
    where to look sees their colour; the others teach it to find small ones.
    """
    short = min(picture.width, picture.height)
    big = rng.random() < 0.4
    if picture.count == 1:
        size = rng.uniform(0.45, 0.85) if big else rng.uniform(0.125, 0.45)
        room = {
            "left": picture.width,
            "right": picture.width,
            "top": picture.height,
            "bottom": picture.height,
        }
        return min(size * short, 0.4 * room.get(picture.position or "", 10 * short))
    high = {2: 0.3, 3: 0.24, 4: 0.22}[picture.count]
    return (rng.uniform(high, high * 1.5) if big else rng.uniform(0.125, high)) * short


@dataclass(slots=True, frozen=True)
class Layout:
    """Where ``draw`` puts a picture's shapes, in the picture's pixels."""

    size: float
    centres: tuple[tuple[float, float], ...]


def draw(picture: Picture) -> Image.Image:
    """Render ``picture`` (deterministic for its seed) as an RGB image."""
    rng = random.Random(picture.seed)
    base = COLORS[picture.color][1]
    rgb = tuple(max(0, min(255, c + rng.randint(-18, 18))) for c in base)
    background = _background(base, rng)
    image = Image.new("RGB", (picture.width, picture.height), background)
    _paint(ImageDraw.Draw(image), picture.shape, _layout(picture, rng), (rgb[0], rgb[1], rgb[2]))
    if rng.random() < 0.5:
        image = _noisy(image, rng.uniform(3, 14), rng.getrandbits(32))
    return image


def layout(picture: Picture) -> Layout:
    """The size and centres ``draw`` gives the shapes (its random draws, replayed up to there)."""
    rng = random.Random(picture.seed)
    base = COLORS[picture.color][1]
    for _ in base:
        rng.randint(-18, 18)
    _background(base, rng)
    return _layout(picture, rng)


def shape_mask(picture: Picture) -> Image.Image:
    """The picture's shapes in white on black (mode ``L``), without noise."""
    mask = Image.new("L", (picture.width, picture.height), 0)
    _paint(ImageDraw.Draw(mask), picture.shape, layout(picture), 255)
    return mask


def _layout(picture: Picture, rng: random.Random) -> Layout:
    size = _size(picture, rng)
    return Layout(size, tuple(_centres(picture, size, rng)))


def _paint(canvas: ImageDraw.ImageDraw, shape: str, where: Layout, fill: Any) -> None:
    half = where.size / 2
    for x, y in where.centres:
        box = (x - half, y - half, x + half, y + half)
        if shape == "circle":
            canvas.ellipse(box, fill=fill)
        elif shape == "square":
            canvas.rectangle(box, fill=fill)
        else:
            canvas.polygon([(x, y - half), (x + half, y + half * 0.8), (x - half, y + half * 0.8)], fill=fill)


def _noisy(image: Image.Image, sigma: float, seed: int) -> Image.Image:
    """Mild grey gaussian noise (seeded, so the picture stays deterministic)."""
    import numpy as np

    pixels = np.asarray(image, dtype=np.int16)
    noise = np.random.default_rng(seed).normal(0.0, sigma, pixels.shape[:2] + (1,))
    return Image.fromarray(np.clip(pixels + noise.astype(np.int16), 0, 255).astype(np.uint8), "RGB")


def encode(image: Image.Image, fmt: str, quality: int = 90) -> bytes:
    out = io.BytesIO()
    if fmt == "JPEG":
        image.save(out, "JPEG", quality=quality)
    elif fmt == "WEBP":
        image.save(out, "WEBP", quality=quality, method=0)
    else:
        image.save(out, "PNG", compress_level=1)
    return out.getvalue()


def make_sample(rng: random.Random, *, max_turns: int = 4, two_images: float = 0.15) -> Sample:
    """A random conversation: one picture and 1..``max_turns`` questions, or two pictures and one."""
    langs: tuple[Lang, Lang] = ("en", "zh")
    if rng.random() < two_images:
        pictures = [random_picture(rng), random_picture(rng)]
        index = rng.randint(0, 1)
        task: Task = rng.choice(("color", "color", "shape"))
        question = ask(task, rng.choice(langs), rng, image_index=index)
        turns = [Turn(question, answer(pictures[index], task, question.lang))]
    else:
        pictures = [random_picture(rng)]
        tasks: list[Task] = [t for t in TASKS if t != "position" or pictures[0].count == 1]
        turns = []
        for task in rng.sample(tasks, rng.randint(1, min(max_turns, len(tasks)))):
            question = ask(task, rng.choice(langs), rng)
            turns.append(Turn(question, answer(pictures[0], task, question.lang)))
    sample = Sample(pictures, turns)
    for _ in pictures:
        sample.formats.append(rng.choice(FORMATS))
        sample.qualities.append(rng.randint(60, 95))
    return sample


def make_study_sample(rng: random.Random, *, full: float = 0.7, two_images: float = 0.15) -> Sample:
    """A training conversation: most often one picture with every question about it, in random order.

    Asking all of a picture's questions in one conversation gives four or five
    supervised answers for one pass of the vision tower; the rest are
    ``make_sample``'s two-image and shorter conversations. Their pictures show 1 to 4
    shapes equally often, as the count questions of the held-out table do
    (``random_picture`` shows one shape in two pictures out of five, for the place questions).
    """
    roll = rng.random()
    if roll >= full:
        return make_sample(rng, two_images=1.0 if roll < full + two_images else 0.0)
    picture = random_picture(rng, count=rng.randint(1, 4))
    return Sample([picture], study_turns(picture, rng), [rng.choice(FORMATS)], [rng.randint(60, 95)])


def study_turns(picture: Picture, rng: random.Random) -> list[Turn]:
    """Every question ``picture`` can answer, in random order, each in a random language."""
    tasks: list[Task] = [t for t in TASKS if t != "position" or picture.count == 1]
    rng.shuffle(tasks)
    turns = []
    for task in tasks:
        question = ask(task, rng.choice(("en", "zh")), rng)
        turns.append(Turn(question, answer(picture, task, question.lang)))
    return turns


_WORDS: dict[tuple[str, Lang], dict[str, str]] = {
    ("color", "en"): {c: c for c in COLORS},
    ("color", "zh"): {zh: c for c, (zh, _) in COLORS.items()},
    ("shape", "en"): {s: s for s in SHAPES},
    ("shape", "zh"): {zh: s for s, (zh, _) in SHAPES.items()},
    ("position", "en"): {p: p for p in POSITIONS},
    ("position", "zh"): {zh: p for p, (zh, _) in POSITIONS.items()},
    ("count", "en"): {str(n): str(n) for n in range(1, 5)},
    ("count", "zh"): {str(n): str(n) for n in range(1, 5)},
}


def _found(answer_text: str, kind: str, lang: Lang) -> set[str]:
    words = _WORDS[(kind, lang)]
    if lang == "en":
        text = answer_text.lower()
        return {v for w, v in words.items() if re.search(rf"(?<![a-z0-9]){w}s?(?![a-z0-9])", text)}
    return {v for w, v in words.items() if w in answer_text}


def grade(picture: Picture, task: Task, lang: Lang, answer_text: str) -> bool:
    """Right when the answer names exactly the expected word(s), in the question's language."""
    expected: dict[str, str | None]
    if task == "describe":
        expected = {"color": picture.color, "shape": picture.shape}
        expected.update(
            {"count": str(picture.count)} if picture.count > 1 else {"position": picture.position}
        )
    else:
        value = {"color": picture.color, "shape": picture.shape, "count": str(picture.count)}
        expected = {task: value.get(task, picture.position)}
    return all(_found(answer_text, kind, lang) == {word} for kind, word in expected.items())
