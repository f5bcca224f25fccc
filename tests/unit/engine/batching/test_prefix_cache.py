"""The prefix cache must never change an answer, and must skip the work it claims to skip."""

from __future__ import annotations

import pytest
from PIL import Image

from glimpse.engine.batching import BatcherConfig, ContinuousBatcher, SequenceRequest
from glimpse.engine.batching.prefix_cache import BLOCK_TOKENS
from glimpse.engine.protocol import SamplingParams

from .conftest import RecordingSink, reference

pytestmark = pytest.mark.slow


def _image(size: tuple[int, int], seed: int) -> Image.Image:
    image = Image.new("RGB", size, (40 + seed * 50 % 200, 120, 200 - seed * 30 % 150))
    for x in range(0, size[0], 3):
        image.putpixel((x, (x * 7 + seed) % size[1]), (255, seed * 40 % 256, 0))
    return image


def _inputs(processor, image: Image.Image, turns: list[tuple[str, str | None]]):
    """Processor output for a conversation about ``image``: (question, answer or None) turns."""
    messages = []
    for index, (question, answer) in enumerate(turns):
        content = [{"type": "text", "text": question}]
        if index == 0:
            content.insert(0, {"type": "image"})
        messages.append({"role": "user", "content": content})
        if answer is not None:
            messages.append({"role": "assistant", "content": answer})
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return dict(processor(text=[text], images=[image], return_tensors="pt"))


class _Reuse:
    def __init__(self) -> None:
        self.reused: list[int] = []
        self.evictions = 0
        self.shared_blocks: list[int] = []

    def on_admit(self, queue_wait_s: float) -> None:
        pass

    def on_decode_step(self, batch_size: int) -> None:
        pass

    def on_prefix_reuse(self, prompt_tokens: int, reused_tokens: int) -> None:
        self.reused.append(reused_tokens)

    def on_prefix_evictions(self, count: int) -> None:
        self.evictions += count

    def on_prefix_blocks(self, shared: int, cached: int) -> None:
        self.shared_blocks.append(shared)


def _run(batcher, sink, requests, max_steps=400):
    for request in requests:
        batcher.submit(request)
    for _ in range(max_steps):
        batcher.step()
        if all(sink.done(r.seq_id) for r in requests):
            return
    raise AssertionError("not finished")


def _batcher(model, slots=4, max_seq_len=512, **config):
    observer = _Reuse()
    batcher = ContinuousBatcher(
        model, BatcherConfig(max_batch_size=slots, max_seq_len=max_seq_len, **config), observer=observer
    )
    return batcher, observer


def _all_returned(batcher) -> None:
    """Nobody holds a block any more: each is free or cached, none shared."""
    pool = batcher.cache.pool
    assert batcher.cache.used == 0
    assert pool.shared == 0
    assert all(pool.refs(block) == 0 for block in range(pool.num_blocks))
    assert pool.available == pool.num_blocks - 1  # all but the scratch block


def test_a_follow_up_reuses_the_first_turn_and_skips_the_vision_tower(model, processor, tiny_dir):
    batcher, observer = _batcher(model)
    sink = RecordingSink()
    image = _image((140, 112), 1)  # 20 image tokens: image and question end in the second block
    first = _inputs(processor, image, [("What is in this picture?", None)])
    _run(batcher, sink, [SequenceRequest("t1", first, sink, SamplingParams(max_new_tokens=10))])
    assert sink.tokens["t1"] == reference(model, first, 10)
    answer = processor.tokenizer.decode(sink.tokens["t1"], skip_special_tokens=True)

    second = _inputs(processor, image, [("What is in this picture?", answer), ("And the colour?", None)])
    calls = batcher.runner.vision_calls
    _run(batcher, sink, [SequenceRequest("t2", second, sink, SamplingParams(max_new_tokens=10))])
    assert sink.tokens["t2"] == reference(model, second, 10)
    # Reused: every whole block the first turn's keys and values cover (its prompt and all
    # but its last answer token) that the follow-up starts with.
    held = first["input_ids"][0].tolist() + sink.tokens["t1"][:-1]
    follow = second["input_ids"][0].tolist()
    common = next(
        (i for i, (x, y) in enumerate(zip(held, follow, strict=False)) if x != y), min(len(held), len(follow))
    )
    assert observer.reused[-1] == common // BLOCK_TOKENS * BLOCK_TOKENS
    image_end = int((second["input_ids"][0] == model.config.image_token_id).nonzero()[-1]) + 1
    assert observer.reused[-1] >= image_end  # the image and the first question at least
    assert batcher.runner.vision_calls == calls  # the image was not encoded again


