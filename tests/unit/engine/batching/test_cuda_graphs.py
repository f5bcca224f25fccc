"""The fixed-buffer decode path that CUDA graphs replay, run eagerly on the CPU.

On a GPU the same path is captured once per shape and replayed (tests/gpu covers
that); here it must give exactly the tokens of single-request ``generate()``,
whatever the padding rows do in the free cache slots, paged by each row's length
(the gather backend: flex needs a compile, ``test_paged_attention`` and
``test_runner`` cover it) and padded to length buckets (the fallback).
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


def _recording(graphs, monkeypatch, fail_paged=False):
    """Capture needs a GPU: record the shapes instead (optionally failing the paged ones)."""
    import torch

    graphs._capture_enabled = True
    captured: list[tuple[int, int]] = []

    def fake_capture(nb, kv_len, buffers):
        if fail_paged and graphs.paged:
            raise RuntimeError("no kernel")
        captured.append((nb, kv_len))
        return object()

    monkeypatch.setattr(graphs, "_capture", fake_capture)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda *_: 0)
    return captured


def test_paged_attention_captures_one_graph_per_batch_bucket(model, monkeypatch):
    batcher = ContinuousBatcher(model, BatcherConfig(max_batch_size=6, max_seq_len=256, kv_bucket=64))
    graphs = DecodeGraphs(batcher.runner, batcher.cache, kv_bucket=64, capture=False)
    assert graphs.attention == "gather"  # "auto" on a CPU
    captured = _recording(graphs, monkeypatch)
    graphs.capture_all()
    assert captured == [(1, 0), (2, 0), (4, 0), (6, 0)]  # no length buckets
    assert graphs.attended_length(200) == 0


def test_padded_path_captures_every_shape_at_start_up_and_none_during_traffic(model, monkeypatch):
    batcher = ContinuousBatcher(model, BatcherConfig(max_batch_size=6, max_seq_len=256, kv_bucket=64))
    graphs = DecodeGraphs(batcher.runner, batcher.cache, kv_bucket=64, capture=False, attention="padded")
    captured = _recording(graphs, monkeypatch)
    graphs.capture_all()
    assert captured == [(nb, kv) for nb in (1, 2, 4, 6) for kv in (64, 128, 256)]
    assert graphs.attended_length(65) == 128
    assert graphs.attended_length(256) == 256
    # A shape that was not captured runs eagerly (None), and nothing is captured lazily.
    captured.clear()
    graphs._graphs.clear()
    assert graphs.run([5], [(3, 3, 3)], [4]) is None
    assert captured == []


def test_a_paged_path_that_cannot_be_captured_falls_back_to_length_buckets(model, monkeypatch, caplog):
    batcher = ContinuousBatcher(model, BatcherConfig(max_batch_size=2, max_seq_len=128, kv_bucket=64))
    graphs = DecodeGraphs(batcher.runner, batcher.cache, kv_bucket=64, capture=False, attention="gather")
    captured = _recording(graphs, monkeypatch, fail_paged=True)
    with caplog.at_level("WARNING"):
        graphs.capture_all()
    assert graphs.attention == "padded"
    assert graphs.disabled is None
    assert captured == [(nb, kv) for nb in (1, 2) for kv in (64, 128)]
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        "paged decode attention (gather) could not be captured, falling back to the padded path "
        "(length buckets): RuntimeError: no kernel"
    ]


@pytest.mark.parametrize("attention", ["gather", "padded"])
def test_fixed_shape_decode_matches_generate_with_joins_and_leaves(model, processor, attention):
    cases = [((56, 56), "What is it?", 12), ((100, 80), "这是什么？", 20), ((160, 90), "Count them.", 5)]
    cases += [((90, 160), "Read the sign.", 16), ((70, 70), "Colour?", 9)]
    prepared = []
    for index, (size, question, max_new) in enumerate(cases):
        inputs = make_inputs(processor, size, question, color=(30 * index, 80, 160))
        prepared.append((f"s{index}", inputs, max_new, reference(model, inputs, max_new)))

    batcher = ContinuousBatcher(model, BatcherConfig(max_batch_size=6, max_seq_len=256, kv_bucket=32))
    graphs = DecodeGraphs(batcher.runner, batcher.cache, kv_bucket=32, capture=False, attention=attention)
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
