"""Continuous batching must not change answers: every sequence equals its own ``generate()``."""

from __future__ import annotations

import threading

import pytest
import torch

from glimpse.engine.batching import BatcherConfig, ContinuousBatcher, OpenAIPenalties, SequenceRequest
from glimpse.engine.protocol import FinishReason, SamplingParams
from glimpse.errors import InvalidRequest, Overloaded, RequestTooLarge

from .conftest import RecordingSink, make_inputs, make_text_inputs, reference

pytestmark = pytest.mark.slow

# (image size, question, max_new_tokens): different image and prompt lengths and budgets.
MIXED = [
    ((56, 56), "What is in this picture?", 24),
    ((100, 80), "Describe the image in detail, please.", 9),
    ((200, 120), "How many apples are on the table?", 31),
    ((300, 300), "Read the text.", 17),
    ((120, 200), "这张图片里有什么？", 40),  # ends on a natural end-of-sequence token
    ((64, 300), "Is this safe?", 28),
    ((280, 140), "The chart shows sales growing every month. Summarize it.", 1),
]


@pytest.fixture(scope="module")
def mixed(model, processor):
    cases = []
    for index, (size, question, max_new) in enumerate(MIXED):
        inputs = make_inputs(processor, size, question, color=(40 * index % 256, 90, 200))
        cases.append((f"req-{index}", inputs, max_new, reference(model, inputs, max_new)))
    return cases


def _request(seq_id, inputs, sink, max_new, **sampling):
    return SequenceRequest(seq_id, inputs, sink, SamplingParams(max_new_tokens=max_new, **sampling))


def _drive(batcher, sink, arrivals, max_steps=500):
    """Step the batcher, submitting ``arrivals[step]`` before each step, until all are done."""
    ids = [request.seq_id for batch in arrivals.values() for request in batch]
    for step in range(max_steps):
        for request in arrivals.get(step, []):
            batcher.submit(request)
        batcher.step()
        if step >= max(arrivals) and all(sink.done(i) for i in ids):
            return step
    raise AssertionError("sequences did not finish")


def _expected_reason(ref, max_new, eos):
    return FinishReason.STOP if len(ref) < max_new or ref[-1] in eos else FinishReason.LENGTH


def test_staggered_mixed_requests_match_generate(model, mixed):
    batcher = ContinuousBatcher(model, BatcherConfig(max_batch_size=4, max_seq_len=256, kv_bucket=16))
    sink = RecordingSink()
    # Several join at once, others mid-way; with 4 slots some must wait for a slot.
    steps = [0, 0, 0, 2, 3, 3, 7]
    arrivals: dict[int, list[SequenceRequest]] = {}
    for (seq_id, inputs, max_new, _), step in zip(mixed, steps, strict=True):
        arrivals.setdefault(step, []).append(_request(seq_id, inputs, sink, max_new))
    _drive(batcher, sink, arrivals)

    assert not sink.errors
    for seq_id, _, max_new, ref in mixed:
        assert sink.tokens[seq_id] == ref, seq_id
        assert sink.finished[seq_id] == _expected_reason(ref, max_new, batcher.eos_token_ids)
    assert batcher.stats().running == 0
    assert batcher.cache.used == 0


def test_text_only_and_image_requests_share_a_batch(model, processor, mixed):
    text_inputs = make_text_inputs(processor, "Please answer briefly. What is 42?")
    text_ref = reference(model, text_inputs, 20)
    batcher = ContinuousBatcher(model, BatcherConfig(max_batch_size=3, max_seq_len=256))
    sink = RecordingSink()
    seq_id, inputs, max_new, ref = mixed[2]
    _drive(
        batcher,
        sink,
        {0: [_request(seq_id, inputs, sink, max_new)], 4: [_request("text", text_inputs, sink, 20)]},
    )
    assert sink.tokens["text"] == text_ref
    assert sink.tokens[seq_id] == ref


def test_cancellation_midway_leaves_others_exact(model, mixed):
    batcher = ContinuousBatcher(model, BatcherConfig(max_batch_size=8, max_seq_len=256))
    sink = RecordingSink()
    cancelled_id, waiting_id = mixed[0][0], mixed[5][0]
    for seq_id, inputs, max_new, _ in mixed[:5]:
        batcher.submit(_request(seq_id, inputs, sink, max_new))
    for _ in range(4):
        batcher.step()
    batcher.cancel(cancelled_id)
    batcher.submit(_request(waiting_id, mixed[5][1], sink, mixed[5][2]))
    batcher.cancel(waiting_id)  # cancelled before it ever ran
    batcher.step()
    assert sink.finished[cancelled_id] == FinishReason.CANCELLED
    assert sink.finished[waiting_id] == FinishReason.CANCELLED
    assert waiting_id not in sink.tokens
    partial = sink.tokens[cancelled_id]
    assert 0 < len(partial) < mixed[0][2]
    assert partial == mixed[0][3][: len(partial)]
    while batcher.has_work:
        batcher.step()
    for seq_id, _, _, ref in mixed[1:5]:
        assert sink.tokens[seq_id] == ref, seq_id
    batcher.cancel(cancelled_id)  # already gone: ignored
    assert not batcher.step()


