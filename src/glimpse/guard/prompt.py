"""The prompt-injection guard: data-driven rules over normalised text.

A rule match is evidence, not proof, so the default mode only records the
verdict (``flag``); ``block`` refuses with a message that does not say which
rule fired, so the refusal cannot be used to tune an attack.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import anyio.to_thread

from glimpse.config import GuardSettings
from glimpse.errors import PromptRejected
from glimpse.guard.normalize import normalize
from glimpse.guard.rules import RuleSet, load_rules

__all__ = ["MAX_SCAN_CHARS", "OFFLOAD_CHARS", "REFUSAL_MESSAGE", "GuardVerdict", "PromptGuard"]

logger = logging.getLogger(__name__)

REFUSAL_MESSAGE = "The request was refused by the content policy."
# Matching costs about 3 ms per 1,000 characters: beyond this much text, the
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

    def check(self, texts: Sequence[str]) -> GuardVerdict:
        """Match every text; all matching rules are reported, in rule order."""
        if self._mode == "off":
            return _CLEAN
        if sum(len(text) for text in texts) > self._max_scan_chars:
            return _OVERSIZE
        views = [normalize(text) for text in texts if text]
        rule_ids: list[str] = []
        categories: list[str] = []
        for rule in self._rules.rules:
            haystacks = [view.squashed if rule.view == "squashed" else view.text for view in views]
            if any(pattern.search(hay) for hay in haystacks for pattern in rule.patterns):
                rule_ids.append(rule.id)
                if rule.category not in categories:
                    categories.append(rule.category)
        if not rule_ids:
            return _CLEAN
        return GuardVerdict(flagged=True, rule_ids=tuple(rule_ids), categories=tuple(categories))

    def enforce(self, texts: Sequence[str]) -> GuardVerdict:
        """``check``, then refuse in ``block`` mode; the caller records the verdict."""
        return self._decide(self.check(texts))

    async def acheck(self, texts: Sequence[str]) -> GuardVerdict:
        """``check`` for async callers: long texts are matched in a worker thread."""
        if self._mode == "off" or sum(len(text) for text in texts) <= OFFLOAD_CHARS:
            return self.check(texts)
        return await anyio.to_thread.run_sync(self.check, texts)

    async def aenforce(self, texts: Sequence[str]) -> GuardVerdict:
        return self._decide(await self.acheck(texts))

    def _decide(self, verdict: GuardVerdict) -> GuardVerdict:
        if verdict.flagged:
            logger.info("prompt guard matched rules %s (mode %s)", ",".join(verdict.rule_ids), self._mode)
            if self._mode == "block":
                raise PromptRejected(REFUSAL_MESSAGE)
        return verdict
