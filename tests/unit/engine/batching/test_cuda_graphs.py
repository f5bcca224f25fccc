"""The padded, fixed-buffer decode path that CUDA graphs replay, run eagerly on the CPU.

On a GPU the same path is captured once per shape and replayed (tests/gpu covers
that); here it must give exactly the tokens of single-request ``generate()``,
whatever the padding rows do in the free cache slots.
"""

from __future__ import annotations

import pytest

from glimpse.engine.batching import BatcherConfig, ContinuousBatcher, SequenceRequest
from glimpse.engine.batching.cuda_graphs import DecodeGraphs, batch_buckets, length_buckets
from glimpse.engine.protocol import SamplingParams

from .conftest import RecordingSink, make_inputs, reference

pytestmark = pytest.mark.slow


def test_batch_buckets_cover_every_size_up_to_the_slots():
    assert batch_buckets(1) == (1,)
    assert batch_buckets(6) == (1, 2, 4, 6)
    assert batch_buckets(64) == (1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64)
    for slots in (1, 3, 8, 13, 64):
        buckets = batch_buckets(slots)
        assert all(any(b >= n for b in buckets) for n in range(1, slots + 1))
        assert max(buckets) == slots


def test_length_buckets_double_up_to_the_slot_length():
    assert length_buckets(256, 32) == (32, 64, 128, 256)
    assert length_buckets(300, 64) == (64, 128, 256, 300)
    assert length_buckets(64, 256) == (64,)


def test_every_shape_is_captured_at_start_up_and_none_during_traffic(model, monkeypatch):
    import torch

    batcher = ContinuousBatcher(model, BatcherConfig(max_batch_size=6, max_seq_len=256, kv_bucket=64))
    graphs = DecodeGraphs(batcher.runner, batcher.cache, kv_bucket=64, capture=False)
    graphs._capture_enabled = True  # capture itself needs a GPU: record the shapes instead
    captured: list[tuple[int, int]] = []

    def fake_capture(nb, kv_len, buffers):
        captured.append((nb, kv_len))
        return object()

    monkeypatch.setattr(graphs, "_capture", fake_capture)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda *_: 0)
    graphs.capture_all()
    assert captured == [(nb, kv) for nb in (1, 2, 4, 6) for kv in (64, 128, 256)]
    assert graphs.attended_length(65) == 128
    assert graphs.attended_length(256) == 256
    # A shape that was not captured runs eagerly (None), and nothing is captured lazily.
    captured.clear()
    assert graphs.run([5], [(3, 3, 3)], [4], kv_len=64) is None
    assert captured == []


def test_padded_decode_matches_generate_with_joins_and_leaves(model, processor):
    cases = [((56, 56), "What is it?", 12), ((100, 80), "这是什么？", 20), ((160, 90), "Count them.", 5)]
    cases += [((90, 160), "Read the sign.", 16), ((70, 70), "Colour?", 9)]
    prepared = []
    for index, (size, question, max_new) in enumerate(cases):
        inputs = make_inputs(processor, size, question, color=(30 * index, 80, 160))
        prepared.append((f"s{index}", inputs, max_new, reference(model, inputs, max_new)))

    batcher = ContinuousBatcher(model, BatcherConfig(max_batch_size=6, max_seq_len=256, kv_bucket=32))
    graphs = DecodeGraphs(batcher.runner, batcher.cache, kv_bucket=32, capture=False)
    batcher.mixed.graphs = graphs
    sink = RecordingSink()
    arrivals = {0: prepared[:2], 3: prepared[2:4], 6: prepared[4:]}  # batch sizes 2, 3, 4, 5 pad up
    for step in range(300):
        for seq_id, inputs, max_new, _ in arrivals.get(step, []):
            batcher.submit(SequenceRequest(seq_id, inputs, sink, SamplingParams(max_new_tokens=max_new)))
        batcher.step()
        if step > 6 and all(sink.done(seq_id) for seq_id, *_ in prepared):
            break
    assert not sink.errors
    for seq_id, _, _, ref in prepared:
        assert sink.tokens[seq_id] == ref, seq_id
    assert graphs.disabled is None
    assert set(graphs._buffers) >= {2, 4, 6}  # the padded shapes really ran
