"""A request as the engine thread sees it, and the channel back to asyncio.

The engine thread owns the model; the event loop owns the HTTP connection. A
``Job`` carries the prepared model inputs one way and a ``JobSink`` carries
``TokenEvent``s back through the loop's ``LoopMailbox``, so neither side ever
blocks the other. Detokenisation and stop strings are handled here, on the
engine-thread side, so a stop string ends generation at once, and so are the
answer tokens' log-probabilities (token ids to texts), one entry on the event of
the token it belongs to.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from glimpse.engine.grammar import TokenConstraint
from glimpse.engine.mailbox import LoopMailbox
from glimpse.engine.protocol import FinishReason, SamplingParams, TokenEvent, TokenLogprob
from glimpse.engine.text import IncrementalDecoder, StopMatcher

if TYPE_CHECKING:
    from glimpse.engine.batching import SampledLogprobs

__all__ = ["Job", "JobSink"]

_Item = TokenEvent | BaseException

#: A token id's text and exact bytes (``engine.token_text.TokenTexts``).
TokenText = Callable[[int], tuple[str, bytes]]


def _no_text(token_id: int) -> tuple[str, bytes]:
    """Without a tokenizer (a sink built by hand), a token has no text."""
    return "", b""


class JobSink:
    """Engine-thread → event-loop channel for one request's events.

    With ``think_ids`` (the ids of ``<think>`` and ``</think>``), text between them
    goes out as ``reasoning`` and the rest as the answer; the tags themselves are
    dropped. Detection is by token id, as vLLM's reasoning parsers do, so it works
    whether or not the tokenizer calls the tags special. ``thinking`` says whether
    the prompt already opened a thought (a template that ends with ``<think>``).
    Log-probabilities are reported for answer tokens only: thinking and its tags have none.
    """

    def __init__(
        self,
        mailbox: LoopMailbox,
        decode: Callable[[Sequence[int]], str],
        stops: tuple[str, ...],
        prompt_tokens: int,
        think_ids: tuple[int, int] | None = None,
        thinking: bool = False,
        token_text: TokenText | None = None,
    ) -> None:
        self._mailbox = mailbox
        self._token_text = token_text or _no_text
        self.queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._decode = decode
        self._decoder = IncrementalDecoder(decode)
        self._stops = StopMatcher(stops)
        self._think_ids = think_ids
        self._thinking = thinking and think_ids is not None
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = 0
        self.finished = False
        self.first_token_at: float | None = None

    def _put(self, item: _Item) -> None:
        if not self._mailbox.post(self.queue, item):  # the loop is closed: nobody is listening any more
            self.finished = True

    def _event(
        self,
        text: str,
        reasoning: str,
        token_ids: tuple[int, ...],
        reason: FinishReason | None,
        logprobs: tuple[TokenLogprob, ...] = (),
    ) -> TokenEvent:
        return TokenEvent(
            text, token_ids, reason, self.prompt_tokens, self.completion_tokens, reasoning, logprobs
        )

    def _logprobs(self, sampled: SampledLogprobs | None) -> tuple[TokenLogprob, ...]:
        """The entry of one answer token, its ids turned into texts; none when not asked for."""
        if sampled is None:
            return ()
        top = tuple(self._entry(token, logprob) for token, logprob in sampled.top)
        return (self._entry(sampled.token_id, sampled.logprob, top),)

    def _entry(self, token_id: int, logprob: float, top: tuple[TokenLogprob, ...] = ()) -> TokenLogprob:
        text, raw = self._token_text(token_id)
        return TokenLogprob(text, logprob, raw, top)

    def _switch(self, thinking: bool) -> str:
        """At a think tag: finish the text decoded so far, and start a fresh decoder."""
        tail = self._decoder.flush()
        self._decoder = IncrementalDecoder(self._decode)
        was_thinking, self._thinking = self._thinking, thinking
        return tail if was_thinking else self._stops.feed(tail)

    def on_token(self, token_id: int, logprobs: SampledLogprobs | None = None) -> bool:
        """Record one generated token; returns True when a stop string ended the answer."""
        if self.finished:
            return True
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()
        self.completion_tokens += 1
        entry: tuple[TokenLogprob, ...] = ()
        if self._think_ids is not None and token_id in self._think_ids:
            was_thinking = self._thinking
            tail = self._switch(token_id == self._think_ids[0])
            if was_thinking:
                self._put(self._event("", tail, (token_id,), None))
                return False
            text = tail
        else:
            delta = self._decoder.push(token_id)
            if self._thinking:
                self._put(self._event("", delta, (token_id,), None))
                return False
            text = self._stops.feed(delta)
            entry = self._logprobs(logprobs)
        if self._stops.stopped:
            self.on_finish(FinishReason.STOP, text, entry)
            return True
        self._put(self._event(text, "", (token_id,), None, entry))
        return False

    def on_finish(
        self, reason: FinishReason, pending_text: str = "", logprobs: tuple[TokenLogprob, ...] = ()
    ) -> None:
        if self.finished:
            return
        self.finished = True
        tail, reasoning = pending_text, ""
        if self._thinking:  # the thought never closed: what there is, is thinking
            reasoning = self._decoder.flush()
        elif not self._stops.stopped:
            tail += self._stops.feed(self._decoder.flush())
            tail += self._stops.flush()
            if self._stops.stopped:
                reason = FinishReason.STOP
        self._put(self._event(tail, reasoning, (), reason, logprobs))

    def on_error(self, exc: BaseException) -> None:
        if not self.finished:
            self.finished = True
            self._put(exc)


@dataclass(slots=True, eq=False)
class Job:
    request_id: str
    inputs: dict[str, Any]
    sampling: SamplingParams
    sink: JobSink
    prompt_tokens: int
    #: Structured output: the grammar the answer follows (``sampling.response_format``, compiled).
    constraint: TokenConstraint | None = None
    #: The LoRA adapter the answer comes from (``None``: the base model).
    adapter: str | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    enqueued_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
