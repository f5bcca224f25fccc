"""Text normalisation for the prompt guard.

Attackers hide injection phrases from naive matching with full-width letters,
zero-width characters, letter-by-letter spacing, hyphens inside words and
look-alike letters from other scripts. Rules are written once against plain
lower-case ASCII and Chinese; this module folds every such disguise onto that
form, so one pattern covers them all. The result is only ever matched against,
never shown or sent to the model, so losing information (diacritics, digits in
words) is acceptable.

``sanitize_model_text`` is the one exception: it is applied to the text that
*does* reach the model (the API adapters call it), and removes only characters
that render as nothing yet carry content a model can read (Unicode tag
characters, runs of variation selectors, bidi and other invisible controls), so
the guard and the model see the same visible text.

``normalize`` costs time in proportion to its *output*, and NFKC can grow text
eighteen-fold (U+FDFA); ``normalize_bounded`` therefore normalises in chunks and
stops as soon as the output passes a budget, so one request's cost is bounded
by the budget, not by how far its characters expand.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

__all__ = ["NormalizedText", "ScanBudget", "normalize", "normalize_bounded", "sanitize_model_text"]

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
    # Variant and Japanese (shinjitai) forms of the same characters: "忽畧" is "忽略".
    "畧䂓槼説読絶総聴廃棄対発関応従権処戯爲衆"
)
_SIMPLIFIED = (
    "请说输统词设预开发规则体们来个没与对为这从现将无视别于内权员护审滤过戏显复读给么"
    "绝应当后启动态网页机义语话记忆听违帮写隐卫导游泄线录仅属条约处联系决拟严禁览价级"
    "变变"
    "略规规说读绝总听废弃对发关应从权处戏为众"
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


# What the model must not receive: characters that display as nothing but that a
# model reads. Tag characters (U+E0000-E007F) spell ASCII invisibly ("ASCII
# smuggling"); bidi overrides reorder what a reviewer sees; the rest are
# zero-width spaces, fillers and deprecated format controls. Zero-width
# (non-)joiners stay: Persian, Indic scripts and emoji sequences need them.
_MODEL_INVISIBLE = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180e\u200b\u200e\u200f\u202a-\u202e"
    "\u2060-\u2064\u2066-\u206f\u3164\ufeff\uffa0\ufff9-\ufffb]"
)
# A subdivision flag (black flag, 2-6 tag letters or digits, cancel tag) is the
# one legitimate use of tag characters; every other run of them is removed.
_TAG_RUN = re.compile(
    "(\U0001f3f4[\U000e0030-\U000e0039\U000e0061-\U000e007a]{2,6}\U000e007f)|[\U000e0000-\U000e007f]+"
)
# One variation selector picks a glyph (emoji style, an ideographic variant); a run
# of them encodes bytes behind a single visible character, so only the first stays.
_SELECTOR_RUN = re.compile("([\ufe00-\ufe0f\U000e0100-\U000e01ef])[\ufe00-\ufe0f\U000e0100-\U000e01ef]+")

# NFKC is applied this many input characters at a time (split before whitespace
# where possible, so a combining sequence is not cut in two).
_NFKC_CHUNK = 4096


def sanitize_model_text(text: str) -> str:
    """``text`` without the invisible characters that smuggle content past a reader.

    Visible text is unchanged, so the answer to a normal prompt cannot change;
    the prompt guard screens this same text.
    """
    if text.isascii():
        return text
    text = _TAG_RUN.sub(lambda match: match.group(1) or "", text)
    text = _SELECTOR_RUN.sub(r"\1", text)
    return _MODEL_INVISIBLE.sub("", text)


@dataclass(slots=True)
class ScanBudget:
    """Characters that normalisation may still produce for one request, shared by all its texts."""

    chars: int

    def spend(self, count: int) -> bool:
        """Take ``count`` characters; False once the budget is overdrawn."""
        self.chars -= count
        return self.chars >= 0


def _nfkc_bounded(text: str, budget: ScanBudget) -> str | None:
    """NFKC of ``text``, or None once the output overdraws ``budget`` (work stops there)."""
    if text.isascii():  # NFKC leaves ASCII alone
        return text if budget.spend(len(text)) else None
    out: list[str] = []
    start = 0
    while start < len(text):
        end = min(start + _NFKC_CHUNK, len(text))
        if end < len(text):
            cut = max(text.rfind(" ", start + 1, end), text.rfind("\n", start + 1, end))
            end = cut if cut > start else end
        piece = _nfkc(text[start:end])
        if not budget.spend(len(piece)):
            return None
        out.append(piece)
        start = end
    return "".join(out)


def _nfkc(text: str) -> str:
    return unicodedata.normalize("NFKC", text)


# Marks that are not disguises: line breaks, and the kana voicing marks that NFC
# puts back together ("プ" must not become "フ").
_KEPT = frozenset("\n\t\u3099\u309a")
_LOOSE_VOICING = str.maketrans("", "", "\u3099\u309a")


def _strip_marks(text: str) -> str:
    decomposed = unicodedata.normalize("NFD", text)
    kept = "".join(
        ch
        for ch in decomposed
        if ch not in _INVISIBLE and unicodedata.category(ch) not in {"Mn", "Me", "Cf", "Cc"} or ch in _KEPT
    )
    # A voicing mark NFC could not attach to a kana is a disguise like any other mark.
    return unicodedata.normalize("NFC", kept).translate(_LOOSE_VOICING)


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
    return _fold(_nfkc(text))


def normalize_bounded(text: str, budget: ScanBudget) -> NormalizedText | None:
    """``normalize``, or None when NFKC would make more characters than ``budget`` has left.

    The work done is bounded by the budget (plus one chunk), whatever the input.
    """
    folded = _nfkc_bounded(text, budget)
    return None if folded is None else _fold(folded)


def _fold(nfkc_text: str) -> NormalizedText:
    folded = nfkc_text
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
