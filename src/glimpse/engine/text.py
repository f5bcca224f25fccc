"""Turn a stream of token ids into a stream of text, honouring stop strings.

Decoding token by token breaks multi-byte characters (Chinese text is mostly
three-byte UTF-8 split across byte-level BPE tokens), so text is released only
once it decodes cleanly; and a stop string may arrive split over several tokens,
so the tail that could still become one is held back until it cannot.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

__all__ = ["IncrementalDecoder", "StopMatcher"]

_REPLACEMENT = "\ufffd"

Decode = Callable[[Sequence[int]], str]


@dataclass(slots=True)
class IncrementalDecoder:
    """Release text deltas whose concatenation equals ``decode(all ids)``."""

    decode: Decode
    ids: list[int] = field(default_factory=list)
    emitted: str = ""
    _prefix_offset: int = 0
    _read_offset: int = 0

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        prefix = self.decode(self.ids[self._prefix_offset : self._read_offset])
        text = self.decode(self.ids[self._prefix_offset :])
        if len(text) > len(prefix) and not text.endswith(_REPLACEMENT):
            delta = text[len(prefix) :]
            self._prefix_offset = self._read_offset
            self._read_offset = len(self.ids)
            self.emitted += delta
            return delta
        return ""

    def flush(self) -> str:
        """The rest of the text once no more tokens will come (may end in U+FFFD)."""
        full = self.decode(self.ids)
        # If the tokenizer merged across our cut points, never re-send text.
        delta = full[len(self.emitted) :] if full.startswith(self.emitted) else ""
        self.emitted += delta
        return delta


@dataclass(slots=True)
class StopMatcher:
    """Cut the text at the first stop string, holding back a possible partial match."""

    stops: tuple[str, ...]
    _held: str = ""
    stopped: bool = False

    def feed(self, delta: str) -> str:
        if self.stopped or not delta:
            return ""
        if not self.stops:
            return delta
        text = self._held + delta
        cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._held = ""
            return text[:cut]
        keep = self._partial_suffix(text)
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        held, self._held = self._held, ""
        return "" if self.stopped else held

    def _partial_suffix(self, text: str) -> int:
        """Length of the longest tail of ``text`` that is a proper prefix of a stop string."""
        best = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:n]):
                    best = n
                    break
        return best
