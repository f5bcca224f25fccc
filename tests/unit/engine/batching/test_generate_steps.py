"""One scheduler for every model: ``GenerateSteps`` (one at a time through ``generate()``) plugged into it.

The queue, timeouts, cancellation and stop decisions are the scheduler's, so the
one-at-a-time path must behave as the batching one does on the same requests.
"""

from __future__ import annotations

import pytest
import torch

from glimpse.engine.batching import BatcherConfig, GenerateSteps, Scheduler, SequenceRequest
from glimpse.engine.protocol import FinishReason, SamplingParams
from glimpse.errors import Overloaded

from .conftest import RecordingSink, make_inputs, reference

pytestmark = pytest.mark.slow


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _CountingObserver:
    def __init__(self) -> None:
        self.admitted: list[float] = []
        self.steps: list[int] = []

    def on_admit(self, queue_wait_s: float) -> None:
        self.admitted.append(queue_wait_s)

    def on_decode_step(self, batch_size: int) -> None:
        self.steps.append(batch_size)


def _scheduler(model, **config) -> Scheduler:
    steps = GenerateSteps(model, device=torch.device("cpu"), dtype=torch.float32, slot_tokens=1024)
    return Scheduler(steps, BatcherConfig(max_seq_len=1024, **config))


def _drive(scheduler, sink, ids, max_steps=50):
    for _ in range(max_steps):
        scheduler.step()
        if all(sink.done(i) for i in ids):
            return
    raise AssertionError("sequences did not finish")


def test_answers_are_generates_and_each_request_is_admitted_once(model, processor):
    observer = _CountingObserver()
    steps = GenerateSteps(model, device=torch.device("cpu"), dtype=torch.float32, slot_tokens=1024)
    scheduler = Scheduler(steps, BatcherConfig(max_seq_len=1024), observer=observer)
    sink = RecordingSink()
    cases = []
    for index, (size, question, max_new) in enumerate(
        [((56, 56), "What is this?", 12), ((90, 60), "Describe it.", 7)]
    ):
        inputs = make_inputs(processor, size, question, color=(50 * index, 100, 200))
        cases.append((f"g-{index}", inputs, max_new, reference(model, inputs, max_new)))
        scheduler.submit(SequenceRequest(f"g-{index}", inputs, sink, SamplingParams(max_new_tokens=max_new)))
    _drive(scheduler, sink, [c[0] for c in cases])

    assert not sink.errors
    for seq_id, _, max_new, ref in cases:
        assert sink.tokens[seq_id] == ref
        eos = scheduler.eos_token_ids
        expected = FinishReason.STOP if len(ref) < max_new or ref[-1] in eos else FinishReason.LENGTH
        assert sink.finished[seq_id] == expected
    assert len(observer.admitted) == 2  # counted once, by the scheduler
    assert observer.steps == [1, 1]
    assert scheduler.stats().running == 0


def test_a_stop_from_the_sink_ends_generate_at_that_token(model, processor):
    scheduler = _scheduler(model)
    sink = RecordingSink(stop_after={"s": 3})
    inputs = make_inputs(processor, (56, 56), "What is this?")
    scheduler.submit(SequenceRequest("s", inputs, sink, SamplingParams(max_new_tokens=20, ignore_eos=True)))
    _drive(scheduler, sink, ["s"])
    assert len(sink.tokens["s"]) == 3
    assert sink.finished["s"] == FinishReason.STOP


def test_cancelling_mid_generation_stops_it_and_reports_cancelled(model, processor):
    scheduler = _scheduler(model)
    inputs = make_inputs(processor, (56, 56), "What is this?")

    class CancellingSink(RecordingSink):
        def on_token(self, seq_id: str, token_id: int, logprobs=None) -> bool:
            stop = super().on_token(seq_id, token_id, logprobs)
            if len(self.tokens[seq_id]) == 2:  # the caller goes away while generate() runs
                scheduler.cancel(seq_id)
            return stop

    sink = CancellingSink()
    scheduler.submit(SequenceRequest("c", inputs, sink, SamplingParams(max_new_tokens=200, ignore_eos=True)))
    _drive(scheduler, sink, ["c"])
    assert sink.finished["c"] == FinishReason.CANCELLED
    assert len(sink.tokens["c"]) < 10
    assert scheduler.stats().running == 0


def test_a_request_that_waited_past_the_queue_timeout_is_refused(model, processor):
    clock = _Clock()
    steps = GenerateSteps(model, device=torch.device("cpu"), dtype=torch.float32, slot_tokens=1024)
    scheduler = Scheduler(steps, BatcherConfig(max_seq_len=1024, queue_timeout_s=5.0), clock=clock)
    sink = RecordingSink()
    inputs = make_inputs(processor, (56, 56), "What is this?")
    scheduler.submit(SequenceRequest("first", inputs, sink, SamplingParams(max_new_tokens=4)))
    scheduler.submit(SequenceRequest("late", inputs, sink, SamplingParams(max_new_tokens=4)))
    scheduler.step()  # "first" holds the one slot for its whole generation
    clock.now = 6.0
    _drive(scheduler, sink, ["first", "late"])
    assert sink.finished["first"] in (FinishReason.STOP, FinishReason.LENGTH)
    assert isinstance(sink.errors["late"], Overloaded)


def test_a_failing_generate_fails_that_request_only(model, processor, monkeypatch):
    scheduler = _scheduler(model)
    sink = RecordingSink()
    good = make_inputs(processor, (56, 56), "What is this?")
    bad = dict(good)
    bad["pixel_values"] = good["pixel_values"][:3]  # the wrong number of patches for its grid
    scheduler.submit(SequenceRequest("bad", bad, sink, SamplingParams(max_new_tokens=4)))
    scheduler.submit(SequenceRequest("good", good, sink, SamplingParams(max_new_tokens=4)))
    _drive(scheduler, sink, ["bad", "good"])
    assert "bad" in sink.errors
    assert sink.tokens["good"] == reference(model, good, 4)
