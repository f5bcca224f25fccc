"""The random-weight checkpoints' tokenizer: every id the model can emit decodes to text."""

from __future__ import annotations

import pytest

from glimpse.engine.tiny_model import SPECIAL_TOKENS, _build_tokenizer, _model_config


@pytest.fixture(scope="module")
def full_vocab_tokenizer():
    return _build_tokenizer(151552)


def test_full_size_config_and_tokenizer_agree_on_the_vocabulary(full_vocab_tokenizer):
    config = _model_config(full_vocab_tokenizer, full_size=True)
    assert config.text_config.vocab_size == len(full_vocab_tokenizer) == 151552
    # Special tokens at the top of the id range, as in GLM's own tokenizer.
    specials = full_vocab_tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))
    assert sorted(specials) == list(range(151552 - len(SPECIAL_TOKENS), 151552))
    assert config.image_token_id in specials


def test_every_ordinary_id_decodes_to_text(full_vocab_tokenizer):
    # A random full-size model picks ids uniformly; ids that decode to nothing would make a
    # stream look empty for most tokens (and time to first token be measured wrong).
    special = set(full_vocab_tokenizer.all_special_ids)
    ids = [i for i in range(0, 151552, 97) if i not in special] + [151552 - len(SPECIAL_TOKENS) - 1]
    empty = [i for i in ids if not full_vocab_tokenizer.decode([i])]
    assert empty == []


def test_padding_leaves_the_encoding_of_text_alone(full_vocab_tokenizer):
    small = _build_tokenizer()
    text = "What is in this picture? 图片里有什么？"
    assert full_vocab_tokenizer(text).input_ids == small(text).input_ids


def test_checkpoint_written_module_by_module_loads_like_one_saved_whole(tmp_path):
    # The full-size model is written this way on a CPU; the tiny config checks the same code.
    import torch
    from transformers import AutoModelForImageTextToText, GenerationConfig

    from glimpse.engine.tiny_model import write_random_checkpoint

    config = _model_config(_build_tokenizer())
    generation = GenerationConfig(eos_token_id=config.eos_token_id, do_sample=False)
    written = write_random_checkpoint(config, generation, tmp_path, shard_bytes=200_000)

    assert len(list(tmp_path.glob("model-*-of-*.safetensors"))) > 1
    model, info = AutoModelForImageTextToText.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"]
    assert not info["unexpected_keys"]
    assert model.dtype == torch.bfloat16
    assert written == sum(p.nbytes for p in model.state_dict().values())
    language = model.model.language_model
    assert torch.equal(language.norm.weight, torch.ones_like(language.norm.weight))
    assert torch.equal(
        model.model.visual.patch_embed.proj.bias, torch.zeros_like(model.model.visual.patch_embed.proj.bias)
    )
    assert 0.015 < float(model.lm_head.weight.detach().float().std()) < 0.025
