"""Examples as model inputs: the served prompt, then the answer, labels on the answer only.

The prompt is built exactly as ``glimpse serve`` builds it (``PromptEncoder``: the
model's chat template with the generation prompt, the real processor, client text
kept as text), so the adapter learns to continue the very tokens it will be given.
The answer is tokenized on its own and appended, followed by the token the model
ends a turn with; only those tokens carry labels (``-100`` elsewhere, the value
transformers' loss ignores).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from glimpse.engine.prompt_tokens import PromptEncoder
from glimpse.finetune.dataset import Example

__all__ = ["IGNORE", "Encoded", "Encoder", "collate"]

IGNORE = -100
_MARK = "\x00ANSWER\x00"


@dataclass(slots=True)
class Encoded:
    """One example: the prompt's inputs (batch of one), and the answer's token ids."""

    where: str
    prompt: dict[str, Any]
    answer_ids: list[int]
    answer: str

    @property
    def prompt_len(self) -> int:
        return int(self.prompt["input_ids"].shape[-1])


class Encoder:
    """Encodes examples for one model's processor and template settings."""

    def __init__(self, processor: Any, eos_ids: Sequence[int], template_kwargs: Mapping[str, Any]) -> None:
        self._processor = processor
        self._tokenizer = getattr(processor, "tokenizer", processor)
        self._prompts = PromptEncoder(processor)
        self._kwargs = dict(template_kwargs)
        self.end_ids = self._end_of_turn(list(eos_ids))

    def _end_of_turn(self, eos_ids: list[int]) -> list[int]:
        """The token that closes an assistant turn: the first one the template writes after an answer,
        when it is an end-of-sequence token (GLM's ``<|user|>``, Qwen's ``<|im_end|>``), else ``eos``."""
        turns = [
            {"role": "user", "content": [{"type": "text", "text": "q"}]},
            {"role": "assistant", "content": [{"type": "text", "text": _MARK}]},
            {"role": "user", "content": [{"type": "text", "text": "q"}]},
        ]
        try:
            text = str(self._processor.apply_chat_template(turns, tokenize=False, **self._kwargs))
            after = text.split(_MARK, 1)[1]
            first = self._tokenizer(after, add_special_tokens=False)["input_ids"][:1]
        except (ValueError, TypeError, IndexError, KeyError):  # a template without such turns
            first = []
        if first and first[0] in eos_ids:
            return [int(first[0])]
        eos = getattr(self._tokenizer, "eos_token_id", None)
        if isinstance(eos, int):
            return [eos]
        return eos_ids[:1]

    def encode(self, example: Example) -> Encoded:
        prompt = self._prompts.encode(example.messages, example.images, self._kwargs)
        prompt.pop("attention_mask", None)  # rebuilt by ``collate``
        answer_ids = list(self._tokenizer(example.answer, add_special_tokens=False)["input_ids"])
        return Encoded(example.where, prompt, answer_ids + self.end_ids, example.answer)


def _is_per_token(value: Any, length: int) -> bool:
    return hasattr(value, "dim") and value.dim() == 2 and value.shape == (1, length)


def collate(
    batch: Sequence[Encoded], pad_id: int, *, with_answers: bool, side: Literal["left", "right"] = "right"
) -> dict[str, Any]:
    """One padded batch: prompt (+ answer and labels when ``with_answers``); images concatenated in
    order, as the processor does for a batch. Per-token tensors other than the ids (GLM's
    ``mm_token_type_ids``) are padded with 0 and continue with 0 over the answer (text tokens)."""
    import torch

    rows: list[dict[str, Any]] = []
    for item in batch:
        length = item.prompt_len
        answer = torch.tensor(item.answer_ids if with_answers else [], dtype=torch.long)
        row = {"input_ids": torch.cat([item.prompt["input_ids"][0], answer])}
        row["attention_mask"] = torch.ones_like(row["input_ids"])
        row["labels"] = torch.cat([torch.full((length,), IGNORE, dtype=torch.long), answer])
        for key, value in item.prompt.items():
            if key != "input_ids" and _is_per_token(value, length):
                row[key] = torch.cat([value[0], torch.zeros(len(answer), dtype=value.dtype)])
        rows.append(row)
    longest = max(len(row["input_ids"]) for row in rows)
    pads = {"input_ids": pad_id, "labels": IGNORE}
    out: dict[str, Any] = {}
    for key in rows[0]:
        padded = torch.full((len(rows), longest), pads.get(key, 0), dtype=rows[0][key].dtype)
        for r, row in enumerate(rows):
            values = row[key]
            if side == "right":
                padded[r, : len(values)] = values
            else:
                padded[r, longest - len(values) :] = values
        out[key] = padded
    if not with_answers:
        del out["labels"]
    per_image = {
        key
        for item in batch
        for key, value in item.prompt.items()
        if key != "input_ids" and not _is_per_token(value, item.prompt_len)
    }
    for key in sorted(per_image):
        out[key] = torch.cat([item.prompt[key] for item in batch if key in item.prompt])
    return out
