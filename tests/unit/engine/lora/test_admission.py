"""A request waiting for a LoRA slot does not hold up the queue behind it, and is not starved either.

The scheduler and a real ``LoraBank`` over a model-free runner: each admitted sequence takes one
token a step and holds its adapter until it ends, so the test decides exactly when slots free up.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

from glimpse.engine.batching import BatcherConfig, Scheduler, SequenceRequest
from glimpse.engine.batching.sequence import SequenceState
from glimpse.engine.lora.bank import LoraBank
from glimpse.engine.protocol import SamplingParams

from .conftest import fresh_model, make_adapter


class _Sink:
    def __init__(self) -> None:
        self.ended: dict[str, object] = {}

    def on_token(self, seq_id: str, token_id: int, logprobs: object = None) -> bool:
        return False

    def on_finish(self, seq_id: str, reason: object) -> None:
        self.ended[seq_id] = reason

    def on_error(self, seq_id: str, error: BaseException) -> None:
        self.ended[seq_id] = error


class _Steps:
    """A ``StepRunner`` without a model: ``slots`` sequences at once, adapters held through ``bank``."""

    eos_token_ids: frozenset[int] = frozenset()
    slot_tokens = 1024
    caches_prefixes = False

    def __init__(self, bank: LoraBank, slots: int) -> None:
        self.bank = bank
        self.slots = slots
        self.held: list[SequenceState] = []
        #: Sequence ids in the order they were admitted, and at which step.
        self.admitted: list[tuple[str, int]] = []
        self.steps = 0

    @property
    def free_slots(self) -> int:
        return self.slots - len(self.held)

    def can_admit(self, seq: SequenceState, held_back: Sequence[str] = ()) -> bool:
        name = seq.request.adapter
        return name is None or self.bank.can_acquire(name, held_back)

    def admit(self, seq: SequenceState) -> None:
        if seq.request.adapter is not None:
            seq.adapter_slot, _info = self.bank.acquire(seq.request.adapter)
        self.held.append(seq)
        self.admitted.append((seq.seq_id, self.steps))

    def release(self, seq: SequenceState, reusable: bool) -> None:
        self.held.remove(seq)
        if seq.request.adapter is not None:
            self.bank.release(seq.request.adapter)

    def step(self, host) -> int:
        self.steps += 1
        for seq in list(self.held):
            host.accept(seq, 1)
        return len(self.held)


@pytest.fixture(scope="module")
def adapter_dirs(tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("admission")
    return {
        name: make_adapter(tiny_dir, root / name, seed=i, leaves=("v_proj",)) for i, name in enumerate("abc")
    }


def _scheduler(tiny_dir, adapter_dirs, *, max_resident: int, slots: int = 8) -> tuple[Scheduler, _Steps]:
    bank = LoraBank(
        fresh_model(tiny_dir), max_resident=max_resident, max_rank=16, parent="tiny", served_names=("tiny",)
    )
    for name, path in adapter_dirs.items():
        bank.add(bank.read(name, path))
    steps = _Steps(bank, slots)
    return Scheduler(steps, BatcherConfig(max_batch_size=slots, max_seq_len=1024)), steps


def _request(seq_id: str, sink: _Sink, adapter: str | None, tokens: int) -> SequenceRequest:
    sampling = SamplingParams(max_new_tokens=tokens)
    return SequenceRequest(
        seq_id, {"input_ids": torch.ones((1, 4), dtype=torch.long)}, sink, sampling, adapter=adapter
    )


def _run(
    scheduler: Scheduler, sink: _Sink, ids: list[str], arrivals: dict[int, list[SequenceRequest]]
) -> None:
    for step in range(200):
        for request in arrivals.get(step, []):
            scheduler.submit(request)
        scheduler.step()
        if step >= max(arrivals, default=0) and all(i in sink.ended for i in ids):
            return
    raise AssertionError(f"not all of {ids} ended: {sink.ended}")


def test_jobs_behind_one_waiting_for_an_adapter_slot_join_the_batch(tiny_dir, adapter_dirs):
    scheduler, steps = _scheduler(tiny_dir, adapter_dirs, max_resident=2)
    sink = _Sink()
    # Both slots pinned: "a" (the least recently used) for 6 steps, "c" for 20.
    scheduler.submit(_request("a-run", sink, "a", 6))
    scheduler.step()
    scheduler.submit(_request("c-run", sink, "c", 20))
    scheduler.step()
    queue = [("b-wait", "b"), ("base", None), ("c-more", "c"), ("a-more", "a"), ("base-2", None)]
    for seq_id, adapter in queue:
        scheduler.submit(_request(seq_id, sink, adapter, 3))
    scheduler.step()
    joined = [seq_id for seq_id, step in steps.admitted if step == 2]
    # The base model's jobs and the one whose adapter is resident (and not the slot "b" waits
    # for) join at once, in their order; "a-more" would keep "a" pinned, so it waits behind "b".
    assert joined == ["base", "c-more", "base-2"]
    _run(scheduler, sink, ["a-run", "c-run", *(seq_id for seq_id, _ in queue)], {})
    order = [seq_id for seq_id, _ in steps.admitted]
    # "b" takes the slot "a" frees, the step "a-run" ends, before "a-more" (which waits for another).
    assert order.index("b-wait") < order.index("a-more")
    when = dict(steps.admitted)
    assert when["b-wait"] == 6
    assert all(not isinstance(reason, BaseException) for reason in sink.ended.values()), sink.ended


def test_a_stream_of_resident_adapter_jobs_does_not_starve_the_one_waiting(tiny_dir, adapter_dirs):
    scheduler, steps = _scheduler(tiny_dir, adapter_dirs, max_resident=1, slots=4)
    sink = _Sink()
    arrivals = {0: [_request("a-0", sink, "a", 4), _request("b-0", sink, "b", 2)]}
    for step in range(1, 12):  # a new job for the resident adapter, and one for the base, every step
        arrivals[step] = [_request(f"a-{step}", sink, "a", 4), _request(f"base-{step}", sink, None, 1)]
    ids = [r.seq_id for batch in arrivals.values() for r in batch]
    _run(scheduler, sink, ids, arrivals)
    when = dict(steps.admitted)
    assert when["b-0"] == 4  # the step "a-0" ended: no "a" job behind it joined meanwhile
    assert all(when[f"base-{step}"] == step for step in range(1, 4))  # base jobs did not wait
    assert all(not isinstance(reason, BaseException) for reason in sink.ended.values()), sink.ended
