"""The packed step: prefill in chunks and decode together, equal to ``generate()`` up to rounding."""

from __future__ import annotations

import shutil

import pytest
import torch

from glimpse.engine.batching import Chunk, Glm4vRunner, PagedKVCache
from glimpse.engine.batching.cuda_graphs import DecodeGraphs
from glimpse.engine.batching.kv_cache import FP8_KV_DTYPE
from glimpse.engine.batching.prompt import image_parts
from glimpse.errors import ModelLoadError

from .conftest import make_inputs, make_multi_image_inputs, make_text_inputs

pytestmark = pytest.mark.slow


def _generate_logits(model, inputs, steps):
    with torch.inference_mode():
        out = model.generate(
            **inputs, max_new_tokens=steps, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
    return out.sequences[0, inputs["input_ids"].shape[1] :].tolist(), [row[0] for row in out.logits]


def _close(got, want):
    # Same math over a packed row instead of one prompt: equal up to float32 rounding.
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert int(got.argmax()) == int(want.argmax())


def _chunk(slot, prompt, done, count, features):
    """Prompt tokens ``done`` to ``done + count`` of ``prompt`` as a chunk of a mixed step."""
    return Chunk(
        slot=slot,
        token_ids=prompt.token_ids[done : done + count],
        positions=prompt.positions[:, done : done + count],
        images=image_parts(prompt, done, count, features),
        logits=done + count == prompt.length,
    )


def _prefill(runner, cache, prompt, chunk_size, slot=None):
    """Prefill ``prompt`` into a new slot in chunks of ``chunk_size``; returns (slot, last logits)."""
    slot = cache.allocate() if slot is None else slot
    features = dict(enumerate(runner.encode_images(prompt.images))) if prompt.images else {}
    done, logits = 0, None
    while done < prompt.length:
        count = min(chunk_size, prompt.length - done)
        logits = runner.forward(cache, [], [], [], [_chunk(slot, prompt, done, count, features)])
        done += count
    return slot, logits[0]


@pytest.mark.parametrize("chunk_size", [10_000, 37, 5])
def test_chunked_prefill_reproduces_generate_first_step(model, processor, chunk_size):
    inputs = make_inputs(processor, (200, 120), "How many apples are on the table?")
    _, want = _generate_logits(model, inputs, 1)
    runner = Glm4vRunner(model)
    cache = PagedKVCache(runner.geometry(), max_slots=2, max_seq_len=256)
    prompt = runner.prepare(inputs)
    assert prompt.length == inputs["input_ids"].shape[1]
    assert len(prompt.images) == 1
    slot, logits = _prefill(runner, cache, prompt, chunk_size)
    _close(logits, want[0])
    assert cache.length(slot) == prompt.length
    # The prompt ends in text, so all three M-RoPE axes continue from the same position.
    t, h, w = prompt.next_positions
    assert t == h == w < prompt.length  # image tokens take fewer positions than tokens


def test_mixed_step_decodes_and_prefills_together_like_generate(model, processor):
    runner = Glm4vRunner(model)
    cache = PagedKVCache(runner.geometry(), max_slots=4, max_seq_len=300)
    cases = [
        make_inputs(processor, (56, 56), "What?"),
        make_multi_image_inputs(processor, [(100, 80), (60, 140)], "Compare the two pictures."),
        make_text_inputs(processor, "Please answer briefly. What is 42?"),
        make_inputs(processor, (300, 300), "Read the text in the document and summarize it."),
    ]
    steps = 6
    wanted = [_generate_logits(model, inputs, steps) for inputs in cases]
    prompts = [runner.prepare(inputs) for inputs in cases]
    assert len(prompts[1].images) == 2
    state = []
    for prompt, (_, want) in zip(prompts[:3], wanted, strict=False):
        slot, logits = _prefill(runner, cache, prompt, 16)
        _close(logits, want[0])
        state.append((slot, prompt.next_positions))
    # The last prompt is prefilled in chunks while the others decode, in the same forwards.
    late = prompts[3]
    late_slot = cache.allocate()
    features = dict(enumerate(runner.encode_images(late.images)))
    done, chunk_size = 0, -(-late.length // (steps - 1))
    for step in range(1, steps):
        tokens = [tokens[step - 1] for tokens, _ in wanted[:3]]
        positions = [(t + step - 1, h + step - 1, w + step - 1) for _, (t, h, w) in state]
        count = min(chunk_size, late.length - done)
        chunk = _chunk(late_slot, late, done, count, features)
        logits = runner.forward(cache, [slot for slot, _ in state], tokens, positions, [chunk])
        done += count
        for row, (_, want) in enumerate(wanted[:3]):
            _close(logits[row], want[step])
        if chunk.logits:
            _close(logits[3], wanted[3][1][0])
    assert done == late.length
    lengths = [inputs["input_ids"].shape[1] + steps - 1 for inputs in cases[:3]]
    assert [cache.length(slot) for slot, _ in state] == lengths


def test_one_vision_call_gives_each_image_its_own_features(model, processor):
    runner = Glm4vRunner(model)
    a = runner.prepare(make_inputs(processor, (200, 120), "A?"))
    b = runner.prepare(make_multi_image_inputs(processor, [(56, 84), (140, 70)], "B?"))
    together = runner.encode_images([*a.images, *b.images])
    assert runner.vision_calls == 1
    alone = [*runner.encode_images(a.images), *runner.encode_images(b.images)]
    assert [f.shape[0] for f in together] == [image.length for image in (*a.images, *b.images)]
    for got, want in zip(together, alone, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attention", ["padded", "gather", "flex"])
def test_fixed_shape_decode_path_matches_generate(model, processor, attention):
    """The fixed-shape decode step that CUDA graphs replay, after a ragged prefill: padded to a
    length bucket, or paged by each row's length (gather, and flex compiled on the CPU)."""
    if attention == "flex" and (
        torch.backends.cpu.get_cpu_capability() == "DEFAULT" or not shutil.which("g++")
    ):
        pytest.skip("flex attention compiles on x86 CPUs with AVX2 and a C++ compiler")
    runner = Glm4vRunner(model)
    cache = PagedKVCache(runner.geometry(), max_slots=3, max_seq_len=200)
    graphs = None
    if attention != "padded":  # two rows, batch bucket 2 throughout: one compile for flex
        graphs = DecodeGraphs(runner, cache, capture=False, attention=attention)
    cases = [
        make_inputs(processor, (56, 56), "What?"),
        make_inputs(processor, (300, 300), "Read the text in the document and summarize it."),
    ]
    steps = 5
    wanted = [_generate_logits(model, inputs, steps) for inputs in cases]
    state = [_prefill(runner, cache, runner.prepare(inputs), 64)[0] for inputs in cases]
    nexts = [runner.prepare(inputs).next_positions for inputs in cases]
    assert state == [0, 1]
    for step in range(1, steps):
        tokens = [tokens[step - 1] for tokens, _ in wanted]
        positions = [(t + step - 1, h + step - 1, w + step - 1) for t, h, w in nexts]
        logits = runner.decode(cache, tokens, positions, kv_bucket=32, graphs=graphs)
        for row, (_, want) in enumerate(wanted):
            _close(logits[row], want[step])


def test_inconsistent_prompts_are_refused(model, processor):
    runner = Glm4vRunner(model)
    inputs = make_inputs(processor, (56, 56), "x")
    broken = dict(inputs)
    broken["pixel_values"] = make_inputs(processor, (300, 300), "x")["pixel_values"]
    with pytest.raises(ValueError, match="rows of pixel values"):
        runner.prepare(broken)
    with pytest.raises(ValueError, match="videos"):
        runner.prepare({**inputs, "pixel_values_videos": torch.zeros(4, 4)})
    with pytest.raises(ValueError, match="image_grid_thw"):
        runner.prepare({"input_ids": inputs["input_ids"]})


def test_eos_ids_come_from_the_generation_config(model):
    assert Glm4vRunner(model).eos_token_ids() == frozenset(model.generation_config.eos_token_id)


def test_other_architectures_are_refused():
    with pytest.raises(ModelLoadError):
        Glm4vRunner(torch.nn.Linear(2, 2))


class _RoundedCache(PagedKVCache):
    """A full-precision cache holding exactly what an fp8 cache reads back (e4m3, saturated)."""

    def _put(self, buffer, index, new):
        super()._put(buffer, index, new.clamp(-448, 448).to(FP8_KV_DTYPE).to(new.dtype))


def _forced_logits(runner, cache, prompts, wanted, steps, path):
    """Each prompt prefilled (chunks of 64), then ``steps - 1`` decode steps fed ``generate()``'s
    tokens (teacher-forced, so one flipped token does not change every later context); logits
    ``[prompt, step, vocab]``."""
    rows = [[_prefill(runner, cache, prompt, 64)[1]] for prompt in prompts]
    nexts = [prompt.next_positions for prompt in prompts]
    graphs = DecodeGraphs(runner, cache, capture=False, attention="gather") if path == "gather" else None
    for step in range(1, steps):
        tokens = [tokens[step - 1] for tokens, _ in wanted]
        positions = [(t + step - 1, h + step - 1, w + step - 1) for t, h, w in nexts]
        if path != "ragged":
            logits = runner.decode(cache, tokens, positions, kv_bucket=32, graphs=graphs)
        else:
            logits = runner.forward(cache, list(range(len(prompts))), tokens, positions)
        for row, logit in zip(rows, logits, strict=True):
            row.append(logit)
    return torch.stack([torch.stack(row) for row in rows])


@pytest.mark.parametrize("path", ["ragged", "padded", "gather"])
def test_an_fp8_cache_keeps_most_greedy_tokens(model, processor, path):
    """An fp8 cache is a full-precision one holding fp8-rounded keys and values (same logits up to
    float32 rounding: the casts are in the right places), and that rounding keeps most of
    ``generate()``'s greedy tokens. On this random model the logits are nearly flat (top-two
    gaps down to ~0.03), so e4m3's 3 mantissa bits flip some near-ties: 57 of 64 agreed when
    measured; a cache that dropped or misplaced rows would agree far less."""
    cases = [
        make_inputs(processor, (56, 56), "What?"),
        make_inputs(processor, (300, 300), "Read the text in the document and summarize it."),
        make_text_inputs(processor, "Please answer briefly. What is 42?"),
        make_multi_image_inputs(processor, [(100, 80), (60, 140)], "Compare the two pictures."),
    ]
    steps = 16
    wanted = [_generate_logits(model, inputs, steps) for inputs in cases]
    runner = Glm4vRunner(model)
    prompts = [runner.prepare(inputs) for inputs in cases]
    fp8 = PagedKVCache(runner.geometry(FP8_KV_DTYPE), max_slots=4, max_seq_len=300)
    rounded = _RoundedCache(runner.geometry(), max_slots=4, max_seq_len=300)
    got = _forced_logits(runner, fp8, prompts, wanted, steps, path)
    torch.testing.assert_close(got, _forced_logits(runner, rounded, prompts, wanted, steps, path))
    want = torch.stack([torch.stack(logits) for _, logits in wanted])
    agreed = int((got.argmax(-1) == want.argmax(-1)).sum())
    assert agreed >= 0.8 * len(cases) * steps, agreed
    assert fp8.keys[0].dtype == FP8_KV_DTYPE
