"""Read a fine-tuning dataset: JSONL, one conversation per line, every bad line named by file and line.

Two line shapes are accepted:

- ``{"image": REF, "question": "...", "answer": "..."}`` (``"images": [REF, ...]`` for several);
- ``{"messages": [...]}`` in OpenAI's chat shape: ``image_url`` parts (or ``{"type": "image",
  "image": REF}``) in user turns, text parts or strings elsewhere; the last message is the
  assistant's answer, which is what the adapter learns to say. Earlier assistant turns are
  context only.

``REF`` is a ``data:`` URL or a path relative to the JSONL file (absolute paths too); images are
decoded here, through the server's own decoder (same limits, EXIF orientation, RGB), so a line
whose image the server would refuse is a bad line now, not a crash mid-training. Nothing is
fetched from the network.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from glimpse.config import MediaSettings
from glimpse.errors import GlimpseError
from glimpse.media import decode_image
from glimpse.media.encoding import decode_base64, is_data_url, parse_data_url

__all__ = ["BadLine", "Dataset", "DatasetError", "Example", "read_dataset", "split"]

OnBadLine = Literal["skip", "stop"]


class DatasetError(Exception):
    """The dataset cannot be trained on (a bad line with ``stop``, or no usable line): exit status 2."""


@dataclass(slots=True, frozen=True)
class BadLine:
    where: str  # "file:line"
    reason: str


@dataclass(slots=True)
class Example:
    """One conversation: the chat template's messages before the answer, the images, the answer."""

    where: str
    messages: list[dict[str, Any]]
    images: list[Any]  # PIL images, in the order their parts appear
    answer: str


@dataclass(slots=True)
class Dataset:
    examples: list[Example]
    lines: int
    bad: list[BadLine] = field(default_factory=list)


class _Bad(Exception):
    """One line's problem (becomes a ``BadLine``)."""


def read_dataset(
    path: Path,
    on_bad_line: OnBadLine,
    media: MediaSettings | None = None,
    report: Callable[[BadLine], None] = lambda bad: None,
) -> Dataset:
    """Every usable line of ``path``; bad ones are listed and ``report``ed as they are met (``skip``), or
    stop the reading (``stop``). No usable line at all: ``DatasetError``, after the reports."""
    media = media or MediaSettings()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read the dataset {path}: {exc}") from exc
    dataset = Dataset([], 0)
    for number, line in _lines(text):
        dataset.lines += 1
        where = f"{path}:{number}"
        try:
            dataset.examples.append(_example(line, where, path.parent, media))
        except _Bad as exc:
            if on_bad_line == "stop":
                raise DatasetError(
                    f"{where}: {exc} (pass --on-bad-line skip to leave such lines out)"
                ) from None
            dataset.bad.append(BadLine(where, str(exc)))
            report(dataset.bad[-1])
    if not dataset.examples:
        why = "it has no lines" if dataset.lines == 0 else f"all {dataset.lines} lines are bad"
        raise DatasetError(f"nothing to train on in {path}: {why}")
    return dataset


def _lines(text: str) -> Iterator[tuple[int, str]]:
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield number, line


def _example(line: str, where: str, base: Path, media: MediaSettings) -> Example:
    try:
        record = json.loads(line)
    except ValueError as exc:
        raise _Bad(f"not JSON ({exc})") from None
    if not isinstance(record, dict):
        raise _Bad("expected a JSON object")
    images: list[Any] = []
    if "messages" in record:
        messages, answer = _chat(record["messages"], images, base, media)
    else:
        messages, answer = _simple(record, images, base, media)
    if not answer.strip():
        raise _Bad("the answer is empty")
    return Example(where, messages, images, answer)


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Bad(f"'{name}' must be a non-empty string")
    return value


