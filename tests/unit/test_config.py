"""Settings that contradict each other are refused at start-up, not found out request by request."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from glimpse.config import EngineSettings, GuardSettings, MediaSettings


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
