"""The image embedding cache: never changes an answer, never mixes images, skips the vision tower on a hit."""

from __future__ import annotations

import pytest
import torch

from glimpse.config import EngineSettings
from glimpse.engine.batching import (
    BatcherConfig,
    ContinuousBatcher,
    ImageEmbeddingCache,
    ImageSpan,
    SequenceRequest,
    embedding_cache_for,
)
from glimpse.engine.protocol import SamplingParams

from .conftest import RecordingSink, make_inputs


class Counts:
    def __init__(self) -> None:
        self.hits = self.misses = self.evictions = 0

    def on_image_embeddings(self, hits: int, misses: int, evictions: int) -> None:
        self.hits += hits
        self.misses += misses
        self.evictions += evictions


def span(pixels: torch.Tensor, grid=(1, 2, 2)) -> ImageSpan:
    return ImageSpan(start=0, length=1, pixel_values=pixels, grid=torch.tensor(grid))


# -- the cache alone ------------------------------------------------------------------


def test_keys_follow_the_tower_input_exactly():
    pixels = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    assert span(pixels).key == span(pixels.clone()).key
    changed = pixels.clone()
    changed[3, 5] += 1e-3
    assert span(changed).key != span(pixels).key
    assert span(pixels, grid=(1, 1, 4)).key != span(pixels).key
    assert span(pixels.to(torch.float64)).key != span(pixels).key
    # A key sent by preprocessing is used as given (the engine does not hash again).
    assert ImageSpan(0, 1, pixels, torch.tensor((1, 2, 2)), b"sent").key == b"sent"


def test_least_recently_used_entries_go_first_within_the_byte_budget():
    entry = torch.zeros(4, 8)  # 128 bytes
    cache = ImageEmbeddingCache(max_bytes=3 * 128)
    for key in (b"a", b"b", b"c"):
        assert cache.put(key, entry) == 0
    assert cache.get(b"a") is not None  # a is now the most recently used
    assert cache.put(b"d", entry) == 1
    assert cache.get(b"b") is None
    assert [cache.get(k) is not None for k in (b"a", b"c", b"d")] == [True, True, True]
    assert cache.nbytes == 3 * 128
    assert cache.put(b"huge", torch.zeros(4, 100)) == 0  # larger than the cache: not kept
    assert cache.get(b"huge") is None
    assert len(cache) == 3


def test_an_entry_is_a_copy_not_a_view_of_the_step_output():
    step_output = torch.ones(10, 8)
    cache = ImageEmbeddingCache(max_bytes=1 << 20)
    cache.put(b"k", step_output[:2])
    stored = cache.get(b"k")
    assert stored is not None
    assert stored.untyped_storage().nbytes() == 2 * 8 * 4
    step_output.zero_()
    assert bool((stored == 1).all())


def test_a_step_encodes_each_missing_image_once():
    first, second = torch.ones(4, 6), torch.full((4, 6), 2.0)
    calls: list[int] = []

    def tower(images):
        calls.append(len(images))
        return [image.pixel_values.sum(1, keepdim=True).expand(-1, 3).clone() for image in images]

    counts = Counts()
    cache = ImageEmbeddingCache(max_bytes=1 << 20, observer=counts)
    out = cache.encode([span(first), span(second), span(first.clone())], tower, torch.device("cpu"))
    assert calls == [2]
    assert torch.equal(out[0], out[2])
    assert not torch.equal(out[0], out[1])
    cache.encode([span(second)], tower, torch.device("cpu"))
    assert calls == [2]
    assert (counts.hits, counts.misses) == (2, 2)


def test_the_setting_sizes_the_cache_and_zero_turns_it_off():
    config = BatcherConfig.from_settings(EngineSettings(image_embedding_cache_mb=3), max_seq_len=64)
    assert config.image_embedding_cache_bytes == 3 * 2**20
    cache = embedding_cache_for(config)
    assert cache is not None
    assert cache.max_bytes == 3 * 2**20
    off = BatcherConfig.from_settings(EngineSettings(image_embedding_cache_mb=0), max_seq_len=64)
    assert embedding_cache_for(off) is None


