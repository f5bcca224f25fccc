import math

import pytest

from glimpse.cache import cache_key, is_cacheable

MESSAGES = [
    {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
    {"role": "user", "content": [{"type": "image", "sha256": "ab" * 32}, {"type": "text", "text": "What?"}]},
]
SETTINGS = {
    "max_new_tokens": 64,
    "temperature": 0.0,
    "top_p": 1.0,
    "seed": None,
    "stop": ["\n"],
    "ignore_eos": False,
}


def base_key(**overrides):
    args = {"model": "m", "image_hashes": ["ab" * 32], "messages": MESSAGES, "settings": SETTINGS}
    args.update(overrides)
    return cache_key(**args)


def test_key_is_a_stable_sha256_hex():
    key = base_key()
    assert len(key) == 64
    int(key, 16)
    assert key == base_key()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("max_new_tokens", 65),
        ("temperature", 0.5),
        ("top_p", 0.9),
        ("seed", 1),
        ("stop", ["\n", "."]),
        ("ignore_eos", True),
    ],
)
def test_every_setting_changes_the_key(name, value):
    assert base_key(settings={**SETTINGS, name: value}) != base_key()


def test_a_new_setting_changes_the_key():
    assert base_key(settings={**SETTINGS, "repetition_penalty": 1.1}) != base_key()


def test_model_images_and_messages_change_the_key():
    assert base_key(model="other") != base_key()
    assert base_key(image_hashes=["cd" * 32]) != base_key()
    assert base_key(image_hashes=[]) != base_key()
    changed = [MESSAGES[0], {**MESSAGES[1], "role": "assistant"}]
    assert base_key(messages=changed) != base_key()
    assert base_key(messages=list(reversed(MESSAGES))) != base_key()


def test_dict_key_order_does_not_matter():
    reordered_settings = dict(reversed(list(SETTINGS.items())))
    reordered_messages = [{k: m[k] for k in reversed(list(m))} for m in MESSAGES]
    assert base_key(settings=reordered_settings, messages=reordered_messages) == base_key()


def test_tuples_and_lists_are_the_same_value():
    assert base_key(image_hashes=("ab" * 32,), settings={**SETTINGS, "stop": ("\n",)}) == base_key()


def test_unrepresentable_values_are_refused():
    with pytest.raises(ValueError, match="JSON"):
        base_key(settings={**SETTINGS, "temperature": math.nan})
    with pytest.raises(TypeError):
        base_key(messages=[object()])


@pytest.mark.parametrize(
    ("greedy", "seed", "allow", "expected"),
    [
        (True, None, False, True),
        (False, None, False, False),
        (False, 42, False, True),
        (False, None, True, True),
    ],
)
def test_is_cacheable(greedy, seed, allow, expected):
    assert is_cacheable(greedy, seed, allow) is expected


def test_the_partition_changes_the_key():
    """Two clients asking the same thing get two entries, unless both are in the shared partition."""
    assert base_key(partition="key:a") != base_key(partition="key:b")
    assert base_key(partition="key:a") != base_key()
    assert base_key(partition="") == base_key()
