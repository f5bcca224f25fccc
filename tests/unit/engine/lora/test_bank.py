"""Several adapters and the base in one running batch: each row answers as PEFT's ``generate()`` does."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from glimpse.engine.batching import (
    BatcherConfig,
    ContinuousBatcher,
    GenerateSteps,
    Scheduler,
    SequenceRequest,
)
from glimpse.engine.lora.bank import LoraBank
from glimpse.engine.protocol import SamplingParams
from glimpse.errors import ModelNotFound

from .conftest import fresh_model, make_adapter, peft_reference

pytestmark = pytest.mark.slow

QUESTIONS = ("What is it?", "Describe the picture in a few words.", "Which colour?")


def _inputs(processor, index: int):
    size = (48 + 24 * index, 64 + 8 * index)
    image = Image.new("RGB", size, (40 * index % 256, 180, 90 + 20 * index))
    for x in range(0, size[0], 6):
        image.putpixel((x, (x * 3 + index) % size[1]), (255, 255, 255))
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTIONS[index % 3]}]}
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return dict(processor(text=[text], images=[image], return_tensors="pt"))


def _generate(model, inputs, max_new: int) -> list[int]:
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new, do_sample=False)
    return out[0, inputs["input_ids"].shape[1] :].tolist()


class _Sink:
    def __init__(self) -> None:
        self.tokens: dict[str, list[int]] = {}
        self.ended: dict[str, object] = {}

    def on_token(self, seq_id: str, token_id: int, logprobs: object = None) -> bool:
        self.tokens.setdefault(seq_id, []).append(token_id)
        return False

    def on_finish(self, seq_id: str, reason) -> None:
        self.ended[seq_id] = reason

    def on_error(self, seq_id: str, error: BaseException) -> None:
        self.ended[seq_id] = error


@pytest.fixture(scope="module")
def adapters(tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return {
        "a": make_adapter(tiny_dir, root / "a", seed=1, rank=4),
        "b": make_adapter(
            tiny_dir, root / "b", seed=2, rank=8, leaves=("q_proj", "v_proj", "down_proj"), rslora=True
        ),
    }


@pytest.fixture(scope="module")
def expected(tiny_dir, processor, adapters):
    """Single-request greedy answers of PEFT's model for each adapter (and of the base), per prompt."""
    prompts = [_inputs(processor, i) for i in range(4)]
    answers = {}
    for name in (None, "a", "b"):
        model = peft_reference(tiny_dir, adapters.get(name) if name else None)
        answers[name] = [_generate(model, inputs, 12) for inputs in prompts]
    assert answers["a"] != answers[None]  # the adapters change the answers
    assert answers["b"] != answers[None]
    return prompts, answers


def _bank(tiny_dir, adapters, max_resident: int):
    model = fresh_model(tiny_dir)
    bank = LoraBank(model, max_resident=max_resident, max_rank=16, parent="tiny", served_names=("tiny",))
    for name, path in adapters.items():
        bank.add(bank.read(name, path))
    return model, bank


def _run(scheduler, sink, arrivals: dict[int, list[SequenceRequest]]) -> None:
    ids = [r.seq_id for batch in arrivals.values() for r in batch]
    for step in range(500):
        for request in arrivals.get(step, []):
            scheduler.submit(request)
        scheduler.step()
        if step >= max(arrivals) and all(i in sink.ended for i in ids):
            return
    raise AssertionError("sequences did not finish")


def _request(seq_id: str, inputs, sink, adapter: str | None) -> SequenceRequest:
    return SequenceRequest(seq_id, inputs, sink, SamplingParams(max_new_tokens=12), adapter=adapter)


@pytest.mark.parametrize("budget", [7, 64])
def test_base_and_two_adapters_in_one_batch_match_peft_generate(tiny_dir, adapters, expected, budget):
    prompts, answers = expected
    model, bank = _bank(tiny_dir, adapters, max_resident=2)
    batcher = ContinuousBatcher(
        model, BatcherConfig(max_batch_size=8, max_seq_len=256, prefill_tokens_per_step=budget), lora=bank
    )
    sink = _Sink()
    names = [None, "a", "b"]
    arrivals: dict[int, list[SequenceRequest]] = {}
    for i in range(12):  # every prompt with every adapter, arriving while others decode
        name, prompt = names[i % 3], i % 4
        arrivals.setdefault(i // 2, []).append(_request(f"{name}-{prompt}-{i}", prompts[prompt], sink, name))
    _run(batcher, sink, arrivals)
    for seq_id, tokens in sink.tokens.items():
        name, prompt = seq_id.split("-")[:2]
        assert tokens == answers[None if name == "None" else name][int(prompt)], seq_id
    assert len(sink.tokens) == 12
    assert bank.reloads == 0


def test_one_slot_takes_turns_and_reloads_the_adapter_it_unloaded(tiny_dir, adapters, expected):
    prompts, answers = expected
    model, bank = _bank(tiny_dir, adapters, max_resident=1)
    batcher = ContinuousBatcher(model, BatcherConfig(max_batch_size=8, max_seq_len=256), lora=bank)
    sink = _Sink()
    order = ["a", "b", None, "a"]
    _run(batcher, sink, {0: [_request(f"{n}-{i}", prompts[i], sink, n) for i, n in enumerate(order)]})
    for i, name in enumerate(order):
        assert sink.tokens[f"{name}-{i}"] == answers[name][i]
    assert bank.reloads == 1  # "a" was unloaded for "b", then read again
    assert bank.resident() == ["a"]


def test_generate_steps_answer_with_the_adapter(tiny_dir, adapters, expected):
    prompts, answers = expected
    model, bank = _bank(tiny_dir, adapters, max_resident=2)
    steps = GenerateSteps(model, device="cpu", dtype=torch.float32, slot_tokens=256, lora=bank)
    scheduler = Scheduler(steps, BatcherConfig(max_batch_size=1, max_seq_len=256))
    sink = _Sink()
    _run(
        scheduler,
        sink,
        {0: [_request("b-1", prompts[1], sink, "b"), _request("None-1", prompts[1], sink, None)]},
    )
    assert sink.tokens["b-1"] == answers["b"][1]
    assert sink.tokens["None-1"] == answers[None][1]


def test_an_adapter_removed_while_running_finishes_then_leaves(tiny_dir, adapters, expected):
    prompts, answers = expected
    model, bank = _bank(tiny_dir, adapters, max_resident=2)
    batcher = ContinuousBatcher(model, BatcherConfig(max_batch_size=8, max_seq_len=256), lora=bank)
    sink = _Sink()
    batcher.submit(_request("a-0", prompts[0], sink, "a"))
    batcher.step()
    bank.remove("a")
    assert bank.resident() == ["a"]  # still held by its running sequence
    _run(batcher, sink, {0: [_request("a-late", prompts[0], sink, "a")]})
    while "a-0" not in sink.ended:
        batcher.step()
    assert sink.tokens["a-0"] == answers["a"][0]
    assert isinstance(sink.ended["a-late"], ModelNotFound)
    assert bank.resident() == []
