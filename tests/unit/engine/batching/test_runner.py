from __future__ import annotations

import pytest
import torch

from glimpse.engine.batching import Glm4vRunner, SlotKVCache
from glimpse.errors import ModelLoadError

from .conftest import make_inputs

pytestmark = pytest.mark.slow


def _generate_logits(model, inputs, steps):
    with torch.inference_mode():
        out = model.generate(
            **inputs, max_new_tokens=steps, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
    return out.sequences[0, inputs["input_ids"].shape[1] :].tolist(), [row[0] for row in out.logits]


def test_prefill_reproduces_generate_first_step_exactly(model, processor):
    inputs = make_inputs(processor, (200, 120), "How many apples are on the table?")
    _, logits = _generate_logits(model, inputs, 1)
    prefill = Glm4vRunner(model).prefill(inputs)
    assert prefill.length == inputs["input_ids"].shape[1]
    assert torch.equal(prefill.logits, logits[0])  # same forward, same bits
    # The prompt ends in text, so all three M-RoPE axes continue from the same position.
    assert prefill.next_positions[0] == prefill.next_positions[1] == prefill.next_positions[2]
    assert prefill.next_positions[0] < prefill.length  # image tokens take fewer positions than tokens


def test_batched_decode_logits_match_generate(model, processor):
    runner = Glm4vRunner(model)
    cache = SlotKVCache(runner.geometry(), max_slots=3, max_seq_len=200)
    cases = [
        make_inputs(processor, (56, 56), "What?"),
        make_inputs(processor, (300, 300), "Read the text in the document and summarize it."),
        make_inputs(processor, (100, 80), "Is this safe?"),
    ]
    steps = 6
    wanted = [_generate_logits(model, inputs, steps) for inputs in cases]
    state = []
    for inputs in cases:
        prefill = runner.prefill(inputs)
        cache.allocate(prefill.kv)
        state.append(prefill.next_positions)
    for step in range(1, steps):
        tokens = [tokens[step - 1] for tokens, _ in wanted]
        positions = [(t + step - 1, h + step - 1, w + step - 1) for t, h, w in state]
        logits = runner.decode(cache, tokens, positions, kv_bucket=32)
        for row, (_, want) in enumerate(wanted):
            # Same math, batch of 3 instead of 1: equal up to float32 rounding.
            torch.testing.assert_close(logits[row], want[step], rtol=1e-5, atol=1e-5)
            assert int(logits[row].argmax()) == int(want[step].argmax())
    assert cache.lengths() == [inputs["input_ids"].shape[1] + steps - 1 for inputs in cases]


def test_eos_ids_come_from_the_generation_config(model):
    assert Glm4vRunner(model).eos_token_ids() == frozenset(model.generation_config.eos_token_id)


def test_other_architectures_are_refused():
    with pytest.raises(ModelLoadError):
        Glm4vRunner(torch.nn.Linear(2, 2))