def test_a_new_question_about_a_known_image_reuses_the_image(model, processor):
    batcher, observer = _batcher(model)
    sink = RecordingSink()
    image = _image((140, 112), 2)
    a = _inputs(processor, image, [("Describe the image in detail.", None)])
    b = _inputs(processor, image, [("How many apples are there?", None)])
    _run(batcher, sink, [SequenceRequest("a", a, sink, SamplingParams(max_new_tokens=6))])
    _run(batcher, sink, [SequenceRequest("b", b, sink, SamplingParams(max_new_tokens=8))])
    assert observer.reused == [0, observer.reused[1]]
    image_start = int((b["input_ids"][0] == model.config.image_token_id).nonzero()[0])
    assert observer.reused[1] > image_start
    assert sink.tokens["b"] == reference(model, b, 8)


def test_two_images_with_the_same_token_ids_never_share_an_entry(model, processor):
    batcher, observer = _batcher(model)
    sink = RecordingSink()
    a = _inputs(processor, _image((112, 112), 3), [("What is it?", None)])
    b = _inputs(processor, _image((112, 112), 4), [("What is it?", None)])
    assert a["input_ids"].tolist() == b["input_ids"].tolist()  # same ids, different pixels
    _run(batcher, sink, [SequenceRequest("a", a, sink, SamplingParams(max_new_tokens=6))])
    _run(batcher, sink, [SequenceRequest("b", b, sink, SamplingParams(max_new_tokens=6))])
    image_start = int((b["input_ids"][0] == model.config.image_token_id).nonzero()[0])
    assert observer.reused[1] <= image_start // BLOCK_TOKENS * BLOCK_TOKENS  # text before the image only
    assert sink.tokens["b"] == reference(model, b, 6)


def test_answers_stay_right_through_evictions_and_shared_prefixes(model, processor):
    # Two slots of 96 tokens: 14 blocks, about three prompts' worth, so cached blocks are evicted
    # all the time.
    batcher, observer = _batcher(model, slots=2, max_seq_len=96)
    sink = RecordingSink()
    # 30+ image tokens each: the first block is template and image only, so a new question hits.
    images = [_image((168 + 28 * i, 140), 10 + i) for i in range(4)]
    questions = ["What is it?", "Describe the image.", "这是什么？"]
    cases = []
    for round_ in range(2):
        requests = []
        order = list(enumerate(images))
        for i, image in order if round_ == 0 else reversed(order):  # the last ones are still cached
            inputs = _inputs(processor, image, [(questions[(i + round_) % 3], None)])
            seq_id = f"r{round_}-{i}"
            cases.append((seq_id, inputs))
            requests.append(SequenceRequest(seq_id, inputs, sink, SamplingParams(max_new_tokens=7)))
        _run(batcher, sink, requests)  # four at once on two slots: joins, leaves, evictions
    assert not sink.errors
    for seq_id, inputs in cases:
        assert sink.tokens[seq_id] == reference(model, inputs, 7), seq_id
    assert batcher.mixed.prefix is not None
    assert batcher.mixed.prefix.evictions > 0
    assert observer.evictions == batcher.mixed.prefix.evictions  # what the metric counts
    assert any(observer.reused)
    _all_returned(batcher)