def test_eos_and_ignore_eos(model, mixed):
    seq_id, inputs, _, ref = mixed[2]
    eos = ref[6]  # a token this request really produces, made end-of-sequence
    want = reference(model, inputs, 30, eos_token_id=eos)
    assert want[-1] == eos
    assert len(want) < 30
    batcher = ContinuousBatcher(
        model, BatcherConfig(max_batch_size=2, max_seq_len=256), eos_token_ids=frozenset({eos})
    )
    sink = RecordingSink()
    batcher.submit(_request("stops", inputs, sink, 30))
    batcher.submit(_request("ignores", inputs, sink, 30, ignore_eos=True))
    while batcher.has_work:
        batcher.step()
    assert sink.tokens["stops"] == want
    assert sink.finished["stops"] == FinishReason.STOP
    assert sink.tokens["ignores"][: len(want)] == want
    assert sink.tokens["ignores"] == ref[:30]
    assert sink.finished["ignores"] == FinishReason.LENGTH


def test_sink_stop_and_sink_failure_are_per_sequence(model, mixed):
    batcher = ContinuousBatcher(model, BatcherConfig(max_batch_size=4, max_seq_len=256))
    sink = RecordingSink(stop_after={"req-0": 3}, raise_after={"req-2": 2})
    for seq_id, inputs, max_new, _ in mixed[:4]:
        batcher.submit(_request(seq_id, inputs, sink, max_new))
    while batcher.has_work:
        batcher.step()
    assert sink.finished["req-0"] == FinishReason.STOP
    assert sink.tokens["req-0"] == mixed[0][3][:3]
    assert isinstance(sink.errors["req-2"], RuntimeError)
    for seq_id, _, _, ref in (mixed[1], mixed[3]):
        assert sink.tokens[seq_id] == ref


def test_failed_prefill_fails_only_that_request(model, processor, mixed):
    batcher = ContinuousBatcher(model, BatcherConfig(max_batch_size=4, max_seq_len=256))
    sink = RecordingSink()
    broken = dict(mixed[0][1])
    broken["pixel_values"] = make_inputs(processor, (300, 300), "x")["pixel_values"]  # wrong patch count
    batcher.submit(_request("ok", mixed[1][1], sink, mixed[1][2]))
    batcher.submit(_request("broken", broken, sink, 5))
    while batcher.has_work:
        batcher.step()
    assert "broken" in sink.errors
    assert "broken" not in sink.tokens
    assert sink.tokens["ok"] == mixed[1][3]


def test_token_budget_makes_requests_wait_not_fail(model, mixed):
    _, inputs_a, _, ref_a = mixed[0]
    _, inputs_b, _, ref_b = mixed[2]
    need = max(inputs_a["input_ids"].shape[1] + 24, inputs_b["input_ids"].shape[1] + 31)
    config = BatcherConfig(max_batch_size=4, max_seq_len=256, max_tokens_in_flight=need + 5)
    batcher = ContinuousBatcher(model, config)
    sink = RecordingSink()
    batcher.submit(_request("a", inputs_a, sink, 24))
    batcher.submit(_request("b", inputs_b, sink, 31))
    batcher.step()
    assert batcher.stats().running == 1
    assert batcher.stats().waiting == 1
    while batcher.has_work:
        batcher.step()
    assert sink.tokens["a"] == ref_a
    assert sink.tokens["b"] == ref_b


def test_submit_refuses_what_can_never_fit(model, mixed):
    _, inputs, _, _ = mixed[3]
    prompt = inputs["input_ids"].shape[1]
    batcher = ContinuousBatcher(model, BatcherConfig(max_batch_size=2, max_seq_len=prompt + 10))
    sink = RecordingSink()
    with pytest.raises(
        RequestTooLarge, match=f"^max_tokens is 11 and the prompt takes {prompt} tokens"
    ) as big:
        batcher.submit(_request("big", inputs, sink, 11))
    with pytest.raises(InvalidRequest, match="^max_tokens is 0, below the minimum of 1") as none:
        batcher.submit(_request("none", inputs, sink, 0))
    assert big.value.param == none.value.param == "max_tokens"
    batcher.submit(_request("fits", inputs, sink, 10))
    with pytest.raises(InvalidRequest):
        batcher.submit(_request("fits", inputs, sink, 10))
    with pytest.raises(InvalidRequest):
        batcher.submit(_request("empty", {"input_ids": torch.zeros((1, 0), dtype=torch.long)}, sink, 3))
    with pytest.raises(InvalidRequest):
        batcher.submit(_request("bad-top-p", inputs, sink, 3, temperature=1.0, top_p=0.0))


