"""The page's messages for bad files, server refusals, a busy server, lost network, a loading model.

Bad files are real: the browser rejects them before any upload, and a corrupt
PNG goes to the real server, whose ``invalid_image`` error the page explains.
Busy (429/503), guard refusals and a loading model cannot be provoked on demand
from the shared tiny server, so those tests answer the page's request with the
exact documented error response (Playwright routing) and check what it shows.
"""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from PIL import Image
from playwright.sync_api import expect
from tests.e2e.web.pagekit import (
    DESKTOP,
    ask,
    choose_image,
    notice,
    open_page,
    record_chat_requests,
    scene_png,
    upload,
    wait_answer_done,
)

pytestmark = pytest.mark.e2e

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def gif_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 200, 10)).save(buffer, "GIF")
    return buffer.getvalue()


GIF = gif_bytes()


def error_body(code: str, message: str, kind: str = "invalid_request_error") -> str:
    return json.dumps({"error": {"message": message, "type": kind, "code": code}})


def test_oversized_file_is_refused_in_the_browser(page: Any) -> None:
    requests = record_chat_requests(page)
    oversized = PNG_MAGIC + bytes(6 * 1024 * 1024)
    upload(page, oversized, name="huge.png")
    key, text = notice(page, "image-error")
    assert key == "err.too_large"
    assert "6.0 MB" in text
    assert "5.0 MB" in text
    assert page.locator("#preview").is_hidden()
    assert requests == []


def test_wrong_type_is_detected_from_the_bytes_not_the_name(page: Any) -> None:
    upload(page, GIF, name="photo.png", mime="image/png")
    key, text = notice(page, "image-error")
    assert key == "err.wrong_type"
    assert "JPEG, PNG or WebP" in text
    assert page.locator("#preview").is_hidden()
    # A real PNG with a misleading name and type is fine: the bytes decide.
    upload(page, scene_png((64, 48)), name="notes.txt", mime="text/plain")
    expect(page.locator("#preview-meta")).to_contain_text("64 × 48 px")
    assert page.locator("#image-error").is_hidden()


def test_messages_follow_the_language(browser: Any, base_url: str, page_log: Any) -> None:
    page = open_page(browser, base_url, page_log, locale="zh-CN")
    try:
        upload(page, GIF, name="a.png")
        key, text = notice(page, "image-error")
        assert key == "err.wrong_type"
        assert "不是 JPEG、PNG 或 WebP 图片" in text
        page.click("#lang-toggle")
        assert "is not a JPEG, PNG or WebP image" in page.inner_text("#image-error")
    finally:
        page.context.close()


def test_corrupt_image_gets_the_servers_invalid_image_message(page: Any) -> None:
    truncated = scene_png((320, 200))[:200]
    upload(page, truncated, name="broken.png")
    # The browser cannot decode it, so it shows no dimensions, and leaves the verdict to the server.
    expect(page.locator("#preview-meta")).to_contain_text("PNG")
    ask(page, "What is this?")
    key, text = notice(page, "chat-error")
    assert key == "err.invalid_image"
    assert "could not read this image" in text
    assert "Server said:" in text  # the server's own words follow, for the curious
    assert page.locator(".msg").count() == 0
    assert page.input_value("#question") == "What is this?", "the question is handed back to retry"


@pytest.mark.parametrize(
    ("status", "code", "headers", "expected_key", "expected_text"),
    [
        (429, "rate_limited", {"Retry-After": "7"}, "err.rate_limited", "Try again in 7 s"),
        (503, "overloaded", {"Retry-After": "12"}, "err.overloaded", "The server is busy. Try again in 12 s"),
        (503, "overloaded", {}, "err.overloaded_now", "The server is busy."),
        (400, "prompt_rejected", {}, "err.prompt_rejected", "safety check refused"),
        (400, "invalid_request", {}, "err.validation", "rejected the request as invalid"),
        (401, "invalid_api_key", {}, "err.invalid_api_key", "Enter a valid key under Settings"),
        (413, "image_too_large", {}, "err.image_too_large", "image is too large"),
        (415, "unsupported_media_type", {}, "err.unsupported_media_type", "Use JPEG, PNG or WebP"),
    ],
)
def test_server_error_responses_are_explained(
    page: Any, status: int, code: str, headers: dict[str, str], expected_key: str, expected_text: str
) -> None:
    page.route(
        "**/v1/chat/completions",
        lambda route: route.fulfill(
            status=status,
            headers={**headers, "Content-Type": "application/json"},
            body=error_body(code, f"server words for {code}"),
        ),
    )
    choose_image(page, scene_png((80, 60)))
    ask(page, "Anything?")
    key, text = notice(page, "chat-error")
    assert key == expected_key
    assert expected_text in text
    assert f"server words for {code}" in text
    if code == "invalid_api_key":
        assert page.locator("#settings").get_attribute("open") is not None


