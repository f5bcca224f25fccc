"""``glimpse ask``: a small client that sends one image and question and prints the answer."""

from __future__ import annotations

import base64
import sys
from pathlib import Path
from typing import Any, TextIO

import httpx

from glimpse import openai_wire
from glimpse.client._http import normalize_base_url
from glimpse.sse import DONE, iter_sse_data

__all__ = ["ask", "image_data_url"]

_MIME = {b"\xff\xd8\xff": "image/jpeg", b"\x89PNG": "image/png", b"RIFF": "image/webp"}


def image_data_url(path: Path) -> str:
    data = path.read_bytes()
    mime = next((m for magic, m in _MIME.items() if data.startswith(magic)), "application/octet-stream")
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _error_message(response: httpx.Response) -> str:
    try:
        message = openai_wire.error_text(response.json())
    except ValueError:
        message = ""
    return message or response.text[: openai_wire.MAX_MESSAGE]


def ask(
    url: str,
    image: Path,
    question: str,
    *,
    stream: bool,
    max_tokens: int | None,
    temperature: float | None,
    api_key: str | None,
    timeout: float,
    out: TextIO,
    err: TextIO | None = None,
) -> int:
    """Print the answer to ``out``; errors go to ``err`` (stderr) so a redirected answer stays clean.

    Returns 0 on an answer, 1 when the server refused or failed, 2 when no request could be made
    (an unreadable image, a bad or unreachable URL, a timeout): one line each, no traceback.
    """
    err = err or sys.stderr
    if not timeout > 0:
        err.write(f"error: --timeout must be positive, got {timeout}\n")
        return 2
    try:
        body = _chat_body(image, question, stream, max_tokens, temperature)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        with httpx.Client(timeout=timeout, headers=headers) as client:
            return _send(client, normalize_base_url(url) + "/v1/chat/completions", body, stream, out, err)
    except OSError as exc:  # the image: missing, a folder, unreadable
        err.write(f"error: {exc}\n")
        return 2
    except (httpx.HTTPError, httpx.InvalidURL) as exc:  # refused, unresolvable, timed out, malformed URL
        err.write(f"error: {url}: {type(exc).__name__}: {exc}\n")
        return 2


def _chat_body(
    image: Path, question: str, stream: bool, max_tokens: int | None, temperature: float | None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": image_data_url(image)}},
                    {"type": "text", "text": question},
                ],
            }
        ],
        "stream": stream,
    }
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if temperature is not None:
        body["temperature"] = temperature
    return body


def _send(
    client: httpx.Client, endpoint: str, body: dict[str, Any], stream: bool, out: TextIO, err: TextIO
) -> int:
    if not stream:
        response = client.post(endpoint, json=body)
        if response.status_code != 200:
            err.write(f"error {response.status_code}: {_error_message(response)}\n")
            return 1
        out.write(response.json()["choices"][0]["message"]["content"] + "\n")
        return 0
    with client.stream("POST", endpoint, json=body) as response:
        if response.status_code != 200:
            response.read()
            err.write(f"error {response.status_code}: {_error_message(response)}\n")
            return 1
        for data in iter_sse_data(response.iter_lines()):
            if data == DONE:
                break
            try:
                chunk = openai_wire.parse_chunk(data)
            except openai_wire.MalformedChunk:
                chunk = openai_wire.StreamChunk(error=f"the server sent a malformed event: {data[:80]}")
            if chunk.error is not None:
                out.write("\n")
                err.write(f"error: {chunk.error}\n")
                return 1
            out.write(chunk.text)
            out.flush()
    out.write("\n")
    return 0
