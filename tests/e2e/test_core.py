"""The core promise, over real HTTP on a loopback port, on the tiny model."""

from __future__ import annotations

import base64
import subprocess
import sys

import httpx
import openai
import pytest
from tests.e2e.reference import generate_directly
from tests.images import png_bytes

QUESTION = "这张图片里有什么？ What is in the picture?"


def _client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=120)


def _vision_messages(png: bytes, question: str = QUESTION):
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    return [
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": question}],
        }
    ]


@pytest.mark.parametrize(
    ("size", "colour", "max_tokens"), [((96, 64), (200, 40, 40), 24), ((300, 200), (20, 90, 250), 40)]
)
def test_greedy_answer_over_http_equals_model_generate(tiny_server, reference, size, colour, max_tokens):
    png = png_bytes(size, colour)
    expected_text, expected_count = generate_directly(reference, png, QUESTION, max_tokens)
    response = _client(tiny_server).chat.completions.create(
        model="tiny", messages=_vision_messages(png), max_tokens=max_tokens, temperature=0
    )
    assert response.choices[0].message.content == expected_text
    assert response.usage.completion_tokens == expected_count


def test_openai_client_streams_the_same_answer(tiny_server):
    client = _client(tiny_server)
    messages = _vision_messages(png_bytes())
    whole = client.chat.completions.create(model="tiny", messages=messages, max_tokens=20)
    stream = client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=20, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1  # really streamed


def test_openai_client_lists_models_and_sees_errors(tiny_server):
    client = _client(tiny_server)
    assert [m.id for m in client.models.list()] == ["tiny"]
    truncated = png_bytes((200, 200))[:120]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny", messages=_vision_messages(truncated))
    assert err.value.status_code == 400
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=_vision_messages(png_bytes()))


def test_infer_client_shape_is_unchanged(tiny_server, reference):
    png = png_bytes((128, 128), (10, 200, 30))
    payload = {"image": base64.b64encode(png).decode(), "text": "What is this?", "max_new_tokens": 16}
    response = httpx.post(f"{tiny_server.base_url}/infer", json=payload, timeout=120)
    assert response.status_code == 200
    expected, _ = generate_directly(reference, png, "What is this?", 16)
    assert response.json() == {"response": expected}


def test_analyze_upload_and_stop_strings(tiny_server, reference):
    png = png_bytes((64, 64), (0, 0, 0))
    response = httpx.post(
        f"{tiny_server.base_url}/v1/analyze",
        files={"image": ("x.png", png, "image/png")},
        data={"question": "What is this?", "max_new_tokens": "16"},
        timeout=120,
    )
    assert response.status_code == 200
    full = response.json()["response"]
    expected, _ = generate_directly(reference, png, "What is this?", 16)
    assert full == expected
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    cut = _client(tiny_server).chat.completions.create(
        model="tiny", messages=_vision_messages(png, "What is this?"), max_tokens=16, stop=[stop]
    )
    assert cut.choices[0].message.content == full[: full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_glimpse_ask_prints_the_answer(tiny_server, tmp_path, reference):
    png = png_bytes((80, 80), (120, 120, 0))
    path = tmp_path / "img.png"
    path.write_bytes(png)
    expected, _ = generate_directly(reference, png, "Describe it", 12)
    for extra in ([], ["--stream"]):
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "glimpse",
                "ask",
                str(path),
                "Describe it",
                "--url",
                tiny_server.base_url,
                "--max-tokens",
                "12",
                *extra,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout == expected + "\n"


def test_health_endpoints(tiny_server):
    assert httpx.get(f"{tiny_server.base_url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{tiny_server.base_url}/readyz").json()["status"] == "ready"


@pytest.mark.parametrize("model", ["/nonexistent/glimpse-model-dir", "no-such-org/no-such-model-xyz"])
def test_serve_explains_a_missing_model_without_a_traceback(model, tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    import os

    done = subprocess.run(
        [sys.executable, "-m", "glimpse", "serve", "--model", model, "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **env},
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert model in done.stderr
    assert "--model tiny" in done.stderr


def test_metrics_report_queue_wait_and_batch_sizes(tiny_server):
    png = png_bytes((70, 70), (3, 4, 5))
    _client(tiny_server).chat.completions.create(model="tiny", messages=_vision_messages(png), max_tokens=5)
    text = httpx.get(f"{tiny_server.base_url}/metrics").text
    counts = {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line.startswith(("glimpse_engine_queue_wait_seconds_count", "glimpse_engine_batch_size_count"))
    }
    assert counts["glimpse_engine_queue_wait_seconds_count"] >= 1
    assert counts["glimpse_engine_batch_size_count"] >= 1


def test_chat_template_kwargs_switch_thinking_off_like_glm46v(tiny_server, reference):
    png = png_bytes((90, 60), (9, 99, 199))
    expected, _ = generate_directly(reference, png, QUESTION, 20, enable_thinking=False)
    default, _ = generate_directly(reference, png, QUESTION, 20)
    response = _client(tiny_server).chat.completions.create(
        model="tiny",
        messages=_vision_messages(png),
        max_tokens=20,
        extra_body={"chat_template_kwargs": {"enable_thinking": False}},
    )
    assert response.choices[0].message.content == expected
    assert expected != default  # the template variable really changed the prompt
