"""Language, keyboard use, and safe rendering of what the model says."""

from __future__ import annotations

import json
from typing import Any

import pytest
from playwright.sync_api import expect
from tests.e2e.web.pagekit import (
    ask,
    choose_image,
    open_page,
    record_chat_requests,
    scene_png,
    wait_answer_done,
)

pytestmark = pytest.mark.e2e


def test_default_language_follows_the_browser(browser: Any, base_url: str, page_log: Any) -> None:
    page = open_page(browser, base_url, page_log, locale="zh-CN")
    try:
        assert page.evaluate("() => document.documentElement.lang") == "zh-CN"
        assert page.inner_text("#send-btn") == "发送"
        assert page.get_attribute("#question", "placeholder") == "这张图片里有什么？"
    finally:
        page.context.close()


def test_language_switch_is_remembered(page: Any) -> None:
    assert page.inner_text("#send-btn") == "Send"
    page.click("#lang-toggle")
    assert page.evaluate("() => document.documentElement.lang") == "zh-CN"
    assert page.inner_text("#send-btn") == "发送"
    assert page.inner_text("#lang-toggle") == "English"
    assert page.get_attribute("#lang-toggle", "aria-label") == "将界面切换为英文"
    page.reload()
    page.wait_for_selector("body[data-ready='true']")
    assert page.inner_text("#send-btn") == "发送"
    page.click("#lang-toggle")
    assert page.inner_text("#send-btn") == "Send"


def test_answer_labels_switch_language_too(page: Any) -> None:
    choose_image(page, scene_png((90, 60)))
    ask(page, "Hi")
    answer = wait_answer_done(page, 1)
    assert "first token" in answer.locator(".stats").inner_text()
    page.click("#lang-toggle")
    assert "首 token" in answer.locator(".stats").inner_text()
    assert answer.locator("button.copy").inner_text() == "复制"
    assert "像素" in page.inner_text("#preview-meta")


def test_both_languages_have_every_string(page: Any) -> None:
    tables = page.evaluate(
        """async () => {
            const { STRINGS } = await import("/static/i18n.js");
            const selector = "[data-i18n],[data-i18n-placeholder],[data-i18n-aria-label]";
            const used = [...document.querySelectorAll(selector)]
                .flatMap((el) => [el.dataset.i18n, el.dataset.i18nPlaceholder, el.dataset.i18nAriaLabel])
                .filter(Boolean);
            return { en: Object.keys(STRINGS.en), zh: Object.keys(STRINGS.zh), used };
        }"""
    )
    assert sorted(tables["en"]) == sorted(tables["zh"])
    assert set(tables["used"]) <= set(tables["en"])


def test_keyboard_alone(page: Any) -> None:
    requests = record_chat_requests(page)
    # Listen for the file chooser before anything else: Playwright turns on its
    # interception asynchronously, and a chooser opened before that is missed.
    choosers: list[Any] = []
    page.on("filechooser", lambda chooser: choosers.append(chooser))
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.className") == "skip-link"
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.id") == "choose-btn"
    outline = page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle")
    assert outline == "solid", "keyboard focus must be visible"
    page.keyboard.press("Enter")
    for _ in range(50):
        if choosers:
            break
        page.wait_for_timeout(100)
    assert choosers, "Enter on the choose button did not open the file chooser"
    chosen = {"name": "k.png", "mimeType": "image/png", "buffer": scene_png((120, 80))}
    choosers[0].set_files(files=[chosen])
    expect(page.locator("#preview-meta")).to_contain_text("120 × 80")
    assert page.evaluate("() => document.activeElement.id") == "question"
    page.keyboard.type("first line")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("second line")
    assert page.input_value("#question") == "first line\nsecond line"
    assert requests == []
    page.keyboard.press("Enter")
    wait_answer_done(page, 1)
    assert len(requests) == 1
    assert requests[0]["messages"][0]["content"][-1]["text"] == "first line\nsecond line"


def test_empty_question_is_not_sent(page: Any) -> None:
    requests = record_chat_requests(page)
    page.press("#question", "Enter")
    assert page.get_attribute("#chat-error", "data-key") == "err.empty_question"
    assert requests == []


def test_streaming_answer_is_announced_politely(page: Any) -> None:
    transcript = page.locator("#transcript")
    assert transcript.get_attribute("role") == "log"
    assert transcript.get_attribute("aria-live") == "polite"
    choose_image(page, scene_png((90, 60)))
    ask(page, "Hi")
    answer = wait_answer_done(page, 1)
    assert answer.get_attribute("aria-busy") == "false"


HOSTILE = [
    "<script>window.__pwned = 1</script>",
    '<img src=x onerror="window.__pwned = 2">',
    "[click](javascript:window.__pwned=3)",
    "[ok](https://example.com/a?b=1&c=2)",
    '[quote](https://example.com/"onmouseover="window.__pwned=4)',
    "```html\n<iframe src=javascript:alert(1)></iframe>\n```",
    "**bold** *it* `<b>code</b>`",
    "- one\n- two\n\n1. first\n2. second",
]


