"""Continuous batching: sequences join and leave the batch between steps, prompts prefill in chunks.

One thread (the engine thread) drives ``ContinuousBatcher.step()`` or
``run_forever()``; any thread may call ``submit()`` and ``cancel()``. A step

1. takes in new submissions and cancellations,
2. fails waiting requests that outstayed ``queue_timeout_s``,
3. admits waiting requests in FIFO order while a cache slot and token budget are
   free (counted once, here: the request now holds a slot),
4. plans the prefill: up to ``prefill_tokens_per_step`` prompt tokens, taken in
   admission order, a long prompt split across steps (``prompt.plan_chunk``),
5. encodes every image that this step's chunks reach in one vision-tower call,
6. runs one forward over the decode token of every decoding sequence and the
   planned chunks, packed ragged (``runner.Glm4vRunner.forward``),
7. reports each new token to its sink and retires finished sequences at once,
   freeing their slot for the next step.

So a running stream waits at most one step's prefill budget for its next token,
however many prompts arrive. A step with no prefill and no prompt in progress
may replay a CUDA graph of the padded decode step instead (``cuda_graphs``).

A request that can never fit (prompt + ``max_new_tokens`` beyond a slot or the
token budget) is refused in ``submit()`` with ``RequestTooLarge``; one that only
has to wait for capacity stays queued. A failure confined to one sequence (its
prompt's inputs, its images, its sink) ends that sequence only, through ``on_error``.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import torch

from glimpse.engine.batching.cuda_graphs import DecodeGraphs
from glimpse.engine.batching.interface import BatcherConfig, BatcherStats, BatchObserver, SequenceRequest
from glimpse.engine.batching.kv_cache import SlotKVCache, fit_slots
from glimpse.engine.batching.prompt import plan_chunk
from glimpse.engine.batching.runner import Glm4vRunner
from glimpse.engine.batching.sampling import SamplerState, sample_tokens
from glimpse.engine.batching.sequence import SequenceState
from glimpse.engine.max_tokens import resolve_max_tokens
from glimpse.engine.protocol import FinishReason
from glimpse.engine.sampling_config import check_sampling
from glimpse.errors import InvalidRequest, Overloaded

__all__ = ["ContinuousBatcher"]

logger = logging.getLogger(__name__)


#: A prompt's share of one step: the sequence, its tokens to prefill, its images to encode first.
_Planned = tuple[SequenceState, int, list[int]]


class ContinuousBatcher:
    """Waiting and running sequences over one model and one ``SlotKVCache``."""

    def __init__(
        self,
        model: Any,
        config: BatcherConfig,
        *,
        eos_token_ids: frozenset[int] | None = None,
        clock: Callable[[], float] = time.monotonic,
        observer: BatchObserver | None = None,
    ) -> None:
        self._observer = observer
        self.runner = Glm4vRunner(model)
        geometry = self.runner.geometry()
        if geometry.device.type == "cuda":
            free_bytes, _ = torch.cuda.mem_get_info(geometry.device)
            slots = fit_slots(
                config.max_batch_size, geometry.bytes_per_token * config.max_seq_len, free_bytes
            )
            if slots < config.max_batch_size:
                logger.warning(
                    "KV cache for %d slots of %d tokens does not fit the free GPU memory; using %d slots",
                    config.max_batch_size,
                    config.max_seq_len,
                    slots,
                )
                config = dataclasses.replace(config, max_batch_size=slots)
        self.config = config
        self.cache = SlotKVCache(geometry, config.max_batch_size, config.max_seq_len)
        #: Decode steps replayed as CUDA graphs (GPU only, when configured); ``None`` runs them eagerly.
        self.graphs: DecodeGraphs | None = None
        if config.cuda_graphs and self.runner.device.type == "cuda":
            self.graphs = DecodeGraphs(self.runner, self.cache)
        self.eos_token_ids = self.runner.eos_token_ids() if eos_token_ids is None else eos_token_ids
        self._clock = clock
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._inbox: deque[SequenceState] = deque()
        self._cancelled: set[str] = set()
        self._known: set[str] = set()  # ids submitted and not yet finished
        self._waiting: deque[SequenceState] = deque()
        self._running: list[SequenceState] = []  # index == cache slot; prefilling ones included
        self._prefilling: deque[SequenceState] = deque()  # admitted, prompt not all in the cache; FIFO
        self._closed: BaseException | None = None  # set by abort_all: submit raises it from then on
        logger.info(
            "continuous batcher: %d slots of %d tokens, %.1f MiB of KV cache",
            config.max_batch_size,
            config.max_seq_len,
            self.cache.nbytes / 2**20,
        )

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
            if limit is not None and queued >= limit + self.cache.free:
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
    def sequence_room(self) -> int:
        """Most prompt + answer tokens one sequence may hold: a cache slot, and the in-flight budget."""
        return min(self.config.max_seq_len, self.config.max_tokens_in_flight or self.config.max_seq_len)

    def stats(self) -> BatcherStats:
        with self._lock:
            waiting = len(self._inbox) + len(self._waiting)
        running = list(self._running)
        return BatcherStats(
            waiting=waiting,
            running=len(running),
            free_slots=self.config.max_batch_size - len(running),
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
        """Admit, prefill a budget of prompt tokens and decode one token for every decoding
        sequence in one forward, retire; True if anything ran."""
        self._take_inbox()
        self._expire_waiting()
        admitted = self._admit()
        if not self._running:
            return admitted
        self._forward()
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

    def _fits_now(self, seq: SequenceState) -> bool:
        if self.cache.free == 0:
            return False
        budget = self.config.max_tokens_in_flight
        return budget is None or sum(s.reserve for s in self._running) + seq.reserve <= budget

    def _admit(self) -> bool:
        admitted = False
        while self._waiting and self._fits_now(self._waiting[0]):
            seq = self._waiting.popleft()
            admitted = True
            if self._observer is not None:
                self._observer.on_admit(self._clock() - seq.enqueued_at)
            try:
                request = seq.request
                seq.sampler = SamplerState.create(
                    request.sampling, request.inputs["input_ids"], request.constraint
                )
                seq.prompt = self.runner.prepare(seq.request.inputs)
            except Exception as exc:
                logger.exception("prompt of sequence %s is unusable", seq.seq_id)
                self._fail(seq, exc)
                continue
            seq.slot = self.cache.allocate()
            self._running.append(seq)
            self._prefilling.append(seq)
        return admitted

    def _plan_prefill(self) -> list[_Planned]:
        """Each prefilling prompt's chunk in this step, oldest first, within the token budget."""
        left = self.config.prefill_tokens_per_step
        planned: list[_Planned] = []
        for seq in self._prefilling:
            if left <= 0:
                break
            assert seq.prompt is not None
            count, images = plan_chunk(seq.prompt, seq.prefilled, seq.features, left, alone=not planned)
            if count or images:
                planned.append((seq, count, images))
                left -= count + sum(seq.prompt.images[i].length for i in images)
        return planned

    def _encode_images(self, planned: list[_Planned]) -> list[_Planned]:
        """Encode this step's images in one vision-tower call; on failure, fail their sequences."""
        wanted = [(seq, index) for seq, _, images in planned for index in images]
        if not wanted:
            return planned
        try:
            features = self.runner.encode_images(
                [seq.prompt.images[index] for seq, index in wanted if seq.prompt is not None]
            )
        except Exception as exc:
            logger.exception("vision tower failed for %d images", len(wanted))
            failed = {id(seq) for seq, _ in wanted}
            for seq, _, _ in planned:
                if id(seq) in failed:
                    self._retire(seq, error=exc)
            return [plan for plan in planned if id(plan[0]) not in failed]
        for (seq, index), rows in zip(wanted, features, strict=True):
            seq.features[index] = rows
        return planned

    def _forward(self) -> None:
        planned = self._encode_images(self._plan_prefill())
        chunks = [(seq, seq.chunk(count)) for seq, count, _ in planned if count]
        decoding = [seq for seq in self._running if seq.decoding]
        if not decoding and not chunks:
            return  # this step only encoded images
        if decoding and self._observer is not None:
            self._observer.on_decode_step(len(decoding))
        stepped = decoding + [seq for seq, _ in chunks]
        try:
            if self.graphs is not None and not self._prefilling:
                # Decode only, every slot decoding (slots 0 .. n-1 in order): the graph path.
                logits = self.runner.decode(
                    self.cache,
                    [seq.last_token for seq in decoding],
                    [seq.positions for seq in decoding],
                    kv_bucket=self.config.kv_bucket,
                    graphs=self.graphs,
                )
            else:
                logits = self.runner.forward(
                    self.cache,
                    [seq.slot for seq in decoding],
                    [seq.last_token for seq in decoding],
                    [seq.positions for seq in decoding],
                    [chunk for _, chunk in chunks],
                )
            sampled = decoding + [seq for seq, chunk in chunks if chunk.logits]
            tokens = sample_tokens(logits, [seq.sampler for seq in sampled])
        except Exception as exc:
            logger.exception("step failed for %d sequences", len(stepped))
            for seq in stepped:
                self._retire(seq, error=exc)
            return
        for seq in decoding:
            seq.positions = (seq.positions[0] + 1, seq.positions[1] + 1, seq.positions[2] + 1)
        for seq, chunk in chunks:
            seq.prefilled_chunk(int(chunk.token_ids.shape[0]))
            if seq.decoding:
                self._prefilling.remove(seq)
        for seq, token in zip(sampled, tokens, strict=True):
            self._accept(seq, token)

    def _accept(self, seq: SequenceState, token: int) -> None:
        """Hand one token to the sink and retire the sequence if it is done."""
        seq.last_token = token
        seq.generated += 1
        try:
            stop = seq.request.sink.on_token(seq.seq_id, token)
        except Exception as exc:
            logger.exception("token sink failed for sequence %s", seq.seq_id)
            self._retire(seq, error=exc)
            return
        sampling = seq.request.sampling
        if stop or seq.sampler.finished or (token in self.eos_token_ids and not sampling.ignore_eos):
            self._retire(seq, reason=FinishReason.STOP)
        elif seq.generated >= sampling.max_new_tokens:
            self._retire(seq, reason=FinishReason.LENGTH)

    def _retire(
        self, seq: SequenceState, reason: FinishReason | None = None, error: BaseException | None = None
    ) -> None:
        """Free a running sequence's slot (moving the last slot's sequence into it) and report."""
        moved_from = self.cache.release(seq.slot)
        last = self._running.pop()
        if moved_from is not None:
            last.slot = seq.slot
            self._running[seq.slot] = last
        seq.slot = -1
        if not seq.decoding:
            self._prefilling.remove(seq)
        seq.features.clear()
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