def test_waiting_queue_bound_and_timeout(model, mixed):
    now = [0.0]
    config = BatcherConfig(max_batch_size=1, max_seq_len=256, max_waiting=2, queue_timeout_s=5.0)
    batcher = ContinuousBatcher(model, config, clock=lambda: now[0])
    sink = RecordingSink()
    _, inputs, _, _ = mixed[0]
    batcher.submit(_request("running", inputs, sink, 20))
    batcher.step()
    batcher.submit(_request("w1", inputs, sink, 3))
    batcher.submit(_request("w2", inputs, sink, 3))
    with pytest.raises(Overloaded):
        batcher.submit(_request("w3", inputs, sink, 3))
    now[0] = 6.0
    batcher.step()
    assert isinstance(sink.errors["w1"], Overloaded)
    assert isinstance(sink.errors["w2"], Overloaded)
    batcher.submit(_request("w3", inputs, sink, 3))  # room again
    batcher.abort_all(RuntimeError("shutdown"))
    assert set(sink.errors) == {"w1", "w2", "w3", "running"}
    assert not batcher.has_work
    assert batcher.cache.used == 0


def test_a_burst_between_steps_fills_the_free_slots_before_counting_as_waiting(model, mixed):
    config = BatcherConfig(max_batch_size=4, max_seq_len=256, max_waiting=1)
    batcher = ContinuousBatcher(model, config)
    sink = RecordingSink()
    _, inputs, _, _ = mixed[0]
    for i in range(5):  # 4 free slots + 1 waiting, all before the engine thread steps
        batcher.submit(_request(f"r{i}", inputs, sink, 2))
    with pytest.raises(Overloaded):
        batcher.submit(_request("r5", inputs, sink, 2))
    while batcher.has_work:
        batcher.step()
    assert set(sink.finished) == {f"r{i}" for i in range(5)}
    assert batcher.cache.used == 0


@pytest.mark.parametrize(
    "sampling",
    [
        {"temperature": 1.0, "top_p": 0.9, "seed": 7},
        {"temperature": 0.8, "top_k": 20, "min_p": 0.02, "repetition_penalty": 1.2, "seed": 2**64 - 1},
        {"temperature": 1.2, "presence_penalty": 0.5, "frequency_penalty": 0.3, "seed": -5},
    ],
    ids=["top_p", "top_k+min_p+repetition", "presence+frequency"],
)
def test_seeded_sampling_does_not_depend_on_the_batch(model, mixed, sampling):
    _, inputs, _, _ = mixed[1]

    def run(with_neighbours):
        batcher = ContinuousBatcher(model, BatcherConfig(max_batch_size=4, max_seq_len=256))
        sink = RecordingSink()
        arrivals = {0: [_request("seeded", inputs, sink, 25, ignore_eos=True, **sampling)]}
        if with_neighbours:  # sampled, greedy and penalised neighbours, joining before and after
            arrivals[0].insert(0, _request("n1", mixed[3][1], sink, 25, temperature=1.0, top_k=5))
            arrivals[2] = [_request("n2", mixed[0][1], sink, 6, repetition_penalty=1.5)]
            arrivals[4] = [_request("n3", mixed[2][1], sink, 25, temperature=0.7, frequency_penalty=1.0)]
        _drive(batcher, sink, arrivals)
        assert not sink.errors
        return sink.tokens["seeded"]

    alone = run(False)
    assert len(alone) == 25
    assert alone == run(True)
    assert alone != reference(model, inputs, 25)[: len(alone)]


@pytest.mark.parametrize(
    ("penalties", "generate_kwargs"),
    [
        ({"repetition_penalty": 1.6}, {"repetition_penalty": 1.6}),
        ({"repetition_penalty": 0.8}, {"repetition_penalty": 0.8}),
        ({"presence_penalty": 1.5, "frequency_penalty": 0.7}, None),
    ],
    ids=["repetition", "repetition-below-1", "presence+frequency"],
)
def test_greedy_rows_with_penalties_match_generate_with_them(model, mixed, penalties, generate_kwargs):
    batcher = ContinuousBatcher(model, BatcherConfig(max_batch_size=4, max_seq_len=256, kv_bucket=16))
    sink = RecordingSink()
    cases = [mixed[0], mixed[2], mixed[5]]
    arrivals = {0: [_request("plain", cases[0][1], sink, cases[0][2])]}  # an unpenalised neighbour
    expected = {"plain": cases[0][3]}
    for index, (seq_id, inputs, max_new, _) in enumerate(cases[1:]):
        arrivals.setdefault(index, []).append(_request(seq_id, inputs, sink, max_new, **penalties))
        if generate_kwargs is None:
            prompt = inputs["input_ids"].shape[1]
            processor = OpenAIPenalties(prompt, penalties["presence_penalty"], penalties["frequency_penalty"])
            expected[seq_id] = reference(model, inputs, max_new, logits_processor=[processor])
        else:
            expected[seq_id] = reference(model, inputs, max_new, **generate_kwargs)
        assert expected[seq_id] != reference(model, inputs, max_new)  # the penalty changes this answer
    _drive(batcher, sink, arrivals)
    assert not sink.errors
    assert {seq_id: sink.tokens[seq_id] for seq_id in expected} == expected


