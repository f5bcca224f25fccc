"""Grammars for one vocabulary: what they refuse, how a matcher starts and ends, ``generate()`` under one."""

from __future__ import annotations

import json

import pytest
import torch
from pydantic import BaseModel, ConfigDict, Field

from glimpse.engine.batching import generation_eos_ids
from glimpse.engine.grammar import GrammarLogitsProcessor, mask_logits
from glimpse.engine.protocol import ResponseFormat
from glimpse.errors import InvalidRequest


class Reading(BaseModel):
    model_config = ConfigDict(extra="forbid")
    unit: str = Field(max_length=8)  # bounded: the random model closes no free string
    values: list[int] = Field(max_length=3)
    ok: bool


@pytest.mark.parametrize(
    ("schema", "reason"),
    [
        ('{"type": "nonsense"}', "nonsense"),
        ('{"type": "string", "pattern": "(("}', "parenthesis"),
        ('{"properties": {"a": {"$ref": "#/missing"}}}', "missing"),
        ('{"type": "string", "minLength": 5, "maxLength": 2}', "minLength"),
        ("[]", "object or bool"),
    ],
)
def test_an_unusable_schema_is_an_invalid_request_naming_response_format(grammars, schema, reason):
    with pytest.raises(InvalidRequest) as err:
        grammars.compile(ResponseFormat("json_schema", schema, name="bad"))
    assert err.value.param == "response_format"
    assert reason in err.value.message
    assert ".cc:" not in err.value.message  # xgrammar's source location is not the client's business


def test_a_matcher_ends_after_the_json_and_an_end_of_sequence_token(grammars, tiny):
    model, processor = tiny
    constraint = grammars.constraint(grammars.compile(ResponseFormat("json_object")))
    for token in processor.tokenizer.encode('{"a": [1, null]}', add_special_tokens=False):
        assert constraint.active
        constraint.accept(token)
    assert not constraint.finished
    eos = min(generation_eos_ids(model.generation_config))
    constraint.accept(eos)
    assert constraint.finished
    assert not constraint.active
    assert not constraint.failed


def test_a_token_outside_the_grammar_ends_the_answer_as_failed(grammars, tiny):
    _, processor = tiny
    constraint = grammars.constraint(grammars.compile(ResponseFormat("json_object")))
    constraint.accept(processor.tokenizer.encode("x", add_special_tokens=False)[0])  # not "{"
    assert constraint.failed
    assert constraint.finished


def test_a_waiting_constraint_starts_after_its_token(grammars):
    constraint = grammars.constraint(grammars.compile(ResponseFormat("json_object")), after=7)
    assert not constraint.active
    constraint.accept(3)  # thinking: anything goes
    assert not constraint.active
    constraint.accept(7)
    assert constraint.active
    assert not constraint.finished


def test_mask_logits_refuses_logits_of_another_width(grammars):
    constraint = grammars.constraint(grammars.compile(ResponseFormat("json_object")))
    with pytest.raises(ValueError, match="width"):
        mask_logits(torch.zeros(1, grammars.vocab_size + 5), [(0, constraint)])


@pytest.mark.slow
@pytest.mark.parametrize("sampled", [False, True])
def test_generate_under_the_grammar_answers_valid_json(tiny, grammars, sampled):
    """The one-request-at-a-time path: ``generate()`` with the grammar as a logits processor."""
    model, processor = tiny
    fmt = ResponseFormat("json_schema", json.dumps(Reading.model_json_schema()), name="reading")
    constraint = grammars.constraint(grammars.compile(fmt))
    messages = [{"role": "user", "content": [{"type": "text", "text": "Report the reading."}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = dict(processor(text=[text], return_tensors="pt"))
    prompt_len = inputs["input_ids"].shape[1]
    sampling = {"do_sample": True, "temperature": 0.9, "top_k": 0} if sampled else {"do_sample": False}
    torch.manual_seed(1)
    with torch.inference_mode():
        out = model.generate(
            **inputs,
            max_new_tokens=300,
            logits_processor=[GrammarLogitsProcessor(constraint, prompt_len)],
            **sampling,
        )
    answer = out[0, prompt_len:].tolist()
    assert answer[-1] in generation_eos_ids(model.generation_config)  # ended by the grammar, not the budget
    Reading.model_validate_json(processor.tokenizer.decode(answer, skip_special_tokens=True))


def test_a_length_bounded_string_never_holds_a_raw_control_character(grammars):
    """xgrammar's own maxLength rule let U+0010 or a tab through raw: not JSON (xgrammar #800)."""
    import xgrammar

    schema = {
        "type": "object",
        "properties": {"text": {"type": "string", "maxLength": 8}},
        "required": ["text"],
    }
    compiled = grammars.compile(ResponseFormat("json_schema", json.dumps(schema), name="note"))

    def accepts(text: str) -> bool:
        matcher = xgrammar.GrammarMatcher(compiled, terminate_without_stop_token=True)
        return matcher.accept_string(text) and matcher.is_terminated()

    assert accepts('{"text": "é猫 ok"}')
    assert accepts('{"text": "' + "a" * 8 + '"}')
    assert not accepts('{"text": "' + "a" * 9 + '"}')  # the bound holds
    assert not accepts('{"text": "\x10"}')
    assert not accepts('{"text": "a\tb"}')


def test_a_pattern_with_a_length_bound_is_refused_as_unenforceable(grammars):
    schema = {
        "type": "object",
        "properties": {"code": {"type": "string", "pattern": "^[A-Z]+$", "maxLength": 4}},
    }
    with pytest.raises(InvalidRequest) as err:
        grammars.compile(ResponseFormat("json_schema", json.dumps(schema), name="bad"))
    assert err.value.param == "response_format"
    assert "#/properties/code" in err.value.message
