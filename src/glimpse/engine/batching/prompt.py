"""A prompt made ready for chunked prefill, and how much of it one step takes.

At admission each prompt is read once: its token ids, the M-RoPE position of
every token (from the model's own ``get_rope_index``, so they are exactly those
``generate()`` uses), and where each image's tokens and patch rows lie. Prefill
then goes chunk by chunk: a chunk is a slice of those tokens and positions, with
the features of any image tokens it covers laid over their embeddings.

An image is encoded whole, by the vision tower, in the step whose chunk first
reaches its tokens, and its features are kept until the last of its tokens is
prefilled. ``plan_chunk`` charges an image's tokens to the step's budget once
more when it is encoded, so a step's vision work is bounded like its text work.
"""

from __future__ import annotations

from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from glimpse.engine.batching.image_keys import IMAGE_KEYS, image_key

__all__ = ["ImageSpan", "PreparedPrompt", "plan_chunk", "prepare_prompt"]


@dataclass(slots=True, frozen=True)
class ImageSpan:
    """One image of a prompt: its tokens, and its patches as the vision tower takes them."""

    start: int  # index of its first token in the prompt
    length: int  # its tokens (patches after the spatial merge)
    pixel_values: torch.Tensor  # [patches, channels * temporal * patch * patch]: its rows of the batch
    grid: torch.Tensor  # [3]: (t, h, w) in patches
    #: Its content key (``image_keys.image_key``): as preprocessing sent it, else hashed here, once.
    key: bytes = b""

    def __post_init__(self) -> None:
        if not self.key:
            object.__setattr__(self, "key", image_key(self.pixel_values, self.grid))

    @property
    def end(self) -> int:
        return self.start + self.length


@dataclass(slots=True, frozen=True)
class PreparedPrompt:
    token_ids: torch.Tensor  # [length], long, on the CPU
    positions: torch.Tensor  # [3, length]: M-RoPE (t, h, w) of each token
    images: tuple[ImageSpan, ...]

    @property
    def length(self) -> int:
        return int(self.token_ids.shape[0])

    @property
    def next_positions(self) -> tuple[int, int, int]:
        """M-RoPE position of the first generated token: each axis one past the prompt's last, as
        ``generate()`` continues them."""
        t, h, w = (int(p) + 1 for p in self.positions[:, -1].tolist())
        return t, h, w


def prepare_prompt(
    model: Any, inputs: Mapping[str, torch.Tensor], image_token_id: int, merge_size: int
) -> PreparedPrompt:
    """Read one processor output (batch size 1); ``ValueError`` if its parts do not agree.

    ``model`` is the ``...Model`` inside the ``...ForConditionalGeneration`` (it owns ``get_rope_index``).
    """
    if inputs.get("pixel_values_videos") is not None:
        raise ValueError("videos are not supported by the batching engine")
    input_ids = inputs["input_ids"].to("cpu")
    mask = inputs.get("attention_mask")
    if mask is not None and not bool(mask.to("cpu").bool().all()):
        raise ValueError("a batched prompt has no padding: its attention_mask must be all ones")
    ids = input_ids[0]
    image_at = (ids == image_token_id).nonzero()[:, 0]
    grid = inputs.get("image_grid_thw")
    if grid is None:
        if image_at.numel():
            raise ValueError(f"{image_at.numel()} image tokens but no image_grid_thw")
        positions = torch.arange(ids.shape[0]).expand(3, -1)
        return PreparedPrompt(token_ids=ids, positions=positions, images=())
    grid = grid.to("cpu")
    images = _image_spans(image_at, inputs["pixel_values"], grid, merge_size, inputs.get(IMAGE_KEYS))
    mm_token_type_ids = inputs.get("mm_token_type_ids")
    if mm_token_type_ids is None:  # what the processor sends: 1 on image tokens, 0 elsewhere
        mm_token_type_ids = (input_ids == image_token_id).int()
    with torch.inference_mode():
        positions, _ = model.get_rope_index(
            input_ids, mm_token_type_ids=mm_token_type_ids.to("cpu"), image_grid_thw=grid
        )
    return PreparedPrompt(token_ids=ids, positions=positions[:, 0], images=images)


def _image_spans(
    image_at: torch.Tensor,
    pixel_values: torch.Tensor,
    grid: torch.Tensor,
    merge_size: int,
    keys: torch.Tensor | None = None,
) -> tuple[ImageSpan, ...]:
    rows = grid.prod(-1).tolist()
    counts = [r // merge_size**2 for r in rows]
    if sum(counts) != image_at.numel():
        raise ValueError(f"{image_at.numel()} image tokens for images of {sum(counts)} patches")
    if pixel_values.shape[0] != sum(rows):
        raise ValueError(f"{pixel_values.shape[0]} rows of pixel values for images of {sum(rows)} patches")
    spans = []
    token, row = 0, 0
    for index, (count, patches) in enumerate(zip(counts, rows, strict=True)):
        start, last = int(image_at[token]), int(image_at[token + count - 1])
        if last - start + 1 != count:
            raise ValueError(f"the tokens of image {index} are not contiguous")
        key = bytes(keys[index].tolist()) if keys is not None and len(keys) == len(rows) else b""
        spans.append(ImageSpan(start, count, pixel_values[row : row + patches], grid[index], key))
        token += count
        row += patches
    return tuple(spans)


def plan_chunk(
    prompt: PreparedPrompt, done: int, encoded: Container[int], budget: int, alone: bool
) -> tuple[int, list[int]]:
    """How many tokens after the first ``done`` to prefill now, and which images to encode first.

    Text tokens cost one each, and an image not yet in ``encoded`` costs its tokens
    once more when the chunk reaches it. The chunk stops before an image that does
    not fit. When ``alone`` (nothing else prefills in this step), an image larger than
    the whole budget is still encoded, with no tokens after it, so every prompt
    progresses.
    """
    spent, position, new = 0, done, []
    pending = [i for i, image in enumerate(prompt.images) if image.end > done and i not in encoded]
    while position < prompt.length:
        if pending and prompt.images[pending[0]].start <= position:
            index = pending.pop(0)
            cost = prompt.images[index].length
            if spent + cost > budget and not (alone and spent == 0):
                break
            new.append(index)
            spent += cost
        stop = prompt.images[pending[0]].start if pending else prompt.length
        take = min(stop - position, budget - spent)
        if take <= 0:
            break
        position += take
        spent += take
    return position - done, new


def image_parts(
    prompt: PreparedPrompt, start: int, count: int, features: Mapping[int, torch.Tensor]
) -> Sequence[tuple[int, torch.Tensor]]:
    """``(offset in the chunk, feature rows)`` for the image tokens in ``[start, start + count)``."""
    parts = []
    for index, image in enumerate(prompt.images):
        first, last = max(image.start, start), min(image.end, start + count)
        if first < last:
            rows = features[index][first - image.start : last - image.start]
            parts.append((first - start, rows))
    return parts
