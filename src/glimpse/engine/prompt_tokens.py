"""Model inputs in which client text is only ever text: control tokens come from the chat template.

A processor renders the chat template to one string and tokenizes it, so a
client who types ``<|assistant|>``, ``[gMASK]`` or ``<think>`` would get the real
control token and could forge another role's turn, and a typed ``<|image|>`` is
taken for an image placeholder (issue 12, F1 and F3). ``PromptEncoder`` keeps
the two apart:

1. The template is rendered twice: with the real text, and with every text part
   replaced by a *marker*, one special token of the tokenizer that the template
   itself does not emit.
2. If the real prompt holds exactly the control tokens and multimodal
   placeholders of the marked one (markers aside), the text added none: the
   processor gets the real prompt, exactly as it always did.
3. Otherwise the processor gets the marked prompt (so the only image
   placeholders are the template's), and each marker's position is replaced by
   its text part tokenized with special tokens split, as plain text. Every other
   per-token tensor (attention mask, ``mm_token_type_ids``, ...) takes the
   marker's value over the spliced span: a text token's values.

The split tokenization uses a private copy of the fast tokenizer's backend with
``encode_special_tokens`` on: the shared tokenizer keeps that flag as object
state, and flipping it per call would race the other preprocessing threads.
Where the approach cannot apply (no fast tokenizer, no free marker, a template
that drops or repeats text), text that would produce control tokens is refused
with ``InvalidRequest`` rather than served with them. So is such text in tool
definitions and in the tool calls of a history, which the template renders from
data rather than from a message's content.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from glimpse.errors import InvalidRequest

__all__ = ["PromptEncoder", "TemplateMessage"]

logger = logging.getLogger(__name__)

#: Chat-template messages: ``{"role": ..., "content": [{"type": "text", "text": ...} | {"type": "image"}]}``
#: (a ``tool`` message's content is a string), with ``tool_calls`` / ``tool_call_id`` where they have them.
TemplateMessage = dict[str, Any]

_PLACEHOLDER_ATTRS = ("image_token", "video_token", "audio_token")


@dataclass(slots=True, frozen=True)
class _Rendered:
    prompt: str
    texts: tuple[str, ...]


def _with_texts(messages: Sequence[TemplateMessage], texts: Iterable[str]) -> list[TemplateMessage]:
    """``messages`` with their text parts (or string content), in order, replaced by ``texts``."""
    supply = iter(texts)
    out: list[TemplateMessage] = []
    for message in messages:
        if isinstance(message["content"], str):
            out.append({**message, "content": next(supply)})
            continue
        content = [
            {**part, "text": next(supply)} if part.get("type") == "text" else part
            for part in message["content"]
        ]
        out.append({**message, "content": content})
    return out


def _texts(messages: Sequence[TemplateMessage]) -> tuple[str, ...]:
    texts: list[str] = []
    for message in messages:
        if isinstance(message["content"], str):
            texts.append(message["content"])
        else:
            texts.extend(str(part["text"]) for part in message["content"] if part.get("type") == "text")
    return tuple(texts)


def _structured_texts(messages: Sequence[TemplateMessage], template_kwargs: Mapping[str, Any]) -> list[str]:
    """Client text the template renders from data, not from content: tools, calls, call ids."""
    found = [json.dumps(template_kwargs["tools"], ensure_ascii=False)] if template_kwargs.get("tools") else []
    for message in messages:
        if message.get("tool_calls"):
            found.append(json.dumps(message["tool_calls"], ensure_ascii=False))
        if message.get("tool_call_id"):
            found.append(str(message["tool_call_id"]))
    return found


class PromptEncoder:
    """Renders and tokenizes chat requests for one processor; safe to share between threads."""

    def __init__(self, processor: Any) -> None:
        self._processor = processor
        self._tokenizer = getattr(processor, "tokenizer", processor)
        self._placeholders = tuple(
            value for name in _PLACEHOLDER_ATTRS if isinstance(value := getattr(processor, name, None), str)
        )
        self._special = self._special_tokens()
        reserved = set(self._placeholders) | self._structural_tokens()
        self._control_ids = frozenset(self._special.values()) | self._placeholder_ids()
        self._markers = tuple((token, i) for token, i in self._special.items() if token not in reserved)
        self._plain = self._plain_backend()
        if self._plain is None or not self._markers:
            logger.warning(
                "this tokenizer cannot encode typed control tokens as plain text; "
                "requests whose text contains them will be refused"
            )

    # -- set-up -----------------------------------------------------------------------------

    def _special_tokens(self) -> dict[str, int]:
        """Every special token the tokenizer matches in text, with its id."""
        found: dict[str, int] = {}
        decoder = getattr(self._tokenizer, "added_tokens_decoder", {}) or {}
        for token_id, added in decoder.items():
            if getattr(added, "special", False):
                found[str(added.content)] = int(token_id)
        for token in getattr(self._tokenizer, "all_special_tokens", ()):
            token_id = self._tokenizer.convert_tokens_to_ids(token)
            if isinstance(token_id, int):
                found.setdefault(str(token), token_id)
        return found

    def _placeholder_ids(self) -> frozenset[int]:
        ids = (self._tokenizer.convert_tokens_to_ids(token) for token in self._placeholders)
        return frozenset(i for i in ids if isinstance(i, int))

    def _structural_tokens(self) -> set[str]:
        """Tokens never to use as a marker: the processor or the model give them a meaning.

        Processor attributes that name token ids (``video_start_id``, ...) and the
        tokenizer's bos/eos/pad/unk, which templates and models use.
        """
        names: set[str] = set()
        for attr in dir(self._processor):
            if attr.endswith("_id") and not attr.startswith("_"):
                value = getattr(self._processor, attr, None)
                if isinstance(value, int):
                    names.add(str(self._tokenizer.convert_ids_to_tokens(value)))
        for attr in ("bos_token", "eos_token", "pad_token", "unk_token", "sep_token", "cls_token"):
            value = getattr(self._tokenizer, attr, None)
            if isinstance(value, str):
                names.add(value)
        return names

    def _plain_backend(self) -> Any | None:
        """A private copy of the fast tokenizer's backend that takes special tokens as text."""
        backend = getattr(self._tokenizer, "backend_tokenizer", None)
        if backend is None:
            return None
        from tokenizers import Tokenizer

        plain = Tokenizer.from_str(backend.to_str())
        plain.encode_special_tokens = True
        return plain

    # -- per request ------------------------------------------------------------------------

    def encode(
        self,
        messages: Sequence[TemplateMessage],
        images: Sequence[Any],
        template_kwargs: Mapping[str, Any],
    ) -> dict[str, Any]:
        """The processor's output for this conversation, with client text as plain text."""
        texts = _texts(messages)
        self._refuse_structured(_structured_texts(messages, template_kwargs))
        prompt = self._render(messages, template_kwargs)
        marked = self._marked(messages, template_kwargs, len(texts))
        if marked is None:
            self._refuse_controls(texts)
            return self._process(prompt, images)
        marker_id, marked_prompt = marked
        if self._same_structure(prompt, marked_prompt, marker_id):
            return self._process(prompt, images)
        if self._plain is None:
            self._refuse_controls(texts, always=True)
        return self._splice(self._process(marked_prompt, images), marker_id, texts)

    def _render(self, messages: Sequence[TemplateMessage], template_kwargs: Mapping[str, Any]) -> str:
        return str(
            self._processor.apply_chat_template(
                list(messages), add_generation_prompt=True, tokenize=False, **template_kwargs
            )
        )

    def _process(self, prompt: str, images: Sequence[Any]) -> dict[str, Any]:
        return dict(self._processor(text=[prompt], images=list(images) or None, return_tensors="pt"))

    def _marked(
        self, messages: Sequence[TemplateMessage], template_kwargs: Mapping[str, Any], count: int
    ) -> tuple[int, str] | None:
        """The id of the first marker the template renders once per text part, and that rendering."""
        if count == 0:
            return None
        for token, token_id in self._markers:
            prompt = self._render(_with_texts(messages, [token] * count), template_kwargs)
            if prompt.count(token) == count:
                return token_id, prompt
        return None

    def _controls(self, prompt: str, marker_id: int | None = None) -> list[int]:
        """The control-token ids the tokenizer finds in ``prompt``, in order (markers left out)."""
        ids = self._tokenizer(prompt, add_special_tokens=False)["input_ids"]
        return [i for i in ids if i in self._control_ids and i != marker_id]

    def _same_structure(self, prompt: str, marked_prompt: str, marker_id: int) -> bool:
        """Whether the client text added no control token and no multimodal placeholder."""
        if any(prompt.count(p) != marked_prompt.count(p) for p in self._placeholders):
            return False
        return self._controls(prompt) == self._controls(marked_prompt, marker_id)

    def _refuse_controls(self, texts: Sequence[str], *, always: bool = False) -> None:
        """Fallback where splicing is impossible: refuse text that would become control tokens.

        The joined text is searched too: a token split across two text parts of a
        message is joined again by templates that concatenate them.
        """
        haystacks = (*texts, "".join(texts))
        tokens = (*self._special, *self._placeholders)
        typed = sorted({t for t in tokens if any(t in text for text in haystacks)})
        if typed or always:
            shown = ", ".join(typed) or "a control token split across text parts"
            raise InvalidRequest(
                f"The text contains this model's control tokens ({shown}), which this model cannot "
                "take as plain text. Remove them from the messages."
            )

    def _refuse_structured(self, texts: Sequence[str]) -> None:
        """Tool definitions and calls are rendered from data, so their text cannot be spliced in as
        plain text: refuse any that holds a control token (each on its own: the template keeps them apart)."""
        tokens = (*self._special, *self._placeholders)
        typed = sorted({t for t in tokens for text in texts if t in text})
        if typed:
            raise InvalidRequest(
                f"The tools or tool calls contain this model's control tokens ({', '.join(typed)}), "
                "which this model cannot take as plain text there. Remove them."
            )

    def _plain_ids(self, text: str) -> list[int]:
        assert self._plain is not None
        ids = [int(i) for i in self._plain.encode(text, add_special_tokens=False).ids]
        leaked = sorted({self._tokenizer.convert_ids_to_tokens(i) for i in ids if i in self._control_ids})
        if leaked:  # a placeholder that is not a special token cannot be split
            raise InvalidRequest(
                f"The text contains this model's control tokens ({', '.join(leaked)}), which this "
                "model cannot take as plain text. Remove them from the messages."
            )
        return ids

    def _splice(self, inputs: dict[str, Any], marker_id: int, texts: Sequence[str]) -> dict[str, Any]:
        """Replace the markers in ``inputs`` by their texts' plain ids; stretch the per-token tensors.

        Adjacent markers (text parts the template joins with nothing between) are
        one span, tokenized as the one string the template would have made of them.
        """
        import torch

        ids = inputs["input_ids"]
        positions = (ids[0] == marker_id).nonzero().flatten().tolist() if ids.dim() == 2 else []
        if ids.dim() != 2 or ids.shape[0] != 1 or len(positions) != len(texts):
            self._refuse_controls(texts, always=True)
        spans: list[tuple[int, int, str]] = []  # (first marker, last marker, text)
        for position, text in zip(positions, texts, strict=True):
            if spans and spans[-1][1] == position - 1:
                first, _, joined = spans[-1]
                spans[-1] = (first, position, joined + text)
            else:
                spans.append((position, position, text))
        pieces = [torch.tensor(self._plain_ids(text), dtype=ids.dtype) for _, _, text in spans]
        spliced: dict[str, Any] = {}
        for key, value in inputs.items():
            if not isinstance(value, torch.Tensor) or value.shape != ids.shape:
                spliced[key] = value
                continue
            row, parts, start = value[0], [], 0
            for (first, last, _), piece in zip(spans, pieces, strict=True):
                parts.append(row[start:first])
                parts.append(piece if key == "input_ids" else row[first].repeat(len(piece)))
                start = last + 1
            parts.append(row[start:])
            spliced[key] = torch.cat(parts).unsqueeze(0)
        return spliced
