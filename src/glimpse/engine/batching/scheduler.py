"""The one scheduler: queue, admission, timeouts, cancellation and stop decisions for every model.

One thread (the engine thread) drives ``Scheduler.step()`` or ``run_forever()``;
any thread may call ``submit()`` and ``cancel()``. A step

1. takes in new submissions and cancellations,
2. fails waiting requests that outstayed ``queue_timeout_s``,
3. admits waiting requests in FIFO order while the runner has a free slot and
   the token budget allows (counted once, here: the request now holds a slot);
   one whose LoRA adapter must wait for a slot of its own is passed over, without
   losing its turn for that slot (see ``_admit``),
4. has the ``StepRunner`` advance its sequences one step, and
5. decides, for each token it reports, whether the sequence ends (end of
   sequence, ``max_new_tokens``, a stop string from the sink), retiring it at
   once so its slot is free for the next step.

The runner is the model's half: ``MixedSteps`` batches GLM-4.xV (mixed prefill +
decode steps over a slot KV cache), ``GenerateSteps`` serves any other model one
sequence at a time through ``generate()``. ``ContinuousBatcher`` is the
scheduler over ``MixedSteps``.

A request that can never fit (prompt + ``max_new_tokens`` beyond a slot or the
token budget) is refused in ``submit()`` with ``RequestTooLarge``; one that only
has to wait for capacity stays queued. A failure confined to one sequence (its
prompt's inputs, its images, its sink) ends that sequence only, through ``on_error``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from glimpse.engine.batching.interface import (
    BatcherConfig,
    BatcherStats,
    BatchObserver,
    SequenceRequest,
    StepRunner,
)
from glimpse.engine.batching.logprobs import SampledLogprobs
from glimpse.engine.batching.mixed_steps import MixedSteps
from glimpse.engine.batching.sequence import SequenceState
from glimpse.engine.lora.bank import LoraBank
from glimpse.engine.max_tokens import resolve_max_tokens
from glimpse.engine.protocol import FinishReason
from glimpse.engine.sampling_config import check_sampling
from glimpse.errors import InvalidRequest, Overloaded

__all__ = ["ContinuousBatcher", "Scheduler"]

logger = logging.getLogger(__name__)


class Scheduler:
    """Waiting and running sequences over one ``StepRunner``."""

    def __init__(
        self,
        steps: StepRunner,
        config: BatcherConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        observer: BatchObserver | None = None,
    ) -> None:
        self.steps = steps
        self.config = config
        self._observer = observer
        self._clock = clock
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._inbox: deque[SequenceState] = deque()
        self._cancelled: set[str] = set()
        self._known: set[str] = set()  # ids submitted and not yet finished
        self._waiting: deque[SequenceState] = deque()
        self._running: list[SequenceState] = []  # holding a runner slot, prefilling ones included
        self._closed: BaseException | None = None  # set by abort_all: submit raises it from then on

    # -- any thread -----------------------------------------------------------------

    def submit(self, request: SequenceRequest) -> None:
        """Queue a request; raises ``RequestTooLarge``/``InvalidRequest``/``Overloaded`` at once."""
        seq = self._validate(request)
        with self._lock:
            if self._closed is not None:  # nobody would ever step this request
                raise self._closed
            if request.seq_id in self._known:
                raise InvalidRequest(f"sequence id {request.seq_id!r} is already in use")
            # Waiting means: beyond the slots free now. A burst that arrives between two
            # steps sits in the inbox, but the free slots will take it at the next step.
            limit = self.config.max_waiting
            queued = len(self._inbox) + len(self._waiting)
            if limit is not None and queued >= limit + self.steps.free_slots:
                raise Overloaded("too many requests are waiting", retry_after=1)
            self._known.add(request.seq_id)
            self._inbox.append(seq)
        self._wakeup.set()

    def cancel(self, seq_id: str) -> None:
        """Stop a sequence (waiting or running) before its next step; unknown ids are ignored."""
        with self._lock:
            if seq_id in self._known:
                self._cancelled.add(seq_id)
        self._wakeup.set()

    @property
    def eos_token_ids(self) -> frozenset[int]:
        return self.steps.eos_token_ids

    @property
    def sequence_room(self) -> int:
        """Most prompt + answer tokens one sequence may hold: a cache slot, and the in-flight budget."""
        room = self.steps.slot_tokens
        return min(room, self.config.max_tokens_in_flight or room)

    def stats(self) -> BatcherStats:
        with self._lock:
            waiting = len(self._inbox) + len(self._waiting)
        running = list(self._running)
        return BatcherStats(
            waiting=waiting,
            running=len(running),
            free_slots=self.steps.slots - len(running),
            reserved_tokens=sum(seq.reserve for seq in running),
        )

    def _validate(self, request: SequenceRequest) -> SequenceState:
        input_ids = request.inputs.get("input_ids")
        if input_ids is None or input_ids.dim() != 2 or input_ids.shape[0] != 1 or input_ids.shape[1] == 0:
            raise InvalidRequest("a sequence needs input_ids of shape [1, length > 0]")
        sampling = request.sampling
        prompt_len = int(input_ids.shape[1])
        # The engine refuses these before they get here; kept so no caller can overrun a cache slot.
        resolve_max_tokens(sampling.max_new_tokens, prompt_tokens=prompt_len, room=self.sequence_room)
        check_sampling(sampling)
        return SequenceState(request=request, prompt_len=prompt_len, enqueued_at=self._clock())

    # -- engine thread only ---------------------------------------------------------

    @property
    def has_work(self) -> bool:
        return bool(self._running or self._waiting or self._inbox)

    def run_forever(self, stop: threading.Event, idle_wait_s: float = 0.05) -> None:
        """Step until ``stop`` is set, sleeping while there is nothing to do.

        Failures of single sequences are reported through their sinks; anything
        else escaping a step is a bug or a broken device: every sequence is failed
        with it and it is re-raised, so the owner can mark the engine dead.
        """
        while not stop.is_set():
            self._wakeup.clear()
            try:
                worked = self.step()
            except Exception as exc:
                logger.exception("batcher step failed; failing all sequences")
                self.abort_all(exc)
                raise
            if not worked:
                self._wakeup.wait(idle_wait_s)

    def step(self) -> bool:
        """Admit, have the runner advance its sequences one step, retire; True if anything ran."""
        self._take_inbox()
        self._expire_waiting()
        admitted = self._admit()
        if not self._running:
            return admitted
        decoded = self.steps.step(self)
        if decoded and self._observer is not None:
            self._observer.on_decode_step(decoded)
        return True

    def abort_all(self, error: BaseException) -> None:
        """Fail every waiting and running sequence and refuse new ones (shutdown, dead engine)."""
        with self._lock:
            self._closed = error
        self._take_inbox()
        while self._waiting:
            self._fail(self._waiting.popleft(), error)
        for seq in reversed(list(self._running)):
            self._retire(seq, error=error)

    def _take_inbox(self) -> None:
        with self._lock:
            self._waiting.extend(self._inbox)
            self._inbox.clear()
            cancelled, self._cancelled = self._cancelled, set()
        if not cancelled:
            return
        for seq in [s for s in self._waiting if s.seq_id in cancelled]:
            self._waiting.remove(seq)
            self._forget(seq.seq_id)
            self._notify_finish(seq, FinishReason.CANCELLED)
        for seq in [s for s in self._running if s.seq_id in cancelled]:
            self._retire(seq, reason=FinishReason.CANCELLED)

    def _expire_waiting(self) -> None:
        timeout = self.config.queue_timeout_s
        if timeout is None:
            return
        now = self._clock()
        while self._waiting and now - self._waiting[0].enqueued_at > timeout:
            seq = self._waiting.popleft()
            self._fail(seq, Overloaded(f"waited more than {timeout:g}s for capacity", retry_after=1))

    def _within_budget(self, seq: SequenceState) -> bool:
        budget = self.config.max_tokens_in_flight
        return budget is None or sum(s.reserve for s in self._running) + seq.reserve <= budget

    def _admit(self) -> bool:
        """Admit waiting sequences in order while slots and the token budget allow. One whose LoRA
        adapter has no slot yet (every slot held by running rows) is passed over, and those behind it
        may go first; the runner keeps them from pinning the slot it was promised (``can_admit``)."""
        admitted = False
        held_back: list[str] = []  # adapters of passed-over sequences, in queue order
        for seq in list(self._waiting):
            if self.steps.free_slots == 0 or not self._within_budget(seq):
                break
            if not self.steps.can_admit(seq, held_back):
                if seq.request.adapter is not None:
                    held_back.append(seq.request.adapter)
                continue
            self._waiting.remove(seq)
            admitted = True
            if self._observer is not None:
                self._observer.on_admit(self._clock() - seq.enqueued_at)
            try:
                self.steps.admit(seq)
            except Exception as exc:
                logger.exception("prompt of sequence %s is unusable", seq.seq_id)
                self._fail(seq, exc)
                continue
            self._running.append(seq)
            if self._observer is not None and self.steps.caches_prefixes:
                self._observer.on_prefix_reuse(seq.prompt_len, seq.prefilled)
        return admitted

    # -- the runner's host (engine thread) --------------------------------------------

    def accept(self, seq: SequenceState, token: int, logprobs: SampledLogprobs | None = None) -> bool:
        """Hand one token to the sink; retire the sequence (and return True) if it is done.

        The end-of-sequence token that ends an answer is no part of it: its log-probabilities
        are not passed on (OpenAI lists the answer's tokens only).
        """
        seq.generated += 1
        sampling = seq.request.sampling
        ends = token in self.eos_token_ids and not sampling.ignore_eos
        try:
            stop = seq.request.sink.on_token(seq.seq_id, token, None if ends else logprobs)
        except Exception as exc:
            logger.exception("token sink failed for sequence %s", seq.seq_id)
            self._retire(seq, error=exc)
            return True
        if stop or seq.sampler.finished or ends:
            self._retire(seq, reason=FinishReason.STOP)
        elif seq.generated >= sampling.max_new_tokens:
            self._retire(seq, reason=FinishReason.LENGTH)
        else:
            return False
        return True

    def fail(self, seq: SequenceState, error: BaseException) -> None:
        self._retire(seq, error=error)

    def end(self, seq: SequenceState, reason: FinishReason) -> None:
        self._retire(seq, reason=reason)

    def cancel_requested(self, seq: SequenceState) -> bool:
        with self._lock:
            return seq.seq_id in self._cancelled

    def _retire(
        self, seq: SequenceState, reason: FinishReason | None = None, error: BaseException | None = None
    ) -> None:
        """Free a running sequence's slot and report."""
        self.steps.release(seq, reusable=error is None)
        self._running.remove(seq)
        self._forget(seq.seq_id)
        if error is not None:
            self._notify_error(seq, error)
        else:
            self._notify_finish(seq, reason or FinishReason.STOP)

    def _fail(self, seq: SequenceState, error: BaseException) -> None:
        self._forget(seq.seq_id)
        self._notify_error(seq, error)

    def _forget(self, seq_id: str) -> None:
        with self._lock:
            self._known.discard(seq_id)
            self._cancelled.discard(seq_id)

    @staticmethod
    def _notify_finish(seq: SequenceState, reason: FinishReason) -> None:
        try:
            seq.request.sink.on_finish(seq.seq_id, reason)
        except Exception:
            logger.exception("on_finish failed for sequence %s", seq.seq_id)

    @staticmethod
    def _notify_error(seq: SequenceState, error: BaseException) -> None:
        try:
            seq.request.sink.on_error(seq.seq_id, error)
        except Exception:
            logger.exception("on_error failed for sequence %s", seq.seq_id)


class ContinuousBatcher(Scheduler):
    """The scheduler over GLM-4.xV's mixed prefill + decode steps (``MixedSteps``)."""

    def __init__(
        self,
        model: Any,
        config: BatcherConfig,
        *,
        eos_token_ids: frozenset[int] | None = None,
        clock: Callable[[], float] = time.monotonic,
        observer: BatchObserver | None = None,
        lora: LoraBank | None = None,
    ) -> None:
        self.mixed = MixedSteps(model, config, eos_token_ids=eos_token_ids, observer=observer, lora=lora)
        super().__init__(self.mixed, self.mixed.config, clock=clock, observer=observer)
        self.runner = self.mixed.runner
        self.cache = self.mixed.cache
