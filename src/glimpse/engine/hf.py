"""The in-process transformers engine: the asyncio face of the engine thread.

It admits requests against a bounded queue (``Overloaded`` at once when full),
renders the chat template and runs the image processor in a small thread pool
(so preprocessing overlaps with generation and never blocks the event loop),
hands jobs to the one ``EngineWorker`` thread, and turns its events back into an
async stream. Closing that stream early cancels the job.

Client text is tokenized as plain text (``PromptEncoder``); preprocessing runs
``contained`` and within the request's deadline, so no await here can hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncGenerator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from glimpse.config import EngineSettings
from glimpse.engine.batching import BatchObserver
from glimpse.engine.job import Job, JobSink
from glimpse.engine.loader import LoadedModel
from glimpse.engine.max_tokens import resolve_max_tokens
from glimpse.engine.prompt_tokens import PromptEncoder
from glimpse.engine.protocol import (
    ChatMessage,
    EngineHealth,
    GenerationRequest,
    ImagePart,
    SamplingDefaults,
    SamplingParams,
    TextPart,
    TokenEvent,
)
from glimpse.engine.sampling_config import check_sampling
from glimpse.engine.worker import EngineWorker
from glimpse.errors import (
    DeadlineExceeded,
    EngineDead,
    EngineRequestError,
    GlimpseError,
    InvalidRequest,
    NotReady,
    Overloaded,
)
from glimpse.media.threads import contained, run_in_executor

__all__ = ["HFEngine"]

logger = logging.getLogger(__name__)

_RETRY_AFTER_S = 2
_DEADLINE_MESSAGE = "The request took longer than the server's time limit."
_PREPARE_FAILED = "Preparing this request for the model failed unexpectedly; see the server log."


def _chat_messages(request: GenerationRequest) -> tuple[list[dict[str, Any]], list[Any]]:
    """Messages in the processor's chat-template shape, and the images in order."""
    messages: list[dict[str, Any]] = []
    images: list[Any] = []
    for message in request.messages:
        content: list[dict[str, Any]] = []
        for part in message.content:
            if isinstance(part, ImagePart):
                content.append({"type": "image"})
                images.append(part.image)
            else:
                content.append({"type": "text", "text": part.text})
        messages.append({"role": message.role, "content": content})
    return messages, images


