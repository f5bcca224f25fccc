"""What a person does on the page, as functions the browser tests share."""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw
from playwright.sync_api import expect

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPO = Path(__file__).resolve().parents[3]
ARTIFACTS = REPO / "test-artifacts" / "web"
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}


def scene_png(size: tuple[int, int] = (640, 420)) -> bytes:
    """A small picture (sky, sun, hill) so previews and screenshots show something real."""
    width, height = size
    image = Image.new("RGB", size, (86, 146, 214))
    draw = ImageDraw.Draw(image)
    sun = (int(width * 0.62), int(height * 0.12), int(width * 0.82), int(height * 0.42))
    draw.ellipse(sun, fill=(250, 208, 64))
    hill = [(0, height), (int(width * 0.35), int(height * 0.4)), (int(width * 0.75), height)]
    draw.polygon(hill, fill=(46, 104, 66))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


ANSWER_TIMEOUT_MS = 60_000


@dataclass
class PageLog:
    """Browser-side failures; a test fails if the page threw."""

    errors: list[str] = field(default_factory=list)


def open_page(
    browser: Any, base_url: str, log: PageLog, *, locale: str = "en-US", viewport: Any = None
) -> Any:
    context = browser.new_context(locale=locale, viewport=viewport or DESKTOP, base_url=base_url)
    page = context.new_page()
    page.on("pageerror", lambda exc: log.errors.append(f"pageerror: {exc}"))
    page.goto("/")
    page.wait_for_selector("body[data-ready='true']")
    return page


def upload(page: Any, data: bytes, name: str = "scene.png", mime: str = "image/png") -> None:
    """Choose a file through the real file input."""
    page.set_input_files("#file-input", files=[{"name": name, "mimeType": mime, "buffer": data}])


def image_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size


def wait_preview(page: Any, data: bytes) -> None:
    """Wait until the preview shows this image (its dimensions), e.g. after a replace."""
    width, height = image_size(data)
    expect(page.locator("#preview-meta")).to_contain_text(f"{width} × {height}")
    expect(page.locator("#preview")).to_be_visible()


def choose_image(page: Any, data: bytes, name: str = "scene.png") -> None:
    """Choose a valid PNG through the file input and wait for its preview."""
    upload(page, data, name=name)
    wait_preview(page, data)


def paste_file(page: Any, data: bytes, name: str = "pasted.png", mime: str = "image/png") -> None:
    """Paste a file the way a browser does: a paste event whose DataTransfer holds a File."""
    page.evaluate(
        """([b64, name, mime]) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, { type: mime }));
            const init = { clipboardData: transfer, bubbles: true, cancelable: true };
            document.activeElement.dispatchEvent(new ClipboardEvent("paste", init));
        }""",
        [base64.b64encode(data).decode(), name, mime],
    )


def drop_file(page: Any, data: bytes, name: str = "dropped.png", mime: str = "image/png") -> None:
    """Drag a file onto the drop zone: dragover then drop, with a DataTransfer holding it."""
    page.evaluate(
        """([b64, name, mime]) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, { type: mime }));
            const zone = document.getElementById("dropzone");
            const init = { dataTransfer: transfer, bubbles: true, cancelable: true };
            for (const type of ["dragenter", "dragover", "drop"]) {
                zone.dispatchEvent(new DragEvent(type, init));
            }
        }""",
        [base64.b64encode(data).decode(), name, mime],
    )


def ask(page: Any, question: str) -> None:
    """Type a question and press Enter, as a person would."""
    page.fill("#question", question)
    page.press("#question", "Enter")


def wait_answer_done(page: Any, nth: int) -> Any:
    """The nth (1-based) answer once it has ended; its element."""
    selector = f".msg.assistant:nth-of-type({2 * nth})"
    page.wait_for_selector(f"{selector}[aria-busy='false']", timeout=ANSWER_TIMEOUT_MS)
    return page.locator(selector)


def watch_answer_lengths(page: Any) -> None:
    """Record the length of the streaming answer's text at every DOM change."""
    page.evaluate(
        """() => {
            window.__lengths = [];
            const observer = new MutationObserver(() => {
                const bodies = document.querySelectorAll(".msg.assistant .body");
                const last = bodies[bodies.length - 1];
                if (last) window.__lengths.push(last.textContent.length);
            });
            const options = { subtree: true, childList: true, characterData: true };
            observer.observe(document.getElementById("transcript"), options);
        }"""
    )


def answer_lengths(page: Any) -> list[int]:
    return list(page.evaluate("() => window.__lengths"))


def record_chat_requests(page: Any) -> list[dict[str, Any]]:
    """Bodies of the page's chat-completion requests, appended as they are sent."""
    bodies: list[dict[str, Any]] = []

    def on_request(request: Any) -> None:
        if request.url.endswith("/v1/chat/completions") and request.method == "POST":
            bodies.append(json.loads(request.post_data or "{}"))

    page.on("request", on_request)
    return bodies


def capture_chat_streams(page: Any) -> None:
    """Keep a copy of every chat-completion response body the page reads (window.__streams).

    CDP does not reliably keep the bodies of streamed responses, so the page's own
    fetch is wrapped: the response is cloned (a tee, so the page still streams).
    """
    page.evaluate(
        """() => {
            window.__streams = [];
            const original = window.fetch;
            window.fetch = async (...args) => {
                const response = await original(...args);
                if (String(args[0]).endsWith("/v1/chat/completions")) {
                    const slot = window.__streams.push(null) - 1;
                    response.clone().text().then((text) => { window.__streams[slot] = text; }, () => {});
                }
                return response;
            };
        }"""
    )


def captured_answer(page: Any, nth: int) -> str:
    """The answer text of the nth (1-based) chat response captured by capture_chat_streams."""
    page.wait_for_function(f"() => typeof (window.__streams || [])[{nth - 1}] === 'string'")
    return streamed_text(page.evaluate(f"() => window.__streams[{nth - 1}]"))


def streamed_text(sse_body: str) -> str:
    """The answer text carried by an SSE response body, joined from its deltas."""
    parts = []
    for line in sse_body.splitlines():
        if not line.startswith("data:") or line.strip() == "data: [DONE]":
            continue
        chunk = json.loads(line[5:])
        for choice in chunk.get("choices", []):
            parts.append(choice.get("delta", {}).get("content") or "")
    return "".join(parts)


def notice(page: Any, element_id: str) -> tuple[str | None, str]:
    """(i18n key, visible text) of a message area such as #image-error or #chat-error."""
    locator = page.locator(f"#{element_id}")
    locator.wait_for(state="visible")
    return locator.get_attribute("data-key"), locator.inner_text()