def _simple(
    record: dict[str, Any], images: list[Any], base: Path, media: MediaSettings
) -> tuple[list[dict[str, Any]], str]:
    question = _text(record.get("question"), "question")
    answer = _text(record.get("answer"), "answer")
    refs = record.get("images", [record["image"]] if "image" in record else [])
    if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
        raise _Bad("'image' must be a string and 'images' a list of strings")
    parts: list[dict[str, Any]] = []
    for ref in refs:
        images.append(_image(ref, base, media))
        parts.append({"type": "image"})
    parts.append({"type": "text", "text": question})
    return [{"role": "user", "content": parts}], answer


def _chat(raw: Any, images: list[Any], base: Path, media: MediaSettings) -> tuple[list[dict[str, Any]], str]:
    if not isinstance(raw, list) or len(raw) < 2:
        raise _Bad("'messages' must be a list ending with the assistant's answer")
    messages = [_message(m, i, images, base, media) for i, m in enumerate(raw)]
    last = messages.pop()
    if last["role"] != "assistant":
        raise _Bad("the last message must be the assistant's answer")
    if not any(m["role"] == "user" for m in messages):
        raise _Bad("no user message before the answer")
    answer = "".join(part["text"] for part in last["content"])
    return messages, answer


def _message(raw: Any, index: int, images: list[Any], base: Path, media: MediaSettings) -> dict[str, Any]:
    if not isinstance(raw, dict) or raw.get("role") not in ("system", "user", "assistant"):
        raise _Bad(f"messages[{index}] needs a role of system, user or assistant")
    role, content = raw["role"], raw.get("content")
    if isinstance(content, str):
        return {"role": role, "content": [{"type": "text", "text": content}]}
    if not isinstance(content, list) or not content:
        raise _Bad(f"messages[{index}].content must be a string or a non-empty list of parts")
    parts: list[dict[str, Any]] = []
    for part in content:
        ref = _image_ref(part, index)
        if ref is None:
            parts.append({"type": "text", "text": _text(part.get("text"), f"messages[{index}] text")})
            continue
        if role != "user":
            raise _Bad(f"messages[{index}]: images are accepted in user messages only")
        images.append(_image(ref, base, media))
        parts.append({"type": "image"})
    return {"role": role, "content": parts}


def _image_ref(part: Any, index: int) -> str | None:
    """The image reference of a content part, ``None`` for a text part."""
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text":
        return None
    if kind == "image_url":
        url = part.get("image_url")
        ref = url.get("url") if isinstance(url, dict) else url
    elif kind == "image":
        ref = part.get("image")
    else:
        raise _Bad(f"messages[{index}]: content parts must be text, image_url or image")
    if not isinstance(ref, str) or not ref:
        raise _Bad(f"messages[{index}]: an image part without its URL or path")
    return ref


def _image(ref: str, base: Path, media: MediaSettings) -> Any:
    """Decode one image reference as the server would."""
    if is_data_url(ref):
        try:
            _mime, payload = parse_data_url(ref)
            data = decode_base64(payload, media.max_image_bytes)
        except GlimpseError as exc:
            raise _Bad(f"bad data URL: {exc.message}") from None
        label = "the data URL's image"
    elif "://" in ref:
        raise _Bad(f"image {ref[:60]!r}: only data URLs and file paths are read (nothing is downloaded)")
    else:
        file = base / ref
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise _Bad(f"cannot read image {file}: {exc.strerror or exc}") from None
        label = f"image {file}"
    try:
        return decode_image(data, media).image
    except GlimpseError as exc:
        raise _Bad(f"{label}: {exc.message}") from None


def split(examples: Sequence[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """(train, validation): a seeded shuffle, ``fraction`` of it held out (at least one when > 0)."""
    import random

    order = list(examples)
    random.Random(seed).shuffle(order)  # noqa: S311 - a reproducible split, not a secret
    held = 0 if fraction <= 0 else max(1, round(len(order) * fraction))
    if held >= len(order):
        raise DatasetError(
            f"a validation split of {fraction:g} leaves nothing to train on ({len(order)} examples)"
        )
    return order[held:], order[:held]
