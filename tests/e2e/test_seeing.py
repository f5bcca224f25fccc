"""The right image reaches the model: the trained tiny model answers about it, over real HTTP.

``seeing_server`` serves ``--model tiny`` (the trained checkpoint that ships in the
package) with continuous batching. The questions are the tiny model's task, so a
dropped, flipped, rotated, channel-swapped or mixed-up image gives a wrong answer.
"""

from __future__ import annotations

import json
import random
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image, ImageDraw
from tests.e2e.seeing import chat, data, image, infer, picture, save, user

from glimpse.engine.tiny_task import answer, ask, encode, grade, layout, random_picture


@pytest.mark.parametrize("color", ["red", "green", "blue"])
def test_every_api_sees_the_colour(seeing_server, color):
    url = seeing_server.base_url
    raw = data(picture(color, "square", size=(200, 150)), "PNG")
    assert "It is " + color in infer(url, raw, "What color is the shape?")

    analyzed = httpx.post(
        f"{url}/v1/analyze",
        files={"image": ("shape.png", raw, "image/png")},
        data={"question": "图中图形是什么颜色？", "max_new_tokens": "16"},
        timeout=120,
    )
    assert analyzed.status_code == 200, analyzed.text
    assert grade(picture(color), "color", "zh", analyzed.json()["response"])

    messages = [user("What colour is the shape?", raw)]
    whole = chat(url, messages)
    assert grade(picture(color), "color", "en", whole)
    body = {"model": "tiny", "messages": messages, "max_tokens": 24, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as response:
        assert response.status_code == 200
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    deltas = [json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1]]
    assert "".join(deltas) == whole
    assert sum(1 for d in deltas if d) > 1  # really streamed


def _mixed_requests(n: int) -> list[tuple[object, str, str, bytes, str]]:
    """``n`` pictures of many sizes and formats, each with a colour or a place question, English or Chinese.

    The two tasks the shipped model meets its targets on (99-100 %, see its MANIFEST.json);
    a mirrored, rotated or swapped image gets the place wrong, a channel swap the colour. The
    shapes are at least a quarter of the picture's short side: the model's own errors are on
    small shapes (a 13-pixel red circle in a 97 x 300 picture, 8 pixels once resized, was
    called orange), and this test is about the image path, not the model's eyesight.
    """
    rng = random.Random(13)
    sizes = [(64, 64), (1024, 768), (97, 300), (640, 200), (300, 300), (128, 96), (500, 700), (800, 240)]
    tasks = ("color", "position")
    cases = []
    for i in range(n):
        task = tasks[i % len(tasks)]
        count = 1 if task == "position" else (rng.randint(1, 4) if task == "count" else None)
        pic = random_picture(rng, size=sizes[i % len(sizes)], count=count)
        while layout(pic).size < min(pic.width, pic.height) / 4:
            pic = random_picture(rng, size=sizes[i % len(sizes)], count=count)
        lang = "en" if i % 2 else "zh"
        fmt = ("JPEG", "PNG", "WEBP")[i % 3]
        cases.append((pic, task, lang, encode(image(pic), fmt, 85), ask(task, lang, rng).text))
    return cases


def test_concurrent_mixed_requests_are_right_and_equal_one_at_a_time(seeing_server):
    cases = _mixed_requests(24)

    def ask_server(case):
        _pic, _task, _lang, raw, question = case
        return chat(seeing_server.base_url, [user(question, raw)])

    alone = [ask_server(case) for case in cases]
    with ThreadPoolExecutor(len(cases)) as pool:
        together = list(pool.map(ask_server, cases))
    assert together == alone
    wrong = [
        (pic, question, text, answer(pic, task, lang))
        for (pic, task, lang, _raw, question), text in zip(cases, together, strict=True)
        if not grade(pic, task, lang, text)
    ]
    assert wrong == []


@pytest.mark.parametrize(
    ("orientation", "stored"), [(6, Image.Transpose.ROTATE_90), (3, Image.Transpose.ROTATE_180)]
)
def test_exif_rotated_jpeg_is_seen_as_displayed(seeing_server, orientation, stored):
    shown = image(picture("blue", "circle", position="left", size=(300, 200)))
    exif = Image.Exif()
    exif[0x0112] = orientation
    raw = save(shown.transpose(stored), "JPEG", quality=90, exif=exif)
    text = chat(seeing_server.base_url, [user("Where is the shape?", raw, mime="image/jpeg")])
    assert "left" in text


def _transparent(color: tuple[int, int, int], fmt: str) -> bytes:
    img = Image.new("RGBA", (160, 120), (0, 0, 0, 0))
    ImageDraw.Draw(img).ellipse((50, 30, 110, 90), fill=(*color, 255))
    return save(img, fmt, **({"lossless": True} if fmt == "WEBP" else {}))


def _sixteen_bit(pic) -> bytes:
    grey = image(pic).convert("L")
    wide = Image.eval(grey, lambda v: v).convert("I")
    return save(wide.point(lambda v: v * 257).convert("I;16"), "PNG")


@pytest.mark.parametrize(
    ("name", "make", "color"),
    [
        ("palette PNG", lambda: save(image(picture("red", "square")).quantize(16), "PNG"), "red"),
        ("16-bit grey PNG", lambda: _sixteen_bit(picture("white", "circle")), "white"),
        ("grey PNG", lambda: save(image(picture("black", "triangle")).convert("L"), "PNG"), "black"),
        ("CMYK JPEG", lambda: save(image(picture("green", "circle")).convert("CMYK"), "JPEG"), "green"),
        ("RGBA PNG, transparent", lambda: _transparent((220, 30, 30), "PNG"), "red"),
        ("RGBA WebP, transparent", lambda: _transparent((35, 70, 225), "WEBP"), "blue"),
    ],
)
def test_unusual_image_modes_keep_their_colour(seeing_server, name, make, color):
    text = infer(seeing_server.base_url, make(), "What color is the shape?")
    assert grade(picture(color), "color", "en", text), (name, text)


@pytest.mark.parametrize(("shape", "count", "position"), [("triangle", 1, "right"), ("square", 3, None)])
def test_shape_count_and_place_are_seen(seeing_server, shape, count, position):
    pic = picture("orange", shape, count=count, position=position, size=(320, 240))
    raw = data(pic, "JPEG")
    url = seeing_server.base_url
    assert grade(pic, "shape", "en", infer(url, raw, "What shape is it?"))
    assert grade(pic, "count", "zh", chat(url, [user("图中有几个图形？", raw, mime="image/jpeg")]))
    if position is not None:
        assert grade(pic, "position", "en", chat(url, [user("Where is the shape?", raw, mime="image/jpeg")]))


def test_a_follow_up_turn_asks_about_the_image_in_the_history(seeing_server):
    raw = data(picture("green", "triangle", position="top"))
    history = [user("What shape is it?", raw), {"role": "assistant", "content": "It is a triangle."}]
    url = seeing_server.base_url
    assert "green" in chat(url, [*history, {"role": "user", "content": "What color is the shape?"}])
    assert "绿色" in chat(url, [*history, {"role": "user", "content": "图中图形是什么颜色？"}])


def test_a_question_outside_the_task_gets_a_short_answer(seeing_server):
    raw = data(picture("yellow", "circle"))
    text = chat(seeing_server.base_url, [user("Who painted the Mona Lisa?", raw)])
    assert 0 < len(text) < 200
