"""The engine protocol: the only thing the HTTP layer knows about engines.

An engine takes a ``GenerationRequest`` (chat messages with already validated,
decoded images and the sampling settings) and yields ``TokenEvent``s as text is
produced. The in-process transformers engine and the upstream proxy both
implement it, so every feature above (cache, guard, metrics, web page) works the
same over either.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = [
    "GREEDY_BELOW_TEMPERATURE",
    "AdapterInfo",
    "AdapterPlacement",
    "AdapterServing",
    "ChatMessage",
    "Engine",
    "EngineHealth",
    "FinishReason",
    "GenerationRequest",
    "ImagePart",
    "ImageSizeCheck",
    "ContentPart",
    "ResponseFormat",
    "SamplingDefaults",
    "SamplingParams",
    "SamplingResolver",
    "TextPart",
    "TokenEvent",
    "TokenLogprob",
    "ToolCall",
    "ToolCallDelta",
    "Tools",
]

Role = Literal["system", "user", "assistant", "tool"]
TemplateValue = str | int | float | bool


@dataclass(slots=True, frozen=True)
class TextPart:
    text: str


@dataclass(slots=True, frozen=True)
class ImagePart:
    """A decoded RGB image that passed intake; ``sha256`` is of the original bytes."""

    image: Image
    sha256: str


ContentPart = TextPart | ImagePart


@dataclass(slots=True, frozen=True)
class ToolCall:
    """A function call the model made (OpenAI's ``tool_calls`` item); ``arguments``: a JSON object's text."""

    id: str
    name: str
    arguments: str


@dataclass(slots=True, frozen=True)
class ChatMessage:
    role: Role
    content: tuple[ContentPart, ...]
    #: An assistant turn's calls, sent back in the history.
    tool_calls: tuple[ToolCall, ...] = ()
    #: A ``tool`` turn: which call this is the result of.
    tool_call_id: str | None = None

    @property
    def text(self) -> str:
        return "".join(part.text for part in self.content if isinstance(part, TextPart))

    @property
    def images(self) -> tuple[ImagePart, ...]:
        return tuple(part for part in self.content if isinstance(part, ImagePart))


@dataclass(slots=True, frozen=True)
class ResponseFormat:
    """The shape an answer must have (OpenAI's ``response_format``), enforced while decoding.

    ``json_object``: any JSON object. ``json_schema``: JSON valid against ``schema``, kept
    as JSON text in the client's key order (the order in which a grammar lays out an
    object's properties, and what an upstream server receives), so the value stays
    hashable for the result cache's key and for grammar caching. ``name``,
    ``description`` and ``strict`` are only passed on (to an upstream server): the
    in-process engine enforces every schema, ``strict`` or not.
    """

    type: Literal["json_object", "json_schema"]
    schema: str | None = None
    name: str | None = None
    description: str | None = None
    strict: bool | None = None


@dataclass(slots=True, frozen=True)
class Tools:
    """The functions a request offers the model (OpenAI's ``tools``) and whether it must call one.

    ``definitions`` is the ``tools`` list as JSON text, as the client sent it (key order kept,
    so a schema's properties keep their order, and the value stays hashable for the result
    cache and grammar caching). ``choice``: ``auto`` (the model decides), ``none`` (no call;
    the in-process engine then neither shows the tools nor parses calls), ``required`` (at
    least one call), ``function`` (a call of ``function``). ``parallel`` is
    ``parallel_tool_calls`` (``None``: not sent, OpenAI's default of allowing several).
    """

    definitions: str
    choice: Literal["auto", "none", "required", "function"] = "auto"
    function: str | None = None
    parallel: bool | None = None

    @property
    def active(self) -> bool:
        """Whether the model is shown the tools and its calls are parsed."""
        return self.choice != "none"

    @property
    def forced(self) -> bool:
        """Whether the answer must be tool calls (``required`` or a named function)."""
        return self.choice in ("required", "function")


#: Temperatures below this decode greedily (as vLLM does): dividing logits by a smaller
#: one overflows float32, and the sample it stands for is the argmax anyway.
GREEDY_BELOW_TEMPERATURE = 1e-5


@dataclass(slots=True, frozen=True)
class SamplingDefaults:
    """What a request's unset sampling fields become; these values are the neutral ones (greedy, no
    cut-off, no penalty), which the in-process engine replaces with the checkpoint's ``generation_config``."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0


#: The ``SamplingParams`` fields that ``SamplingDefaults`` fills in.
_DEFAULTED_FIELDS = tuple(f.name for f in dataclasses.fields(SamplingDefaults))


@dataclass(slots=True, frozen=True)
class SamplingParams:
    """Per-request generation settings; temperatures below ``GREEDY_BELOW_TEMPERATURE`` are greedy.

    ``None`` means "not set by the request": an engine that knows its model's recommended
    settings fills them in (``resolved``), as vLLM applies a checkpoint's ``generation_config``;
    otherwise the neutral value of ``SamplingDefaults`` holds (so an unset temperature is greedy).
    Off values: ``top_k`` 0, ``top_p`` 1, ``min_p`` 0, ``repetition_penalty`` 1, the other
    penalties 0. ``max_new_tokens`` has no default here: the one default is the server's setting
    (``engine.default_max_new_tokens``), applied with the limits by ``resolve_max_tokens``.
    """

    max_new_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    top_k: int | None = None
    min_p: float | None = None
    #: transformers' ``repetition_penalty``: over prompt and answer tokens, divides positive logits.
    repetition_penalty: float | None = None
    #: OpenAI's penalties: over answer tokens only, subtracted once (presence) or per use (frequency).
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    #: Structured output: the answer is decoded under this format's grammar (``None``: free text).
    response_format: ResponseFormat | None = None
    #: Log-probabilities of the answer's tokens: ``None`` none; ``k`` the chosen token's and the ``k``
    #: most likely ones (OpenAI's ``logprobs: true`` with ``top_logprobs: k``).
    logprobs: int | None = None
    #: OpenAI's ``logit_bias``: ``(token id, bias)`` pairs added to the logits before anything else.
    logit_bias: tuple[tuple[int, float], ...] = ()

    @property
    def greedy(self) -> bool:
        """The one test of greedy decoding: the batch sampler, ``generate()`` and the cache all ask this."""
        return self.temperature is None or self.temperature < GREEDY_BELOW_TEMPERATURE

    def resolved(self, defaults: SamplingDefaults) -> SamplingParams:
        """These settings with every unset field taken from ``defaults`` (set fields win)."""
        unset = {name: getattr(defaults, name) for name in _DEFAULTED_FIELDS if getattr(self, name) is None}
        return dataclasses.replace(self, **unset) if unset else self


@dataclass(slots=True, frozen=True)
class GenerationRequest:
    request_id: str
    messages: tuple[ChatMessage, ...]
    sampling: SamplingParams
    #: ``time.monotonic()`` after which the request is abandoned; ``None`` for no deadline.
    deadline: float | None = None
    #: Extra variables for the model's chat template (e.g. GLM-4.6V's ``enable_thinking``).
    template_kwargs: tuple[tuple[str, TemplateValue], ...] = ()
    #: The LoRA adapter the answer comes from (its served name); ``None``: the base model.
    adapter: str | None = None
    #: Functions the model may call (OpenAI's ``tools`` and ``tool_choice``).
    tools: Tools | None = None

    @property
    def images(self) -> tuple[ImagePart, ...]:
        return tuple(image for message in self.messages for image in message.images)

    def seconds_left(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()


@dataclass(slots=True, frozen=True)
class ToolCallDelta:
    """A piece of a tool call as it streams (OpenAI's ``delta.tool_calls`` item).

    ``index`` says which call of the answer; the first piece of a call carries its ``id``
    and ``name``, later ones more of its ``arguments`` (JSON text, in order).
    """

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


class FinishReason(StrEnum):
    STOP = "stop"  # end-of-sequence token or a stop string
    LENGTH = "length"  # max_new_tokens reached
    CANCELLED = "cancelled"  # client went away or the request was cancelled


@dataclass(slots=True, frozen=True)
class TokenLogprob:
    """One answer token's log-probability (OpenAI's ``logprobs.content[]``) and the most likely tokens
    at its position (``top``, most likely first; their own ``top`` is empty).

    ``token`` is the token's text; ``utf8`` its exact bytes, which may be part of a character
    (byte-level tokenizers split multi-byte characters), and then ``token`` shows U+FFFD.
    """

    token: str
    logprob: float
    utf8: bytes
    top: tuple[TokenLogprob, ...] = ()


@dataclass(slots=True, frozen=True)
class TokenEvent:
    """A piece of the answer. The last event of a stream has ``finish_reason`` set.

    ``text`` is the new answer text since the previous event (may be empty, e.g. while
    a multi-byte character is incomplete or a possible stop string is held back).
    ``reasoning`` is new thinking text, for models that think before answering
    (GLM-4.6V's ``<think>…</think>``) when the engine separates it. An event may carry
    ``logprobs`` with no ``text`` (text held back) or text with none (thinking tokens
    and end-of-sequence tokens have none). ``tool_calls`` are pieces of the function
    calls the answer makes (a request with ``tools``); their markup is not in ``text``.
    """

    text: str
    token_ids: tuple[int, ...] = ()
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning: str = ""
    #: One entry per answer token this event reports, when the request asked for log-probabilities.
    logprobs: tuple[TokenLogprob, ...] = ()
    tool_calls: tuple[ToolCallDelta, ...] = ()


@dataclass(slots=True, frozen=True)
class EngineHealth:
    ready: bool
    detail: str = ""
    queue_depth: int = 0
    running: int = 0
    #: Most generations the engine admits at once (waiting + running); None: no bound of its own.
    capacity: int | None = None
    #: Generations run together (the running batch); admitted ones beyond it wait in the engine's
    #: queue. None: not known (not loaded, or no bound of its own).
    slots: int | None = None
    #: Bytes the model's weights hold in memory (quantized ones at their real size); None: not known.
    weight_bytes: int | None = None
    #: Bytes of the preallocated KV cache; None: no fixed cache (not loaded, or one request at a time).
    kv_cache_bytes: int | None = None


@runtime_checkable
class Engine(Protocol):
    """What every engine offers. ``submit`` raises ``GlimpseError`` subclasses only."""

    @property
    def model_name(self) -> str: ...

    async def start(self) -> None:
        """Load / connect and warm up; ``health().ready`` turns true when done."""

    async def stop(self) -> None:
        """Finish or cancel what is running and release resources."""

    def submit(self, request: GenerationRequest) -> AsyncGenerator[TokenEvent, None]:
        """Admit the request (or raise ``Overloaded`` at once) and stream its events.

        Closing the generator early (``aclose()``: client gone) cancels the request.
        """

    def health(self) -> EngineHealth: ...


@runtime_checkable
class SamplingResolver(Protocol):
    """An engine that fills a request's unset sampling fields from its model's recommended settings.

    Optional: the API asks engines that offer it before it keys the result cache, so the
    key and the "is this greedy?" rule see the settings the model will really run with.
    """

    def resolve_sampling(self, sampling: SamplingParams) -> SamplingParams:
        """``sampling`` with every unset field filled in (idempotent)."""


@runtime_checkable
class ImageSizeCheck(Protocol):
    """An engine that can refuse a request from its images' declared sizes, before any is decoded.

    Optional: the API asks engines that offer it, so a request whose images alone
    cannot fit costs header parses, not decoding and preprocessing.
    """

    def check_image_sizes(self, sizes: Sequence[tuple[int, int]], max_new_tokens: int) -> None:
        """Raise ``RequestTooLarge`` if images of these ``(width, height)`` plus ``max_new_tokens``
        cannot fit whatever the text is; return otherwise (also when the engine cannot tell)."""


@dataclass(slots=True, frozen=True)
class AdapterPlacement:
    """What one server behind a gateway answered when asked to load or unload an adapter."""

    #: The upstream's name (its URL without credentials).
    server: str
    ok: bool
    #: Its HTTP status; 0 when it gave no answer.
    status: int
    message: str = ""


@dataclass(slots=True, frozen=True)
class AdapterInfo:
    """A LoRA adapter an engine serves under ``name`` (requests name it as their ``model``)."""

    name: str
    #: Where it was read from (a folder on the engine's machine; an upstream's own record).
    path: str
    #: The model it adapts (the engine's ``model_name``).
    parent: str
    rank: int = 0
    #: Identifies the weights (SHA-256 of the file), so caches never mix two adapters of one name.
    digest: str = ""
    #: A gateway's load: what each upstream answered (empty in-process).
    placements: tuple[AdapterPlacement, ...] = ()


@runtime_checkable
class AdapterServing(Protocol):
    """An engine that serves LoRA adapters beside its base model (optional, like ``SamplingResolver``)."""

    def adapters(self) -> Sequence[AdapterInfo]:
        """Every adapter a request may name now."""

    def adapter(self, name: str) -> AdapterInfo | None:
        """The adapter called ``name``, or ``None``."""

    async def load_adapter(self, name: str, path: str) -> AdapterInfo:
        """Read, check and add an adapter (``AdapterError`` if unusable, ``InvalidRequest`` if refused)."""

    async def unload_adapter(self, name: str) -> tuple[AdapterPlacement, ...]:
        """Stop serving ``name`` (``ModelNotFound`` if unknown); running requests finish with it.
        A gateway returns what each upstream answered (empty in-process)."""