def test_markdown_renderer_escapes_everything_first(page: Any) -> None:
    rendered = page.evaluate(
        """async (inputs) => {
            const { renderMarkdown } = await import("/static/markdown.js");
            return inputs.map(renderMarkdown);
        }""",
        HOSTILE,
    )
    html = dict(zip(HOSTILE, rendered, strict=True))
    assert html[HOSTILE[0]] == "<p>&lt;script&gt;window.__pwned = 1&lt;/script&gt;</p>"
    assert html[HOSTILE[1]] == "<p>&lt;img src=x onerror=&quot;window.__pwned = 2&quot;&gt;</p>"
    assert "<a" not in html[HOSTILE[2]]
    assert html[HOSTILE[3]] == (
        '<p><a href="https://example.com/a?b=1&amp;c=2" target="_blank" rel="noopener noreferrer">ok</a></p>'
    )
    assert 'href="https://example.com/&quot;onmouseover=&quot;window.__pwned=4"' in html[HOSTILE[4]]
    assert html[HOSTILE[5]].startswith('<pre><code data-lang="html">&lt;iframe')
    assert html[HOSTILE[6]] == "<p><strong>bold</strong> <em>it</em> <code>&lt;b&gt;code&lt;/b&gt;</code></p>"
    assert html[HOSTILE[7]] == "<ul><li>one</li><li>two</li></ul><ol><li>first</li><li>second</li></ol>"


NESTED = [
    "[b `c`](https://e.com)",
    "[`<i>x</i>` **y**](https://e.com) and `k`",
    "[j `q`](javascript:alert(1))",
    "[x](https://e.com/`y`)",
]


def test_markdown_code_span_inside_a_link_label(page: Any) -> None:
    rendered = page.evaluate(
        """async (inputs) => {
            const { renderMarkdown } = await import("/static/markdown.js");
            return inputs.map(renderMarkdown);
        }""",
        NESTED,
    )
    html = dict(zip(NESTED, rendered, strict=True))
    link = '<a href="https://e.com" target="_blank" rel="noopener noreferrer">'
    assert html[NESTED[0]] == f"<p>{link}b <code>c</code></a></p>"
    assert html[NESTED[1]] == (
        f"<p>{link}<code>&lt;i&gt;x&lt;/i&gt;</code> <strong>y</strong></a> and <code>k</code></p>"
    )
    # Not an http(s) link: stays text, its code span still rendered.
    assert html[NESTED[2]] == "<p>[j <code>q</code>](javascript:alert(1))</p>"
    # A code span never ends up inside an href.
    assert html[NESTED[3]] == "<p>[x](https://e.com/<code>y</code>)</p>"
    assert not any("\u0000" in out for out in rendered), "a slot placeholder leaked into the HTML"


def test_hostile_model_output_stays_text_on_the_page(page: Any) -> None:
    def sse(route: Any) -> None:
        events = []
        for text in HOSTILE:
            choice = {"index": 0, "delta": {"content": text + "\n\n"}, "finish_reason": None}
            events.append(f"data: {json.dumps({'object': 'chat.completion.chunk', 'choices': [choice]})}\n\n")
        route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body="".join(events))

    page.route("**/v1/chat/completions", sse)
    choose_image(page, scene_png((90, 60)))
    ask(page, "Say something nasty")
    answer = wait_answer_done(page, 1)
    body = answer.locator(".body")
    assert body.locator("script, img, iframe, [onerror], [onmouseover]").count() == 0
    hrefs = [link.get_attribute("href") for link in body.locator("a").all()]
    assert all(href.startswith("https://") for href in hrefs)
    assert all(link.get_attribute("rel") == "noopener noreferrer" for link in body.locator("a").all())
    page.mouse.move(0, 0)
    body.locator("a").last.hover()
    assert page.evaluate("() => window.__pwned") is None
    assert "<script>window.__pwned = 1</script>" in body.inner_text()


def test_sse_reader_handles_any_chunking(page: Any) -> None:
    wire = 'data: {"a":1}\r\n\r\n: comment\n\ndata: 你\ndata: 好\n\ndata: [DONE]\n\n'
    result = page.evaluate(
        """async (wire) => {
            const { readSseData } = await import("/static/sse.js");
            const whole = new TextEncoder().encode(wire);
            const outputs = [];
            for (const size of [1, 2, 3, 7, whole.length]) {
                const stream = new ReadableStream({
                    start(controller) {
                        for (let i = 0; i < whole.length; i += size) {
                            controller.enqueue(whole.slice(i, i + size));
                        }
                        controller.close();
                    },
                });
                const got = [];
                for await (const data of readSseData(stream)) got.push(data);
                outputs.push(got);
            }
            return outputs;
        }""",
        wire,
    )
    for got in result:
        assert got == ['{"a":1}', "你\n好", "[DONE]"]
