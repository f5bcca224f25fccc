"""Obvious encodings undone before screening: what a model can decode, the guard reads too.

A capable model follows "aWdub3JlIGFsbCBwcmV2aW91cyBpbnN0cnVjdGlvbnM=" as readily
as the plain sentence, so the guard screens a second view of each text in which
HTML entities, URL escapes, markdown/HTML comments, Unicode tag characters and
base64 runs are decoded (``decoded_view``). Reversed text and rot13 need no
marker to be recognised, so they cannot be found by parsing; ``scrambled_views``
unscrambles the normalised text and keeps a view only when it contains a
telltale word, so clean traffic pays one keyword scan per view, not a full
screening.

Every view is at most about twice the size of its input, and callers normalise
it under the same budget as the text itself, so decoding cannot amplify work.
"""

from __future__ import annotations

import base64
import binascii
import html
import re
from urllib.parse import unquote_plus

__all__ = ["decoded_view", "scrambled_views"]

_ENTITY = re.compile(r"&(?:#[0-9]{1,7}|#x[0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")
_PERCENT = re.compile(r"%[0-9a-fA-F]{2}")
_COMMENT = re.compile(r"<!--(.*?)(?:-->|$)", re.DOTALL)
_TAGS = re.compile("[\U000e0000-\U000e007f]+")
# Standard and URL-safe alphabets; 16+ characters (12+ bytes) so ordinary words
# and hex digests of other lengths are rarely candidates.
_BASE64 = re.compile(r"(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{16,}={0,2}(?![A-Za-z0-9+/=_-])")
_MAX_BASE64_RUNS = 64
_WHITESPACE = re.compile(r"\s+")

_ROT13 = str.maketrans(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "nopqrstuvwxyzabcdefghijklmNOPQRSTUVWXYZabcdefghijklm",
)
# Words an unscrambled injection almost always contains and scrambled prose
# practically never does; matched against a view with separators removed.
_TELLTALE = re.compile(
    r"ignor|disregard|instruction|systemprompt|jailbr|pwned|unrestrict|uncensor|developermode|"
    r"doanythingnow|forget(?:all|every|your|the)|bypass|override|previous|reveal|"
    r"忽略|无视|忘记|指令|提示词|越狱|限制|规则|设定"
)
_NON_WORD = re.compile(r"[^a-z0-9\u3400-\u4dbf\u4e00-\u9fff]+")


def _decode_base64(run: str) -> str | None:
    padded = run.rstrip("=") + "=" * (-len(run.rstrip("=")) % 4)
    altchars = b"-_" if ("-" in run or "_" in run) else None
    try:
        raw = base64.b64decode(padded, altchars=altchars, validate=True)
        text = raw.decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    printable = sum(ch.isprintable() or ch in "\n\t\r" for ch in text)
    return text if text and printable >= 0.9 * len(text) else None


def _base64_payloads(text: str) -> list[str]:
    payloads: list[str] = []
    for match in _BASE64.finditer(text):
        if len(payloads) >= _MAX_BASE64_RUNS:
            break
        decoded = _decode_base64(match.group())
        if decoded is not None:
            payloads.append(decoded)
            # One more level: base64 of base64 is a common "obfuscation" step.
            payloads.extend(filter(None, (_decode_base64(m.group()) for m in _BASE64.finditer(decoded))))
    return payloads


def _untag(run: str) -> str:
    # Tag characters U+E0020-E007E mirror printable ASCII; the rest carry nothing.
    return "".join(chr(ord(ch) - 0xE0000) for ch in run if 0xE0020 <= ord(ch) <= 0xE007E)


def _unescape(text: str) -> str:
    for _ in range(2):  # "&amp;#105;" and "%2569" are double-encoded once
        if _ENTITY.search(text):
            text = html.unescape(text)
        if _PERCENT.search(text):
            text = unquote_plus(text)
    return text


def decoded_view(text: str) -> str | None:
    """``text`` with its encodings undone, plus decoded payloads; None if nothing was encoded.

    Comments are both removed (they may split a word: "ig<!-- -->nore") and
    kept as their own lines with whitespace folded (their content may span lines).
    """
    parts: list[str] = []
    plain = _COMMENT.sub("", _unescape(text))
    if plain != text:
        parts.append(plain)
    parts += [_WHITESPACE.sub(" ", match.group(1)) for match in _COMMENT.finditer(text)]
    parts += [_untag(match.group()) for match in _TAGS.finditer(text)]
    parts += _base64_payloads(text)
    parts = [part for part in parts if part.strip()]
    return "\n".join(parts) if parts else None


def scrambled_views(normalized: str) -> list[str]:
    """Reversed, word-reversed and rot13 forms of normalised text that look like an injection."""
    candidates = (
        normalized[::-1],
        " ".join(word[::-1] for word in normalized.split(" ")),
        normalized.translate(_ROT13),
    )
    return [view for view in candidates if _TELLTALE.search(_NON_WORD.sub("", view))]
