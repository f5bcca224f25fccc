import json
from datetime import UTC, datetime

import pytest
from pydantic import SecretStr

from glimpse.config import GuardSettings
from glimpse.guard.keystore import KEY_PREFIX, ApiKey, KeyStore, generate_key, hash_key


def test_generated_keys_are_long_random_and_prefixed():
    a, b = generate_key(), generate_key()
    assert a != b
    assert a.startswith(KEY_PREFIX)
    assert len(a) >= len(KEY_PREFIX) + 43  # 32 random bytes, base64url


def test_env_keys_are_hashed_and_the_plain_value_is_not_kept():
    key = generate_key()
    store = KeyStore.from_settings(GuardSettings(api_keys=(SecretStr(key),)))
    found = store.lookup(key)
    assert found is not None
    assert found.name == "env-1"
    assert found.sha256 == hash_key(key)
    assert key not in repr(store._keys)
    assert store.lookup(key + "x") is None
    assert store.lookup("") is None


def test_keys_file_entries_with_expiry_scopes_and_limits(tmp_path):
    key = generate_key()
    path = tmp_path / "keys.json"
    path.write_text(
        json.dumps(
            [
                {
                    "name": "ci",
                    "sha256": hash_key(key).upper(),
                    "expires_at": "2030-01-01T00:00:00",
                    "scopes": ["infer"],
                    "rate_limit_per_minute": 5,
                    "token_quota_per_day": 100_000,
                },
                {"name": "other", "sha256": hash_key("something-else")},
            ]
        ),
        encoding="utf-8",
    )
    store = KeyStore.from_settings(GuardSettings(api_keys_file=path))
    assert len(store) == 2
    found = store.lookup(key)
    assert found == ApiKey(
        name="ci",
        sha256=hash_key(key),
        expires_at=datetime(2030, 1, 1, tzinfo=UTC),  # naive times are UTC
        scopes=("infer",),
        rate_limit_per_minute=5,
        token_quota_per_day=100_000,
    )
    assert not found.expired(datetime(2029, 12, 31, 23, 59, tzinfo=UTC).timestamp())
    assert found.expired(datetime(2030, 1, 1, tzinfo=UTC).timestamp())


def test_keys_file_may_wrap_the_list(tmp_path):
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"keys": [{"name": "a", "sha256": hash_key("k")}]}), encoding="utf-8")
    assert KeyStore.from_settings(GuardSettings(api_keys_file=path)).lookup("k") is not None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('[{"name": "a", "sha256": "abc"}]', "64 hexadecimal"),
        ('[{"name": "a", "sha256": "' + "0" * 64 + '", "plain": "k"}]', "invalid API keys file"),
        ('[{"name": "a", "sha256": "' + "0" * 64 + '", "rate_limit_per_minute": -1}]', "invalid"),
        ('[{"name": "a", "sha256": "' + "0" * 64 + '", "token_quota_per_day": -5}]', "invalid"),
        ("{", "cannot read"),
        ('[{"name": "a", "sha256": "' + "0" * 64 + '", "scopes": ["infr"]}]', "unknown scope.*infr"),
    ],
)
def test_bad_keys_file_is_refused(tmp_path, content, message):
    path = tmp_path / "keys.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        KeyStore.from_settings(GuardSettings(api_keys_file=path))


def test_the_same_key_twice_is_refused():
    with pytest.raises(ValueError, match="listed twice"):
        KeyStore([ApiKey("a", hash_key("k")), ApiKey("b", hash_key("k"))])