class HFEngine:
    """Serves one Hugging Face image-text-to-text model in this process."""

    def __init__(self, settings: EngineSettings, observer: BatchObserver | None = None) -> None:
        self._settings = settings
        self._observer = observer
        self._name = settings.served_model_name or settings.model
        workers = settings.preprocess_workers or min(8, os.cpu_count() or 2)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="glimpse-preprocess")
        self._worker: EngineWorker | None = None
        self._jobs: dict[str, Job] = {}
        self._admitted = 0
        self._ready = False
        self._detail = "loading model"
        self.loaded: LoadedModel | None = None
        self._prompts: PromptEncoder | None = None
        self._think_ids: tuple[int, int] | None = None
        self._sampling_defaults = SamplingDefaults()

    @property
    def model_name(self) -> str:
        return self._name

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
        result = await done
        if isinstance(result, BaseException):
            self._detail = "model failed to load"
            raise result
        self.loaded = result
        self._sampling_defaults = result.sampling_defaults
        logger.info("sampling defaults for unset request fields: %s", self._sampling_defaults)
        self._prompts = PromptEncoder(result.processor)
        self._think_ids = self._find_think_ids()
        if self._settings.warmup:
            self._detail = "warming up"
            await self._warm_up()
        self._ready = True
        self._detail = "ready"

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
        self._pool.shutdown(wait=False, cancel_futures=True)

    def health(self) -> EngineHealth:
        worker = self._worker
        if worker is not None and worker.dead is not None:
            return EngineHealth(False, "engine stopped")
        return EngineHealth(
            self._ready,
            self._detail,
            queue_depth=max(0, self._admitted - (worker.running if worker else 0)),
            running=worker.running if worker else 0,
        )

    def check_image_sizes(self, sizes: Sequence[tuple[int, int]], max_new_tokens: int) -> None:
        """Refuse from the images' declared sizes what ``_prepare`` would refuse after decoding them.

        The processor counts each image's tokens from its size alone
        (``_get_num_multimodal_tokens``, as vLLM uses it); the text only adds tokens,
        so a request refused here could never have fitted.
        """
        loaded = self.loaded
        count = getattr(loaded.processor, "_get_num_multimodal_tokens", None) if loaded else None
        if loaded is None or count is None or not sizes:
            return
        try:
            tokens = sum(int(n) for n in count(image_sizes=[(h, w) for w, h in sizes]).num_image_tokens)
        except (AttributeError, TypeError, ValueError) as exc:  # a processor without the helper's data
            logger.debug("cannot count image tokens from sizes: %r", exc)
            return
        resolve_max_tokens(
            max_new_tokens, prompt_tokens=tokens, room=self._room(loaded), counted="the images alone take"
        )

    def _room(self, loaded: LoadedModel) -> int:
        """Most prompt + answer tokens one request may hold: the model's context, the in-flight
        budget and, when batching, a cache slot (what the scheduler would refuse later)."""
        limits = [self._settings.max_tokens_in_flight]
        if loaded.context_length:
            limits.append(loaded.context_length)
        if self._worker is not None and self._worker.sequence_room is not None:
            limits.append(self._worker.sequence_room)
        return min(limits)

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
        if self._admitted >= self._settings.max_queue + self._settings.max_batch_size:
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
        sampling = self.resolve_sampling(request.sampling)
        check_sampling(sampling)
        self._admitted += 1
        job: Job | None = None
        try:
            loop = asyncio.get_running_loop()
            inputs, prompt_tokens = await self._prepared(request)
            assert self.loaded is not None
            assert self._worker is not None
            tokenizer = getattr(self.loaded.processor, "tokenizer", self.loaded.processor)
            think = self._think_ids
            sink = JobSink(
                loop,
                lambda ids: str(tokenizer.decode(ids, skip_special_tokens=True)),
                request.sampling.stop,
                prompt_tokens,
                think_ids=think,
                thinking=think is not None and int(inputs["input_ids"][0, -1]) == think[0],
            )
            job = Job(request.request_id, inputs, sampling, sink, prompt_tokens)
            self._jobs[request.request_id] = job
            self._worker.enqueue(job)
            async for event in self._drain(job, request.deadline):
                yield event
        finally:
            self._admitted -= 1
            if job is not None:
                if not job.sink.finished and self._worker is not None:
                    self._worker.cancel(job)
                self._jobs.pop(request.request_id, None)

    async def _prepared(self, request: GenerationRequest) -> tuple[dict[str, Any], int]:
        """``_prepare`` in the preprocessing pool, within the request's deadline.

        Whatever the processor raises comes back as an error of this request
        (``contained``); past the deadline the request ends with ``DeadlineExceeded``
        even if the thread is still busy (its result is then dropped).
        """
        prepare = contained(self._prepare, error=EngineRequestError, message=_PREPARE_FAILED)
        work = run_in_executor(self._pool, prepare, request)
        if request.deadline is None:
            return await work
        try:
            return await asyncio.wait_for(work, max(0.0, request.deadline - time.monotonic()))
        except TimeoutError:
            raise DeadlineExceeded(_DEADLINE_MESSAGE) from None

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

    def _prepare(self, request: GenerationRequest) -> tuple[dict[str, Any], int]:
        """Chat template + processor: blocking, runs in the preprocessing pool."""
        if self.loaded is None or self._prompts is None:
            raise NotReady("The model is still loading; try again shortly.", retry_after=_RETRY_AFTER_S)
        messages, images = _chat_messages(request)
        try:
            template_kwargs = {**self._settings.chat_template_kwargs, **dict(request.template_kwargs)}
            # Client text is encoded as plain text: control tokens come only from the template.
            inputs = self._prompts.encode(messages, images, template_kwargs)
        except GlimpseError:
            raise
        except (ValueError, TypeError) as exc:
            raise InvalidRequest(f"The model's processor could not prepare this request: {exc}") from exc
        prompt_tokens = int(inputs["input_ids"].shape[-1])
        resolve_max_tokens(
            request.sampling.max_new_tokens, prompt_tokens=prompt_tokens, room=self._room(self.loaded)
        )
        return inputs, prompt_tokens
