"""The one engine thread: it owns the model (and the CUDA context) and runs jobs.

All scheduling decisions live here. For models the continuous batcher supports
(GLM-4.xV), jobs join a running batch between decode steps
(``glimpse.engine.batching``); any other image-text-to-text model is served one
job at a time with ``model.generate`` and a streamer. The asyncio side in
``hf.py`` does not know which.
"""

from __future__ import annotations

import copy
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from glimpse.config import EngineSettings
from glimpse.engine.batching import (
    BatcherConfig,
    BatchObserver,
    ContinuousBatcher,
    OpenAIPenalties,
    SequenceRequest,
    generation_eos_ids,
)
from glimpse.engine.grammar import GrammarLogitsProcessor
from glimpse.engine.job import Job
from glimpse.engine.loader import LoadedModel, load_model
from glimpse.engine.protocol import FinishReason, SamplingDefaults
from glimpse.errors import EngineDead, EngineRequestError, GlimpseError, ModelLoadError, Overloaded

__all__ = ["EngineWorker"]

logger = logging.getLogger(__name__)

_SHUTDOWN = object()


class _Streamer:
    """``generate()`` streamer that forwards each new token to the job's sink."""

    def __init__(self, job: Job) -> None:
        self._job = job
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:  # generate() first pushes the prompt
            self._prompt_seen = True
            return
        for token_id in value.reshape(-1).tolist():
            if self._job.sink.on_token(int(token_id)):
                self._job.cancelled.set()  # a stop string matched: stop generating

    def end(self) -> None:
        return None


class _CancelCriteria:
    """Stops ``generate()`` between steps once the job is cancelled or stopped."""

    def __init__(self, job: Job) -> None:
        self._job = job

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        stop = self._job.cancelled.is_set()
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


class _BatchSinks:
    """Routes the batcher's per-sequence callbacks to each job's sink (engine thread)."""

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}

    def on_token(self, seq_id: str, token_id: int) -> bool:
        job = self.jobs.get(seq_id)
        return True if job is None else job.sink.on_token(token_id)

    def on_finish(self, seq_id: str, reason: FinishReason) -> None:
        job = self.jobs.pop(seq_id, None)
        if job is not None:
            job.sink.on_finish(reason)

    def on_error(self, seq_id: str, exc: BaseException) -> None:
        job = self.jobs.pop(seq_id, None)
        if job is None:
            return
        if not isinstance(exc, GlimpseError):
            logger.error("generation failed", exc_info=exc, extra={"request_id": seq_id})
            exc = EngineRequestError("Generation failed for this request; see the server log.")
        job.sink.on_error(exc)