def test_max_tokens_above_the_servers_limit_is_explained_in_its_words(page: Any) -> None:
    # The page stops at the default limit (4096), but a server can be set lower. The
    # real server's refusal is provoked by raising the page's request above its limit.
    def raise_max_tokens(route: Any) -> None:
        body = json.loads(route.request.post_data or "{}")
        route.continue_(post_data=json.dumps({**body, "max_tokens": 5000}))

    page.route("**/v1/chat/completions", raise_max_tokens)
    choose_image(page, scene_png((80, 60)))
    ask(page, "Anything?")
    key, text = notice(page, "chat-error")
    assert key == "err.max_tokens"
    assert "Lower it under Settings" in text
    assert "max_tokens is 5000, above this server's limit of 4096." in text  # the server's own words
    assert "HTTP 400" not in text
    assert page.locator("#settings").get_attribute("open") is not None


def test_retry_countdown_reaches_try_again_now(page: Any) -> None:
    page.route(
        "**/v1/chat/completions",
        lambda route: route.fulfill(
            status=429,
            headers={"Retry-After": "2", "Content-Type": "application/json"},
            body=error_body("rate_limited", "slow down"),
        ),
    )
    choose_image(page, scene_png((80, 60)))
    ask(page, "Anything?")
    assert notice(page, "chat-error")[0] == "err.rate_limited"
    expect(page.locator("#chat-error")).to_have_attribute("data-key", "err.retry_ready", timeout=5000)


def test_error_event_after_the_stream_started(page: Any) -> None:
    choice = {"index": 0, "delta": {"content": "Half"}, "finish_reason": None}
    chunk = {"id": "x", "object": "chat.completion.chunk", "choices": [choice]}
    failure = {"error": {"message": "engine failed", "type": "server_error", "code": "engine_error"}}
    body = f"data: {json.dumps(chunk)}\n\ndata: {json.dumps(failure)}\n\n"
    page.route(
        "**/v1/chat/completions",
        lambda route: route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body=body),
    )
    choose_image(page, scene_png((80, 60)))
    ask(page, "Anything?")
    answer = wait_answer_done(page, 1)
    assert answer.locator(".body").inner_text() == "Half"
    key, text = notice(page, "chat-error")
    assert key == "err.stream_failed"
    assert "engine failed" in text


def test_network_loss_is_reported(page: Any) -> None:
    choose_image(page, scene_png((80, 60)))
    page.route("**/v1/chat/completions", lambda route: route.abort("internetdisconnected"))
    ask(page, "Anything?")
    key, text = notice(page, "chat-error")
    assert key == "err.network"
    assert "Could not reach the server" in text


def test_offline_banner(page: Any) -> None:
    page.context.set_offline(True)
    expect(page.locator("#banner")).to_have_attribute("data-state", "offline")
    assert "You are offline" in page.inner_text("#banner")
    page.context.set_offline(False)
    expect(page.locator("#banner")).to_be_hidden(timeout=10_000)


def test_not_ready_banner_until_readyz_says_ready(browser: Any, base_url: str, page_log: Any) -> None:
    context = browser.new_context(locale="en-US", viewport=DESKTOP, base_url=base_url)
    loading = {"left": 2}

    def readyz(route: Any) -> None:
        if loading["left"] > 0:
            loading["left"] -= 1
            route.fulfill(status=503, headers={"Retry-After": "1"}, body=error_body("not_ready", "loading"))
        else:
            route.continue_()  # from now on the real server answers

    context.route("**/readyz", readyz)
    page = context.new_page()
    try:
        page.goto("/")
        expect(page.locator("#banner")).to_have_attribute("data-state", "not_ready")
        assert "still loading the model" in page.inner_text("#banner")
        expect(page.locator("#banner")).to_have_attribute("data-state", "ready", timeout=10_000)
        expect(page.locator("#banner")).to_be_hidden(timeout=10_000)
    finally:
        context.close()
