"""The page sends the image the person chose: the trained tiny model names its colour, in Chromium.

Also takes the README's screenshots (with ``GLIMPSE_UPDATE_SCREENSHOTS=1``), so they show
real answers of the shipped tiny model.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from tests.e2e.seeing import data, picture
from tests.e2e.web.pagekit import (
    DESKTOP,
    PHONE,
    REPO,
    ask,
    capture_chat_streams,
    captured_answer,
    choose_image,
    wait_answer_done,
)

pytestmark = pytest.mark.e2e


@pytest.fixture
def base_url(seeing_server: Any) -> str:
    return str(seeing_server.base_url)


@pytest.mark.parametrize(("color", "shape"), [("red", "circle"), ("blue", "square"), ("green", "triangle")])
def test_the_page_sends_the_chosen_image(page: Any, color: str, shape: str) -> None:
    choose_image(page, data(picture(color, shape, size=(320, 240))), name=f"{color}.png")
    capture_chat_streams(page)
    ask(page, "What color is the shape?")
    answer = wait_answer_done(page, 1)
    assert color in captured_answer(page, 1)
    assert color in answer.inner_text()
    ask(page, "图形是什么颜色？")  # a follow-up about the same image
    wait_answer_done(page, 2)
    assert {"red": "红色", "blue": "蓝色", "green": "绿色"}[color] in captured_answer(page, 2)


def test_screenshots_desktop_and_phone(page: Any, artifacts: Path, update_docs_screenshots: bool) -> None:
    choose_image(page, data(picture("orange", "triangle", position="left", size=(640, 420))))
    capture_chat_streams(page)
    ask(page, "What color is the shape?")
    wait_answer_done(page, 1)
    ask(page, "图形是什么颜色？")
    wait_answer_done(page, 2)
    assert "orange" in captured_answer(page, 1)
    assert "橙色" in captured_answer(page, 2)
    page.mouse.move(0, 0)  # no hover highlight in the pictures
    for name, viewport in {"desktop.png": DESKTOP, "phone.png": PHONE}.items():
        page.set_viewport_size(viewport)
        # Desktop: the top of the page. Phone: scrolled to the conversation and question box.
        page.evaluate(
            "(top) => window.scrollTo(0, top ? 0 : document.body.scrollHeight)", name == "desktop.png"
        )
        path = artifacts / name
        page.screenshot(path=str(path))
        assert path.stat().st_size > 10_000
        if update_docs_screenshots:
            docs = REPO / "docs" / "screenshots"
            docs.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, docs / name)
    # At phone width nothing may stick out sideways.
    assert page.evaluate("() => document.documentElement.scrollWidth") <= PHONE["width"]
