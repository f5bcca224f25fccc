"""Structured output: grammars for one model's vocabulary (xgrammar), and one request's matcher.

xgrammar (vLLM's default structured-output backend) compiles a JSON schema against
the tokenizer's vocabulary; a matcher of the compiled grammar then says, at every
step, which tokens may come next (a bitmask over the logits) and follows the tokens
chosen. The work is split by cost and thread:

- ``Grammars.compile`` is blocking and may take a while for a large schema: the
  engine awaits it in a thread at admission, before the prompt is preprocessed, so
  an unusable schema is refused (``InvalidRequest`` naming ``response_format``)
  before anything runs, and the engine thread never compiles. xgrammar's compiler
  cache keeps compiled grammars by schema, so a schema sent again costs nothing.
- ``TokenConstraint`` (one per request, on the engine thread) fills its row of a
  step's bitmask and accepts each chosen token; ``mask_logits`` applies the rows.

The JSON is compact (``any_whitespace`` off, vLLM's ``disable_any_whitespace``):
whitespace between tokens is not free, so a model cannot spend its answer on blank
space, which small or random models otherwise do. Objects hold only the properties
the schema names (xgrammar's strict mode, as OpenAI's ``strict`` demands), in its
order. The grammar's stop tokens are the model's end-of-sequence ids: once the JSON
is complete only they may follow, so the answer ends where the JSON does.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from glimpse.engine.json_schema_strings import UnusableStringBounds, bounded_strings_as_patterns
from glimpse.engine.protocol import ResponseFormat
from glimpse.errors import InvalidRequest

__all__ = ["GrammarLogitsProcessor", "Grammars", "TokenConstraint", "enforceable_schema", "mask_logits"]

logger = logging.getLogger(__name__)

#: Compiled grammars kept for schemas sent again (xgrammar's cache, least recently used out).
_CACHE_BYTES = 64 * 2**20
#: Threads one compilation may use (xgrammar parallelises over the vocabulary).
_COMPILE_THREADS = 4
#: ``json_object``: any object, with any properties.
_ANY_OBJECT = '{"type": "object"}'
#: xgrammar's messages start with a timestamp and a source location, and may carry a check's text.
_LOCATION = re.compile(r"^\[[0-9:]+\] \S+:\d+: (?:Check failed: .*? is false: )?")
_MAX_REASON = 300


def enforceable_schema(response_format: ResponseFormat) -> Any:
    """The schema as xgrammar gets it (``json_schema_strings``); ``InvalidRequest`` if unusable."""
    assert response_format.schema is not None
    try:
        return bounded_strings_as_patterns(json.loads(response_format.schema))
    except UnusableStringBounds as exc:
        raise InvalidRequest(
            f"response_format: the JSON schema cannot be enforced: {exc}", param="response_format"
        ) from exc


class Grammars:
    """Compiles response formats for one tokenizer and vocabulary; thread-safe, cached by schema."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: Iterable[int]) -> None:
        """``vocab_size`` is the width of the model's logits (GLM's exceeds its tokenizer's length);
        ``stop_token_ids`` the ids that end an answer (``generate()``'s end-of-sequence ids)."""
        import xgrammar

        stops = sorted(stop_token_ids)
        if not stops:
            raise ValueError("structured output needs the model's end-of-sequence token ids")
        info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=stops)
        self.vocab_size = vocab_size
        self._compiler = xgrammar.GrammarCompiler(
            info, max_threads=_COMPILE_THREADS, cache_enabled=True, cache_limit_bytes=_CACHE_BYTES
        )

    def compile(self, response_format: ResponseFormat) -> Any:
        """The compiled grammar (blocking); ``InvalidRequest`` for a schema xgrammar cannot use."""
        try:
            if response_format.type == "json_object" or response_format.schema is None:
                return self._compiler.compile_json_schema(
                    _ANY_OBJECT, any_whitespace=False, strict_mode=False
                )
            return self._compiler.compile_json_schema(
                json.dumps(enforceable_schema(response_format)), any_whitespace=False
            )
        except (RuntimeError, ValueError) as exc:
            # xgrammar reports a schema it cannot turn into a grammar as a RuntimeError (its
            # InvalidJSONError is one), with the reason after a source location.
            reason = _LOCATION.sub("", str(exc).strip())[:_MAX_REASON]
            raise InvalidRequest(
                f"response_format: the JSON schema cannot be used for structured output: {reason}",
                param="response_format",
            ) from exc

    def compile_structural_tag(self, tag: dict[str, Any]) -> Any:
        """A tool-call grammar (``tool_grammar.structural_tag``), compiled (blocking); ``InvalidRequest``
        naming ``tools`` for a schema xgrammar cannot use there."""
        try:
            return self._compiler.compile_structural_tag(tag)
        except (RuntimeError, ValueError) as exc:
            reason = _LOCATION.sub("", str(exc).strip())[:_MAX_REASON]
            raise InvalidRequest(
                f"tools: the functions' schemas cannot be used for tool calls: {reason}", param="tools"
            ) from exc

    def constraint(self, compiled: Any, *, after: int | None = None) -> TokenConstraint:
        """A fresh matcher of ``compiled`` for one request (see ``TokenConstraint`` for ``after``)."""
        import xgrammar

        return TokenConstraint(xgrammar.GrammarMatcher(compiled), self.vocab_size, after=after)


