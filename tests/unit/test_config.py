"""Settings that contradict each other are refused at start-up, not found out request by request."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from glimpse.config import (
    MOVED_SETTINGS,
    EngineSettings,
    GuardSettings,
    MediaSettings,
    Settings,
    UpstreamSettings,
)
from glimpse.settings_doc import iter_settings


def test_the_default_answer_length_must_be_allowed_and_leave_room_for_a_prompt():
    with pytest.raises(ValidationError, match="above max_new_tokens_limit"):
        EngineSettings(default_max_new_tokens=5000, max_new_tokens_limit=100)
    with pytest.raises(ValidationError, match="leaves no room for a prompt"):
        EngineSettings(max_seq_len=256, default_max_new_tokens=512)
    assert EngineSettings(max_seq_len=2048).default_max_new_tokens == 512


def test_min_side_above_max_side_is_refused():
    with pytest.raises(ValidationError, match="no image fits"):
        MediaSettings(min_side=100, max_side=50)


def test_a_request_pixel_limit_above_the_servers_pixel_budget_is_refused():
    with pytest.raises(ValidationError, match="could never be decoded"):
        MediaSettings(max_request_pixels=200, max_pixels_in_flight=100)


@pytest.mark.parametrize(
    ("keys", "why"), [([""], "is empty"), ([" padded "], "whitespace"), (["ok", " "], "empty")]
)
def test_api_keys_that_could_never_match_are_refused(keys, why):
    with pytest.raises(ValidationError, match=why):
        GuardSettings(api_keys=keys)


def test_the_old_names_of_moved_settings_still_work(monkeypatch):
    monkeypatch.setenv("GLIMPSE_ENGINE__UPSTREAMS", '["http://a:8000", "http://b:8000"]')
    monkeypatch.setenv("GLIMPSE_ENGINE__UPSTREAM_API_KEY", "k")
    monkeypatch.setenv("GLIMPSE_ENGINE__UPSTREAM_COOLDOWN_S", "7")
    monkeypatch.setenv("GLIMPSE_CACHE__REDIS_TIMEOUT_S", "0.5")
    monkeypatch.setenv("GLIMPSE_CACHE__REDIS_BACKOFF_S", "3")
    settings = Settings(engine={"kind": "upstream"})
    assert settings.upstream.urls == ("http://a:8000", "http://b:8000")
    assert settings.upstream.api_key is not None
    assert settings.upstream.api_key.get_secret_value() == "k"
    assert settings.upstream.cooldown_s == 7
    assert (settings.redis.timeout_s, settings.redis.backoff_s) == (0.5, 3)
    assert set(MOVED_SETTINGS)
    assert all(
        old_name not in type(getattr(settings, old_section)).model_fields
        for old_section, old_name in MOVED_SETTINGS
    )


def test_a_new_name_wins_over_the_old_one(monkeypatch):
    monkeypatch.setenv("GLIMPSE_ENGINE__UPSTREAM_READ_TIMEOUT_S", "10")
    monkeypatch.setenv("GLIMPSE_UPSTREAM__READ_TIMEOUT_S", "20")
    assert Settings().upstream.read_timeout_s == 20


def test_every_upstream_knob_is_a_documented_setting():
    documented = {env for env, _, _ in iter_settings()}
    for name in UpstreamSettings.model_fields:
        assert f"GLIMPSE_UPSTREAM__{name.upper()}" in documented


@pytest.mark.parametrize(
    ("given", "cache_url", "guard_url"),
    [
        ({}, None, None),
        ({"redis": {"url": "redis://shared/0"}}, "redis://shared/0", "redis://shared/0"),
        (
            {"redis": {"url": "redis://shared/0"}, "cache": {"redis_url": "redis://c/0"}},
            "redis://c/0",
            "redis://shared/0",
        ),
        (
            {"redis": {"url": "redis://shared/0"}, "guard": {"redis_url": "redis://g/0"}},
            "redis://shared/0",
            "redis://g/0",
        ),
        # Before the shared URL existed the guard used the cache's; it still does.
        ({"cache": {"redis_url": "redis://c/0"}}, "redis://c/0", "redis://c/0"),
    ],
    ids=["none", "shared", "cache-own", "guard-own", "cache-only"],
)
def test_each_use_of_redis_defaults_to_the_shared_url(given, cache_url, guard_url):
    settings = Settings(**given)
    assert settings.redis_url_for("cache") == cache_url
    assert settings.redis_url_for("guard") == guard_url


def test_preprocess_workers_counts_processes_zero_meaning_threads(monkeypatch):
    assert EngineSettings().preprocess_workers is None  # sized from the device at start-up
    assert EngineSettings(preprocess_workers=0).preprocess_workers == 0
    for wrong in (-1, 65):
        with pytest.raises(ValidationError, match="preprocess_workers"):
            EngineSettings(preprocess_workers=wrong)
    monkeypatch.setenv("GLIMPSE_ENGINE__PREPROCESS_WORKERS", "0")
    assert Settings().engine.preprocess_workers == 0
