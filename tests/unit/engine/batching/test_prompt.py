"""How a prompt is split into chunks: the token budget, images charged once when encoded."""

from __future__ import annotations

import pytest
import torch

from glimpse.engine.batching import ImageSpan, PreparedPrompt, plan_chunk
from glimpse.engine.batching.prompt import image_parts


def _prompt(length: int, images: list[tuple[int, int]]) -> PreparedPrompt:
    spans = tuple(
        ImageSpan(start, count, torch.zeros((count * 4, 3)), torch.tensor([1, 2, 2 * count]))
        for start, count in images
    )
    return PreparedPrompt(
        token_ids=torch.arange(length), positions=torch.arange(length).expand(3, -1), images=spans
    )


def test_a_text_prompt_is_cut_into_budget_sized_chunks():
    prompt = _prompt(50, [])
    assert plan_chunk(prompt, 0, set(), 16, alone=True) == (16, [])
    assert plan_chunk(prompt, 48, set(), 16, alone=True) == (2, [])
    assert plan_chunk(prompt, 0, set(), 100, alone=False) == (50, [])


def test_an_image_costs_its_tokens_once_more_in_the_step_that_encodes_it():
    prompt = _prompt(40, [(5, 10)])  # text 0-4, image 5-14, text 15-39
    # 5 text tokens, then the image: 10 to encode + 10 to prefill, then 5 more text tokens.
    assert plan_chunk(prompt, 0, set(), 30, alone=True) == (20, [0])
    # Too little budget for the image after the text: stop before it.
    assert plan_chunk(prompt, 0, set(), 12, alone=True) == (5, [])
    # Encoded already (its tokens half prefilled): only the tokens count.
    assert plan_chunk(prompt, 10, {0}, 12, alone=True) == (12, [])


def test_an_image_larger_than_the_budget_is_encoded_alone_and_only_then():
    prompt = _prompt(40, [(0, 30)])
    assert plan_chunk(prompt, 0, set(), 8, alone=False) == (0, [])
    assert plan_chunk(prompt, 0, set(), 8, alone=True) == (0, [0])
    assert plan_chunk(prompt, 0, {0}, 8, alone=False) == (8, [])


def test_several_images_in_one_chunk():
    prompt = _prompt(30, [(2, 4), (8, 4), (20, 4)])
    assert plan_chunk(prompt, 0, set(), 100, alone=True) == (30, [0, 1, 2])
    # 2 text + 4 + 4 (image 0) + 2 text, then image 1 (8) does not fit in 15.
    assert plan_chunk(prompt, 0, set(), 15, alone=True) == (8, [0])


def test_image_parts_place_the_feature_rows_a_chunk_covers():
    prompt = _prompt(30, [(2, 4), (8, 4)])
    features = {0: torch.arange(4.0)[:, None], 1: 10 + torch.arange(4.0)[:, None]}
    parts = image_parts(prompt, 4, 6, features)  # tokens 4-9: image 0 rows 2-3, image 1 rows 0-1
    assert [offset for offset, _ in parts] == [0, 4]
    assert parts[0][1].flatten().tolist() == [2.0, 3.0]
    assert parts[1][1].flatten().tolist() == [10.0, 11.0]
    assert image_parts(prompt, 12, 5, features) == []


@pytest.mark.parametrize("budget", [1, 3, 7, 64])
def test_chunks_cover_the_prompt_exactly_once(budget):
    prompt = _prompt(45, [(3, 8), (11, 4), (30, 12)])
    done, encoded, steps = 0, set(), 0
    while done < prompt.length:
        count, images = plan_chunk(prompt, done, encoded, budget, alone=True)
        assert count + sum(prompt.images[i].length for i in images) <= budget or (images and count == 0)
        assert count or images
        for index in images:
            assert index not in encoded
            assert prompt.images[index].start <= done + count or count == 0
        encoded.update(images)
        # Every image token prefilled has its image encoded.
        assert all(i in encoded for i, im in enumerate(prompt.images) if im.start < done + count)
        done += count
        steps += 1
    assert done == prompt.length
    assert encoded == {0, 1, 2}