def test_engine_thread_with_concurrent_submitters(model, mixed):
    batcher = ContinuousBatcher(model, BatcherConfig(max_batch_size=3, max_seq_len=256))
    sink = RecordingSink()
    stop = threading.Event()
    engine = threading.Thread(target=batcher.run_forever, args=(stop,), kwargs={"idle_wait_s": 0.01})
    engine.start()
    try:
        submitters = [
            threading.Thread(target=batcher.submit, args=(_request(seq_id, inputs, sink, max_new),))
            for seq_id, inputs, max_new, _ in mixed
        ]
        for thread in submitters:
            thread.start()
        for thread in submitters:
            thread.join()
        deadline = threading.Event()
        for _ in range(600):
            if all(sink.done(seq_id) for seq_id, *_ in mixed):
                break
            deadline.wait(0.05)
    finally:
        stop.set()
        engine.join(timeout=10)
    assert not engine.is_alive()
    for seq_id, _, _, ref in mixed:
        assert sink.tokens[seq_id] == ref, seq_id


def test_failed_decode_step_fails_the_batch_and_the_batcher_goes_on(model, mixed, monkeypatch):
    batcher = ContinuousBatcher(model, BatcherConfig(max_batch_size=4, max_seq_len=256))
    sink = RecordingSink()
    for seq_id, inputs, max_new, _ in mixed[:2]:
        batcher.submit(_request(seq_id, inputs, sink, max_new))
    batcher.step()
    real_forward = batcher.runner.forward

    def broken_forward(*args, **kwargs):
        raise RuntimeError("device lost")

    monkeypatch.setattr(batcher.runner, "forward", broken_forward)
    batcher.step()
    assert set(sink.errors) == {"req-0", "req-1"}
    assert batcher.cache.used == 0
    monkeypatch.setattr(batcher.runner, "forward", real_forward)
    seq_id, inputs, max_new, ref = mixed[3]
    batcher.submit(_request(seq_id, inputs, sink, max_new))
    while batcher.has_work:
        batcher.step()
    assert sink.tokens[seq_id] == ref


QUESTIONS = [
    "What?",
    "Describe the image in detail.",
    "请用中文回答。",
    "How many people are walking in the park?",
]
SIZES = [(56, 56), (100, 80), (200, 120), (300, 300), (84, 168), (150, 60)]


@pytest.mark.parametrize("seed", [1, 2])
def test_random_arrivals_and_cancellations(model, processor, seed):
    """Many mixed requests arriving at random steps into 5 slots, some cancelled mid-way."""
    rng = torch.Generator().manual_seed(seed)

    def pick(options):
        return options[int(torch.randint(len(options), (1,), generator=rng))]

    cases = []
    for index in range(14):
        color = tuple(int(c) for c in torch.randint(256, (3,), generator=rng))
        inputs = make_inputs(processor, pick(SIZES), pick(QUESTIONS), color=color)
        max_new = int(torch.randint(1, 40, (1,), generator=rng))
        arrival = int(torch.randint(0, 30, (1,), generator=rng))
        cancel_at = arrival + int(torch.randint(1, 20, (1,), generator=rng)) if index % 4 == 0 else None
        cases.append((f"r{index}", inputs, max_new, arrival, cancel_at, reference(model, inputs, max_new)))

    batcher = ContinuousBatcher(model, BatcherConfig(max_batch_size=5, max_seq_len=256, kv_bucket=8))
    sink = RecordingSink()
    for step in range(400):
        for seq_id, inputs, max_new, arrival, cancel_at, _ in cases:
            if arrival == step:
                batcher.submit(_request(seq_id, inputs, sink, max_new))
            if cancel_at == step:
                batcher.cancel(seq_id)
        batcher.step()
        if step > 50 and not batcher.has_work:
            break
    assert not sink.errors
    for seq_id, _, _, _, cancel_at, ref in cases:
        got = sink.tokens.get(seq_id, [])
        if sink.finished[seq_id] == FinishReason.CANCELLED:
            assert cancel_at is not None
            assert got == ref[: len(got)], seq_id
        else:
            assert got == ref, seq_id
    assert any(reason == FinishReason.CANCELLED for reason in sink.finished.values())
