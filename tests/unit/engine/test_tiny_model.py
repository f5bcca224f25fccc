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