# -- in the batcher, with the tiny model ------------------------------------------------


def _batcher(model, cache: ImageEmbeddingCache | None) -> ContinuousBatcher:
    # The prefix cache off: it too skips the tower when a reused prefix covers an image.
    config = BatcherConfig(max_batch_size=4, max_seq_len=512, kv_bucket=16, prefix_cache=False)
    batcher = ContinuousBatcher(model, config)
    batcher.runner.embedding_cache = cache
    return batcher


def _answer_all(batcher, requests, max_new=12, together=False) -> list[list[int]]:
    """Greedy answers to ``requests`` (ids and inputs), one after another or all in one step."""
    sink = RecordingSink()
    sampling = SamplingParams(max_new_tokens=max_new)
    batches = [requests] if together else [[r] for r in requests]
    for batch in batches:
        for seq_id, inputs in batch:
            batcher.submit(SequenceRequest(seq_id, inputs, sink, sampling))
        for _ in range(200):
            batcher.step()
            if all(sink.done(seq_id) for seq_id, _ in batch):
                break
    assert not sink.errors
    return [sink.tokens[seq_id] for seq_id, _ in requests]


@pytest.fixture(scope="module")
def questions(processor):
    """Three questions about one image, then the same first question about an image of the same size."""
    red = [
        make_inputs(processor, (100, 80), q, color=(200, 30, 30)) for q in ("What is it?", "Colour?", "Why?")
    ]
    blue = make_inputs(processor, (100, 80), "What is it?", color=(30, 30, 200))
    return [("red-1", red[0]), ("red-2", red[1]), ("red-3", red[2]), ("blue-1", blue)]


@pytest.mark.slow
def test_new_questions_about_a_known_image_skip_the_tower_and_answer_the_same(model, questions):
    expected = _answer_all(_batcher(model, None), questions)
    counts = Counts()
    batcher = _batcher(model, ImageEmbeddingCache(64 << 20, counts))
    assert _answer_all(batcher, questions) == expected
    assert batcher.runner.vision_calls == 2  # red once, blue once
    assert (counts.hits, counts.misses) == (2, 2)


@pytest.mark.slow
def test_two_images_with_the_same_image_tokens_never_share_an_entry(model, questions):
    red, blue = questions[0][1], questions[3][1]
    assert torch.equal(red["input_ids"], blue["input_ids"])  # same size: the same token ids
    expected = _answer_all(_batcher(model, None), [questions[0], questions[3]])
    assert expected[0] != expected[1]  # so a shared entry would show in the answer
    cache = ImageEmbeddingCache(64 << 20)
    batcher = _batcher(model, cache)
    assert _answer_all(batcher, [questions[0], questions[3]]) == expected
    assert len(cache) == 2
    assert batcher.runner.vision_calls == 2


@pytest.mark.slow
def test_questions_arriving_together_share_one_encoding(model, questions):
    expected = _answer_all(_batcher(model, None), questions[:3], together=True)
    batcher = _batcher(model, ImageEmbeddingCache(64 << 20))
    assert _answer_all(batcher, questions[:3], together=True) == expected
    assert batcher.runner.vision_calls == 1


@pytest.mark.slow
def test_eviction_under_a_small_budget_keeps_answers_equal(model, questions):
    order = [questions[0], questions[3], questions[1], questions[3], questions[2]]
    order = [(f"{seq_id}-{i}", inputs) for i, (seq_id, inputs) in enumerate(order)]
    expected = _answer_all(_batcher(model, None), order)
    probe = ImageEmbeddingCache(64 << 20)
    _answer_all(_batcher(model, probe), [questions[0]])
    counts = Counts()
    batcher = _batcher(model, ImageEmbeddingCache(probe.nbytes * 3 // 2, counts))  # room for one image
    assert _answer_all(batcher, order) == expected
    assert counts.evictions == 4  # red, blue, red, blue, red: each after the first pushes one out
    assert batcher.runner.vision_calls == 5
