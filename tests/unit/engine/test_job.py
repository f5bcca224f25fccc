"""The engine-thread sink: detokenised deltas, stop strings, and reasoning kept apart from the answer."""

from __future__ import annotations

import asyncio

import pytest

from glimpse.engine.job import JobSink
from glimpse.engine.mailbox import LoopMailbox
from glimpse.engine.protocol import FinishReason
from glimpse.engine.tiny_model import _build_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return _build_tokenizer()


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


async def _run(tokenizer, tokens: list[int], *, stops=(), think=True, thinking=False):
    loop = asyncio.get_running_loop()
    think_ids = (
        (tokenizer.convert_tokens_to_ids("<think>"), tokenizer.convert_tokens_to_ids("</think>"))
        if think
        else None
    )
    sink = JobSink(
        LoopMailbox(loop),
        lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
        stops,
        prompt_tokens=5,
        think_ids=think_ids,
        thinking=thinking,
    )
    stopped = False
    for token in tokens:
        if sink.on_token(token):
            stopped = True
            break
    if not stopped:
        sink.on_finish(FinishReason.LENGTH)
    await asyncio.sleep(0)
    events = []
    while not sink.queue.empty():
        events.append(sink.queue.get_nowait())
    return events


def _split(events):
    return "".join(e.text for e in events), "".join(e.reasoning for e in events), events[-1].finish_reason


async def test_thought_and_answer_are_separated_by_the_tags(tokenizer):
    start, end = tokenizer.convert_tokens_to_ids("<think>"), tokenizer.convert_tokens_to_ids("</think>")
    tokens = [start, *_ids(tokenizer, "图片里有猫 let me see"), end, *_ids(tokenizer, "The answer is yes.")]
    answer, thought, reason = _split(await _run(tokenizer, tokens))
    assert thought == "图片里有猫 let me see"
    assert answer == "The answer is yes."
    assert reason is FinishReason.LENGTH


async def test_a_prompt_that_opened_the_thought(tokenizer):
    end = tokenizer.convert_tokens_to_ids("</think>")
    tokens = [*_ids(tokenizer, "thinking"), end, *_ids(tokenizer, "答案是是的。")]
    answer, thought, _ = _split(await _run(tokenizer, tokens, thinking=True))
    assert (thought, answer) == ("thinking", "答案是是的。")


async def test_an_unfinished_thought_stays_reasoning(tokenizer):
    start = tokenizer.convert_tokens_to_ids("<think>")
    answer, thought, _ = _split(await _run(tokenizer, [start, *_ids(tokenizer, "still thinking")]))
    assert (thought, answer) == ("still thinking", "")


async def test_stop_strings_cut_the_answer_not_the_thought(tokenizer):
    start, end = tokenizer.convert_tokens_to_ids("<think>"), tokenizer.convert_tokens_to_ids("</think>")
    tokens = [start, *_ids(tokenizer, "no. yes."), end, *_ids(tokenizer, "The answer is no. More")]
    answer, thought, reason = _split(await _run(tokenizer, tokens, stops=("no.",)))
    assert thought == "no. yes."
    assert answer == "The answer is "
    assert reason is FinishReason.STOP


async def test_without_think_ids_everything_is_the_answer(tokenizer):
    start, end = tokenizer.convert_tokens_to_ids("<think>"), tokenizer.convert_tokens_to_ids("</think>")
    tokens = [start, *_ids(tokenizer, "a"), end, *_ids(tokenizer, "b")]
    answer, thought, _ = _split(await _run(tokenizer, tokens, think=False))
    assert (answer, thought) == ("ab", "")


async def test_answer_tokens_carry_their_logprobs_as_text_and_bytes_thinking_none(tokenizer):
    from glimpse.engine.batching import SampledLogprobs
    from glimpse.engine.token_text import TokenTexts

    start, end = tokenizer.convert_tokens_to_ids("<think>"), tokenizer.convert_tokens_to_ids("</think>")
    answer = _ids(tokenizer, "猫 ok. STOP here")
    tokens = [start, *_ids(tokenizer, "hmm"), end, *answer]
    sink = JobSink(
        LoopMailbox(asyncio.get_running_loop()),
        lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
        ("STOP",),
        prompt_tokens=5,
        think_ids=(start, end),
        token_text=TokenTexts(tokenizer),
    )
    for index, token in enumerate(tokens):
        if sink.on_token(token, SampledLogprobs(token, -0.1 * index, ((token, -0.1 * index), (7, -3.0)))):
            break
    await asyncio.sleep(0)
    events = []
    while not sink.queue.empty():
        events.append(sink.queue.get_nowait())
    entries = [entry for event in events for entry in event.logprobs]
    assert all(not event.logprobs for event in events if event.reasoning)
    # Every answer token up to the one that completed the stop string, none of the thought or its tags.
    stop_at = next(i for i in range(len(answer)) if "STOP" in tokenizer.decode(answer[: i + 1]))
    assert len(entries) == stop_at + 1
    assert b"".join(entry.utf8 for entry in entries).decode().startswith("猫 ok.")
    assert [entry.top[1].token for entry in entries] == [tokenizer.decode([7])] * len(entries)
    assert events[-1].finish_reason is FinishReason.STOP
