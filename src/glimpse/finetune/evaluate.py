"""Validation after each epoch: the loss on the answers, and how many answers come out exactly right.

Exact match compares the greedy answer (decoded without special tokens, spaces at
either end stripped) with the reference answer, as a client of ``glimpse serve``
would read them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from glimpse.finetune.encode import IGNORE, Encoded, collate

__all__ = ["Validation", "batched", "mean_loss", "validate", "to_device"]


@dataclass(slots=True, frozen=True)
class Validation:
    loss: float
    right: int
    total: int

    @property
    def accuracy(self) -> float:
        return self.right / self.total if self.total else 0.0


def batched(items: Sequence[Encoded], size: int) -> list[Sequence[Encoded]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def to_device(inputs: dict[str, Any], device: Any, dtype: Any) -> dict[str, Any]:
    """Tensors to ``device``; image pixels also to the model's ``dtype``."""
    moved = {key: value.to(device) for key, value in inputs.items()}
    if "pixel_values" in moved:
        moved["pixel_values"] = moved["pixel_values"].to(dtype)
    return moved


def mean_loss(model: Any, inputs: dict[str, Any]) -> tuple[Any, int]:
    """transformers' own loss over the labelled tokens, and how many tokens it averaged."""
    tokens = int((inputs["labels"][:, 1:] != IGNORE).sum())
    return model(**inputs).loss, tokens


def validate(
    model: Any,
    processor: Any,
    items: Sequence[Encoded],
    *,
    batch_size: int,
    max_new_tokens: int,
    device: Any,
    dtype: Any,
    advance: Callable[[int], None] = lambda n: None,
) -> Validation:
    import torch

    tokenizer = getattr(processor, "tokenizer", processor)
    pad_id = _pad_id(tokenizer, model)
    model.eval()
    loss_sum, token_count, right = 0.0, 0, 0
    with torch.no_grad():
        for batch in batched(items, batch_size):
            loss, tokens = mean_loss(
                model, to_device(collate(batch, pad_id, with_answers=True), device, dtype)
            )
            loss_sum += float(loss) * tokens
            token_count += tokens
            prompts = to_device(collate(batch, pad_id, with_answers=False, side="left"), device, dtype)
            out = model.generate(
                **prompts, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_id
            )
            new = out[:, prompts["input_ids"].shape[1] :]
            texts = tokenizer.batch_decode(new, skip_special_tokens=True)
            right += sum(str(t).strip() == item.answer.strip() for t, item in zip(texts, batch, strict=True))
            advance(len(batch))
    return Validation(loss_sum / max(1, token_count), right, len(items))


def _pad_id(tokenizer: Any, model: Any) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    if isinstance(pad, int):
        return pad
    eos = getattr(model.generation_config, "eos_token_id", None)
    return int(eos[0] if isinstance(eos, list) else eos or 0)
