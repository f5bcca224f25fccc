"""Asking about an image on the real page, answered by a real tiny-model server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tests.e2e.web.pagekit import (
    answer_lengths,
    ask,
    capture_chat_streams,
    captured_answer,
    choose_image,
    drop_file,
    paste_file,
    record_chat_requests,
    scene_png,
    wait_answer_done,
    wait_preview,
    watch_answer_lengths,
)

pytestmark = pytest.mark.e2e


def test_file_input_shows_preview_and_answer_streams_in(page: Any, artifacts: Path) -> None:
    choose_image(page, scene_png((640, 420)))
    meta = page.inner_text("#preview-meta")
    assert meta.startswith("640 × 420 px · ")
    assert meta.endswith(" KB · PNG")

    # Greedy decoding of this question runs to the token limit on the tiny model,
    # so there is plenty to stream (sampling may stop after a token or two).
    page.click("#settings summary")
    page.fill("#max-tokens", "400")
    page.dispatch_event("#max-tokens", "change")
    page.fill("#temperature", "0")
    watch_answer_lengths(page)
    capture_chat_streams(page)
    ask(page, "Describe this picture in detail.")
    answer = wait_answer_done(page, 1)

    lengths = answer_lengths(page)
    assert len(set(lengths)) >= 5, f"the answer arrived in one piece, not streamed: {lengths}"
    assert lengths == sorted(lengths), "the streamed answer shrank while arriving"
    # What the page shows came from the stream: the raw text (before Markdown) matches.
    sent = captured_answer(page, 1)
    assert sent.strip()
    assert lengths[-1] > 0
    stats = answer.locator(".stats").inner_text()
    assert "first token" in stats
    assert "answer tokens" in stats
    page.screenshot(path=str(artifacts / "answer-desktop.png"))


def test_copy_puts_the_raw_answer_on_the_clipboard(page: Any) -> None:
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    choose_image(page, scene_png((320, 200)))
    capture_chat_streams(page)
    ask(page, "Describe the colours.")
    answer = wait_answer_done(page, 1)
    answer.locator("button.copy").click()
    page.wait_for_selector("button.copy[data-i18n='chat.copied']")
    assert page.evaluate("() => navigator.clipboard.readText()") == captured_answer(page, 1)


def test_pasted_image_and_follow_up_keep_the_conversation(page: Any) -> None:
    requests = record_chat_requests(page)
    page.focus("#question")
    pasted = scene_png((300, 200))
    paste_file(page, pasted, name="clip.png")
    wait_preview(page, pasted)

    capture_chat_streams(page)
    ask(page, "What colour is the sky?")
    wait_answer_done(page, 1)
    ask(page, "And the hill?")
    wait_answer_done(page, 2)

    assert len(requests) == 2
    follow_up = requests[1]["messages"]
    assert [m["role"] for m in follow_up] == ["user", "assistant", "user"]
    first_parts = [part["type"] for part in follow_up[0]["content"]]
    assert first_parts == ["image_url", "text"]
    assert follow_up[0]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert all(part["type"] == "text" for part in follow_up[2]["content"]), "the image is sent once, first"
    assert follow_up[1]["content"] == captured_answer(page, 1)
    assert requests[1]["stream"] is True
    assert requests[1]["stream_options"] == {"include_usage": True}

    history = page.locator("#history-list li").all_inner_texts()
    assert history == ["And the hill?", "What colour is the sky?"]


def test_dropped_image_is_previewed(page: Any) -> None:
    dropped = scene_png((150, 110))
    drop_file(page, dropped)
    wait_preview(page, dropped)
    assert page.locator("#dropzone").is_hidden()


def test_stop_ends_the_answer_midway(page: Any) -> None:
    # The tiny model answers in well under a second; a slow network (Chromium's own
    # throttling) stretches the stream out so there is a "midway" to stop at.
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 20, "downloadThroughput": 1500, "uploadThroughput": -1},
    )
    page.click("#settings summary")
    page.fill("#max-tokens", "2000")
    page.dispatch_event("#max-tokens", "change")
    page.fill("#temperature", "1")

    def without_early_end(route: Any) -> None:
        # A random model may draw its end-of-sequence token within a few tokens, before
        # Stop can be clicked; the page cannot ask for ignore_eos, so the test adds it.
        body = json.loads(route.request.post_data or "{}")
        route.continue_(post_data=json.dumps({**body, "ignore_eos": True}))

    page.route("**/v1/chat/completions", without_early_end)
    choose_image(page, scene_png((200, 150)))
    ask(page, "Tell me a long story about this picture.")

    page.wait_for_function(
        "() => (document.querySelector('.msg.assistant .body')?.textContent.length ?? 0) > 0", timeout=60_000
    )
    assert page.locator("#stop-btn").is_visible()
    assert page.locator("#send-btn").is_disabled()
    page.click("#stop-btn")

    answer = wait_answer_done(page, 1)
    assert answer.locator(".status").inner_text() == "Stopped."
    shown = answer.locator(".body").inner_text()
    page.wait_for_timeout(1500)
    assert answer.locator(".body").inner_text() == shown, "text kept arriving after Stop"
    assert not page.locator("#stop-btn").is_visible()
    assert page.locator("#send-btn").is_enabled()


def test_api_key_is_sent_and_kept_only_for_the_tab(page: Any) -> None:
    page.click("#settings summary")
    page.fill("#api-key", "sk-test-123")
    choose_image(page, scene_png((120, 90)))
    with page.expect_request("**/v1/chat/completions") as request_info:
        ask(page, "Hi")
    assert request_info.value.headers["authorization"] == "Bearer sk-test-123"
    wait_answer_done(page, 1)
    assert page.evaluate("() => sessionStorage.getItem('glimpse.apiKey')") == "sk-test-123"
    assert "sk-test-123" not in page.evaluate("() => JSON.stringify(Object.assign({}, localStorage))")


def test_max_tokens_stops_at_the_servers_default_limit(page: Any) -> None:
    # engine.max_new_tokens_limit defaults to 4096; anything above it is a 400.
    assert page.get_attribute("#max-tokens", "max") == "4096"
    page.click("#settings summary")
    page.fill("#max-tokens", "8000")
    page.dispatch_event("#max-tokens", "change")
    assert page.input_value("#max-tokens") == "4096"
    # A value remembered by an older page, which allowed 8192, is brought down too.
    page.evaluate("() => localStorage.setItem('glimpse.settings', JSON.stringify({maxTokens: 8000}))")
    page.reload()
    page.wait_for_selector("body[data-ready='true']")
    assert page.input_value("#max-tokens") == "4096"
    requests = record_chat_requests(page)
    page.route(
        "**/v1/chat/completions",
        lambda route: route.fulfill(
            status=200, headers={"Content-Type": "text/event-stream"}, body="data: [DONE]\n\n"
        ),
    )
    choose_image(page, scene_png((80, 60)))
    ask(page, "Hi")
    wait_answer_done(page, 1)
    assert requests[0]["max_tokens"] == 4096


def test_max_tokens_follows_the_limit_the_server_reports(page: Any) -> None:
    # A server configured below the default says so in /readyz; the field follows it.
    page.evaluate("() => localStorage.setItem('glimpse.settings', JSON.stringify({maxTokens: 2000}))")
    page.route(
        "**/readyz",
        lambda route: route.fulfill(
            status=200,
            headers={"Content-Type": "application/json"},
            body=json.dumps({"status": "ready", "model": "tiny", "max_tokens_limit": 300}),
        ),
    )
    page.reload()
    page.wait_for_function("() => document.querySelector('#max-tokens').max === '300'", timeout=10_000)
    assert page.input_value("#max-tokens") == "300"


def test_replace_and_remove_image(page: Any) -> None:
    choose_image(page, scene_png((200, 100)))
    ask(page, "What is this?")
    wait_answer_done(page, 1)
    # Replacing the image starts a new conversation about the new image.
    choose_image(page, scene_png((100, 300)))
    assert page.locator(".msg").count() == 0
    page.click("#remove-btn")
    assert page.locator("#preview").is_hidden()
    assert page.locator("#dropzone").is_visible()


def test_a_thinking_models_reasoning_is_folded_above_the_answer(page: Any) -> None:
    def chunk(delta: dict[str, str], finish: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return (
            "data: "
            + json.dumps({"id": "x", "object": "chat.completion.chunk", "choices": [choice]})
            + "\n\n"
        )

    body = (
        chunk({"role": "assistant", "content": ""})
        + chunk({"reasoning_content": "The sky is <b>blue</b>, "})
        + chunk({"reasoning_content": "so: blue."})
        + chunk({"content": "**Blue.**"})
        + chunk({}, "stop")
        + "data: [DONE]\n\n"
    )
    page.route(
        "**/v1/chat/completions",
        lambda route: route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body=body),
    )
    choose_image(page, scene_png((80, 60)))
    ask(page, "What colour is the sky?")
    answer = wait_answer_done(page, 1)
    thinking = answer.locator("details.thinking")
    assert thinking.is_visible()
    assert thinking.locator("summary").inner_text() == "Thinking"
    thinking.locator("summary").click()
    assert (
        thinking.locator(".thought").inner_text() == "The sky is <b>blue</b>, so: blue."
    )  # shown, not parsed
    assert answer.locator(".body").inner_text() == "Blue."
    assert answer.locator(".body strong").count() == 1
