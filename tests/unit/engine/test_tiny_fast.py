"""The tower's faster training-time paths compute what its own code computes, gradients included."""

from __future__ import annotations

import random

import pytest
import torch

from glimpse.engine.tiny_data import Encoded
from glimpse.engine.tiny_fast import fast_tower
from glimpse.engine.tiny_task import draw, random_picture
from glimpse.engine.tiny_train import TrainConfig, untrained_model
from glimpse.engine.tiny_warmup import tower_tokens


@pytest.fixture(scope="module")
def model_and_processor():
    return untrained_model(TrainConfig(text_layers=1, vision_depth=1))


def _batch(processor) -> list[Encoded]:
    rng = random.Random(1)
    sizes = [(64, 64), (300, 120), (90, 360), (300, 120), (1024, 768)]  # one grid shape twice
    batch = []
    for width, height in sizes:
        picture = random_picture(rng, size=(width, height))
        inputs = processor.image_processor(images=[draw(picture)], return_tensors="pt")
        batch.append(Encoded(None, None, None, inputs["pixel_values"], inputs["image_grid_thw"], picture))
    assert len({tuple(e.image_grid_thw[0].tolist()) for e in batch}) == 4
    return batch


def test_the_fast_tower_gives_the_same_tokens_and_gradients(model_and_processor):
    model, processor = model_and_processor
    batch = _batch(processor)
    tower = model.model.visual
    weights = torch.randn(
        sum(int(e.image_grid_thw.prod()) // 4 for e in batch), 1, generator=torch.Generator().manual_seed(0)
    )

    def run() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        tower.zero_grad()
        tokens, _ = tower_tokens(tower, batch)
        (tokens * weights).square().sum().backward()
        return tokens.detach(), {n: p.grad.clone() for n, p in tower.named_parameters()}

    plain_tokens, plain_grads = run()
    with fast_tower(tower):
        fast_tokens, fast_grads = run()
        twice_tokens, _ = run()  # the position matrices now come from the cache
    again_tokens, _ = run()
    torch.testing.assert_close(fast_tokens, plain_tokens, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(twice_tokens, fast_tokens, atol=0, rtol=0)
    assert set(fast_grads) == set(plain_grads)
    for name, grad in plain_grads.items():  # sums over thousands of patches: relative to their size
        assert (fast_grads[name] - grad).abs().max() <= 1e-4 * grad.abs().max(), name
    assert plain_grads["embeddings.position_embedding.weight"].abs().sum() > 0
    assert torch.equal(again_tokens, plain_tokens)  # the modules' own forward again
    for module in (tower.patch_embed.proj, tower.downsample, tower.embeddings):
        assert "forward" not in vars(module)


def test_the_modules_get_their_forward_back_when_the_block_fails(model_and_processor):
    tower = model_and_processor[0].model.visual
    with pytest.raises(RuntimeError), fast_tower(tower):
        raise RuntimeError("boom")
    assert "forward" not in vars(tower.embeddings)