def test_padded_decode_rows_leave_cached_blocks_intact(model, processor):
    """The fixed-shape decode path (CUDA graphs' shapes, run eagerly here) pads three running sequences
    to four rows; the fourth row is a free slot, whose table points at the scratch block only. The
    blocks the sequence that just finished left cached must read exactly as they were, and a
    follow-up that reuses them must answer as ``generate()`` does."""
    import torch

    from glimpse.engine.batching.cuda_graphs import DecodeGraphs

    batcher, observer = _batcher(model, slots=4, kv_bucket=32)
    graphs = DecodeGraphs(batcher.runner, batcher.cache, kv_bucket=32, capture=False)
    batcher.mixed.graphs = graphs
    prefix, cache = batcher.mixed.prefix, batcher.cache
    assert prefix is not None
    sink = RecordingSink()
    image = _image((140, 112), 8)
    first = _inputs(processor, image, [("What is in this picture?", None)])
    requests = [SequenceRequest("first", first, sink, SamplingParams(max_new_tokens=4))]
    for i in range(3):  # still decoding, three of them, when the first finishes
        inputs = _inputs(processor, _image((112, 84), 20 + i), [(f"Question {i}?", None)])
        requests.append(SequenceRequest(f"other{i}", inputs, sink, SamplingParams(max_new_tokens=24)))
    for request in requests:
        batcher.submit(request)
    kept: tuple[list[int], list[torch.Tensor]] | None = None
    for _ in range(200):
        batcher.step()
        if kept is None and sink.done("first"):
            assert cache.used == 3
            blocks = [b for b in range(cache.num_blocks) if cache.pool.key(b) and not cache.pool.refs(b)]
            assert blocks  # the first sequence's blocks, cached and held by nobody
            index = torch.tensor(blocks)
            kept = blocks, [t[:, index].clone() for t in (*cache.keys, *cache.values)]
        if all(sink.done(r.seq_id) for r in requests):
            break
    assert not sink.errors
    assert kept is not None
    assert 4 in graphs._buffers  # three rows really were padded to four
    blocks, held = kept
    assert all(cache.pool.key(b) is not None for b in blocks)  # nothing evicted them since
    for tensor, rows in zip((*cache.keys, *cache.values), held, strict=True):
        assert torch.equal(tensor[:, torch.tensor(blocks)], rows)

    answer = processor.tokenizer.decode(sink.tokens["first"], skip_special_tokens=True)
    second = _inputs(processor, image, [("What is in this picture?", answer), ("And the colour?", None)])
    _run(batcher, sink, [SequenceRequest("second", second, sink, SamplingParams(max_new_tokens=10))])
    assert observer.reused[-1] >= BLOCK_TOKENS  # the kept prefix, position 0 on
    assert sink.tokens["second"] == reference(model, second, 10)
    _all_returned(batcher)


