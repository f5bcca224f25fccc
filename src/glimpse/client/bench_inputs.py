"""What ``glimpse bench`` sends: images, questions and pre-built request bodies.

Bodies are serialised once, up front: base64-encoding a 1024 px image per request
would cost the client more CPU than many servers spend per token, and a busy
client inflates every latency it measures. Synthetic images that vary per request
(the default) keep that property: the JSON and base64 of everything above the
image's bottom stripe are built once, and each request adds only its stripe (see
:mod:`glimpse.client.bench_images`).
"""

from __future__ import annotations

import base64
import io
import json
import mimetypes
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from PIL import Image

from glimpse.client.bench_images import striped_image

__all__ = [
    "IMAGE_EXTENSIONS",
    "BenchInput",
    "BodySource",
    "RequestOptions",
    "VaryingInput",
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

    def body_for(self, index: int) -> bytes:
        return self.body


class BodySource(Protocol):
    """Where a request's body comes from: ``index`` numbers the requests of the whole run."""

    @property
    def label(self) -> str: ...

    def body_for(self, index: int) -> bytes: ...


def _noise(size: int, seed: int) -> Image.Image:
    """Uniform noise, square ``size`` px: incompressible, so every pixel reaches the encoder."""
    rng = random.Random(f"{seed}:{size}")  # noqa: S311 -- reproducible noise, not a secret
    return Image.frombytes("RGB", (size, size), rng.randbytes(size * size * 3))


def synthetic_image(size: int, *, seed: int = 0, fmt: str = "jpeg") -> bytes:
    """The noise of ``seed`` as one plain file: what every request sends with ``same_image``."""
    buf = io.BytesIO()
    _noise(size, seed).save(buf, format="JPEG" if fmt == "jpeg" else "PNG", quality=90)
    return buf.getvalue()


class VaryingInput:
    """The noise image of ``seed`` with a bottom stripe of fresh noise per request index.

    The stripe is drawn from ``(seed, size, index)``, so a run is reproducible and
    no two requests of it carry the same pixels.
    """

    __slots__ = ("_head", "_image", "_rest", "_seed", "_size", "_suffix", "label")

    def __init__(self, size: int, options: RequestOptions, *, question: str, fmt: str, seed: int) -> None:
        self.label = f"noise-{size}px"
        self._seed, self._size = seed, size
        self._image = striped_image(_noise(size, seed), fmt)
        marker = "@@glimpse-bench-image@@"
        before, after = _body(f"data:{_mime(fmt)};base64,{marker}", question, options).split(marker.encode())
        fixed = self._image.fixed
        cut = len(fixed) - len(fixed) % 3  # base64 of a multiple of 3 bytes joins without padding
        self._head = before + base64.b64encode(fixed[:cut])
        self._rest = fixed[cut:]
        self._suffix = after

    def body_for(self, index: int) -> bytes:
        image_end = base64.b64encode(self._rest + self._image.tail(self._stripe(index)))
        return b"".join((self._head, image_end, self._suffix))

    def _stripe(self, index: int) -> bytes:
        rng = random.Random(f"{self._seed}:{self._size}:{index}")  # noqa: S311 -- not a secret
        return rng.randbytes(self._image.stripe_bytes)


def _mime(fmt: str) -> str:
    return "image/jpeg" if fmt == "jpeg" else "image/png"


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
    same_image: bool = False,
) -> list[BodySource]:
    """One source per size; with ``same_image`` every request of a size sends one identical image."""
    if not same_image:
        return [VaryingInput(size, options, question=question, fmt=fmt, seed=seed) for size in sizes]
    inputs: list[BodySource] = []
    for size in sizes:
        url = _data_url(synthetic_image(size, seed=seed, fmt=fmt), _mime(fmt))
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
