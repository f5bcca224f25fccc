"""The model picker: shown when the server lists LoRA adapters beside its model, hidden otherwise.

A real ``glimpse serve --model tiny --lora …`` with two random adapters; the chosen model must be the
``model`` of the page's chat requests, and the server must answer as that model.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.e2e.harness import GlimpseServer
from tests.e2e.web.pagekit import (
    PageLog,
    ask,
    capture_chat_streams,
    choose_image,
    open_page,
    record_chat_requests,
    scene_png,
    wait_answer_done,
)
from tests.lora_data import random_adapter

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def lora_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GlimpseServer]:
    root = tmp_path_factory.mktemp("picker-adapters")
    noise = random_adapter(root / "noise", seed=5)
    other = random_adapter(root / "other", seed=7)
    env = {
        "GLIMPSE_OBS__LOG_LEVEL": "INFO",
        "GLIMPSE_GUARD__AUDIT_LOG_PATH": str(tmp_path_factory.mktemp("audit") / "audit.sqlite3"),
        "GLIMPSE_BATCH__DIR": str(tmp_path_factory.mktemp("batches")),
    }
    log = tmp_path_factory.mktemp("logs") / "lora_server.log"
    args = ["--model", "tiny", "--lora", f"noise={noise}", "--lora", f"other={other}"]
    with GlimpseServer(args, env=env, log_path=log) as server:
        yield server
    text = Path(log).read_text(errors="replace")
    assert "Traceback" not in text, text[text.index("Traceback") - 300 :][:4000]


@pytest.fixture
def lora_page(browser: Any, lora_server: GlimpseServer) -> Iterator[Any]:
    log = PageLog()
    page = open_page(browser, lora_server.base_url, log)
    yield page
    errors = list(log.errors)
    page.context.close()
    assert not errors, errors


def _streamed_models(page: Any, nth: int) -> set[str]:
    """The ``model`` of every chunk of the nth (1-based) captured chat stream."""
    page.wait_for_function(f"() => typeof (window.__streams || [])[{nth - 1}] === 'string'")
    body = page.evaluate(f"() => window.__streams[{nth - 1}]")
    chunks = [line[5:] for line in body.splitlines() if line.startswith("data:") and "[DONE]" not in line]
    return {json.loads(chunk)["model"] for chunk in chunks}


def test_the_picker_lists_the_adapters_and_the_chosen_one_answers(lora_page: Any) -> None:
    page = lora_page
    picker = page.locator("#model-picker")
    picker.wait_for(state="visible")
    assert page.locator("#model-name").is_hidden()
    options = page.eval_on_selector_all("#model-select option", "(os) => os.map((o) => [o.value, o.text])")
    assert options == [
        ["tiny", "tiny"],
        ["noise", "noise (adapter of tiny)"],
        ["other", "other (adapter of tiny)"],
    ]
    assert page.input_value("#model-select") == "tiny"
    assert page.inner_text("label[for='model-select']") == "Model"
    requests = record_chat_requests(page)
    choose_image(page, scene_png((120, 80)))
    capture_chat_streams(page)
    ask(page, "What color is the shape?")
    wait_answer_done(page, 1)
    page.select_option("#model-select", "noise")
    ask(page, "What shape is it?")  # a follow-up, now answered by the adapter
    wait_answer_done(page, 2)
    assert [body["model"] for body in requests] == ["tiny", "noise"]
    assert _streamed_models(page, 1) == {"tiny"}
    assert _streamed_models(page, 2) == {"noise"}
    page.click("#lang-toggle")
    assert page.inner_text("label[for='model-select']") == "模型"
    texts = page.eval_on_selector_all("#model-select option", "(os) => os.map((o) => o.text)")
    assert texts == ["tiny", "noise（tiny 的适配器）", "other（tiny 的适配器）"]
    assert page.input_value("#model-select") == "noise"  # relabelling keeps the choice


def test_one_model_is_named_without_a_picker(page: Any) -> None:
    """The default e2e server serves the tiny model alone."""
    name = page.locator("#model-name")
    name.wait_for(state="visible")
    assert name.inner_text() == "tiny"
    assert page.locator("#model-picker").is_hidden()