class TokenConstraint:
    """One request's grammar state: which tokens may come next, fed every token chosen.

    With ``after`` (the id of ``</think>`` when the prompt opened a thought), the
    grammar starts once that token has been generated: the model thinks freely,
    then answers under the grammar. Used on the engine thread only.
    """

    def __init__(self, matcher: Any, vocab_size: int, *, after: int | None = None) -> None:
        self._matcher = matcher
        self.vocab_size = vocab_size
        self._waiting_for = after
        #: A chosen token the grammar refused (a bug: masked logits cannot choose one).
        self.failed = False

    @property
    def active(self) -> bool:
        """Whether the next token must be masked (the grammar has started and not ended)."""
        return self._waiting_for is None and not self.finished

    @property
    def finished(self) -> bool:
        """The grammar took its stop token (or failed): the answer is complete."""
        return self.failed or bool(self._matcher.is_terminated())

    def fill(self, bitmask: torch.Tensor, row: int) -> None:
        self._matcher.fill_next_token_bitmask(bitmask, row)

    def accept(self, token_id: int) -> None:
        if self._waiting_for is not None:
            if token_id == self._waiting_for:
                self._waiting_for = None
            return
        if self.finished:
            return
        if not self._matcher.accept_token(token_id):
            logger.error(
                "the grammar refused token %d that was chosen under its mask; ending the answer", token_id
            )
            self.failed = True


def mask_logits(logits: torch.Tensor, rows: Sequence[tuple[int, TokenConstraint]]) -> None:
    """Set, in place, the logits of every token each listed row's grammar forbids to ``-inf``.

    ``rows``: ``(row index in logits, its active constraint)``; other rows are untouched.
    """
    if not rows:
        return
    import xgrammar

    vocab = rows[0][1].vocab_size
    if logits.shape[-1] != vocab:
        raise ValueError(f"logits of width {logits.shape[-1]} for a grammar over {vocab} tokens")
    bitmask = xgrammar.allocate_token_bitmask(logits.shape[0], vocab)
    for row, constraint in rows:
        constraint.fill(bitmask, row)
    xgrammar.apply_token_bitmask_inplace(
        logits, bitmask.to(logits.device), vocab_size=vocab, indices=[row for row, _ in rows]
    )


class GrammarLogitsProcessor:
    """A ``generate()`` logits processor for one request's grammar (the one-at-a-time path).

    ``generate()`` shows the tokens so far, not the one just chosen, so each call
    first feeds the matcher the tokens added since the last call.
    """

    def __init__(self, constraint: TokenConstraint, prompt_len: int) -> None:
        self._constraint = constraint
        self._seen = prompt_len

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        for token in input_ids[0, self._seen :].tolist():
            self._constraint.accept(int(token))
        self._seen = int(input_ids.shape[1])
        if self._constraint.active:
            mask_logits(scores, [(0, self._constraint)])
        return scores
