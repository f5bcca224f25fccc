"""What ``glimpse bench`` sends: images, questions and pre-built request bodies.

Bodies are serialised once, up front: base64-encoding a 1024 px image per request
would cost the client more CPU than many servers spend per token, and a busy
client inflates every latency it measures.
"""

from __future__ import annotations

import base64
import io
import json
import mimetypes
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

__all__ = [
    "IMAGE_EXTENSIONS",
    "BenchInput",
    "RequestOptions",
    "directory_inputs",
    "synthetic_image",
    "synthetic_inputs",
]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp"})
DEFAULT_QUESTION = "Describe this image in detail."


@dataclass(slots=True, frozen=True)
class RequestOptions:
    model: str
    max_tokens: int
    ignore_eos: bool = False
    temperature: float | None = None


@dataclass(slots=True, frozen=True)
class BenchInput:
    """A ready-to-send chat-completions body and a label saying where it came from."""

    label: str
    body: bytes


def synthetic_image(size: int, *, seed: int = 0, fmt: str = "jpeg") -> bytes:
    """Uniform noise, square ``size`` px: incompressible, so every pixel reaches the encoder."""
    rng = random.Random(f"{seed}:{size}")  # noqa: S311 -- reproducible noise, not a secret
    image = Image.frombytes("RGB", (size, size), rng.randbytes(size * size * 3))
    buf = io.BytesIO()
    image.save(buf, format="JPEG" if fmt == "jpeg" else "PNG", quality=90)
    return buf.getvalue()


def _data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _body(image_url: str, question: str, options: RequestOptions) -> bytes:
    body: dict[str, object] = {
        "model": options.model,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": image_url}},
                    {"type": "text", "text": question},
                ],
            }
        ],
        "max_tokens": options.max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if options.ignore_eos:
        body["ignore_eos"] = True
    if options.temperature is not None:
        body["temperature"] = options.temperature
    return json.dumps(body).encode()


def synthetic_inputs(
    sizes: list[int],
    options: RequestOptions,
    *,
    question: str = DEFAULT_QUESTION,
    fmt: str = "jpeg",
    seed: int = 0,
) -> list[BenchInput]:
    mime = "image/jpeg" if fmt == "jpeg" else "image/png"
    inputs = []
    for size in sizes:
        url = _data_url(synthetic_image(size, seed=seed, fmt=fmt), mime)
        inputs.append(BenchInput(f"noise-{size}px", _body(url, question, options)))
    return inputs


def _read_questions(path: Path | None) -> list[str]:
    if path is None:
        return [DEFAULT_QUESTION]
    questions = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not questions:
        raise ValueError(f"{path} holds no questions")
    return questions


def directory_inputs(
    directory: Path, options: RequestOptions, *, questions_file: Path | None = None
) -> list[BenchInput]:
    """Pairs the i-th image (sorted) with the i-th question, cycling the shorter list."""
    images = sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not images:
        raise ValueError(f"no .jpg/.jpeg/.png/.webp images in {directory}")
    questions = _read_questions(questions_file)
    inputs = []
    for i in range(max(len(images), len(questions))):
        image = images[i % len(images)]
        mime = mimetypes.guess_type(image.name)[0] or "image/jpeg"
        url = _data_url(image.read_bytes(), mime)
        inputs.append(BenchInput(image.name, _body(url, questions[i % len(questions)], options)))
    return inputs
