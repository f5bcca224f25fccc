"""Ragged attention against a plain reference: each sequence by its own length, causal chunks."""

from __future__ import annotations

import torch

from glimpse.engine.batching.attention import Span, padded_attention, ragged_attention


def _reference(query, keys, values, cached, scaling):
    """Textbook attention of ``query`` [heads, c, d] at positions cached.. over keys [kv, S, d]."""
    heads, count, _ = query.shape
    group = heads // keys.shape[0]
    keys, values = keys.repeat_interleave(group, 0), values.repeat_interleave(group, 0)
    scores = query @ keys.transpose(1, 2) * scaling
    visible = torch.arange(keys.shape[1])[None, :] <= (cached + torch.arange(count))[:, None]
    scores = scores.masked_fill(~visible, float("-inf"))
    return scores.softmax(-1) @ values


def _reader(keys, values, spans):
    """Each span's whole row of ``keys``/``values`` [slots, kv, S, d] (what the cache gathers)."""
    return lambda index: (keys[spans[index].slot], values[spans[index].slot])


def test_ragged_attention_equals_per_sequence_reference():
    torch.manual_seed(0)
    heads, kv_heads, dim = 6, 2, 8
    keys = torch.randn(4, kv_heads, 40, dim, dtype=torch.float64)
    values = torch.randn(4, kv_heads, 40, dim, dtype=torch.float64)
    # Two decode tokens (slot 2 long, slot 0 short), then two chunks (one from nothing cached).
    spans = [Span(2, 0, 1, 33), Span(0, 1, 1, 4), Span(3, 2, 5, 10), Span(1, 7, 6, 0)]
    query = torch.randn(heads, 13, dim, dtype=torch.float64)
    out = ragged_attention(query, spans, _reader(keys, values, spans), kv_heads, 0.3)
    assert out.shape == (heads, 13, dim)
    for span in spans:
        total = span.cached + span.count
        want = _reference(
            query[:, span.offset : span.offset + span.count],
            keys[span.slot, :, :total],
            values[span.slot, :, :total],
            span.cached,
            0.3,
        )
        torch.testing.assert_close(out[:, span.offset : span.offset + span.count], want)


def test_ragged_attention_never_reads_past_a_sequence_length():
    heads, kv_heads, dim = 4, 2, 4
    keys = torch.randn(2, kv_heads, 16, dim)
    values = torch.randn(2, kv_heads, 16, dim)
    query = torch.randn(heads, 2, dim)
    spans = [Span(0, 0, 1, 3), Span(1, 1, 1, 6)]
    before = ragged_attention(query, spans, _reader(keys, values, spans), kv_heads, 0.5)
    keys[0, :, 4:] = float("nan")  # beyond slot 0's 4 tokens
    values[1, :, 7:] = float("nan")
    assert torch.equal(ragged_attention(query, spans, _reader(keys, values, spans), kv_heads, 0.5), before)


def test_padded_attention_matches_ragged_for_decode_tokens():
    torch.manual_seed(1)
    heads, kv_heads, dim = 4, 2, 8
    keys = torch.randn(3, kv_heads, 24, dim, dtype=torch.float64)
    values = torch.randn(3, kv_heads, 24, dim, dtype=torch.float64)
    lengths = [5, 20, 11]
    query = torch.randn(3, heads, 1, dim, dtype=torch.float64)
    padded = padded_attention(query, keys, values, torch.tensor(lengths), kv_heads, 0.25)
    spans = [Span(i, i, 1, length) for i, length in enumerate(lengths)]
    ragged = ragged_attention(
        query[:, :, 0].transpose(0, 1), spans, _reader(keys, values, spans), kv_heads, 0.25
    )
    torch.testing.assert_close(padded[:, 0].view(3, heads, dim), ragged.transpose(0, 1))
