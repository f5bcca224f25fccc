"""Which chat-completions parameters Glimpse refuses, and which it ignores.

A parameter that is accepted and silently dropped answers a different question
than the client asked (no tool call, no log-probabilities, free text instead of
JSON), and the client cannot tell. So every top-level parameter that Glimpse
does not implement is refused with a 400 naming it (``param``), before any work,
as OpenAI refuses what a model does not support (code ``unsupported_parameter``).
Two exceptions:

- a value that asks for nothing (``null``, ``functions: []``, ``logprobs: false``,
  ``n: 1``, ...) is accepted as if absent: clients send such defaults;
- ``IGNORED`` parameters are accepted and dropped: they label or route the request
  for OpenAI's own bookkeeping and change nothing in the answer.

A name OpenAI does not define either (a typo, another server's extension such as
vLLM's ``guided_json``) is refused as OpenAI refuses it ("Unrecognized request
argument"), rather than ignored as vLLM does: a typo that silently changes the
answer is worse than one that fails. Only top-level parameters are checked;
unknown keys inside messages and content parts are ignored. The lists follow the
``openai`` SDK's ``completion_create_params``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from glimpse.errors import UnsupportedParameter

__all__ = ["IGNORED", "REFUSED", "check_parameters"]

#: OpenAI parameters Glimpse does not implement, each with the values that ask for nothing.
REFUSED: Mapping[str, tuple[Any, ...]] = {
    "functions": ([],),
    "function_call": ("none",),
    "audio": (),
    "modalities": (["text"],),
    "prediction": (),
    "web_search_options": (),
    "service_tier": ("auto", "default"),
    "reasoning_effort": (),
    "verbosity": (),
    "moderation": (),
}

#: Accepted and dropped: labels and routing hints for OpenAI's own bookkeeping and caches.
IGNORED = frozenset(
    {
        "user",
        "metadata",
        "store",
        "safety_identifier",
        "prompt_cache_key",
        "prompt_cache_retention",
        "prompt_cache_options",
    }
)

#: Why a refused parameter is refused, where a hint helps the client.
_HINTS = {
    "functions": "deprecated by OpenAI; use tools",
    "function_call": "deprecated by OpenAI; use tool_choice",
}

#: Other servers' structured-output extensions: ``response_format`` is Glimpse's way.
_GUIDED = frozenset(
    {"guided_json", "guided_regex", "guided_choice", "guided_grammar", "structured_outputs", "json_schema"}
)


def _asks_for_nothing(value: Any, neutral: tuple[Any, ...]) -> bool:
    # By type too: ``True == 1`` and ``0 == False`` in Python, not in JSON.
    return value is None or any(type(value) is type(n) and value == n for n in neutral)


def check_parameters(extra: Mapping[str, Any]) -> None:
    """Refuse the first parameter in ``extra`` (the body's undeclared fields) that asks for something
    Glimpse does not do; ``UnsupportedParameter`` names it."""
    for name, value in extra.items():
        if name in IGNORED:
            continue
        if name in REFUSED:
            if _asks_for_nothing(value, REFUSED[name]):
                continue
            hint = _HINTS.get(name)
            raise UnsupportedParameter(
                f"Unsupported parameter: '{name}' is not supported by this server"
                + (f" ({hint})." if hint else "."),
                param=name,
            )
        hint = " Use response_format for structured output." if name in _GUIDED else ""
        raise UnsupportedParameter(f"Unrecognized request argument supplied: '{name}'.{hint}", param=name)
