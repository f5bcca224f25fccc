"""Structured output in the batch: constrained rows follow their grammar, the others are untouched."""

from __future__ import annotations

import json
from enum import StrEnum

import pytest
import torch
from pydantic import BaseModel, ConfigDict, Field

from glimpse.engine.batching import (
    BatcherConfig,
    ContinuousBatcher,
    SamplerState,
    SequenceRequest,
    sample_tokens,
)
from glimpse.engine.grammar import Grammars
from glimpse.engine.protocol import FinishReason, ResponseFormat, SamplingParams

from .conftest import RecordingSink, make_inputs, make_text_inputs


class Shape(StrEnum):
    circle = "circle"
    square = "square"
    triangle = "triangle"


class Item(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Bounded: the random model closes no free string within 400 tokens (measured), a real one does.
    name: str = Field(max_length=12)
    count: int
    shape: Shape


class Listing(BaseModel):
    model_config = ConfigDict(extra="forbid")
    colours: list[Shape] = Field(max_length=3)
    flags: list[bool] = Field(max_length=2)


class Flat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ok: bool
    shape: Shape


SCHEMAS: list[type[BaseModel]] = [Item, Listing, Flat]


def _format(model: type[BaseModel]) -> ResponseFormat:
    return ResponseFormat("json_schema", json.dumps(model.model_json_schema()), name=model.__name__)


@pytest.fixture(scope="module")
def grammars(processor, model) -> Grammars:
    from glimpse.engine.batching import generation_eos_ids

    vocab = model.get_output_embeddings().weight.shape[0]
    return Grammars(processor.tokenizer, vocab, generation_eos_ids(model.generation_config))


def _run(batcher: ContinuousBatcher, sink: RecordingSink, requests: list[SequenceRequest]) -> None:
    for request in requests:
        batcher.submit(request)
    for _ in range(2000):
        batcher.step()
        if all(sink.done(r.seq_id) for r in requests):
            return
    raise AssertionError("sequences did not finish")


def _batcher(model) -> ContinuousBatcher:
    return ContinuousBatcher(model, BatcherConfig(max_batch_size=8, max_seq_len=1024))


def _answer(processor, sink: RecordingSink, seq_id: str) -> str:
    return str(processor.tokenizer.decode(sink.tokens[seq_id], skip_special_tokens=True))


@pytest.mark.slow
def test_mixed_batch_constrained_rows_validate_and_free_rows_keep_their_greedy_answers(
    model, processor, grammars
):
    prompts = [
        make_inputs(processor, (56, 56), "What is it?"),
        make_text_inputs(processor, "Describe the colours in detail, please."),
        make_inputs(processor, (100, 80), "How many shapes?"),
    ]
    free_alone = RecordingSink()
    _run(
        _batcher(model),
        free_alone,
        [
            SequenceRequest(f"free{i}", p, free_alone, SamplingParams(max_new_tokens=30))
            for i, p in enumerate(prompts)
        ],
    )

    sink = RecordingSink()
    requests = [
        SequenceRequest(f"free{i}", p, sink, SamplingParams(max_new_tokens=30)) for i, p in enumerate(prompts)
    ]
    for index, schema in enumerate(SCHEMAS):
        fmt = _format(schema)
        for row, prompt in enumerate(prompts):
            requests.append(
                SequenceRequest(
                    f"json{index}-{row}",
                    prompt,
                    sink,
                    SamplingParams(max_new_tokens=400, response_format=fmt),
                    grammars.constraint(grammars.compile(fmt)),
                )
            )
    # Interleave constrained and free rows, so they share steps and neighbouring slots.
    _run(_batcher(model), sink, requests[3:5] + requests[:1] + requests[5:8] + requests[1:3] + requests[8:])

    for i in range(len(prompts)):
        assert sink.tokens[f"free{i}"] == free_alone.tokens[f"free{i}"]
        assert sink.finished[f"free{i}"] == free_alone.finished[f"free{i}"]
    for index, schema in enumerate(SCHEMAS):
        for row in range(len(prompts)):
            seq_id = f"json{index}-{row}"
            assert sink.finished[seq_id] is FinishReason.STOP, _answer(processor, sink, seq_id)
            schema.model_validate_json(_answer(processor, sink, seq_id))


@pytest.mark.slow
def test_sampled_rows_follow_the_grammar_too(model, processor, grammars):
    fmt = ResponseFormat("json_object")
    sink = RecordingSink()
    requests = [
        SequenceRequest(
            f"s{seed}",
            make_text_inputs(processor, "Give me JSON."),
            sink,
            SamplingParams(max_new_tokens=400, temperature=0.8, top_k=50, seed=seed, response_format=fmt),
            grammars.constraint(grammars.compile(fmt)),
        )
        for seed in range(3)
    ]
    _run(_batcher(model), sink, requests)
    for request in requests:
        text = _answer(processor, sink, request.seq_id)
        if sink.finished[request.seq_id] is FinishReason.STOP:
            assert isinstance(json.loads(text), dict)
        else:  # out of tokens before the object closed: a prefix of one
            assert sink.finished[request.seq_id] is FinishReason.LENGTH
            assert text.startswith("{")


def test_running_out_of_tokens_ends_with_length(model, processor, grammars):
    fmt = _format(Item)
    sink = RecordingSink()
    request = SequenceRequest(
        "short",
        make_text_inputs(processor, "JSON please"),
        sink,
        SamplingParams(max_new_tokens=3, response_format=fmt),
        grammars.constraint(grammars.compile(fmt)),
    )
    _run(_batcher(model), sink, [request])
    assert sink.finished["short"] is FinishReason.LENGTH
    assert len(sink.tokens["short"]) == 3
    assert '{"name":'.startswith(_answer(processor, sink, "short"))  # the object's opening, cut short


def test_sample_tokens_masks_only_constrained_rows(grammars):
    fmt = ResponseFormat("json_object")
    vocab = grammars.vocab_size
    logits = torch.randn(3, vocab, generator=torch.Generator().manual_seed(0))
    before = logits.clone()
    states = [
        SamplerState.create(SamplingParams(max_new_tokens=4)),
        SamplerState.create(
            SamplingParams(max_new_tokens=4), constraint=grammars.constraint(grammars.compile(fmt))
        ),
        SamplerState.create(SamplingParams(max_new_tokens=4)),
    ]
    tokens = sample_tokens(logits, states)
    assert torch.equal(logits[0], before[0])
    assert torch.equal(logits[2], before[2])
    assert tokens[0] == int(before[0].argmax())
    assert tokens[2] == int(before[2].argmax())
    allowed = torch.isfinite(logits[1])
    assert 0 < int(allowed.sum()) < vocab  # the grammar allows some tokens: those that open an object
    assert tokens[1] == int(torch.where(allowed, before[1], float("-inf")).argmax())