class EngineWorker(threading.Thread):
    """Loads the model, then serves jobs from a queue until told to stop."""

    def __init__(
        self,
        settings: EngineSettings,
        on_loaded: Callable[[LoadedModel | BaseException], None],
        observer: BatchObserver | None = None,
    ) -> None:
        super().__init__(name="glimpse-engine", daemon=True)
        self._settings = settings
        self._on_loaded = on_loaded
        self._observer = observer
        self._jobs: queue.Queue[Job | object] = queue.Queue()
        self.loaded: LoadedModel | None = None
        self.dead: BaseException | None = None
        self._running = 0
        self._batcher: ContinuousBatcher | None = None
        self._sinks = _BatchSinks()
        self._stop_event = threading.Event()
        # Makes "is the engine still taking jobs?" and "hand it this job" one step, so a
        # job cannot slip into the queue after the thread's last look at it.
        self._intake = threading.Lock()

    @property
    def running(self) -> int:
        return self._batcher.stats().running if self._batcher is not None else self._running

    @property
    def batching(self) -> bool:
        return self._batcher is not None

    @property
    def sequence_room(self) -> int | None:
        """Most prompt + answer tokens the batcher lets one sequence hold (``None``: no batcher)."""
        return self._batcher.sequence_room if self._batcher is not None else None

    def enqueue(self, job: Job) -> None:
        """Hand a job to the engine (any thread); raises ``Overloaded``/``RequestTooLarge`` at once."""
        with self._intake:
            if self.dead is not None:
                raise EngineDead("The model engine has stopped; this server cannot answer any more.")
            if self._batcher is None:
                self._jobs.put(job)
                return
        self._sinks.jobs[job.request_id] = job
        try:
            self._batcher.submit(
                SequenceRequest(job.request_id, job.inputs, self._sinks, job.sampling, job.constraint)
            )
        except BaseException:
            self._sinks.jobs.pop(job.request_id, None)
            raise

    def cancel(self, job: Job) -> None:
        job.cancelled.set()
        if self._batcher is not None:
            self._batcher.cancel(job.request_id)

    def shutdown(self) -> None:
        self._stop_event.set()
        self._jobs.put(_SHUTDOWN)

    def _make_batcher(self, loaded: LoadedModel) -> ContinuousBatcher | None:
        if not self._settings.batching:
            return None
        context = loaded.context_length or self._settings.max_seq_len
        config = BatcherConfig.from_settings(
            self._settings, max_seq_len=min(self._settings.max_seq_len, context)
        )
        try:
            return ContinuousBatcher(loaded.model, config, observer=self._observer)
        except ModelLoadError as exc:
            logger.info("continuous batching unavailable, serving one request at a time: %s", exc.message)
            return None

    def run(self) -> None:
        try:
            self.loaded = load_model(self._settings)
            self._batcher = self._make_batcher(self.loaded)
        except BaseException as exc:  # noqa: BLE001 - reported to the event loop, which decides
            self.dead = exc
            self._on_loaded(exc)
            return
        self._on_loaded(self.loaded)
        try:
            if self._batcher is not None:
                self._batcher.run_forever(self._stop_event)  # _close below fails what is left
            else:
                self._serve()
        except BaseException as exc:  # noqa: BLE001 - an engine crash must fail every waiter, not hang them
            logger.exception("engine thread crashed")
            self._close(exc, EngineDead("The model engine crashed; see the server log."))
            return
        shutting_down = EngineDead("The server is shutting down.")
        self._close(shutting_down, shutting_down)

    def _close(self, cause: BaseException, told: BaseException) -> None:
        """Take no more jobs (``cause`` becomes ``dead``) and fail, with ``told``, those still queued."""
        with self._intake:
            if self.dead is None:
                self.dead = cause
        if self._batcher is not None:
            self._batcher.abort_all(told)
        self._fail_pending(told)

    def _serve(self) -> None:
        while True:
            item = self._jobs.get()
            if item is _SHUTDOWN:
                return
            assert isinstance(item, Job)
            self._run_job(item)

    def _fail_pending(self, exc: BaseException) -> None:
        while True:
            try:
                item = self._jobs.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, Job):
                item.sink.on_error(exc)

    def _run_job(self, job: Job) -> None:
        if job.cancelled.is_set():
            job.sink.on_finish(FinishReason.CANCELLED)
            return
        job.started_at = time.monotonic()
        timeout = self._settings.queue_timeout_s
        if timeout is not None and job.started_at - job.enqueued_at > timeout:
            # As the batcher does for its queue: a request that waited this long is refused.
            job.sink.on_error(Overloaded(f"waited more than {timeout:g}s for capacity", retry_after=1))
            return
        if self._observer is not None:
            self._observer.on_admit(job.started_at - job.enqueued_at)
            self._observer.on_decode_step(1)
        self._running = 1
        try:
            self._generate(job)
        except GlimpseError as exc:
            job.sink.on_error(exc)
        except Exception as exc:  # noqa: BLE001 - one request failed; the engine carries on
            logger.exception("generation failed", extra={"request_id": job.request_id})
            job.sink.on_error(EngineRequestError("Generation failed for this request; see the server log."))
            del exc
        finally:
            self._running = 0

    def _generate(self, job: Job) -> None:
        import torch

        assert self.loaded is not None
        model = self.loaded.model
        inputs = {k: (v.to(self.loaded.device) if hasattr(v, "to") else v) for k, v in job.inputs.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.loaded.dtype)
        config = self.generation_config(job)
        if job.sampling.seed is not None:
            torch.manual_seed(job.sampling.seed)
        with torch.inference_mode():
            output = model.generate(
                **inputs,
                generation_config=config,
                logits_processor=self.logits_processors(job),
                streamer=_Streamer(job),
                stopping_criteria=[_CancelCriteria(job)],
            )
        produced = int(output.shape[-1]) - job.prompt_tokens
        if job.sink.finished:
            return
        ended_on_eos = (
            produced > 0 and int(output[0, -1]) in generation_eos_ids(config) and not job.sampling.ignore_eos
        )
        if job.cancelled.is_set():
            job.sink.on_finish(FinishReason.CANCELLED)
        elif produced >= job.sampling.max_new_tokens and not ended_on_eos:
            job.sink.on_finish(FinishReason.LENGTH)
        else:  # an end-of-sequence token, even as the last one allowed, is a stop (as the batcher says)
            job.sink.on_finish(FinishReason.STOP)

    def generation_config(self, job: Job) -> Any:
        """The model's ``generation_config`` with the job's settings, each one that acts set explicitly.

        ``generate()`` fills a ``None`` from the model's config and then its own defaults
        (``top_k`` 50), so for a sampled job "off" is written as the value that turns each
        warper off; a greedy job runs no warper, and only its repetition penalty matters.
        """
        assert self.loaded is not None
        config = copy.deepcopy(self.loaded.model.generation_config)
        sampling = job.sampling.resolved(SamplingDefaults())  # the engine has resolved it; neutral if not
        config.max_new_tokens = sampling.max_new_tokens
        config.min_new_tokens = sampling.max_new_tokens if sampling.ignore_eos else None
        config.do_sample = not sampling.greedy
        config.num_beams = 1
        config.repetition_penalty = float(sampling.repetition_penalty or 1.0)
        if sampling.greedy:  # the warpers do not run: whatever generate() fills in is unused
            config.temperature = config.top_p = config.top_k = config.min_p = None
        else:
            config.temperature = sampling.temperature
            config.top_p = sampling.top_p
            config.top_k = sampling.top_k
            config.min_p = sampling.min_p  # 0.0, not None: the checkpoint's own min_p must not come back
        return config

    @staticmethod
    def logits_processors(job: Job) -> list[Any]:
        """What ``generate()`` lacks: OpenAI's presence and frequency penalties, then the grammar."""
        presence = job.sampling.presence_penalty or 0.0
        frequency = job.sampling.frequency_penalty or 0.0
        processors: list[Any] = []
        if presence != 0.0 or frequency != 0.0:
            processors.append(OpenAIPenalties(job.prompt_tokens, presence, frequency))
        if job.constraint is not None:
            processors.append(GrammarLogitsProcessor(job.constraint, job.prompt_tokens))
        return processors
