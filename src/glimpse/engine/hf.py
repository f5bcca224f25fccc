"""The in-process transformers engine: the asyncio face of the engine thread.

It admits requests against a bounded queue (``Overloaded`` at once when full),
has the chat template and the image processor run by a ``Preprocessor`` (worker
processes by default, so preprocessing overlaps with generation without holding
the engine thread's interpreter lock, and never blocks the event loop), hands
jobs to the one ``EngineWorker`` thread, and turns its events back into an async
stream. Closing that stream early cancels the job.

Client text is tokenized as plain text (``PromptEncoder``); preprocessing fails
only with ``GlimpseError``s and within the request's deadline, so no await here
can hang. A ``response_format`` is compiled to a grammar (``engine.grammar``) in a
thread of its own before preprocessing, so an unusable schema is refused first and
the engine thread only applies grammars, never compiles them. A request with
``tools`` has them rendered by the model's chat template, and its answer's call
markup read into ``tool_calls`` (``engine.tool_calls``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator, Sequence
from typing import Any

from glimpse.config import EngineSettings
from glimpse.engine.batching import BatchObserver, generation_eos_ids
from glimpse.engine.grammar import Grammars, TokenConstraint
from glimpse.engine.grammar_pool import GrammarPool
from glimpse.engine.job import Job, JobSink
from glimpse.engine.loader import LoadedModel, resolve_device, resolve_model_path
from glimpse.engine.lora.catalog import AdapterCatalog
from glimpse.engine.mailbox import LoopMailbox
from glimpse.engine.max_tokens import check_image_budget, resolve_max_tokens
from glimpse.engine.preprocess import (
    Preprocessor,
    ProcessPreprocessor,
    ThreadPreprocessor,
    chat_messages,
    preprocess_threads,
    resolve_preprocess_workers,
)
from glimpse.engine.protocol import (
    AdapterInfo,
    AdapterPlacement,
    ChatMessage,
    EngineHealth,
    GenerationRequest,
    ImagePart,
    SamplingDefaults,
    SamplingParams,
    TextPart,
    TokenEvent,
)
from glimpse.engine.sampling_config import check_sampling, check_vocabulary
from glimpse.engine.token_text import TokenTexts
from glimpse.engine.tool_calls import ToolCallParser, answer_text, markup_hidden_ids, string_parameters
from glimpse.engine.worker import EngineWorker
from glimpse.errors import (
    DeadlineExceeded,
    EngineDead,
    GlimpseError,
    InvalidRequest,
    ModelNotFound,
    NotReady,
    Overloaded,
)
from glimpse.media.threads import run_in_executor

__all__ = ["HFEngine"]

logger = logging.getLogger(__name__)

_RETRY_AFTER_S = 2
_DEADLINE_MESSAGE = "The request took longer than the server's time limit."
#: How long work already running in the preprocessing pool may take to finish at stop().
_PREPROCESS_CLOSE_S = 10.0


class HFEngine:
    """Serves one Hugging Face image-text-to-text model in this process."""

    def __init__(
        self,
        settings: EngineSettings,
        observer: BatchObserver | None = None,
        *,
        worker_nice: int = 0,
        malloc_mmap_threshold_bytes: int = 2**20,
    ) -> None:
        """The keywords are what the preprocessing processes take from the rest of the settings
        (``server.worker_nice``, ``media.malloc_mmap_threshold_bytes``)."""
        self._settings = settings
        self._observer = observer
        self._worker_nice = worker_nice
        self._mmap_threshold = malloc_mmap_threshold_bytes
        self._name = settings.served_model_name or settings.model
        self._preprocessor: Preprocessor | None = None
        self._processes: ProcessPreprocessor | None = None  # also while they start
        self._starting: asyncio.Future[ProcessPreprocessor | None] | None = None
        self._worker: EngineWorker | None = None
        self._jobs: dict[str, Job] = {}
        self._admitted = 0
        self._ready = False
        self._detail = "loading model"
        self.loaded: LoadedModel | None = None
        self._think_ids: tuple[int, int] | None = None
        self._token_texts: TokenTexts | None = None
        self._mailbox: LoopMailbox | None = None
        self._sampling_defaults = SamplingDefaults()
        self._grammars = GrammarPool(self._build_grammars)
        self._adapters = AdapterCatalog(
            settings, self._name, lambda: self._worker.lora if self._worker is not None else None
        )
        #: Special token ids a request with tools does not see (``tool_calls.markup_hidden_ids``).
        self._markup_hidden: frozenset[int] | None = None

    @property
    def model_name(self) -> str:
        return self._name

    @property
    def sampling_defaults(self) -> SamplingDefaults:
        """The checkpoint's recommended settings for fields a request leaves unset."""
        return self._sampling_defaults

    def adapters(self) -> list[AdapterInfo]:
        return self._adapters.list()

    def adapter(self, name: str) -> AdapterInfo | None:
        return self._adapters.get(name)

    async def load_adapter(self, name: str, path: str) -> AdapterInfo:
        return await self._adapters.load(name, path)

    async def unload_adapter(self, name: str) -> tuple[AdapterPlacement, ...]:
        await self._adapters.unload(name)
        return ()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[LoadedModel | BaseException] = loop.create_future()

        def deliver(result: LoadedModel | BaseException) -> None:
            if not done.done():  # start() may have been cancelled (shutdown during loading)
                done.set_result(result)

        def on_loaded(result: LoadedModel | BaseException) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(deliver, result)

        self._worker = EngineWorker(self._settings, on_loaded, self._observer)
        self._worker.start()
        # The preprocessing processes import torch and load the processor while the model loads.
        processes = self._starting = asyncio.ensure_future(self._start_processes())
        result = await done
        if isinstance(result, BaseException):
            self._detail = "model failed to load"
            await self._close_preprocessing()
            raise result
        self.loaded = result
        self._sampling_defaults = result.sampling_defaults
        logger.info("sampling defaults for unset request fields: %s", self._sampling_defaults)
        self._preprocessor = await processes or ThreadPreprocessor(result.processor, preprocess_threads())
        self._think_ids = self._find_think_ids()
        self._token_texts = TokenTexts(getattr(result.processor, "tokenizer", result.processor))
        self._markup_hidden = markup_hidden_ids(getattr(result.processor, "tokenizer", result.processor))
        if self._settings.warmup:
            self._detail = "warming up"
            await self._warm_up()
        self._ready = True
        self._detail = "ready"

    async def _start_processes(self) -> ProcessPreprocessor | None:
        """The preprocessing processes the settings ask for, started; ``None``: threads instead.

        Threads when the settings say 0, and when the processes cannot start (logged):
        the server answers either way.
        """
        try:
            device = await asyncio.to_thread(resolve_device, self._settings.device)
        except Exception:  # noqa: BLE001 - the engine thread meets and reports the same failure
            return None
        workers = resolve_preprocess_workers(self._settings.preprocess_workers, device)
        if workers == 0:
            return None
        source, _ = resolve_model_path(self._settings)
        processes = self._processes = ProcessPreprocessor(
            source,
            workers,
            trust_remote_code=self._settings.trust_remote_code,
            nice=self._worker_nice,
            mmap_threshold_bytes=self._mmap_threshold,
        )
        try:
            await processes.start()
        except GlimpseError as exc:
            logger.warning(
                "preprocessing processes did not start (%s); preprocessing in threads instead",
                exc.__cause__ or exc,
            )
            self._processes = None
            await processes.close(_PREPROCESS_CLOSE_S)
            return None
        return processes

    async def _close_preprocessing(self) -> None:
        """Close the preprocessor, and processes still starting (stop during start-up)."""
        starting, self._starting = self._starting, None
        if starting is not None and not starting.done():
            starting.cancel()
            await asyncio.wait([starting])
        closing = [self._preprocessor, self._processes]
        self._preprocessor = self._processes = None
        for preprocessor in {id(p): p for p in closing if p is not None}.values():
            await preprocessor.close(_PREPROCESS_CLOSE_S)

    def _find_think_ids(self) -> tuple[int, int] | None:
        """Token ids of ``<think>``/``</think>`` when reasoning is to be separated, else ``None``."""
        if self._settings.reasoning_parser == "none" or self.loaded is None:
            return None
        tokenizer = getattr(self.loaded.processor, "tokenizer", self.loaded.processor)
        ids = [tokenizer.convert_tokens_to_ids(tag) for tag in ("<think>", "</think>")]
        unknown = getattr(tokenizer, "unk_token_id", None)
        if any(not isinstance(i, int) or i == unknown for i in ids):
            logger.warning(
                "reasoning_parser is 'think-tags', but the tokenizer has no <think> tokens; ignored"
            )
            return None
        return ids[0], ids[1]

    async def _warm_up(self) -> None:
        from PIL import Image

        image = ImagePart(Image.new("RGB", (64, 64), (127, 127, 127)), "warmup")
        request = GenerationRequest(
            "warmup",
            (ChatMessage("user", (image, TextPart("warm up"))),),
            SamplingParams(max_new_tokens=2),
        )
        async for _ in self._generate(request, admit_check=False):
            pass
        logger.info("warm-up generation done")

    async def stop(self) -> None:
        self._ready = False
        self._detail = "stopped"
        if self._worker is not None:
            for job in list(self._jobs.values()):
                self._worker.cancel(job)
            self._worker.shutdown()
            await run_in_executor(None, self._worker.join, 30)
        # After the worker: what finishes preprocessing now fails at enqueue with EngineDead.
        await self._close_preprocessing()
        self._grammars.close()

    def health(self) -> EngineHealth:
        worker = self._worker
        if worker is not None and worker.dead is not None:
            return EngineHealth(False, "engine stopped")
        return EngineHealth(
            self._ready,
            self._detail,
            queue_depth=max(0, self._admitted - (worker.running if worker else 0)),
            running=worker.running if worker else 0,
            capacity=self._capacity(),
            slots=worker.slots if worker else None,
            weight_bytes=self.loaded.weight_bytes if self.loaded is not None else None,
            kv_cache_bytes=worker.kv_cache_bytes if worker else None,
        )

    def _capacity(self) -> int | None:
        """Requests admitted at once: the queue and the running batch (its size is known once loaded)."""
        slots = self._worker.slots if self._worker is not None else None
        return None if slots is None else self._settings.max_queue + slots

    def check_image_sizes(self, sizes: Sequence[tuple[int, int]], max_new_tokens: int) -> None:
        """Refuse from the images' declared sizes what ``_prepare`` would refuse after decoding them."""
        loaded = self.loaded
        if loaded is not None:
            check_image_budget(loaded.processor, sizes, max_new_tokens, self._room(loaded))

    def room(self) -> int | None:
        """Most prompt + answer tokens one request may hold (``None`` until the model is loaded)."""
        return self._room(self.loaded) if self.loaded is not None else None

    def _room(self, loaded: LoadedModel) -> int:
        """Most prompt + answer tokens one request may hold: the model's context, the in-flight
        budget and, when batching, a cache slot (what the scheduler would refuse later)."""
        room = self._worker.sequence_room if self._worker is not None else None
        limits = [n for n in (self._settings.max_tokens_in_flight, loaded.context_length, room) if n]
        return min(limits) if limits else self._settings.max_seq_len

    def resolve_sampling(self, sampling: SamplingParams) -> SamplingParams:
        """Unset fields from the checkpoint's ``generation_config`` (neutral until it is loaded)."""
        return sampling.resolved(self._sampling_defaults)

    def submit(self, request: GenerationRequest) -> AsyncGenerator[TokenEvent, None]:
        return self._generate(request, admit_check=True)

    def _admit(self) -> None:
        if not self._ready:
            raise NotReady("The model is still loading; try again shortly.", retry_after=_RETRY_AFTER_S)
        worker = self._worker
        if worker is None or worker.dead is not None:
            raise EngineDead("The model engine has stopped; this server cannot answer any more.")
        capacity = self._capacity()
        if capacity is not None and self._admitted >= capacity:
            raise Overloaded(
                f"The server is at capacity ({self._admitted} requests admitted); retry shortly.",
                retry_after=_RETRY_AFTER_S,
            )

    async def _generate(
        self, request: GenerationRequest, *, admit_check: bool
    ) -> AsyncGenerator[TokenEvent, None]:
        if admit_check:
            self._admit()
        if request.request_id in self._jobs:
            raise InvalidRequest(f"Request id {request.request_id!r} is already running.")
        if request.adapter is not None and self._adapters.get(request.adapter) is None:
            raise ModelNotFound(f"The model '{request.adapter}' is not served here.", param="model")
        sampling = self.resolve_sampling(request.sampling)
        check_sampling(sampling)
        if sampling.logit_bias and self.loaded is not None:
            check_vocabulary(sampling, self._logits_width(self.loaded))
        self._admitted += 1
        job: Job | None = None
        try:
            loop = asyncio.get_running_loop()
            grammar = await self._grammars.compile(sampling, request.deadline, request.tools)
            inputs, prompt_tokens = await self._prepared(request)
            assert self.loaded is not None
            assert self._worker is not None
            tokenizer = getattr(self.loaded.processor, "tokenizer", self.loaded.processor)
            think = self._think_ids
            thinking = think is not None and int(inputs["input_ids"][0, -1]) == think[0]
            tools = request.tools if request.tools is not None and request.tools.active else None
            sink = JobSink(
                self._mailbox_for(loop),
                answer_text(tokenizer, self._markup_hidden if tools is not None else None),
                request.sampling.stop,
                prompt_tokens,
                think_ids=think,
                thinking=thinking,
                token_text=self._token_texts,
            )
            constraint: TokenConstraint | None = None
            if grammar is not None:
                # A prompt that opened a thought: the grammar starts after the thought closes.
                after = think[1] if think is not None and thinking else None
                constraint = self._grammars.constraint(grammar, after=after)
            job = Job(request.request_id, inputs, sampling, sink, prompt_tokens, constraint, request.adapter)
            self._jobs[request.request_id] = job
            self._worker.enqueue(job)
            calls = None
            if tools is not None:  # the answer's GLM call markup becomes tool_calls
                trim = tools.forced or sampling.response_format is not None  # under a grammar
                calls = ToolCallParser(string_parameters(tools.definitions), trim_strings=trim)
            async for event in self._drain(job, request.deadline):
                yield event if calls is None else calls.event(event)
        finally:
            self._admitted -= 1
            if job is not None:
                if not job.sink.finished and self._worker is not None:
                    self._worker.cancel(job)
                self._jobs.pop(request.request_id, None)

    def _mailbox_for(self, loop: asyncio.AbstractEventLoop) -> LoopMailbox:
        """One mailbox per event loop, so a step's events for all its requests wake the loop once."""
        if self._mailbox is None or self._mailbox.loop is not loop:
            self._mailbox = LoopMailbox(loop)
        return self._mailbox

    def _build_grammars(self) -> Grammars:
        """The grammars' vocabulary is the logits' width (GLM's head is wider than its tokenizer), their
        stop tokens the ids ``generate()`` and the batcher end on."""
        loaded = self.loaded
        if loaded is None:
            raise NotReady("The model is still loading; try again shortly.", retry_after=_RETRY_AFTER_S)
        tokenizer = getattr(loaded.processor, "tokenizer", loaded.processor)
        vocab = self._logits_width(loaded)
        return Grammars(tokenizer, vocab, generation_eos_ids(loaded.model.generation_config))

    @staticmethod
    def _logits_width(loaded: LoadedModel) -> int:
        """Token ids the model's logits cover (GLM's head is wider than its tokenizer)."""
        head = loaded.model.get_output_embeddings()
        return (
            int(head.weight.shape[0]) if head is not None else int(loaded.model.config.text_config.vocab_size)
        )

    async def _prepared(self, request: GenerationRequest) -> tuple[dict[str, Any], int]:
        """The request's model inputs from the preprocessor, within the request's deadline.

        Whatever the processor raises comes back as a ``GlimpseError`` of this
        request; past the deadline the request ends with ``DeadlineExceeded`` even if
        its preprocessing is still running (its result is then dropped).
        """
        preprocessor, loaded = self._preprocessor, self.loaded
        if preprocessor is None or loaded is None:
            raise NotReady("The model is still loading; try again shortly.", retry_after=_RETRY_AFTER_S)
        messages, images = chat_messages(request)
        template_kwargs: dict[str, Any] = {
            **self._settings.chat_template_kwargs,
            **dict(request.template_kwargs),
        }
        if request.tools is not None and request.tools.active:  # rendered by the model's own template
            template_kwargs["tools"] = json.loads(request.tools.definitions)
        work = preprocessor.encode(messages, images, template_kwargs)
        if request.deadline is None:
            inputs = await work
        else:
            try:
                inputs = await asyncio.wait_for(work, max(0.0, request.deadline - time.monotonic()))
            except TimeoutError:
                raise DeadlineExceeded(_DEADLINE_MESSAGE) from None
        prompt_tokens = int(inputs["input_ids"].shape[-1])
        resolve_max_tokens(
            request.sampling.max_new_tokens, prompt_tokens=prompt_tokens, room=self._room(loaded)
        )
        return inputs, prompt_tokens

    async def _drain(self, job: Job, deadline: float | None) -> AsyncGenerator[TokenEvent, None]:
        while True:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                item = await asyncio.wait_for(job.sink.queue.get(), timeout)
            except TimeoutError:
                raise DeadlineExceeded(_DEADLINE_MESSAGE) from None
            if isinstance(item, BaseException):
                raise item
            yield item
            if item.finish_reason is not None:
                return
