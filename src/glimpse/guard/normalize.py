"""Text normalisation for the prompt guard.

Attackers hide injection phrases from naive matching with full-width letters,
zero-width characters, letter-by-letter spacing, hyphens inside words and
look-alike letters from other scripts. Rules are written once against plain
lower-case ASCII and Chinese; this module folds every such disguise onto that
form, so one pattern covers them all. The result is only ever matched against,
never shown or sent to the model, so losing information (diacritics, digits in
words) is acceptable.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

__all__ = ["NormalizedText", "normalize"]

# Cyrillic, Greek and other look-alikes that NFKC leaves alone, mapped to the Latin
# letter they imitate (after casefolding, so lower-case forms suffice).
_HOMOGLYPHS = {
    # Cyrillic
    "а": "a", "в": "b", "е": "e", "ё": "e", "з": "3", "і": "i", "ї": "i", "ј": "j",
    "к": "k", "м": "m", "н": "h", "о": "o", "п": "n", "р": "p", "с": "c", "т": "t", "у": "y",
    "х": "x", "ѕ": "s", "ԁ": "d", "ԛ": "q", "ԝ": "w", "ӏ": "l", "ɡ": "g", "һ": "h", "ү": "y",
    "ь": "b", "г": "r",
    # Greek
    "α": "a", "β": "b", "γ": "y", "δ": "d", "ε": "e", "η": "n", "ι": "i", "κ": "k", "μ": "u",
    "ν": "v", "ο": "o", "ρ": "p", "σ": "o", "ς": "c", "τ": "t", "υ": "u", "χ": "x", "ω": "w",
    # Latin extensions and symbols that look like ASCII letters
    "ı": "i", "ȷ": "j", "ℓ": "l", "ø": "o", "ß": "ss", "æ": "ae", "œ": "oe", "đ": "d",
}  # fmt: skip
_HOMOGLYPH_TABLE = str.maketrans(_HOMOGLYPHS)
# Capitals first: Greek "Ν" looks like "N" but lower-cases to "ν", which looks like "v".
_UPPER_HOMOGLYPHS = str.maketrans(
    "АВЕКМНОРСТУХЅІЈΑΒΕΖΗΙΚΜΝΟΡΤΥΧ",
    "ABEKMHOPCTYXSIJABEZHIKMNOPTYX",
)

# Traditional characters that occur in the Chinese rules, folded onto the
# simplified forms the rules are written in (not a general converter).
_TRADITIONAL = (
    "請說輸統詞設預開發規則體們來個沒與對為這從現將無視別於內權員護審濾過戲顯復讀給麼"
    "絕應當後啟動態網頁機義語話記憶聽違幫寫隱衛導遊洩線錄僅屬條約處聯繫決擬嚴禁覽價級"
    "變變"
)
_SIMPLIFIED = (
    "请说输统词设预开发规则体们来个没与对为这从现将无视别于内权员护审滤过戏显复读给么"
    "绝应当后启动态网页机义语话记忆听违帮写隐卫导游泄线录仅属条约处联系决拟严禁览价级"
    "变变"
)
_TRADITIONAL_TABLE = str.maketrans(_TRADITIONAL, _SIMPLIFIED)

# Digits and symbols used as letters ("1gn0re", "$ystem"); applied only inside
# tokens that also contain a Latin letter, so plain numbers stay numbers.
_LEET_TABLE = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s"})
_LEET_TOKEN = re.compile(r"[a-z0-9@$]*[a-z][a-z0-9@$]*")

# Invisible characters that are not in category Cf but render as nothing.
_INVISIBLE = frozenset("\u115f\u1160\u3164\uffa0\u2800\u034f\u180e")

_CJK = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
# Separators that carry no meaning between two Chinese characters ("忽 略", "忽-略").
_CJK_GAP = re.compile(rf"(?<=[{_CJK}])[\s\-_.*·•/\\|~+^'\"`]+(?=[{_CJK}])")
# Spaces around clause punctuation next to Chinese text ("上 文 ， 告").
_CJK_PUNCT_GAP = re.compile(rf"(?<=[{_CJK}])\s+(?=[,.!?;:。、])|(?<=[,.!?;:。、])\s+(?=[{_CJK}])")
# Separators inside a Latin word ("ign-ore", "ig.nore", "ig_nore", "ig*nore").
_WORD_GAP = re.compile(r"(?<=[a-z])[\-_.*·•|~^'`\u2018\u2019]+(?=[a-z])")
# Letters written one at a time: "i g n o r e" (single separators inside the word,
# wider gaps between words).
_SPACED_LETTERS = re.compile(r"(?<![a-z])[a-z](?![a-z])(?:[ \-_.*·•|/]{1,3}[a-z](?![a-z])){2,}")
_WIDE_GAP = re.compile(r"[ \-_.*·•|/]{2,}")
_SPACE = re.compile(r"[^\S\n]+")
_NEWLINES = re.compile(r"\s*\n\s*")
_NON_WORD = re.compile(rf"[^a-z0-9{_CJK}]+")


@dataclass(slots=True, frozen=True)
class NormalizedText:
    """Two views of one text: ``text`` keeps word gaps, ``squashed`` has none.

    ``squashed`` catches letter-spaced phrases whose word gaps were lost
    ("i g n o r e a l l ..."), at the price of matching across word boundaries,
    so only a few long, unambiguous rules use it.
    """

    text: str
    squashed: str


def _strip_marks(text: str) -> str:
    decomposed = unicodedata.normalize("NFD", text)
    kept = "".join(
        ch
        for ch in decomposed
        if ch not in _INVISIBLE and unicodedata.category(ch) not in {"Mn", "Me", "Cf", "Cc"} or ch in "\n\t"
    )
    return unicodedata.normalize("NFC", kept)


def _join_spaced(match: re.Match[str]) -> str:
    # Inside a run of single letters, one separator splits letters and a wider
    # one splits words.
    return " ".join(part.translate(_SEP_DELETE) for part in _WIDE_GAP.split(match.group()))


_SEP_DELETE = str.maketrans("", "", " -_.*·•|/")


def _deleet(match: re.Match[str]) -> str:
    token = match.group()
    return token.translate(_LEET_TABLE) if any(ch in token for ch in "0134579@$") else token


def normalize(text: str) -> NormalizedText:
    """Fold ``text`` onto lower-case ASCII/Chinese with disguises removed."""
    folded = unicodedata.normalize("NFKC", text)
    folded = (
        _strip_marks(folded)
        .translate(_UPPER_HOMOGLYPHS)
        .casefold()
        .translate(_HOMOGLYPH_TABLE)
        .translate(_TRADITIONAL_TABLE)
    )
    folded = _LEET_TOKEN.sub(_deleet, folded)
    folded = _CJK_PUNCT_GAP.sub("", _CJK_GAP.sub("", folded))
    folded = _SPACED_LETTERS.sub(_join_spaced, folded)
    folded = _WORD_GAP.sub("", folded)
    folded = _NEWLINES.sub("\n", _SPACE.sub(" ", folded)).strip()
    return NormalizedText(text=folded, squashed=_NON_WORD.sub("", folded))
