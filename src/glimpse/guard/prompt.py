"""The prompt-injection guard: data-driven rules over normalised text.

A rule match is evidence, not proof, so the default mode only records the
verdict (``flag``); ``block`` refuses with a message that does not say which
rule fired, so the refusal cannot be used to tune an attack.

The guard screens the conversation as the model reads it: each message, and all
the user's messages joined (an injection split over two messages is one
injection to the model), each also with obvious encodings undone and, when it looks like an
injection, reversed or rot13-decoded (see ``encodings``). The work is bounded
per request: the input is capped at ``max_scan_chars``, and normalisation of
the texts (and, separately, of their decoded views) stops once its output
passes that many characters (the verdict is then "oversize"), so text that
grows under NFKC (U+FDFA: 18 characters) costs no more than plain text.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

import anyio.to_thread

from glimpse.config import GuardSettings
from glimpse.errors import PromptRejected
from glimpse.guard.encodings import decoded_view, scrambled_views
from glimpse.guard.normalize import NormalizedText, ScanBudget, normalize_bounded
from glimpse.guard.rules import Rule, RuleSet, load_rules

__all__ = ["MAX_SCAN_CHARS", "OFFLOAD_CHARS", "REFUSAL_MESSAGE", "GuardVerdict", "PromptGuard"]

logger = logging.getLogger(__name__)
_NON_WORD = re.compile(r"[^a-z0-9\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")

REFUSAL_MESSAGE = "The request was refused by the content policy."
# Screening costs about 4 ms per 1,000 characters: beyond this much text, the
# async entry points run it in a worker thread instead of on the event loop.
OFFLOAD_CHARS = 4096
# More text than any served model's context: refused unread, so a huge body
# cannot pin a CPU in the guard (the verdict names rule "guard.oversize").
MAX_SCAN_CHARS = 400_000


@dataclass(slots=True, frozen=True)
class GuardVerdict:
    flagged: bool
    rule_ids: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()

    @classmethod
    def clean(cls) -> GuardVerdict:
        return _CLEAN


_CLEAN = GuardVerdict(flagged=False)
_OVERSIZE = GuardVerdict(flagged=True, rule_ids=("guard.oversize",), categories=("oversize",))


class PromptGuard:
    """Checks a request's message texts against the rule set."""

    def __init__(
        self, settings: GuardSettings, rules: RuleSet | None = None, *, max_scan_chars: int = MAX_SCAN_CHARS
    ) -> None:
        self._mode = settings.prompt_guard
        self._max_scan_chars = max_scan_chars
        if self._mode == "off":
            self._rules = RuleSet(())
        else:
            self._rules = rules if rules is not None else load_rules(settings.prompt_rules_file)
            logger.info("prompt guard in %s mode with %d rules", self._mode, len(self._rules))

    @property
    def mode(self) -> str:
        return self._mode

    def check(self, texts: Sequence[str], roles: Sequence[str] | None = None) -> GuardVerdict:
        """Match every text, and the user's texts joined; all matching rules are reported, in rule order.

        ``roles`` (one per text) picks the texts that are joined: the ``"user"``
        ones; without it, all texts are joined.
        """
        if self._mode == "off":
            return _CLEAN
        kept = [(text, roles[i] if roles else "user") for i, text in enumerate(texts) if text]
        texts = [text for text, _ in kept]
        if sum(len(text) for text in texts) > self._max_scan_chars:
            return _OVERSIZE
        messages = self._normalize_all(texts)
        decoded = self._normalize_all([view for view in map(decoded_view, texts) if view is not None])
        if messages is None or decoded is None:
            return _OVERSIZE
        user = [view for view, (_, role) in zip(messages, kept, strict=True) if role == "user"]
        if len(user) < 2:
            full, anchored_only = list(messages), []
        else:
            # Joined, the user's texts are screened once; alone, only by rules that anchor on a
            # message's start or end (everything else matches in the joined text too).
            others = [view for view, (_, role) in zip(messages, kept, strict=True) if role != "user"]
            full, anchored_only = [_join(user), *others], user
        full += decoded
        full += [_plain(view) for view in scrambled_views(_join(messages).text)]
        return self._match(full, anchored_only)

    def _normalize_all(self, texts: Sequence[str]) -> list[NormalizedText] | None:
        """Each text normalised, or None once their total output passes ``max_scan_chars``."""
        budget = ScanBudget(self._max_scan_chars)
        views: list[NormalizedText] = []
        for text in texts:
            view = normalize_bounded(text, budget)
            if view is None:
                return None
            views.append(view)
        return views

    def _match(self, full: list[NormalizedText], anchored_only: list[NormalizedText]) -> GuardVerdict:
        rule_ids: list[str] = []
        categories: list[str] = []
        for rule in self._rules.rules:
            views = full + anchored_only if rule.anchored else full
            if _matches(rule, views):
                rule_ids.append(rule.id)
                if rule.category not in categories:
                    categories.append(rule.category)
        if not rule_ids:
            return _CLEAN
        return GuardVerdict(flagged=True, rule_ids=tuple(rule_ids), categories=tuple(categories))

    async def acheck(self, texts: Sequence[str], roles: Sequence[str] | None = None) -> GuardVerdict:
        """``check`` for async callers: long texts are matched in a worker thread."""
        if self._mode == "off" or sum(len(text) for text in texts) <= OFFLOAD_CHARS:
            return self.check(texts, roles)
        return await anyio.to_thread.run_sync(self.check, texts, roles)

    def decide(self, verdict: GuardVerdict) -> GuardVerdict:
        """Refuse a flagged prompt in ``block`` mode (after the caller has recorded the verdict)."""
        if verdict.flagged:
            logger.info("prompt guard matched rules %s (mode %s)", ",".join(verdict.rule_ids), self._mode)
            if self._mode == "block":
                raise PromptRejected(REFUSAL_MESSAGE)
        return verdict


def _matches(rule: Rule, views: Sequence[NormalizedText]) -> bool:
    haystacks = [view.squashed if rule.view == "squashed" else view.text for view in views]
    return any(pattern.search(hay) for hay in haystacks for pattern in rule.patterns)


def _join(views: Sequence[NormalizedText]) -> NormalizedText:
    # A space, not a newline: rules stop at line ends, and the split must not hide the phrase.
    return NormalizedText(" ".join(view.text for view in views), "".join(view.squashed for view in views))


def _plain(text: str) -> NormalizedText:
    """An already normalised text (a scrambled view) with its squashed form."""
    return NormalizedText(text, _NON_WORD.sub("", text))