def test_running_requests_about_one_image_share_its_blocks(model, processor):
    """Requests admitted while another with the same image runs hold its prompt blocks too
    (reference counts above one, no copy); every answer is the one without the cache, and once all
    finish every block is returned."""
    image = _image((140, 112), 9)
    questions = ["What is in this picture?", "What colour is it?", "What is in this picture?"]
    cases = [_inputs(processor, image, [(question, None)]) for question in questions]

    def run(prefix_cache):
        batcher, observer = _batcher(model, slots=4, prefix_cache=prefix_cache)
        sink = RecordingSink()
        batcher.submit(SequenceRequest("a", cases[0], sink, SamplingParams(max_new_tokens=12)))
        peak_refs, shared = 0, 0
        for step in range(200):
            if step == 2:  # "a" is decoding by now, its prompt blocks registered
                for seq_id, inputs in zip("bc", cases[1:], strict=True):
                    batcher.submit(SequenceRequest(seq_id, inputs, sink, SamplingParams(max_new_tokens=10)))
            batcher.step()
            pool = batcher.cache.pool
            peak_refs = max(peak_refs, *(pool.refs(block) for block in range(pool.num_blocks)))
            shared = max(shared, pool.shared)
            if step > 2 and all(sink.done(seq_id) for seq_id in "abc"):
                break
        assert not sink.errors
        _all_returned(batcher)
        if prefix_cache:  # what the gauge reports: the peak, then nothing shared once all left
            assert max(observer.shared_blocks) == shared
            assert observer.shared_blocks[-1] == 0
        return sink.tokens, observer.reused, peak_refs, shared

    tokens, reused, peak_refs, shared = run(True)
    assert peak_refs == 3  # the image's blocks, held by all three at once
    assert shared > 0
    image_end = int((cases[0]["input_ids"][0] == model.config.image_token_id).nonzero()[-1]) + 1
    assert reused[0] == 0
    assert all(r >= image_end // BLOCK_TOKENS * BLOCK_TOKENS for r in reused[1:])
    # The same prompt as "a": every block of it that "a" has filled (the last one fills with its answer).
    assert reused[2] == cases[2]["input_ids"].shape[1] // BLOCK_TOKENS * BLOCK_TOKENS
    off_tokens, off_reused, off_refs, _ = run(False)
    assert off_reused == []
    assert off_refs == 1
    assert tokens == off_tokens
    assert tokens["c"][:10] == tokens["a"][:10]


def test_a_repeated_prompt_writes_on_its_own_copy_of_the_last_cached_block(model, processor):
    """The same prompt again, a whole number of blocks long, is all cached; all of it but its last
    token is reused, which ends inside its last block: the new sequence writes on a copy of that
    block, so the cached one and a third run's answer are unchanged."""
    batcher, observer = _batcher(model)
    sink = RecordingSink()
    image = _image((140, 112), 11)
    for marks in range(1, BLOCK_TOKENS + 1):  # each "?" is a token: one makes whole blocks
        inputs = _inputs(processor, image, [("What is in this picture" + "?" * marks, None)])
        prompt_len = int(inputs["input_ids"].shape[1])
        if prompt_len % BLOCK_TOKENS == 0:
            break
    assert prompt_len % BLOCK_TOKENS == 0
    want = reference(model, inputs, 20)
    for run in range(3):
        _run(batcher, sink, [SequenceRequest(f"run{run}", inputs, sink, SamplingParams(max_new_tokens=20))])
        assert sink.tokens[f"run{run}"] == want
    assert observer.reused == [0, prompt_len - 1, prompt_len - 1]
    _all_returned(batcher)


def test_a_failed_sequence_leaves_nothing_to_reuse(model, processor, monkeypatch):
    batcher, observer = _batcher(model)
    sink = RecordingSink(raise_after={"bad": 3})  # its sink breaks: the sequence fails
    image = _image((112, 84), 5)
    inputs = _inputs(processor, image, [("What is in this picture?", None)])
    _run(batcher, sink, [SequenceRequest("bad", inputs, sink, SamplingParams(max_new_tokens=8))])
    assert "bad" in sink.errors
    assert batcher.mixed.prefix is not None
    assert batcher.mixed.prefix.entries == 0


def test_the_cache_can_be_turned_off(model, processor):
    batcher, observer = _batcher(model, prefix_cache=False)
    sink = RecordingSink()
    image = _image((112, 84), 6)
    a = _inputs(processor, image, [("What is it?", None)])
    _run(batcher, sink, [SequenceRequest("a", a, sink, SamplingParams(max_new_tokens=4))])
    _run(batcher, sink, [SequenceRequest("b", a, sink, SamplingParams(max_new_tokens=4))])
    assert observer.reused == []
    assert batcher.mixed.prefix is None
    assert sink.tokens["a"] == sink.tokens["b"]


def test_preprocessing_hashes_each_image_as_the_engine_would(processor):
    from glimpse.engine.batching.image_keys import image_key, image_keys

    from .conftest import make_multi_image_inputs

    inputs = make_multi_image_inputs(processor, [(56, 84), (112, 56)], "Compare them.")
    keys = image_keys(inputs)
    assert keys is not None
    assert keys.shape == (2, 32)
    rows = inputs["image_grid_thw"].prod(-1).tolist()
    first = image_key(inputs["pixel_values"][: rows[0]], inputs["image_grid_thw"][0])
    second = image_key(inputs["pixel_values"][rows[0] :], inputs["image_grid_thw"][1])
    assert [bytes(k.tolist()) for k in keys] == [first, second]
    assert first != second
    assert image_keys({"input_ids": inputs["input_ids"]}) is None


def test_the_chain_goes_on_from_known_keys_as_if_hashed_from_the_start(processor, model):
    from glimpse.engine.batching import Glm4vRunner
    from glimpse.engine.batching.prefix_cache import block_keys

    inputs = _inputs(processor, _image((140, 112), 7), [("What is in this picture?", None)])
    prompt = Glm4vRunner(model).prepare(inputs)
    images = [image.key for image in prompt.images]
    ids = prompt.token_ids.tolist()
    held = ids + [5, 6, 7] * 12  # the prompt, then an answer
    full = block_keys(prompt, images, held)
    assert len(full) == len(held) // BLOCK_TOKENS
    prompt_keys = block_keys(prompt, images, ids)
    assert block_keys(prompt, images, held, prompt_keys) == full
    assert block_keys(prompt, images, held, prompt_keys[:1]) == full
    assert full[: len(prompt_keys)] == prompt_keys


def test_an_fp8_cache_shares_blocks_without_changing_an_answer(model, processor):
    """The eviction workload above on an fp8 cache: shared blocks and copied-on-write ones are fp8
    bytes, so answers equal those of the same fp8 cache without reuse."""

    def answers(prefix_cache):
        batcher, observer = _batcher(
            model, slots=2, max_seq_len=96, kv_cache_dtype="fp8", prefix_cache=prefix_cache
        )
        sink = RecordingSink()
        images = [_image((168 + 28 * i, 140), 10 + i) for i in range(4)]
        for round_ in range(2):
            order = list(enumerate(images))
            requests = [
                SequenceRequest(
                    f"r{round_}-{i}",
                    _inputs(processor, image, [(("What is it?", "Describe the image.")[round_], None)]),
                    sink,
                    SamplingParams(max_new_tokens=7),
                )
                for i, image in (order if round_ == 0 else reversed(order))
            ]
            _run(batcher, sink, requests)
        assert not sink.errors
        return sink.tokens, observer.reused

    reused_tokens, reused = answers(True)
    assert any(reused)
    assert reused_tokens == answers(False)[0]
