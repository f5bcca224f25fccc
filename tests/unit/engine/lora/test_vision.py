"""Adapters of the vision tower: each image's patches get its own adapter's deltas in a shared tower call,
and its features are cached apart from the base model's, so every answer is PEFT's ``generate()``'s."""

from __future__ import annotations

import pytest
import torch

from glimpse.engine.batching import BatcherConfig, ContinuousBatcher, GenerateSteps, Scheduler
from glimpse.engine.lora.layer import VisionRoutes

from .conftest import make_adapter, peft_reference
from .test_bank import _bank, _generate, _inputs, _request, _run, _Sink

pytestmark = pytest.mark.slow

#: The vision tower's linear layers (blocks and patch merger); none of these leaf names is in the LM.
TOWER = ("qkv", "proj", "gate_proj", "up_proj")


@pytest.fixture(scope="module")
def adapters(tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("vision-adapters")
    return {
        "tower": make_adapter(tiny_dir, root / "tower", seed=11, leaves=TOWER, vision=True),
        "both": make_adapter(
            tiny_dir, root / "both", seed=12, rank=8, leaves=(*TOWER, "down_proj", "v_proj"), vision=True
        ),
        "text": make_adapter(tiny_dir, root / "text", seed=13, leaves=("q_proj", "v_proj", "lm_head")),
    }


@pytest.fixture(scope="module")
def expected(tiny_dir, processor, adapters):
    """Single-request greedy answers of PEFT's model for each adapter (and the base), per prompt."""
    prompts = [_inputs(processor, i) for i in range(4)]
    answers = {}
    for name in (None, *adapters):
        model = peft_reference(tiny_dir, adapters[name] if name else None)
        answers[name] = [_generate(model, inputs, 12) for inputs in prompts]  # _request's max_new_tokens
    assert answers["tower"] != answers[None]  # the tower's deltas alone change the answers
    assert answers["both"] != answers[None]
    return prompts, answers


@pytest.mark.parametrize(("cache_bytes", "budget"), [(1 << 26, 8192), (0, 7)])
def test_base_tower_and_text_adapters_in_one_batch_match_peft_generate(
    tiny_dir, adapters, expected, cache_bytes, budget
):
    prompts, answers = expected
    model, bank = _bank(tiny_dir, adapters, max_resident=3)
    config = BatcherConfig(
        max_batch_size=8,
        max_seq_len=256,
        prefill_tokens_per_step=budget,
        image_embedding_cache_bytes=cache_bytes,
    )
    batcher = ContinuousBatcher(model, config, lora=bank)
    sink = _Sink()
    names = [None, "tower", "text", "both"]
    arrivals: dict[int, list] = {}
    for i in range(16):  # every prompt with every adapter: the same images under different adapters
        name, prompt = names[i % 4], (i // 4 + i) % 4
        arrivals.setdefault(i // 3, []).append(_request(f"{name}-{prompt}-{i}", prompts[prompt], sink, name))
    _run(batcher, sink, arrivals)
    for seq_id, tokens in sink.tokens.items():
        name, prompt = seq_id.split("-")[:2]
        assert tokens == answers[None if name == "None" else name][int(prompt)], seq_id
    assert len(sink.tokens) == 16
    cache = batcher.runner.embedding_cache
    if cache is not None:
        # Each image once for the base tower (the base and the text-only adapter share it), and
        # once for each adapter that changes the tower.
        assert len(cache) == 4 * 3


def test_generate_steps_answer_with_a_tower_adapter(tiny_dir, adapters, expected):
    prompts, answers = expected
    model, bank = _bank(tiny_dir, adapters, max_resident=2)
    steps = GenerateSteps(model, device="cpu", dtype=torch.float32, slot_tokens=256, lora=bank)
    scheduler = Scheduler(steps, BatcherConfig(max_batch_size=1, max_seq_len=256))
    sink = _Sink()
    requests = [_request("both-2", prompts[2], sink, "both"), _request("None-2", prompts[2], sink, None)]
    _run(scheduler, sink, {0: requests})
    for seq_id, tokens in sink.tokens.items():
        name, prompt = seq_id.split("-")
        assert tokens == answers[None if name == "None" else name][int(prompt)], seq_id


def test_vision_routes_follow_each_images_patches_and_merged_rows():
    routes = VisionRoutes([0, 2, 2, 5], [8, 4, 12, 16], torch.device("cpu"))
    by_patch = {slot: rows.tolist() for slot, rows in routes.routes(40)}
    assert by_patch == {2: list(range(8, 24)), 5: list(range(24, 40))}
    merged = {slot: rows.tolist() for slot, rows in routes.routes(10)}  # 2x2 patches merged into one
    assert merged == {2: list(range(2, 6)), 5: list(range(6, 10))}
    assert VisionRoutes([3, 3], [4, 4], torch.device("cpu")).routes(2) == [(3, None)]
    assert VisionRoutes.whole(4).routes(123) == [(4, None)]
    assert VisionRoutes.whole(0).routes(123) == []
    with pytest.raises(ValueError, match="do not divide"):
        routes.routes(7)
