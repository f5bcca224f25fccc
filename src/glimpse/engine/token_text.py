"""A token's text and exact bytes, as OpenAI's ``logprobs`` show each token.

Decoding one token alone loses bytes: byte-level BPE tokenizers (GLM's, GPT-2's)
split a multi-byte character across tokens, and each part decodes to U+FFFD. The
bytes are what lets a client put such characters back together, so for a
byte-level tokenizer they are read from the token's own symbols (each stands for
one byte, by GPT-2's ``bytes_to_unicode`` table); for any other tokenizer, and for
added tokens, they are the UTF-8 of the token's decoded text.
"""

from __future__ import annotations

import functools
from typing import Any

__all__ = ["TokenTexts"]

#: Memoised tokens per tokenizer: a vocabulary's worth would be ~15 MB for GLM's.
_MEMO_TOKENS = 1 << 16


def _byte_of_symbol() -> dict[str, int]:
    """GPT-2's ``bytes_to_unicode``, inverted: the byte each symbol of a byte-level vocabulary stands for."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    symbols = {byte: chr(byte) for byte in printable}
    extra = 0
    for byte in range(256):
        if byte not in symbols:
            symbols[byte] = chr(256 + extra)
            extra += 1
    return {symbol: byte for byte, symbol in symbols.items()}


_BYTE_OF = _byte_of_symbol()


def _is_byte_level(tokenizer: Any) -> bool:
    decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
    return type(decoder).__name__ == "ByteLevel"


class TokenTexts:
    """``(text, bytes)`` of a token id for one tokenizer; memoised, safe to call from any thread."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._byte_level = _is_byte_level(tokenizer)
        self._added = frozenset(getattr(tokenizer, "added_tokens_decoder", {}))
        self._lookup = functools.lru_cache(maxsize=_MEMO_TOKENS)(self._text)

    def __call__(self, token_id: int) -> tuple[str, bytes]:
        return self._lookup(token_id)

    def _text(self, token_id: int) -> tuple[str, bytes]:
        if self._byte_level and token_id not in self._added:
            piece = self._tokenizer.convert_ids_to_tokens(token_id)
            if isinstance(piece, str) and piece and all(symbol in _BYTE_OF for symbol in piece):
                raw = bytes(_BYTE_OF[symbol] for symbol in piece)
                return raw.decode("utf-8", errors="replace"), raw
        text = str(self._tokenizer.decode([token_id]))
        return text, text.encode("utf-8")
