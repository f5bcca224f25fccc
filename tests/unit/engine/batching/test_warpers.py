"""The batched warpers against transformers' own, row by row, on the same logits."""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from glimpse.engine.batching import RowWarp, filter_logits

VOCAB = 300


def _transformers(logits: torch.Tensor, row: RowWarp) -> torch.Tensor:
    """One row through the warpers ``generate()`` builds for these settings, in its order."""
    warpers = LogitsProcessorList()
    if row.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(row.temperature))
    if row.top_k != 0:
        warpers.append(TopKLogitsWarper(row.top_k))
    if row.top_p < 1.0:
        warpers.append(TopPLogitsWarper(row.top_p))
    if row.min_p > 0.0:
        warpers.append(MinPLogitsWarper(row.min_p))
    return warpers(torch.zeros((1, 1), dtype=torch.long), logits[None, :].clone())[0]


def _logits(rows: int, seed: int) -> torch.Tensor:
    logits = torch.randn(rows, VOCAB, generator=torch.Generator().manual_seed(seed)) * 4
    logits[:, ::7] = logits[:, :1]  # ties, also at the top-k boundary
    logits[:, -3:] = -200.0  # probabilities that underflow to exactly 0
    return logits


def _assert_same(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
    kept = ~torch.isinf(theirs)
    torch.testing.assert_close(ours[kept], theirs[kept], rtol=1e-6, atol=0.0)


MIXED = [
    RowWarp(1.0),
    RowWarp(0.7, top_k=5),
    RowWarp(1.3, top_p=0.8),
    RowWarp(0.9, min_p=0.05),
    RowWarp(0.6, top_k=40, top_p=0.9, min_p=0.1),
    RowWarp(1.0, top_k=1),
    RowWarp(2.0, top_k=VOCAB + 5),  # more than the vocabulary: nothing is cut
    RowWarp(0.5, top_p=0.05),
    RowWarp(1.1, top_k=2, top_p=0.6),  # GLM-4.6V-Flash-like settings
    RowWarp(0.8, min_p=1.0),
    RowWarp(1.0, top_p=1e-9),  # below float32's resolution of 1: the most likely token still stays
]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_each_row_matches_transformers_warpers_whatever_its_neighbours(seed):
    logits = _logits(len(MIXED), seed)
    filtered = filter_logits(logits, MIXED)
    for index, row in enumerate(MIXED):
        _assert_same(filtered[index], _transformers(logits[index], row))


@pytest.mark.parametrize("row", MIXED, ids=lambda r: f"t{r.temperature}-k{r.top_k}-p{r.top_p}-m{r.min_p}")
def test_a_row_alone_gives_the_same_as_in_a_mixed_batch(row):
    logits = _logits(len(MIXED), 5)
    for index in range(len(MIXED)):
        mixed = [*MIXED[:index], row, *MIXED[index + 1 :]]
        alone = filter_logits(logits[index : index + 1], [row])[0]
        assert torch.equal(filter_logits(logits, mixed)[index], alone)


def test_off_values_are_temperature_alone():
    logits = _logits(2, 7)
    filtered = filter_logits(logits, [RowWarp(0.5), RowWarp(0.5, top_k=3)])
    assert torch.equal(filtered[0], logits[0] / torch.tensor(0.5))
    assert int((~torch.isinf(filtered[1])).sum()) >= 3


def test_rows_and_settings_must_agree():
    with pytest.raises(ValueError, match="rows"):
        filter_logits(torch.zeros(2, 4), [RowWarp(1.0)])
