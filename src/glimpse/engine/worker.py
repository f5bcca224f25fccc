"""The one engine thread: it owns the model (and the CUDA context) and runs the scheduler.

Every request goes through one ``Scheduler`` (``glimpse.engine.batching``): the
queue, admission, timeouts, cancellation and stop decisions live there. What
differs per model is the runner plugged into it: GLM-4.xV models are batched
(``MixedSteps``: requests join a running batch between steps), any other
image-text-to-text model is served one request at a time through
``model.generate()`` (``GenerateSteps``). The asyncio side in ``hf.py`` does not know which.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from glimpse.config import EngineSettings
from glimpse.engine.batching import (
    BatcherConfig,
    BatchObserver,
    GenerateSteps,
    MixedSteps,
    SampledLogprobs,
    Scheduler,
    SequenceRequest,
    StepRunner,
)
from glimpse.engine.job import Job
from glimpse.engine.kv_cache_dtype import needs_batching
from glimpse.engine.loader import LoadedModel, load_model
from glimpse.engine.lora.adapter import AdapterError
from glimpse.engine.lora.bank import LoraBank
from glimpse.engine.protocol import FinishReason
from glimpse.errors import EngineDead, EngineRequestError, GlimpseError, ModelLoadError, NotReady

__all__ = ["EngineWorker"]

logger = logging.getLogger(__name__)


class _BatchSinks:
    """Routes the batcher's per-sequence callbacks to each job's sink (engine thread)."""

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}

    def on_token(self, seq_id: str, token_id: int, logprobs: SampledLogprobs | None = None) -> bool:
        job = self.jobs.get(seq_id)
        return True if job is None else job.sink.on_token(token_id, logprobs)

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
    """Loads the model, then steps its scheduler until told to stop."""

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
        self.loaded: LoadedModel | None = None
        #: The LoRA adapters served (set once the model is loaded; ``None``: LoRA is off).
        self.lora: LoraBank | None = None
        self.dead: BaseException | None = None
        self._scheduler: Scheduler | None = None
        self._sinks = _BatchSinks()
        self._stop_event = threading.Event()
        # Makes "is the engine still taking jobs?" and "hand it this job" one step, so a
        # job cannot slip in after the thread's last look at the scheduler.
        self._intake = threading.Lock()

    @property
    def running(self) -> int:
        return self._scheduler.stats().running if self._scheduler is not None else 0

    @property
    def slots(self) -> int | None:
        """Sequences running at once (chosen at start-up; ``None``: not loaded yet)."""
        return self._scheduler.steps.slots if self._scheduler is not None else None

    @property
    def kv_cache_bytes(self) -> int | None:
        """The batching runner's KV-cache size (``None``: not loaded, or served through ``generate()``)."""
        steps = self._scheduler.steps if self._scheduler is not None else None
        return steps.kv_cache_bytes if isinstance(steps, MixedSteps) else None

    @property
    def sequence_room(self) -> int | None:
        """Most prompt + answer tokens the scheduler lets one sequence hold (``None``: not loaded)."""
        return self._scheduler.sequence_room if self._scheduler is not None else None

    def enqueue(self, job: Job) -> None:
        """Hand a job to the engine (any thread); raises ``Overloaded``/``RequestTooLarge`` at once."""
        with self._intake:
            if self.dead is not None:
                raise EngineDead("The model engine has stopped; this server cannot answer any more.")
            scheduler = self._scheduler
        if scheduler is None:  # the engine admits nothing before it is ready; kept for other callers
            raise NotReady("The model is still loading; try again shortly.", retry_after=2)
        self._sinks.jobs[job.request_id] = job
        try:
            scheduler.submit(
                SequenceRequest(
                    job.request_id, job.inputs, self._sinks, job.sampling, job.constraint, job.adapter
                )
            )
        except BaseException:
            self._sinks.jobs.pop(job.request_id, None)
            raise

    def cancel(self, job: Job) -> None:
        job.cancelled.set()
        if self._scheduler is not None:
            self._scheduler.cancel(job.request_id)

    def shutdown(self) -> None:
        self._stop_event.set()

    def _make_steps(self, loaded: LoadedModel) -> tuple[StepRunner, BatcherConfig]:
        """The batching runner where the model has one (and batching is on), else ``generate()``."""
        context = loaded.context_length or self._settings.max_seq_len
        # An fp8 KV cache is the batching engine's (batching off was refused before loading).
        fp8_cache = self._settings.kv_cache_dtype != "auto"
        if self._settings.batching:
            config = BatcherConfig.from_settings(
                self._settings, max_seq_len=min(self._settings.max_seq_len, context)
            )
            try:
                mixed = MixedSteps(loaded.model, config, observer=self._observer, lora=self.lora)
                return mixed, mixed.config
            except ModelLoadError as exc:
                if fp8_cache:
                    raise needs_batching(exc.message) from exc
                logger.info("continuous batching unavailable, serving one request at a time: %s", exc.message)
        # One slot: a sequence may use the model's whole context (there is no shared cache to size).
        config = BatcherConfig.from_settings(self._settings, max_seq_len=context)
        steps = GenerateSteps(
            loaded.model, device=loaded.device, dtype=loaded.dtype, slot_tokens=context, lora=self.lora
        )
        return steps, config

    def _load_adapters(self, loaded: LoadedModel) -> LoraBank | None:
        """The LoRA layers and the configured adapters; an adapter that cannot be served stops start-up."""
        settings = self._settings
        if not settings.lora_enabled:
            return None
        name = settings.served_model_name or settings.model
        bank = LoraBank(
            loaded.model,
            max_resident=settings.max_loras,
            max_rank=settings.max_lora_rank,
            parent=name,
            served_names=(settings.model, name, loaded.source),
        )
        for adapter, path in settings.lora_paths.items():
            try:
                bank.add(bank.read(adapter, path.expanduser()))
            except AdapterError as exc:
                raise ModelLoadError(exc.message) from exc
        logger.info("LoRA adapters: %s", ", ".join(settings.lora_paths) or "none yet")
        return bank

    def run(self) -> None:
        try:
            self.loaded = load_model(self._settings)
            self.lora = self._load_adapters(self.loaded)
            steps, config = self._make_steps(self.loaded)
            scheduler = Scheduler(steps, config, observer=self._observer)
        except BaseException as exc:  # noqa: BLE001 - reported to the event loop, which decides
            self.dead = exc
            self._on_loaded(exc)
            return
        with self._intake:
            self._scheduler = scheduler
        self._on_loaded(self.loaded)
        try:
            scheduler.run_forever(self._stop_event)  # _close below fails what is left
        except BaseException as exc:  # noqa: BLE001 - an engine crash must fail every waiter, not hang them
            logger.exception("engine thread crashed")
            self._close(scheduler, exc, EngineDead("The model engine crashed; see the server log."))
            return
        shutting_down = EngineDead("The server is shutting down.")
        self._close(scheduler, shutting_down, shutting_down)

    def _close(self, scheduler: Scheduler, cause: BaseException, told: BaseException) -> None:
        """Take no more jobs (``cause`` becomes ``dead``) and fail, with ``told``, those still queued."""
        with self._intake:
            if self.dead is None:
                self.dead = cause
        scheduler.abort_all(told)
